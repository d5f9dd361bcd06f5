"""The 16-bit baseline's handler: nothing changes, but its footprint is measured like every other cell's."""
from __future__ import annotations

import torch.nn as nn

from quant import Footprint, NoQuant, register
from quant.linears import plan


@register(NoQuant)
def none_(model: nn.Module, config: NoQuant, **_: object) -> Footprint:
    linears, fp = plan(model)
    for lin in linears.values():
        fp.linear_params += lin.weight.numel()
        fp.linear_bits += 16 * lin.weight.numel()
    return fp
