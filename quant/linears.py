"""Find and replace ``nn.Linear`` modules by fully-qualified name — never by architecture class name."""
from __future__ import annotations

import fnmatch
from typing import Iterable

import torch.nn as nn

from quant import Footprint, QuantError

# Component presets for the paper's fine-grained analysis; globs over module names of LLaMA-style models.
COMPONENTS = {
    "attention": ("*self_attn.*", "*attention.*", "*attn.*"),
    "ffn": ("*mlp.*", "*feed_forward.*", "*ffn.*"),
}
ALWAYS_SKIPPED = ("lm_head",)
KEEP_HELP = "linears left at 16 bit: attention, ffn, or globs over module names"


def expand_patterns(patterns: Iterable[str]) -> tuple[str, ...]:
    out: list[str] = []
    for p in patterns:
        out.extend(COMPONENTS.get(p, (p,)))
    return tuple(out)


def matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def find_linears(model: nn.Module, keep: Iterable[str] = ()) -> dict[str, nn.Linear]:
    """Every ``nn.Linear`` to compress: all but ``lm_head`` and those matching ``keep`` (names or presets).

    A ``keep`` pattern that matches no linear is an error: a typo would otherwise silently quantize all.
    """
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and n not in ALWAYS_SKIPPED}
    selected = dict(linears)
    for p in keep:
        globs = expand_patterns([p])
        hit = [n for n in linears if matches(n, globs)]
        if not hit:
            raise QuantError(f"--keep {p!r} matches no linear module; names look like {next(iter(linears), '?')!r}")
        for n in hit:
            selected.pop(n, None)
    return selected


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def plan(model: nn.Module, keep: Iterable[str] = ()) -> tuple[dict[str, nn.Linear], Footprint]:
    """The linears to compress, and a footprint already holding everything that stays 16-bit.

    Kept linears count as linear weights at 16 bits, so bits/weight shows the price of keeping them;
    every other parameter (embeddings, norms, biases; a tied lm_head once) counts in ``other_params``.
    """
    every = find_linears(model)
    selected = find_linears(model, keep)
    weights = {f"{n}.weight" for n in every}
    fp = Footprint()
    for pname, p in model.named_parameters():
        if pname not in weights:
            fp.other_params += p.numel()
    for name in every.keys() - selected.keys():
        fp.linear_params += every[name].weight.numel()
        fp.linear_bits += 16 * every[name].weight.numel()
    return selected, fp
