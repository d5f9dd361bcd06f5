"""HQQ, half-quadratic quantization (Badri & Shaji 2023; --method hqq): calibration-free, through the ``hqq``
package itself. Its optimizer fits each group's zero point to minimise an l_p<1 error of the weights (robust to
outliers) instead of min-max rounding; the codes and scale/zero it stores are its own.

Each linear becomes an ``HQQLinear`` only long enough to quantize it: hqq's own ``dequantize()`` goes back into the
``nn.Linear``, because on CPU a plain linear runs far faster than HQQLinear, which dequantizes on every forward.
HQQLinear computes and holds scale and zero in its compute dtype, float16 here (hqq's default, as it serializes
them); the footprint counts the packed codes and those tensors byte for byte, as hqq holds them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn as nn

from quant import Footprint, QuantConfig, QuantError, option, register
from quant.linears import KEEP_HELP, plan
from quant.rtn import check_group_size

HQQ_BITS = (8, 4, 3, 2, 1)  # hqq also takes 5 and 6 bits, but stores those codes in whole bytes (no bit packing)
# hqq's README: "start with nbits=4, group_size=64, axis=1"; "axis=0 gives better results, especially at lower bits"
DEFAULT_AXIS = {8: 1, 4: 1, 3: 0, 2: 0, 1: 0}
PACKED_PER_BYTE = {4: 2, 2: 4, 1: 8}  # hqq packs these along the first dim of its [groups, g] / [g, groups] view
STORE_DTYPE = torch.float16  # HQQLinear's compute_dtype: what it holds scale and zero in


@dataclass(frozen=True)
class HQQConfig(QuantConfig):
    """HQQ (--method hqq) at 8, 4, 3, 2 or 1 bits, asymmetric groups of ``group_size`` along ``hqq_axis``."""

    bits: int = 4
    group_size: int = option(64, "HQQ: a multiple of 8 that divides every layer's size along --hqq-axis "
                                 "(-1 = one group per row, or per column at axis 0)")
    hqq_axis: int | None = option(None, "HQQ: grouping axis, 1 = consecutive input columns (as RTN), 0 = output rows; "
                                        "default hqq's advice: 1 at 8 and 4 bits, 0 below", choices=(0, 1))
    hqq_optimize: bool = option(True, "HQQ: fit zero points with hqq's half-quadratic solver (off: min-max rounding)")
    keep: tuple[str, ...] = option((), KEEP_HELP)

    method: ClassVar[str] = "hqq"

    def __post_init__(self) -> None:
        if self.bits not in HQQ_BITS:
            raise QuantError(f"HQQ bits must be one of {', '.join(map(str, HQQ_BITS))} (16 = unquantized); got {self.bits}")
        if self.group_size != -1 and (self.group_size < 8 or self.group_size % 8):
            raise QuantError(f"HQQ group size must be a multiple of 8 (hqq requires it) or -1; got {self.group_size}; "
                             f"use --group-size 64")
        if self.hqq_axis is None:
            object.__setattr__(self, "hqq_axis", DEFAULT_AXIS[self.bits])
        if self.hqq_axis not in (0, 1):
            raise QuantError(f"HQQ axis must be 0 (group output rows) or 1 (group input columns); got {self.hqq_axis}")
        object.__setattr__(self, "keep", tuple(self.keep))

    def validate(self, model: nn.Module) -> None:
        """Shape checks per layer, fine on a meta-device skeleton: groups stay inside one row (axis 1) or one column
        (axis 0), and hqq's bit packing divides its view of the codes evenly."""
        for name, lin in plan(model, self.keep)[0].items():
            size, dim = (lin.in_features, "in_features") if self.hqq_axis == 1 else (lin.out_features, "out_features")
            check_group_size(size, self.group_size, name, dim)
            g = size if self.group_size == -1 else self.group_size
            rows = g if self.hqq_axis == 0 else lin.in_features * lin.out_features // g
            per_byte = PACKED_PER_BYTE.get(self.bits, 1)
            if rows % per_byte:
                raise QuantError(f"hqq packs {per_byte} {self.bits}-bit codes per byte, but {name} splits into {rows} "
                                 f"rows of codes; use --group-size 64")

    def hqq_config(self) -> dict[str, Any]:
        """hqq's own quant_config for HQQLinear (its per-bits choices, such as round_zero at 4 bits, kept)."""
        from hqq.core.quantize import BaseQuantizeConfig

        qc = BaseQuantizeConfig(nbits=self.bits, group_size=None if self.group_size == -1 else self.group_size,
                                axis=self.hqq_axis)
        qc["weight_quant_params"]["optimize"] = self.hqq_optimize
        return qc

    def label(self) -> str:
        g = "row" if self.group_size == -1 else f"g{self.group_size}"
        return (f"{self.bits}bit-hqq-{g}" + ("" if self.hqq_axis == DEFAULT_AXIS[self.bits] else f"-axis{self.hqq_axis}")
                + ("" if self.hqq_optimize else "-noopt") + (f"-keep:{'+'.join(self.keep)}" if self.keep else ""))


def stored_tensors(layer: nn.Module) -> dict[str, torch.Tensor]:
    """What an HQQLinear stores for its weight: the packed codes ``W_q`` and every tensor of its meta (scale, zero;
    quantized scale/zero and their own meta where hqq made them). Its bias is the linear's, left at 16 bit."""
    out = {"W_q": layer.W_q}

    def walk(prefix: str, meta: dict) -> None:
        for key, value in meta.items():
            if isinstance(value, torch.Tensor):
                out[prefix + key] = value
            elif isinstance(value, dict):
                walk(f"{prefix}{key}.", value)

    walk("", layer.meta)
    return out


@register(HQQConfig)
@torch.no_grad()
def hqq_(model: nn.Module, config: HQQConfig, **_: object) -> Footprint:
    from hqq.core.quantize import HQQLinear

    config.validate(model)  # every layer checked before any is touched
    linears, fp = plan(model, config.keep)
    qc = config.hqq_config()
    for name, lin in linears.items():
        # del_orig=False: HQQLinear would otherwise empty the nn.Linear we keep
        layer = HQQLinear(lin, qc, del_orig=False, compute_dtype=STORE_DTYPE, device=lin.weight.device)
        stored = stored_tensors(layer)
        # hqq's own dequantized weights (float16, exact in the model's float32): tests/test_hqq.py checks that the
        # linear then matches HQQLinear's forward on a real layer to float16 rounding
        lin.weight.copy_(layer.dequantize())
        bits = sum(8 * t.nbytes for t in stored.values())
        fp.layers[name] = {
            "shape": list(lin.weight.shape), "bits": bits, "bits_per_weight": bits / lin.weight.numel(),
            "stored": {k: {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape)} for k, t in stored.items()},
        }
        fp.linear_params += lin.weight.numel()
        fp.linear_bits += bits
    fp.extra["quantized_linears"] = len(linears)
    return fp
