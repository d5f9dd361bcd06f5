"""Counting what an evaluation computes: positions per forward pass, and the meter every record carries."""
from __future__ import annotations

import resource
from collections import defaultdict
from typing import Any

import torch


class PositionCounter:
    """Counts the positions every forward pass of ``model`` runs (``input_ids.numel()``, padding included),
    whichever backend calls it: the common yardstick when comparing backends."""

    def __init__(self, model: torch.nn.Module):
        self.model, self.n = model, 0

    def __enter__(self) -> PositionCounter:
        self._handle = self.model.register_forward_pre_hook(self._count, with_kwargs=True)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()

    def _count(self, module, args, kwargs) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.n += 0 if ids is None else ids.numel()


class Meter:
    """Counters behind ``EvalsuiteLM.meter``. Token counts are model positions run through a forward pass."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = defaultdict(int)
        self.seconds: dict[str, float] = defaultdict(float)
        self.wall: dict[str, float] = defaultdict(float)
        self.tasks: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self.batch_sizes: set[int] = set()

    def as_dict(self, requested_batch_size: Any) -> dict[str, Any]:
        c, s = self.counts, self.seconds
        computed = c["prefill_tokens"] + c["padding_tokens"] + c["decode_tokens"]
        cuda = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
        return {
            "tokens_computed": computed,
            "tokens_reused": c["reused_tokens"],
            "tokens_needed": c["needed_tokens"],
            "prefill_tokens": c["prefill_tokens"],
            "padding_tokens": c["padding_tokens"],
            "decode_tokens": c["decode_tokens"],
            "forward_calls": c["forwards"],
            "prefill_tok_s": round((c["prefill_tokens"] + c["padding_tokens"]) / s["prefill"], 1) if s["prefill"] else None,
            "decode_tok_s": round(c["decode_tokens"] / s["decode"], 1) if s["decode"] else None,
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "cuda_max_allocated_bytes": cuda,
            "wall_s": {k: round(v, 3) for k, v in self.wall.items()},
            "tasks": {t: {k: round(v, 3) for k, v in e.items()} for t, e in self.tasks.items()},
            "batch_size": requested_batch_size,
            "batch_sizes_used": sorted(self.batch_sizes),
        }
