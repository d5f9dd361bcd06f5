"""AWQ, activation-aware weight quantization (Lin et al., 2023), in plain torch, in the shape of AutoAWQ 0.2.9's
``AwqQuantizer`` (its ``_search_best_scale``, ``_compute_best_clip`` and ``apply_scale``).

Per set of linears that read one input, AWQ multiplies their input channels by a scale
``s = mean|x|^a / mean|w|^(1-a)`` (w normalised per quantization group, s normalised to sqrt(max * min) = 1), with
``a`` the point of an ``n_grid`` grid over [0, 1) whose quantized weights Q(W s) / s give the smallest output MSE
of the module that consumes the linears (the attention block for q/k/v, the MLP for gate/up, the linear itself
otherwise). The scale's inverse is folded into the op that produces the input (a norm's weight, or the rows of
the linear before: v_proj for o_proj, up_proj for down_proj), so the unquantized model is unchanged; where no
such op exists (o_proj under grouped-query attention) the set is not scaled, as in the reference. Then each
linear's clipping range is searched per group (max |w| shrunk down to 55%, q/k excluded as AutoAWQ does), and
the weights are rounded on quant.rtn's asymmetric grid, so AWQ codes are RTN's format.

Which op produces an input is found without architecture names: the module whose weight, divided by a random
scale while the consumers' columns are multiplied by it, leaves the block's output unchanged.

Unlike AutoAWQ, which feeds every block the unquantized model's activations, the driver is true-sequential as
our GPTQ's is (quant.blocks): each block reads the outputs of the blocks before it, already quantized, and each
set of linears in a block the outputs of the sets before it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn as nn

from quant import Footprint, QuantConfig, QuantError, option, register
from quant.blocks import Stop, block_inputs, decoder_blocks, hidden_of, input_groups, run_to_hooks
from quant.calib import CALIB_N_HELP, CALIB_SEED_HELP, CALIB_SEQLEN_HELP, CALIB_SOURCE_HELP, SOURCES, Calibration
from quant.linears import KEEP_HELP, plan
from quant.rtn import GROUP_HELP, check_group_size, fake_quantize, storage_bits

AWQ_BITS = (2, 3, 4)
NO_CLIP = ("q_", "k_", "query", "key", "Wqkv")  # AutoAWQ's: q/k meet in q k^T, which a per-linear error cannot see
CLIP_SHRINK = 0.5  # clip candidates: max |w| of the group times 1, 1 - 1/n_grid, ... down to 1 - CLIP_SHRINK
CLIP_TOKENS = 512  # the clip search reads about this many calibration tokens, evenly strided, as the reference

Calls = list[tuple[tuple, dict[str, Any]]]


# ---- the two searches ----------------------------------------------------------------------------------

def weight_mean(weights: list[torch.Tensor], group_size: int) -> torch.Tensor:
    """Mean over output rows of |w| / max |w| of its quantization group, per input channel."""
    w = torch.cat(weights)
    g = w.shape[1] if group_size == -1 else group_size
    groups = w.abs().reshape(-1, g)
    return (groups / (groups.amax(dim=1, keepdim=True) + 1e-6)).reshape(w.shape).mean(0)


def candidate_scales(x_mean: torch.Tensor, w_mean: torch.Tensor, ratio: float) -> torch.Tensor:
    s = (x_mean.pow(ratio) / (w_mean.pow(1 - ratio) + 1e-4)).clamp(min=1e-4)
    s = s / (s.max() * s.min()).sqrt()
    s[~torch.isfinite(s)] = 1
    return s


def _outputs(inspect: list[nn.Module], calls: list[Calls]) -> list[torch.Tensor]:
    return [hidden_of(m(*args, **kwargs)) for m, mine in zip(inspect, calls) for args, kwargs in mine]


@torch.no_grad()
def search_scale(quantized: list[nn.Linear], scaled: list[nn.Linear], inspect: list[nn.Module], calls: list[Calls],
                 x_mean: torch.Tensor, bits: int, group_size: int, n_grid: int) -> tuple[float, torch.Tensor, list[float]]:
    """(best ratio a, its scale s, the output MSE at every grid point): for each a, the ``quantized`` linears hold
    Q(W s) / s and ``inspect`` reruns on the ``calls`` it received (per module, its (args, kwargs) per batch).
    ``scaled``: every linear reading the input (kept ones too), whose weights set mean|w|."""
    exact = _outputs(inspect, calls)
    count = sum(e.numel() for e in exact)
    w_mean = weight_mean([lin.weight for lin in scaled], group_size)
    originals = [lin.weight.clone() for lin in quantized]
    losses: list[float] = []
    try:
        for i in range(n_grid):
            s = candidate_scales(x_mean, w_mean, i / n_grid)
            for lin, w in zip(quantized, originals):
                lin.weight.copy_(fake_quantize(w * s, bits, group_size) / s)
            out = _outputs(inspect, calls)
            losses.append(sum((o - e).float().pow(2).sum().item() for o, e in zip(out, exact)) / count)
    finally:
        for lin, w in zip(quantized, originals):
            lin.weight.copy_(w)
    best = min(range(n_grid), key=losses.__getitem__)
    return best / n_grid, candidate_scales(x_mean, w_mean, best / n_grid), losses


@torch.no_grad()
def clip_range(w: torch.Tensor, x: torch.Tensor, bits: int, group_size: int, n_grid: int) -> torch.Tensor:
    """The max |w| per (row, group), shape [out, groups], whose clipped and quantized weights give the smallest
    MSE of the group's partial outputs on the inputs ``x`` [..., in]."""
    out_f, in_f = w.shape
    g = in_f if group_size == -1 else group_size
    x = x.reshape(-1, in_f)
    x = x[:: max(1, x.shape[0] // CLIP_TOKENS)].float()
    xg = x.reshape(len(x), in_f // g, g).transpose(0, 1)  # [groups, tokens, g]
    wg = w.float().reshape(out_f, in_f // g, g)
    exact = torch.bmm(xg, wg.permute(1, 2, 0))  # [groups, tokens, out]: partial outputs per group
    amax = wg.abs().amax(-1)
    best, best_err = amax.clone(), torch.full_like(amax, float("inf"))
    for i in range(int(CLIP_SHRINK * n_grid)):
        limit = (amax * (1 - i / n_grid)).unsqueeze(-1)
        q = fake_quantize(torch.clamp(wg, -limit, limit).reshape(out_f, in_f), bits, group_size)
        err = (torch.bmm(xg, q.reshape(out_f, -1, g).permute(1, 2, 0)) - exact).pow(2).mean(1).T
        better = err < best_err
        best_err[better], best[better] = err[better], limit.squeeze(-1)[better]
    return best


def apply_clip(lin: nn.Linear, limit: torch.Tensor) -> None:
    out_f, in_f = lin.weight.shape
    w = lin.weight.reshape(out_f, limit.shape[1], -1)
    lin.weight.copy_(torch.clamp(w, -limit.unsqueeze(-1), limit.unsqueeze(-1)).reshape(out_f, in_f))


# ---- folding a scale into the op before ----------------------------------------------------------------

def _can_fold(m: nn.Module, width: int) -> bool:
    """A linear with ``width`` outputs, or an elementwise op (a norm) with a ``width`` weight vector."""
    if isinstance(m, nn.Linear):
        return m.out_features == width
    w = getattr(m, "weight", None)
    return isinstance(w, torch.Tensor) and w.dim() == 1 and w.numel() == width


@torch.no_grad()
def fold(prev: nn.Module, linears: list[nn.Linear], s: torch.Tensor) -> None:
    """prev's output / s, the linears' input columns * s: the same function before any rounding."""
    if isinstance(prev, nn.Linear):
        prev.weight.div_(s.unsqueeze(1))
    else:
        prev.weight.div_(s)
    if getattr(prev, "bias", None) is not None:
        prev.bias.div_(s)
    for lin in linears:
        lin.weight.mul_(s)


@torch.no_grad()
def fold_target(block: nn.Module, group: list[nn.Linear], sample: tuple[torch.Tensor, dict]) -> str | None:
    """The name of the op in ``block`` that ``group``'s scale folds into exactly, or None."""
    exact = hidden_of(block(sample[0], **sample[1]))
    s = torch.rand(group[0].in_features, generator=torch.Generator().manual_seed(0)).add(0.5).to(exact.device)
    members = {id(lin) for lin in group}
    for name, m in block.named_modules():
        if id(m) in members or not _can_fold(m, group[0].in_features):
            continue
        saved = [p.clone() for p in (*m.parameters(recurse=False), *(lin.weight for lin in group))]
        fold(m, group, s)
        out = hidden_of(block(sample[0], **sample[1]))
        for p, v in zip((*m.parameters(recurse=False), *(lin.weight for lin in group)), saved):
            p.copy_(v)
        if (out - exact).abs().max() <= 1e-4 * exact.abs().max():
            return name
    return None


# ---- the true-sequential driver ------------------------------------------------------------------------

@dataclass(frozen=True)
class _Layout:
    """One input-sharing set of a block's linears, by names inside the block."""

    linears: tuple[str, ...]
    inspect: tuple[str, ...]  # the modules whose output the scale search compares
    prev: str | None  # the op the scale folds into; None: not scaled


def _common_parent(names: tuple[str, ...]) -> str:
    parts = [n.split(".")[:-1] for n in names]
    common = []
    for level in zip(*parts):
        if len(set(level)) > 1:
            break
        common.append(level[0])
    return ".".join(common)


def _first_input(args: tuple, kwargs: dict) -> Any:
    return args[0] if args else next(iter(kwargs.values()), None)


@torch.no_grad()
def _capture(block: nn.Module, inspect: list[nn.Module], last: nn.Linear, inps) -> tuple[list[Calls], list[torch.Tensor]]:
    """Per inspected module its (args, kwargs) per batch, and the group's input per batch (``last``'s)."""
    calls: list[Calls] = [[] for _ in inspect]
    xs: list[torch.Tensor] = []

    def record(i: int):
        return lambda _m, args, kwargs: calls[i].append((args, dict(kwargs)))

    def stop(_m, args):
        xs.append(args[0])
        raise Stop

    handles = [m.register_forward_pre_hook(record(i), with_kwargs=True) for i, m in enumerate(inspect)]
    handles.append(last.register_forward_pre_hook(stop))
    run_to_hooks(lambda inp: block(inp[0], **inp[1]), inps, handles)
    return calls, xs


@torch.no_grad()
def _layouts(block: nn.Module, quantized: set[int], sample: tuple[torch.Tensor, dict]) -> list[_Layout]:
    every = [m for m in block.modules() if isinstance(m, nn.Linear)]
    names = {id(m): n for n, m in block.named_modules()}
    out = []
    for group in input_groups(block, every, sample):
        if not any(id(lin) in quantized for lin in group):
            continue
        linears = tuple(names[id(lin)] for lin in group)
        parent = _common_parent(linears) if len(group) > 1 else linears[0]
        inspect = (parent,) if parent and _reads_input(block, block.get_submodule(parent), group[0], sample) else linears
        out.append(_Layout(linears, inspect, fold_target(block, group, sample)))
    return out


def _reads_input(block: nn.Module, m: nn.Module, lin: nn.Linear, sample) -> bool:
    """Whether ``m`` is called with the very tensor ``lin`` reads (then its output is the one to compare)."""
    (calls,), (x,) = _capture(block, [m], lin, [sample])
    return bool(calls) and _first_input(*calls[0]) is x


@torch.no_grad()
def quantize_sequential(model: nn.Module, linears: dict[str, nn.Linear], ids: torch.Tensor,
                        config: "AWQConfig") -> dict[str, Any]:
    """AWQ every linear in ``linears`` block by block, in place; returns what it chose, for the footprint."""
    blocks = decoder_blocks(model, linears, "AWQ")
    wanted = {id(lin) for lin in linears.values()}
    cache: dict[tuple, list[_Layout]] = {}  # blocks of one structure share one layout: find it once
    inps = block_inputs(model, blocks[0], ids)
    ratios: list[float] = []
    for block in blocks:
        mine = {id(m) for m in block.modules() if id(m) in wanted}
        key = (type(block), tuple(sorted(n for n, m in block.named_modules() if id(m) in mine)))
        if mine and key not in cache:
            cache[key] = _layouts(block, mine, inps[0])
        for layout in cache.get(key, []):
            group = [block.get_submodule(n) for n in layout.linears]
            quantized = [lin for lin in group if id(lin) in wanted]
            inspect = [block.get_submodule(n) for n in layout.inspect]
            calls, xs = _capture(block, inspect, group[-1], inps)
            x = torch.cat([t.reshape(-1, t.shape[-1]) for t in xs])
            if layout.prev is not None:
                x_mean = x.abs().float().mean(0).to(x.dtype)
                ratio, s, _ = search_scale(quantized, group, inspect, calls, x_mean, config.bits, config.group_size,
                                           config.n_grid)
                fold(block.get_submodule(layout.prev), group, s)
                x = x / s
                ratios.append(ratio)
            for name, lin in zip(layout.linears, group):
                if id(lin) not in wanted:
                    continue
                if config.clip and not any(p in name for p in NO_CLIP):
                    apply_clip(lin, clip_range(lin.weight, x, config.bits, config.group_size, config.n_grid))
                lin.weight.copy_(fake_quantize(lin.weight, config.bits, config.group_size))
        inps = [(hidden_of(block(hidden, **kwargs)), kwargs) for hidden, kwargs in inps]
    return {"scaled_groups": len(ratios), "mean_ratio": round(sum(ratios) / len(ratios), 4) if ratios else None}


# ---- config and handler --------------------------------------------------------------------------------

@dataclass(frozen=True)
class AWQConfig(QuantConfig):
    """AWQ (--method awq), asymmetric with a zero point. AutoAWQ's defaults: group 128, a 20-point grid, clip
    search on, 128 calibration sequences of 512 tokens; the bundled model's (models.yaml): group 64, 16 x 512."""

    bits: int = 4
    group_size: int = option(128, GROUP_HELP)
    n_grid: int = option(20, "AWQ: points of the grid over the scale exponent, and of the clip search")
    clip: bool = option(True, "AWQ: search each group's clipping range after scaling (not on q/k)")
    calib_n: int = option(128, CALIB_N_HELP)
    calib_seqlen: int = option(512, CALIB_SEQLEN_HELP)
    calib_seed: int = option(0, CALIB_SEED_HELP)
    calib_source: str = option("pydoc", CALIB_SOURCE_HELP, choices=SOURCES)
    keep: tuple[str, ...] = option((), KEEP_HELP)

    method: ClassVar[str] = "awq"

    def __post_init__(self) -> None:
        if self.bits not in AWQ_BITS:
            raise QuantError(f"AWQ bits must be one of {', '.join(map(str, AWQ_BITS))} (16 = the unquantized baseline); got {self.bits}")
        if self.group_size != -1 and self.group_size < 1:
            raise QuantError(f"group size must be a positive integer or -1 (per row); got {self.group_size}")
        if self.n_grid < 2:
            raise QuantError(f"--n-grid must be 2 or more grid points (AutoAWQ uses 20); got {self.n_grid}")
        if self.calib_n < 1 or self.calib_seqlen < 1:
            raise QuantError(f"AWQ --calib-n and --calib-seqlen must be positive; got {self.calib_n} and {self.calib_seqlen}")
        if self.calib_source not in SOURCES:
            raise QuantError(f"unknown calibration source {self.calib_source!r}; use one of {', '.join(SOURCES)}")
        object.__setattr__(self, "keep", tuple(self.keep))

    def validate(self, model: nn.Module) -> None:
        """Keep patterns, and the group size against every layer."""
        linears, _ = plan(model, self.keep)
        for name, lin in linears.items():
            check_group_size(lin.in_features, self.group_size, name)

    def calibration(self) -> Calibration:
        return Calibration(self.calib_n, self.calib_seqlen, self.calib_seed, self.calib_source)

    def label(self) -> str:
        g = "row" if self.group_size == -1 else f"g{self.group_size}"
        return (f"{self.bits}bit-awq-{g}" + ("" if self.clip else "-noclip")
                + ("" if self.n_grid == AWQConfig.n_grid else f"-grid{self.n_grid}")
                + (f"-keep:{'+'.join(self.keep)}" if self.keep else ""))


@register(AWQConfig)
def awq_(model: nn.Module, config: AWQConfig, tokenizer=None, calib: torch.Tensor | None = None,
         **_: object) -> Footprint:
    config.validate(model)  # every layer checked before any is touched
    linears, fp = plan(model, config.keep)
    if calib is None:
        if tokenizer is None:
            raise QuantError("AWQ needs calibration text: pass the tokenizer (tokenizer=...) or token ids (calib=...) to quantize_")
        calib = config.calibration().ids(tokenizer)
    fp.extra.update(quantize_sequential(model, linears, calib, config))
    for lin in linears.values():  # the scales live in the ops before: RTN's layout, codes + fp16 scale + zero per group
        fp.linear_params += lin.weight.numel()
        fp.linear_bits += storage_bits(tuple(lin.weight.shape), config.bits, config.group_size, sym=False)
    fp.extra["quantized_linears"] = len(linears)
    fp.extra["calib_tokens"] = int(calib.numel())
    return fp
