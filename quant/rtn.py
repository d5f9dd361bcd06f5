"""Round-to-nearest weight-only quantization: pure per-group tensor functions, then the in-place handler.

Grid convention is GPTQ's (IST-DASLab/gptq ``Quantizer``): asymmetric min-max over a range that always
contains 0, so the integer zero point lies in [0, 2^b - 1] and packs in b bits; symmetric uses the
midpoint as zero. Group statistics are per output row over ``group_size`` consecutive input columns.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn

from quant import Footprint, QuantConfig, QuantError, option, register
from quant.linears import KEEP_HELP, plan

RTN_BITS = (2, 3, 4, 5, 6, 8)
SCALE_BITS = 16  # scales are stored as fp16 in every packed format we account for
INDEX_BITS = 32  # channel and group indices are stored as int32, as GPTQ checkpoints store g_idx


def grid_params(w: torch.Tensor, bits: int, sym: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and integer zero point per row of ``w`` (shape [..., n]) for a ``bits``-bit grid."""
    maxq = 2**bits - 1
    w = w.float()
    xmin = w.amin(dim=-1).clamp(max=0)
    xmax = w.amax(dim=-1).clamp(min=0)
    if sym:
        xmax = torch.maximum(xmin.abs(), xmax)
        xmin = -xmax
    degenerate = (xmin == 0) & (xmax == 0)  # an all-zero group: any scale reproduces it
    xmin = torch.where(degenerate, -1.0, xmin)
    xmax = torch.where(degenerate, 1.0, xmax)
    scale = (xmax - xmin) / maxq
    zero = torch.full_like(scale, (maxq + 1) / 2) if sym else torch.round(-xmin / scale)
    return scale, zero


