"""Fidelity to the unquantized model on held-out text: token perplexity, KL(p16 || pq), top-1 agreement.

These stay informative where task scores sit near chance (as a 135M model's do). For post-load methods the
reference distributions come from the same model just before it is quantized, so KL is exact over the full
vocabulary and needs no baseline cell; load-time methods (bitsandbytes, packed GPTQ) have no such moment, so
the unquantized model is loaded once more, read and freed before the quantized one loads.
"""
from __future__ import annotations

import gc
import math

import torch

from quant.calib import heldout_ids, window_logprobs

PROBE_TOKENS = 1024


def probe_ids(tokenizer) -> torch.Tensor:
    return heldout_ids(tokenizer, PROBE_TOKENS)


@torch.no_grad()
def logprobs(model, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(next-token log-probs [T-1, vocab] on the CPU, target ids [T-1])."""
    parts = [(lp.cpu(), t.cpu()) for lp, t in window_logprobs(model, ids)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def reference_logprobs(ref) -> torch.Tensor:
    """Log-probs of the unquantized model at ``ref`` on the probe, for methods applied at load time."""
    from evalsuite import models

    model, tok = models.load(ref)
    out = logprobs(model, probe_ids(tok))[0]
    del model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return out


def measure(logp: torch.Tensor, target: torch.Tensor, ref: torch.Tensor | None = None) -> dict[str, float]:
    out = {"tokens": len(target), "token_ppl": math.exp(-logp.gather(1, target[:, None]).mean().item())}
    if ref is not None:
        kl = (ref.exp() * (ref - logp)).sum(-1)  # KL(p_ref || p) per position, nats
        out["kl_mean"] = kl.mean().item()
        out["kl_p95"] = kl.quantile(0.95).item()
        out["top1_agreement"] = (ref.argmax(-1) == logp.argmax(-1)).float().mean().item()
    return out
