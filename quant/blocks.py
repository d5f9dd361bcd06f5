"""The true-sequential machinery calibrated methods share (GPTQ, AWQ): find the decoder blocks, capture what the
model feeds the first one, and group a block's linears by the input tensor they read. No architecture names."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from quant import QuantError
from quant.outliers import FORWARD_BATCH


class Stop(Exception):
    """Raised from a hook to end a forward pass once it has produced what we need."""


def decoder_blocks(model: nn.Module, linears: dict[str, nn.Linear], method: str) -> nn.ModuleList:
    """The stack of decoder blocks: the ModuleList holding most parameters. Every linear in ``linears`` must lie
    inside it, since a calibrated method quantizes block by block."""
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList)]
    if not lists:
        raise QuantError(f"{method} found no stack of decoder blocks (nn.ModuleList) in {type(model).__name__}; use --method rtn")
    blocks = max(lists, key=lambda m: sum(p.numel() for p in m.parameters()))
    inside = {id(m) for m in blocks.modules()}
    outside = sorted(name for name, lin in linears.items() if id(lin) not in inside)
    if outside:
        raise QuantError(f"{method} quantizes linears inside decoder blocks only; add --keep {outside[0]!r}")
    return blocks

@torch.no_grad()
def block_inputs(model: nn.Module, first: nn.Module, ids: torch.Tensor) -> list[tuple[torch.Tensor, dict[str, Any]]]:
    """(hidden states, keyword arguments) that the model passes to its first block, per calibration batch."""
    captured: list[tuple[torch.Tensor, dict[str, Any]]] = []

    def grab(_module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        kwargs = dict(kwargs)
        hidden = args[0] if args else kwargs.pop("hidden_states")
        captured.append((hidden, kwargs))
        raise Stop

    device = next(model.parameters()).device
    run_to_hooks(lambda batch: model(batch.to(device), use_cache=False), ids.split(FORWARD_BATCH),
                 [first.register_forward_pre_hook(grab, with_kwargs=True)])
    return captured


def run_to_hooks(run, batches, handles: list) -> None:
    """``run`` each batch until one of the hooks behind ``handles`` raises Stop (the rest of the forward is not
    needed), then remove the hooks, also when something else raises."""
    try:
        for batch in batches:
            try:
                run(batch)
            except Stop:
                pass
    finally:
        for h in handles:
            h.remove()


def hidden_of(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


@torch.no_grad()
def input_groups(block: nn.Module, linears: list[nn.Linear], sample: tuple[torch.Tensor, dict]) -> list[list[nn.Linear]]:
    """``linears`` grouped by the input tensor they read, in the order the block's forward reaches them."""
    seen: dict[int, list[nn.Linear]] = {}
    inputs: list[torch.Tensor] = []  # held so that tensor ids stay unique during the pass

    def record(lin: nn.Linear):
        def hook(_module: nn.Module, args: tuple) -> None:
            inputs.append(args[0])
            seen.setdefault(id(args[0]), []).append(lin)

        return hook

    handles = [lin.register_forward_pre_hook(record(lin)) for lin in linears]
    try:
        block(sample[0], **sample[1])
    finally:
        for h in handles:
            h.remove()
    return list(seen.values())