def quantize(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """Integer codes in [0, 2^b - 1]; ``scale``/``zero`` broadcast against ``w``."""
    return torch.clamp(torch.round(w.float() / scale) + zero, 0, 2**bits - 1)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    return scale * (q - zero)


def check_group_size(size: int, group_size: int, name: str = "layer", dim: str = "in_features") -> None:
    """Groups run along ``dim`` (input columns: one group per row at -1; HQQ's axis 0 groups output rows instead)."""
    if group_size == -1:
        return
    if group_size < 1 or size % group_size:
        divisors = [g for g in (256, 128, 64, 32, 16) if size % g == 0][:2]
        hint = " or ".join(str(g) for g in divisors) or "-1"
        raise QuantError(
            f"group size {group_size} does not divide {dim}={size} of {name}; "
            f"use --group-size {hint} (or -1 for one group per {'row' if dim == 'in_features' else 'column'})"
        )


def quantize_groups(w: torch.Tensor, bits: int, group_size: int = 128, sym: bool = False,
                    keep: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Codes [out, in] and per-group scale and zero point [out, groups] of ``w`` [out, in].

    Input channels (columns) in ``keep`` do not widen their group's range: zeroing them first is exact, because
    every grid range already contains 0 (the caller keeps their values; their codes are then meaningless).
    """
    out_f, in_f = w.shape
    g = in_f if group_size == -1 else group_size
    check_group_size(in_f, g)
    src = w.float()
    if keep is not None and keep.numel():
        src = src.clone()
        src[:, keep] = 0
    groups = src.reshape(out_f, in_f // g, g)
    scale, zero = grid_params(groups, bits, sym)
    codes = quantize(groups, scale.unsqueeze(-1), zero.unsqueeze(-1), bits).reshape(out_f, in_f)
    return codes, scale, zero


def fake_quantize(w: torch.Tensor, bits: int, group_size: int = 128, sym: bool = False,
                  keep: torch.Tensor | None = None) -> torch.Tensor:
    """Quantize then dequantize ``w`` [out, in] per group; returns a tensor of ``w``'s dtype. Input channels
    in ``keep`` come back unchanged."""
    codes, scale, zero = quantize_groups(w, bits, group_size, sym, keep)
    out_f, in_f = w.shape
    groups = scale.shape[1]
    out = dequantize(codes.reshape(out_f, groups, -1), scale.unsqueeze(-1), zero.unsqueeze(-1))
    out = out.reshape(out_f, in_f).to(w.dtype)
    if keep is not None and keep.numel():
        out[:, keep] = w[:, keep]
    return out


def storage_bits(shape: tuple[int, int], bits: int, group_size: int, sym: bool, kept: int = 0,
                 g_idx: bool = False) -> int:
    """Bits of a packed layer: b-bit codes, one fp16 scale per group, a b-bit zero per group if asymmetric.

    ``kept`` input channels are stored as fp16 columns plus an int32 index each, and need no codes.
    ``g_idx``: groups follow a column permutation (GPTQ act-order), so an int32 group index per column
    is stored, and groups cover only the quantized columns.
    """
    out_f, in_f = shape
    if group_size == -1:
        groups_per_row = 1
    elif g_idx:
        groups_per_row = -(-(in_f - kept) // group_size)
    else:
        groups_per_row = in_f // group_size
    return (
        out_f * (in_f - kept) * bits
        + out_f * groups_per_row * (SCALE_BITS + (0 if sym else bits))
        + kept * (out_f * SCALE_BITS + INDEX_BITS)
        + (in_f * INDEX_BITS if g_idx else 0)
    )


GROUP_HELP = "quantization group: consecutive input columns sharing a scale; must divide every layer's input size, -1 = one per row"
SYM_HELP = "symmetric grid (default: asymmetric with a zero point)"
OUTLIERS_HELP = "per linear, this many input channels of largest calibration activation left at 16 bit"


@dataclass(frozen=True)
class RTNConfig(QuantConfig):
    """Round to nearest, per group, asymmetric with a zero point (--method rtn)."""

    bits: int = 4
    group_size: int = option(128, GROUP_HELP)
    sym: bool = option(False, SYM_HELP)
    keep: tuple[str, ...] = option((), KEEP_HELP)
    keep_outliers: int = option(0, OUTLIERS_HELP)

    method: ClassVar[str] = "rtn"

    def __post_init__(self) -> None:
        if self.bits not in RTN_BITS:
            raise QuantError(f"RTN bits must be one of {', '.join(map(str, RTN_BITS))} (16 = unquantized); got {self.bits}")
        if self.group_size != -1 and self.group_size < 1:
            raise QuantError(f"group size must be a positive integer or -1 (per row); got {self.group_size}")
        if self.keep_outliers < 0:
            raise QuantError(f"--keep-outliers must be 0 or more input channels; got {self.keep_outliers}")
        object.__setattr__(self, "keep", tuple(self.keep))

    def validate(self, model: nn.Module) -> None:
        """Raise if a keep pattern matches nothing or the group size does not divide some layer."""
        linears, _ = plan(model, self.keep)
        for name, lin in linears.items():
            check_group_size(lin.in_features, self.group_size, name)

    def packed_format(self):
        from quant.gptq_format import gptq_format

        # the GPTQ format quantizes every linear alike: no kept layers or channels
        return None if self.keep or self.keep_outliers else gptq_format(self.bits, self.group_size, self.sym)

    def build_checkpoint(self, source, out, calib=None, tokenizer=None) -> None:
        """The GPTQ-format checkpoint of ``source`` at this config: the same codes as ``quantize_``, fp16 scales."""
        from quant.gptq_format import write_checkpoint

        if not self.exports_checkpoint:
            raise QuantError(f"{self.label()} keeps some weights at 16 bit, which the GPTQ checkpoint format cannot hold")
        write_checkpoint(source, out, lambda w: quantize_groups(w, self.bits, self.group_size, self.sym),
                         self.packed_format())

    def calibration(self):
        from quant.outliers import RTN_OUTLIER_CALIB

        return RTN_OUTLIER_CALIB if self.keep_outliers else None

    def label(self) -> str:
        g = "row" if self.group_size == -1 else f"g{self.group_size}"
        return (f"{self.bits}bit-rtn-{g}" + ("-sym" if self.sym else "") + (f"-keep:{'+'.join(self.keep)}" if self.keep else "")
                + (f"-out{self.keep_outliers}" if self.keep_outliers else ""))


@register(RTNConfig)
@torch.no_grad()
def rtn_(model: nn.Module, config: RTNConfig, tokenizer=None, calib: torch.Tensor | None = None, **_: object) -> Footprint:
    config.validate(model)  # every layer checked before any is touched
    linears, fp = plan(model, config.keep)
    kept: dict[str, torch.Tensor] = {}
    if config.keep_outliers:
        from dataclasses import asdict

        from quant.outliers import rtn_outlier_channels

        kept = rtn_outlier_channels(model, linears, config.keep_outliers, tokenizer, calib)
        fp.extra["outlier_calib"] = "given" if calib is not None else asdict(config.calibration())
    for name, lin in linears.items():
        cols = kept.get(name)
        lin.weight.copy_(fake_quantize(lin.weight, config.bits, config.group_size, config.sym, keep=cols))
        fp.linear_params += lin.weight.numel()
        fp.linear_bits += storage_bits(tuple(lin.weight.shape), config.bits, config.group_size, config.sym,
                                       kept=0 if cols is None else cols.numel())
    fp.extra["quantized_linears"] = len(linears)
    return fp
