"""Training windows for the fine-tune stage, and their hash for the record.

Offline the text is the calibration part of ``quant.calib``'s pydoc corpus without every paragraph that shares a
13-gram of words with the held-out text or with any bundled task item: pydoc's topics repeat each other (the
``compound`` topic holds the ``while`` topic's text), so the split alone leaves 544 shared 13-grams with the held-out
part, which calibration tolerates but training could memorize. A local text file or a hub dataset (Alpaca-style
``instruction``/``input``/``output`` rows, or ``text``) can replace it; those are used as given.
"""
from __future__ import annotations

import hashlib
import json
import random
import re
from functools import lru_cache

import torch

from evalsuite.errors import UsageError
from evalsuite.spec.finetune import FinetuneSpec
from evalsuite.spec.tasks import OFFLINE_DIR
from quant.calib import heldout_text, split_text, token_ids

ALPACA_FIELDS = ("instruction", "input", "output")
NGRAM = 13  # the contamination unit of GPT-3's and the Llama papers' overlap checks


def words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def ngrams(text: str | list[str], n: int = NGRAM) -> set[tuple[str, ...]]:
    w = words(text) if isinstance(text, str) else text
    return {tuple(w[i : i + n]) for i in range(len(w) - n + 1)}


def evaluation_texts() -> list[str]:
    """Everything an evaluation reads: the held-out text and every bundled task item (all fields of each row)."""
    items = [" ".join(map(str, json.loads(line).values()))
             for path in sorted((OFFLINE_DIR / "data").rglob("*.jsonl")) for line in path.read_text().splitlines() if line]
    return [heldout_text(), *items]


@lru_cache(maxsize=1)
def offline_text() -> str:
    """The calibration text, minus each paragraph that would share a 13-gram with any evaluation text."""
    seen = set().union(*(ngrams(t) for t in evaluation_texts()))
    kept: list[str] = []
    tail: list[str] = []  # the last words kept: a 13-gram may span two kept paragraphs
    for para in split_text()[0].split("\n\n"):
        w = words(para)
        if not ngrams(tail + w) & seen:
            kept.append(para)
            tail = (tail + w)[-(NGRAM - 1) :]
    return "\n\n".join(kept)


def training_text(spec: FinetuneSpec) -> str:
    kind = spec.data_kind
    if kind == "pydoc":
        return offline_text()
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
