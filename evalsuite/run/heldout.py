"""Fidelity to the unquantized model on held-out text: token perplexity, KL(p16 || pq), top-1 agreement.

The text is the part of the calibration corpus that no calibration window reads (``quant.calib.heldout_text``).
These stay informative where task scores sit near chance (as a 135M model's do). For post-load methods the
reference distributions come from the same model just before it is quantized, so KL is exact over the full
vocabulary and needs no baseline cell; load-time methods (bitsandbytes, packed GPTQ) have no such moment, so
the unquantized model is loaded once more, read and freed before the quantized one loads.
"""
from __future__ import annotations

import gc
import math

import torch

from evalsuite.records.record import Heldout
from quant.calib import heldout_text, token_ids

PROBE_TOKENS = 1024
WINDOW = 512  # tokens per forward pass; the GPTQ paper's perplexity protocol uses non-overlapping windows


def heldout_ids(tokenizer, max_tokens: int | None = 4096) -> torch.Tensor:
    ids = token_ids(tokenizer, heldout_text())
    return ids[:max_tokens] if max_tokens else ids


def probe_ids(tokenizer) -> torch.Tensor:
    return heldout_ids(tokenizer, PROBE_TOKENS)


@torch.no_grad()
def window_logprobs(model, ids: torch.Tensor, seqlen: int = WINDOW):
    """Yield (log-probs [n, vocab] of the next token, the n target ids) per non-overlapping window."""
    device = next(model.parameters()).device
    for start in range(0, len(ids) - 1, seqlen):
        window = ids[start : start + seqlen].unsqueeze(0).to(device)
        if window.shape[1] < 2:
            break
        yield torch.log_softmax(model(window).logits[0, :-1].float(), dim=-1), window[0, 1:]


def perplexity(model, ids: torch.Tensor, seqlen: int = WINDOW) -> float:
    """Token-level perplexity over non-overlapping windows of ``seqlen``."""
    nll, count = 0.0, 0
    for logp, target in window_logprobs(model, ids, seqlen):
        nll -= logp.gather(1, target[:, None]).sum().item()
        count += len(target)
    return math.exp(nll / count)


@torch.no_grad()
def logprobs(model, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(next-token log-probs [T-1, vocab] on the CPU, target ids [T-1])."""
    parts = [(lp.cpu(), t.cpu()) for lp, t in window_logprobs(model, ids)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def reference_logprobs(ref) -> torch.Tensor:
    """Log-probs of the unquantized model at ``ref`` on the probe, for methods applied at load time."""
    from evalsuite.load.models import load

    model, tok = load(ref)
    out = logprobs(model, probe_ids(tok))[0]
    del model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return out


def measure(logp: torch.Tensor, target: torch.Tensor, ref: torch.Tensor | None = None) -> Heldout:
    """Perplexity of ``logp`` on ``target``; with ``ref`` (the unquantized log-probs) KL(p_ref || p) and agreement.
    A model that puts NaN in its log-probs is broken, not merely bad: that raises."""
    if torch.isnan(logp).any():
        raise FloatingPointError("the model's log-probs on held-out text contain NaN")
    ppl = math.exp(-logp.gather(1, target[:, None]).mean().item())
    if ref is None:
        return Heldout(tokens=len(target), token_ppl=ppl)
    kl = (ref.exp() * (ref - logp)).sum(-1)  # KL(p_ref || p) per position, nats
    return Heldout(tokens=len(target), token_ppl=ppl, kl_mean=kl.mean().item(), kl_p95=kl.quantile(0.95).item(),
                   top1_agreement=(ref.argmax(-1) == logp.argmax(-1)).float().mean().item())
