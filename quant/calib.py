"""Calibration text: real English that ships on every machine, split so calibration never sees the held-out part.

Source: CPython's ``pydoc_data.topics`` (~480 KB of the language reference). The last ``HELDOUT_FRAC`` of it (cut at
a paragraph boundary) is held out: calibration windows come only from the rest, and ``heldout_text`` hands the held-out
part to whoever measures on text no quantizer saw. On a GPU box ``source="c4"`` samples the paper's C4 shard through
``datasets`` instead.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache

import torch

from quant import QuantError

HELDOUT_FRAC = 0.1
SOURCES = ("pydoc", "c4")
# help of the calibration options every calibrated config declares (GPTQ, AWQ): one text per CLI flag
CALIB_N_HELP = "calibration sequences"
CALIB_SEQLEN_HELP = "calibration sequence length in tokens"
CALIB_SEED_HELP = "seed of the calibration windows"
CALIB_SOURCE_HELP = "pydoc (offline) or c4 (the GPTQ paper's; needs the hub)"


@dataclass(frozen=True)
class Calibration:
    """Which calibration windows a method reads: ``n`` windows of ``seqlen`` tokens from ``source``."""

    n: int
    seqlen: int
    seed: int = 0
    source: str = "pydoc"

    def ids(self, tokenizer) -> torch.Tensor:
        return calibration_ids(tokenizer, self.n, self.seqlen, self.seed, self.source)

    def check(self, tokenizer) -> None:
        """Raise QuantError when these windows cannot be cut (checked before any model loads; c4 is checked
        where it is read, since counting it needs the hub)."""
        _check_shape(self.n, self.seqlen, self.source)
        if self.source == "pydoc":
            _check_length(len(token_ids(tokenizer, split_text()[0])), self.seqlen)


@lru_cache(maxsize=1)
def corpus_text() -> str:
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k].strip() for k in sorted(topics))


@lru_cache(maxsize=1)
def split_text() -> tuple[str, str]:
    """(calibration text, held-out text)."""
    text = corpus_text()
    cut = text.rfind("\n\n", 0, int(len(text) * (1 - HELDOUT_FRAC)))
    return text[:cut], text[cut + 2 :]


def heldout_text() -> str:
    """The part of the corpus no calibration window ever reads."""
    return split_text()[1]


def token_ids(tokenizer, text: str) -> torch.Tensor:
    return torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)


def calibration_ids(tokenizer, n: int, seqlen: int, seed: int = 0, source: str = "pydoc") -> torch.Tensor:
    """``n`` random windows of ``seqlen`` tokens, shape [n, seqlen], reproducible from ``seed``."""
    _check_shape(n, seqlen, source)
    ids = token_ids(tokenizer, split_text()[0]) if source == "pydoc" else _c4_ids(tokenizer, n * seqlen * 2, seed)
    _check_length(len(ids), seqlen)
    rng = random.Random(seed)
    starts = [rng.randrange(0, len(ids) - seqlen) for _ in range(n)]
    return torch.stack([ids[s : s + seqlen] for s in starts])


def _check_shape(n: int, seqlen: int, source: str) -> None:
    if n < 1 or seqlen < 1:
        raise QuantError(f"calibration needs n >= 1 sequences of length >= 1; got n={n}, seqlen={seqlen}")
    if source not in SOURCES:
        raise QuantError(f"unknown calibration source {source!r}; use pydoc (offline) or c4 (needs the hub)")


def _check_length(available: int, seqlen: int) -> None:
    if available < seqlen + 1:
        raise QuantError(f"calibration text has {available} tokens, fewer than one sequence of {seqlen}; lower --calib-seqlen")


def _c4_ids(tokenizer, n_tokens: int, seed: int) -> torch.Tensor:
    from datasets import load_dataset

    ds = load_dataset("allenai/c4", data_files="en/c4-train.00000-of-01024.json.gz", split="train")
    rng = random.Random(seed)
    out: list[int] = []
    while len(out) < n_tokens:
        out += tokenizer(ds[rng.randrange(len(ds))]["text"], add_special_tokens=False)["input_ids"]
    return torch.tensor(out[:n_tokens], dtype=torch.long)
