"""GPTQ (Frantar et al., 2022) in plain torch, CPU or CUDA, in the shape of IST-DASLab/gptq.

``GPTQ`` is the algorithm as a small stateful object: ``add_batch`` accumulates the Hessian 2/n X^T X
from a forward hook, ``fasterquant`` quantizes column by column (optionally in act-order), spreading each
column's error over the columns not yet quantized, with lazy block updates. It uses quant.rtn's grid, so
GPTQ and RTN codes are the same format.

One object may hold several linears that read the same input (q/k/v; gate/up): GPTQ treats weight rows
independently given the Hessian, so stacking their rows gives the same result as one object each, for
the cost of one pass over the columns.

``gptq_`` is the true-sequential driver (block machinery in quant.blocks, shared with AWQ): decoder blocks one
at a time, each fed the outputs of the blocks before it, already quantized; inside a block, each set of linears
sharing an input is quantized in the order the forward pass reaches it, so o_proj sees the quantized q/k/v's
output, and so on.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Sequence

import torch
import torch.nn as nn

from quant import Footprint, QuantConfig, QuantError, option, register
from quant.blocks import Stop, block_inputs, decoder_blocks, hidden_of, input_groups, run_to_hooks
from quant.calib import CALIB_N_HELP, CALIB_SEED_HELP, CALIB_SEQLEN_HELP, CALIB_SOURCE_HELP, SOURCES, Calibration
from quant.linears import KEEP_HELP, plan
from quant.outliers import top_channels
from quant.rtn import GROUP_HELP, OUTLIERS_HELP, SYM_HELP, check_group_size, dequantize, grid_params, quantize, storage_bits

GPTQ_BITS = (2, 3, 4, 8)
IMPLEMENTATIONS = ("native", "gptqmodel", "auto-gptq")


class GPTQ:
    """Hessian and quantization of the linears in ``linears``, which must all read the same input."""

    def __init__(self, linears: Sequence[nn.Linear], bits: int, sym: bool = False):
        self.linears = list(linears)
        self.bits, self.sym = bits, sym
        w = self.linears[0].weight
        self.columns = w.shape[1]
        self.H: torch.Tensor | None = torch.zeros(self.columns, self.columns, device=w.device)
        self.amax = torch.zeros(self.columns, device=w.device)  # max |x| per input channel, for outliers
        self.nsamples = 0

    @torch.no_grad()
    def add_batch(self, inp: torch.Tensor, out: torch.Tensor | None = None) -> None:
        """Fold a batch of layer inputs into H; ``out`` is unused, kept for the reference's hook signature."""
        x = inp.detach().reshape(-1, self.columns).float()
        n = x.shape[0]
        torch.maximum(self.amax, x.abs().amax(0), out=self.amax)
        self.H.mul_(self.nsamples / (self.nsamples + n))  # running mean keeps H's scale independent of n
        self.nsamples += n
        x = x.mul(math.sqrt(2 / self.nsamples))
        self.H.addmm_(x.T, x)

    @torch.no_grad()
    def fasterquant(self, blocksize: int = 128, percdamp: float = 0.01, groupsize: int = -1,
                    actorder: bool = False, static_groups: bool = False,
                    keep: torch.Tensor | None = None) -> None:
        """Quantize the weights in place (fake-quantized: on the grid, stored in the layer's dtype).

        ``keep``: input channels left at 16 bit. They are processed last, so the error of every
        quantized column can still flow into them, and they never widen a group's range.
        """
        if self.H is None:
            raise RuntimeError("fasterquant called twice; make a new GPTQ object per quantization")
        H, self.H = self.H, None
        with _one_cpu_thread(H.device):
            self._quantize(H, blocksize, percdamp, groupsize, actorder, static_groups, keep)

    def _quantize(self, H: torch.Tensor, blocksize: int, percdamp: float, groupsize: int, actorder: bool,
                  static_groups: bool, keep: torch.Tensor | None) -> None:
        # Transposed, one row per input channel: the column loop then reads and updates contiguous memory (2x faster).
        Wt = torch.cat([lin.weight for lin in self.linears]).float().T.contiguous()
        cols, rows = Wt.shape
        bits, sym = self.bits, self.sym

        dead = H.diagonal() == 0  # channels never active in calibration: weight irrelevant, zero it
        H[dead, dead] = 1
        Wt[dead] = 0

        kept = torch.zeros(cols, dtype=torch.bool, device=Wt.device)
        if keep is not None:
            kept[keep.to(Wt.device)] = True
        order = torch.argsort(H.diagonal(), descending=True) if actorder else torch.arange(cols, device=Wt.device)
        perm = torch.cat([order[~kept[order]], order[kept[order]]])
        n_quant = cols - int(kept.sum())

        # Group of each processing position: runs of `groupsize` positions under act-order without static
        # groups (params found lazily at a run's start, as the reference does), else the original column's group.
        g = cols if groupsize == -1 else groupsize
        lazy = not static_groups and groupsize != -1
        gid = (torch.arange(n_quant, device=Wt.device) // g if lazy and actorder else perm[:n_quant] // g).tolist()
        run_end = _run_ends(gid)
        if not lazy:  # every group's params from the weights as they are, before any update
            masked = Wt.clone()
            masked[kept] = 0
            scales, zeros = (t.T.contiguous() for t in grid_params(masked.T.reshape(rows, cols // g, g), bits, sym))

        Wt = Wt[perm]
        Hinv = _inverse_hessian_factor(H[perm][:, perm], percdamp)

        current = -1
        for i1 in range(0, n_quant, blocksize):
            i2 = min(i1 + blocksize, cols)
            W1 = Wt[i1:i2].clone()
            Err1 = torch.zeros_like(W1)
            Hinv1 = Hinv[i1:i2, i1:i2]
            d = Hinv1.diagonal().tolist()
            for i in range(min(i2, n_quant) - i1):
                j = i1 + i
                if gid[j] != current:
                    current = gid[j]
                    if lazy:  # like the reference: from the weights as they stood at this block's start
                        scale, zero = grid_params(Wt[j : run_end[j]].T, bits, sym)
                    else:
                        scale, zero = scales[current], zeros[current]
                w = W1[i]
                q = dequantize(quantize(w, scale, zero, bits), scale, zero)
                err = torch.sub(w, q, out=Err1[i]).div_(d[i])
                W1[i + 1 :].addr_(Hinv1[i, i + 1 :], err, alpha=-1)  # later columns absorb the error
                w.copy_(q)
            Wt[i1:i2] = W1
            Wt[i2:].addmm_(Hinv[i1:i2, i2:].T, Err1, alpha=-1)

        W = Wt[torch.argsort(perm)].T
        for lin, part in zip(self.linears, W.split([lin.out_features for lin in self.linears])):
            lin.weight.copy_(part)


@contextmanager
def _one_cpu_thread(device: torch.device):
    """GPTQ runs thousands of tiny ops per layer: on CPU, fanning each out to threads costs more than it
    saves (2-3x slower with 2 threads than with 1 on a busy 2-core machine), so it runs on one."""
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _run_ends(gid: list[int]) -> dict[int, int]:
    """For the first position of each run of equal group ids, the position just past the run."""
    ends: dict[int, int] = {}
    start = 0
    for j in range(1, len(gid) + 1):
        if j == len(gid) or gid[j] != gid[start]:
            ends[start] = j
            start = j
    return ends


def _inverse_hessian_factor(H: torch.Tensor, percdamp: float) -> torch.Tensor:
    """Upper U with U^T U = (H + damp*mean(diag H)*I)^-1: row i holds column i's update weights.

    The reference forms the inverse and factors it again; factoring H in reversed order instead gives
    H = R R^T with R upper, so U = R^-1, one triangular solve (torch.cholesky_inverse is ~10x slower on CPU).
    """
    H.diagonal().add_(percdamp * H.diagonal().mean())
    L, info = torch.linalg.cholesky_ex(H.flip(0, 1))
    if info.item():
        raise QuantError(f"GPTQ Hessian is not positive definite even after dampening {percdamp}; raise --damp (e.g. 0.1) or add calibration data")
    R = L.flip(0, 1)
    return torch.linalg.solve_triangular(R, torch.eye(len(R), device=R.device, dtype=R.dtype), upper=True)


# ---- the true-sequential driver ------------------------------------------------------------------------

@torch.no_grad()
def accumulate(block: nn.Module, gptq: GPTQ, inps: list[tuple[torch.Tensor, dict]]) -> None:
    """Run the calibration batches through ``block`` up to the group's shared input, feeding the Hessian."""

    def hook(_module: nn.Module, args: tuple) -> None:
        gptq.add_batch(args[0])
        raise Stop

    run_to_hooks(lambda inp: block(inp[0], **inp[1]), inps, [gptq.linears[0].register_forward_pre_hook(hook)])


@torch.no_grad()
def quantize_sequential(model: nn.Module, linears: dict[str, nn.Linear], ids: torch.Tensor,
                        config: "GPTQConfig") -> dict[str, int]:
    """GPTQ every linear in ``linears`` block by block; returns the number of kept channels per linear."""
    blocks = decoder_blocks(model, linears, "GPTQ")
    names = {id(lin): name for name, lin in linears.items()}
    kept: dict[str, int] = {}
    layouts: dict[tuple, list[list[str]]] = {}  # blocks of one structure share one grouping: find it once
    inps = block_inputs(model, blocks[0], ids)
    for block in blocks:
        local = {id(m): n for n, m in block.named_modules() if id(m) in names}
        key = (type(block), tuple(sorted(local.values())))
        if local and key not in layouts:
            mine = [m for m in block.modules() if id(m) in local]
            layouts[key] = [[local[id(m)] for m in group] for group in input_groups(block, mine, inps[0])]
        for group_names in layouts.get(key, []):
            gptq = GPTQ([block.get_submodule(n) for n in group_names], config.bits, config.sym)
            accumulate(block, gptq, inps)
            keep = top_channels(gptq.amax, config.keep_outliers) if config.keep_outliers else None
            gptq.fasterquant(config.blocksize, config.damp, config.group_size, config.act_order,
                             config.static_groups, keep)
            for lin in gptq.linears:
                kept[names[id(lin)]] = 0 if keep is None else keep.numel()
        inps = [(hidden_of(block(hidden, **kwargs)), kwargs) for hidden, kwargs in inps]
    return kept


# ---- config and handler --------------------------------------------------------------------------------

@dataclass(frozen=True)
class GPTQConfig(QuantConfig):
    """GPTQ (--method gptq). The paper's defaults: asymmetric, group 128, act-order, 128 calibration sequences of
    2048 tokens; the bundled model's defaults (models.yaml) are group 64 and 16 x 512."""

    bits: int = 4
    group_size: int = option(128, GROUP_HELP)
    sym: bool = option(False, SYM_HELP)
    act_order: bool = option(True, "quantize columns in order of decreasing Hessian diagonal (act-order)")
    static_groups: bool = option(False, "act-order with group parameters fixed before any update")
    damp: float = option(0.01, "Hessian dampening, a fraction of its mean diagonal")
    blocksize: int = option(128, "columns per lazy batch update")
    calib_n: int = option(128, CALIB_N_HELP)
    calib_seqlen: int = option(2048, CALIB_SEQLEN_HELP)
    calib_seed: int = option(0, CALIB_SEED_HELP)
    calib_source: str = option("pydoc", CALIB_SOURCE_HELP, choices=SOURCES)
    keep: tuple[str, ...] = option((), KEEP_HELP)
    keep_outliers: int = option(0, OUTLIERS_HELP)
    gptq_impl: str = option("native", "native (ours, in place) or gptqmodel (a packed checkpoint on its kernels); "
                            "auto-gptq only says why it cannot run", choices=IMPLEMENTATIONS)

    method: ClassVar[str] = "gptq"

    def __post_init__(self) -> None:
        if self.bits not in GPTQ_BITS:
            raise QuantError(f"GPTQ bits must be one of {', '.join(map(str, GPTQ_BITS))} (16 = the unquantized baseline); got {self.bits}")
        if self.group_size != -1 and self.group_size < 1:
            raise QuantError(f"group size must be a positive integer or -1 (per row); got {self.group_size}")
        if not 0 < self.damp < 1:
            raise QuantError(f"--damp must lie strictly between 0 and 1 (a fraction of the mean Hessian diagonal); got {self.damp}")
        if self.blocksize < 1 or self.calib_n < 1 or self.calib_seqlen < 1 or self.keep_outliers < 0:
            raise QuantError("GPTQ blocksize, --calib-n and --calib-seqlen must be positive and --keep-outliers 0 or more")
        if self.gptq_impl not in IMPLEMENTATIONS:
            raise QuantError(f"unknown GPTQ implementation {self.gptq_impl!r}; use one of {', '.join(IMPLEMENTATIONS)}")
        object.__setattr__(self, "keep", tuple(self.keep))
        if self.gptq_impl != "native" and (self.keep or self.keep_outliers):
            raise QuantError(f"--keep and --keep-outliers work with the native GPTQ implementation only, not {self.gptq_impl}")

    def validate(self, model: nn.Module) -> None:
        """Keep patterns, group size against every layer, outlier count against every width, the library."""
        if self.gptq_impl == "auto-gptq":
            from quant.gptq_packed import refuse_auto_gptq

            refuse_auto_gptq()
        if self.gptq_impl == "gptqmodel":
            from quant.gptq_packed import check_gptqmodel

            check_gptqmodel()
        linears, _ = plan(model, self.keep)
        for name, lin in linears.items():
            check_group_size(lin.in_features, self.group_size, name)
            if self.keep_outliers >= lin.in_features:
                raise QuantError(f"--keep-outliers {self.keep_outliers} must be below the input width {lin.in_features} of {name}")

    def calibration(self) -> Calibration:
        return Calibration(self.calib_n, self.calib_seqlen, self.calib_seed, self.calib_source)

    @property
    def builds_checkpoint(self) -> bool:
        return self.gptq_impl != "native"

    def packed_format(self):
        from quant.gptq_format import gptq_format

        if not self.builds_checkpoint:
            return None
        # GPTQModel writes v1 ("gptq"), act-order as desc_act
        return {**gptq_format(self.bits, self.group_size, self.sym), "checkpoint_format": "gptq",
                "desc_act": self.act_order, "static_groups": self.static_groups}

    def build_checkpoint(self, source: Path, out: Path, calib: torch.Tensor, tokenizer) -> None:
        from quant.gptq_packed import quantize_with_gptqmodel

        quantize_with_gptqmodel(source, self, out, calib, tokenizer)

    def label(self) -> str:
        g = "row" if self.group_size == -1 else f"g{self.group_size}"
        return (
            f"{self.bits}bit-gptq-{g}" + ("-sym" if self.sym else "") + ("" if self.act_order else "-noact")
            + ("-static" if self.static_groups else "") + (f"-keep:{'+'.join(self.keep)}" if self.keep else "")
            + (f"-out{self.keep_outliers}" if self.keep_outliers else "")
            + ("" if self.damp == GPTQConfig.damp else f"-damp{self.damp:g}")
            + ("" if self.gptq_impl == "native" else f"-{self.gptq_impl}")
        )


@register(GPTQConfig)
def gptq_(model: nn.Module, config: GPTQConfig, tokenizer=None, calib: torch.Tensor | None = None,
          checkpoint: Path | None = None, **_: object) -> Footprint:
    """Native: quantize ``model`` in place. GPTQModel: ``model`` was loaded packed from ``checkpoint``; only measure it."""
    if config.builds_checkpoint:
        from quant.gptq_packed import packed_footprint

        return packed_footprint(model, checkpoint)
    config.validate(model)  # every layer checked before any is touched
    linears, fp = plan(model, config.keep)
    if calib is None:
        if tokenizer is None:
            raise QuantError("GPTQ needs calibration text: pass the tokenizer (tokenizer=...) or token ids (calib=...) to quantize_")
        calib = config.calibration().ids(tokenizer)
    kept = quantize_sequential(model, linears, calib, config)
    g_idx = config.act_order and not config.static_groups and config.group_size != -1
    for name, lin in linears.items():
        fp.linear_params += lin.weight.numel()
        fp.linear_bits += storage_bits(tuple(lin.weight.shape), config.bits, config.group_size, config.sym,
                                       kept=kept[name], g_idx=g_idx)
    fp.extra["quantized_linears"] = len(linears)
    fp.extra["calib_tokens"] = int(calib.numel())
    return fp
