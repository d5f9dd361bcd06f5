"""Calibration and held-out text: real English that ships on every machine, split so they never overlap.

Source: CPython's ``pydoc_data.topics`` (~480 KB of the language reference). The last ``HELDOUT_FRAC``
of it (cut at a paragraph boundary) is held out for perplexity; calibration windows come only from the rest.
On a GPU box ``source="c4"`` samples the paper's C4 shard through ``datasets`` instead.
"""
from __future__ import annotations

import math
import random
from functools import lru_cache

import torch

from quant import QuantError

HELDOUT_FRAC = 0.1


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


def _ids(tokenizer, text: str) -> torch.Tensor:
    return torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)


def calibration_ids(tokenizer, n: int, seqlen: int, seed: int = 0, source: str = "pydoc") -> torch.Tensor:
    """``n`` random windows of ``seqlen`` tokens, shape [n, seqlen], reproducible from ``seed``."""
    if n < 1 or seqlen < 1:
        raise QuantError(f"calibration needs n >= 1 sequences of length >= 1; got n={n}, seqlen={seqlen}")
    if source == "pydoc":
        ids = _ids(tokenizer, split_text()[0])
    elif source == "c4":
        ids = _c4_ids(tokenizer, n * seqlen * 2, seed)
    else:
        raise QuantError(f"unknown calibration source {source!r}; use pydoc (offline) or c4 (needs the hub)")
    if len(ids) < seqlen + 1:
        raise QuantError(f"calibration text has {len(ids)} tokens, fewer than one sequence of {seqlen}; lower --calib-seqlen")
    rng = random.Random(seed)
    starts = [rng.randrange(0, len(ids) - seqlen) for _ in range(n)]
    return torch.stack([ids[s : s + seqlen] for s in starts])


def heldout_ids(tokenizer, max_tokens: int | None = 4096) -> torch.Tensor:
    ids = _ids(tokenizer, split_text()[1])
    return ids[:max_tokens] if max_tokens else ids


@torch.no_grad()
def window_logprobs(model, ids: torch.Tensor, seqlen: int = 512):
    """Yield (log-probs [n, vocab] of the next token, the n target ids) per non-overlapping window."""
    device = next(model.parameters()).device
    for start in range(0, len(ids) - 1, seqlen):
        window = ids[start : start + seqlen].unsqueeze(0).to(device)
        if window.shape[1] < 2:
            break
        yield torch.log_softmax(model(window).logits[0, :-1].float(), dim=-1), window[0, 1:]


def perplexity(model, ids: torch.Tensor, seqlen: int = 512) -> float:
    """Token-level perplexity over non-overlapping windows of ``seqlen`` (the GPTQ paper's protocol)."""
    nll, count = 0.0, 0
    for logp, target in window_logprobs(model, ids, seqlen):
        nll -= logp.gather(1, target[:, None]).sum().item()
        count += len(target)
    return math.exp(nll / count)


def _c4_ids(tokenizer, n_tokens: int, seed: int) -> torch.Tensor:
    from datasets import load_dataset

    ds = load_dataset("allenai/c4", data_files="en/c4-train.00000-of-01024.json.gz", split="train")
    rng = random.Random(seed)
    out: list[int] = []
    while len(out) < n_tokens:
        out += tokenizer(ds[rng.randrange(len(ds))]["text"], add_special_tokens=False)["input_ids"]
    return torch.tensor(out[:n_tokens], dtype=torch.long)
