"""The lm-eval backends a cell evaluates with. ``evalsuite`` (ours): lm-eval's HFLM with the model calls replaced by
prefix-tree KV reuse, cross-task batching and a meter (lm, prefix_tree, kv_rows, meter); ``hf``: stock lm-eval
HFLM, the reference for parity tests; ``vllm``: lm-eval's own VLLM class on a checkpoint (vllm.py). ``make_lm``
builds ours or HFLM around a loaded model; ``choose_backend`` resolves ``auto``.

May import: lm-eval, vLLM, transformers, torch, quant, evalsuite.errors, evalsuite.console.
"""
from __future__ import annotations


def choose_backend(config) -> str:
    """``auto``: vLLM where it is installed, the device is CUDA and it can serve ``config``; ours otherwise. On CPU
    ours stays the choice: vLLM's CPU build serves only 16-bit and symmetric 4-bit GPTQ cells, so a sweep would mix
    engines across its rows (README: the measured speeds of both)."""
    import torch

    from evalsuite.backend import vllm

    cuda = torch.cuda.is_available()
    return "vllm" if cuda and vllm.available() and vllm.refusal(config, cuda) is None else "evalsuite"


def make_lm(backend: str, model, tokenizer, batch_size: int | str):
    """The lm-eval ``LM`` of ``backend`` around an already loaded model."""
    if backend == "hf":
        import torch
        from lm_eval.models.huggingface import HFLM

        # HFLM's "auto" batch search relies on CUDA OOM errors; on CPU it would probe for minutes.
        if batch_size == "auto" and not torch.cuda.is_available():
            batch_size = 8
        return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    from evalsuite.backend.lm import EvalsuiteLM

    return EvalsuiteLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
