"""Training windows for the fine-tune stage, and their hash for the record.

Offline the text is the calibration part of ``quant.calib``'s pydoc corpus, which by construction never overlaps
the held-out text that fidelity is measured on, nor (tests/test_finetune.py checks it by 13-grams) any bundled
task item. A local text file or a hub dataset (Alpaca-style ``instruction``/``input``/``output`` rows, or ``text``)
can replace it.
"""
from __future__ import annotations

import hashlib
import random

import torch

from evalsuite.errors import UsageError
from evalsuite.spec.finetune import FinetuneSpec
from quant.calib import split_text, token_ids

ALPACA_FIELDS = ("instruction", "input", "output")


def training_text(spec: FinetuneSpec) -> str:
    kind = spec.data_kind
    if kind == "pydoc":
        return split_text()[0]
    if kind == "file":
        from pathlib import Path

        try:
            return Path(spec.data).read_text()
        except OSError as e:
            raise UsageError(f"--ft-data {spec.data}: cannot read it ({e.strerror}); give a text file, pydoc "
                             f"(offline), or a hub dataset name") from None
    return _hub_text(spec.data, spec.batch * spec.seqlen * spec.steps)


def _hub_text(name: str, chars_wanted: int) -> str:
    """Rows of a hub dataset joined into one text, Alpaca fields in order, until there is enough for the budget."""
    from datasets import load_dataset

    rows, size = [], 0
    for row in load_dataset(name, split="train"):
        text = "\n".join(str(row[k]) for k in ALPACA_FIELDS if row.get(k)) if "instruction" in row else str(row.get("text", ""))
        rows.append(text)
        size += len(text)
        if size >= 4 * chars_wanted:  # ~4 characters per token
            break
    return "\n\n".join(rows)


def check(spec: FinetuneSpec, tokenizer) -> None:
    """Raise UsageError when the data cannot fill one batch of windows (before any model loads)."""
    if spec.data_kind == "hub":
        return  # counted where it is read: counting needs the hub
    have, need = len(token_ids(tokenizer, training_text(spec))), spec.batch * spec.seqlen + 1
    if have < need:
        raise UsageError(f"--ft-data {spec.data} has {have} tokens, fewer than one batch of {spec.batch} x "
                         f"{spec.seqlen}; give more text or lower --ft-batch / --ft-seqlen")


def windows(spec: FinetuneSpec, tokenizer) -> torch.Tensor:
    """[steps * batch, seqlen] windows at random offsets (reproducible from ``spec.seed``); a budget longer than the
    text reuses it, as epochs do."""
    ids = token_ids(tokenizer, training_text(spec))
    if len(ids) < spec.seqlen + 1:
        raise UsageError(f"--ft-data {spec.data} has {len(ids)} tokens, fewer than one window of {spec.seqlen}")
    rng = random.Random(spec.seed)
    starts = [rng.randrange(0, len(ids) - spec.seqlen) for _ in range(spec.steps * spec.batch)]
    return torch.stack([ids[s : s + spec.seqlen] for s in starts])


def data_hash(batches: torch.Tensor) -> str:
    return hashlib.sha256(batches.numpy().tobytes()).hexdigest()[:16]
