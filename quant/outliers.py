"""Outlier input channels, the paper's fine-grained analysis: per linear, the K input channels with the
largest calibration activation magnitude (max |x|, as LLM.int8 defines outlier features) stay at 16 bit.

RTN measures the magnitudes in one forward pass of the unquantized model over calibration text; GPTQ
takes them from the activations it already sees while building each layer's Hessian.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from quant import QuantError
from quant.calib import Calibration

# RTN has no calibration settings of its own; --keep-outliers on RTN uses these, recorded in the footprint.
RTN_OUTLIER_CALIB = Calibration(n=16, seqlen=512)
FORWARD_BATCH = 8  # calibration sequences per forward pass


def top_channels(amax: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (ascending) of the ``k`` channels with the largest magnitude."""
    if not 0 <= k < amax.numel():
        raise QuantError(f"--keep-outliers {k} must be between 0 and the layer width {amax.numel()} minus 1")
    return torch.topk(amax, k).indices.sort().values


@torch.no_grad()
def activation_amax(model: nn.Module, linears: dict[str, nn.Linear], ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """max |x| per input channel of every linear in ``linears`` over calibration token ids [n, seqlen]."""
    amax = {name: torch.zeros(lin.in_features, device=lin.weight.device) for name, lin in linears.items()}

    def recorder(name: str):
        def hook(_module: nn.Module, args: tuple) -> None:
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            torch.maximum(amax[name], x.abs().amax(0), out=amax[name])

        return hook

    handles = [lin.register_forward_pre_hook(recorder(name)) for name, lin in linears.items()]
    device = next(model.parameters()).device
    try:
        for batch in ids.split(FORWARD_BATCH):
            model(batch.to(device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return amax


def rtn_outlier_channels(model: nn.Module, linears: dict[str, nn.Linear], k: int, tokenizer=None,
                         calib: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The ``k`` outlier channels of every linear, from ``calib`` ids or RTN_OUTLIER_CALIB windows of text."""
    if calib is None:
        if tokenizer is None:
            raise QuantError("--keep-outliers needs calibration text: pass the tokenizer (tokenizer=...) to quantize_")
        calib = RTN_OUTLIER_CALIB.ids(tokenizer)
    return {name: top_channels(a, k) for name, a in activation_amax(model, linears, calib).items()}
