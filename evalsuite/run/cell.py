"""One cell, stage by stage: reference -> load -> [lora-pre] -> compress -> [lora-post] -> held-out fidelity ->
evaluate -> samples -> Record.
Two ways to get the model ready: in this process for our backend and HFLM (``prepare_module``), or as a checkpoint
on disk for vLLM (``prepare_vllm``).

Each stage is a function of its own; ``run_cell`` strings them together and times them. A stage that raises
makes the cell fail (``run_cells`` records it); nothing here decides what to do about it.
"""
from __future__ import annotations

import gc
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from evalsuite.backend import make_lm
from evalsuite.load.models import ModelRef, load
from evalsuite.load.packed import packed_ref
from evalsuite.records import store
from evalsuite.records.provenance import environment
from evalsuite.records.record import CellInfo, Heldout, ModelInfo, Record, TaskInfo
from evalsuite.run import heldout
from evalsuite.finetune import train
from evalsuite.run.memory import peak_memory, peak_so_far
from evalsuite.spec.cell import CellSpec
from evalsuite.spec.tasks import OFFLINE_DIR, known_task_names
from quant import Footprint, NoQuant, quantize_
from quant.gptq_format import checkpoint_footprint, dequantize_into

# the doc (the item as the dataset has it) is what report.html shows as the question of a flipped item
SAMPLE_KEYS = ("doc_id", "doc", "target", "resps", "filtered_resps", "filter", "metrics", "doc_hash", "prompt_hash")


def cell_info(cell: CellSpec) -> CellInfo:
    return CellInfo(
        model=cell.model, method=cell.quant.method, bits=cell.quant.bit_width, label=cell.label(),
        quant=cell.quant.to_dict(), suite=cell.suite, tasks=list(cell.tasks), limit=cell.limit, seed=cell.seed,
        backend=cell.backend, batch_size=cell.batch_size, chat_template=cell.chat_template,
        finetune=cell.finetune.to_dict() if cell.finetune else None,
    )


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def run_cell(cell: CellSpec, ref: ModelRef, run_dir: Path, cid: str, identity: dict[str, Any]) -> Record:
    import torch

    torch.manual_seed(cell.seed)
    start = time.perf_counter()
    timing: dict[str, float] = {}

    def timed(stage: str, fn, *args):
        t0 = time.perf_counter()
        out = fn(*args)
        timing[f"{stage}_s"] = time.perf_counter() - t0
        return out

    prepare = prepare_vllm if cell.backend == "vllm" else prepare_module
    with prepare(cell, ref, timed) as ready:
        out = timed("eval", evaluate, ready.lm, cell)
    store.write_jsonl(store.samples_path(run_dir, cid), samples(out))
    lm = ready.lm
    return Record(
        cell_id=cid, status="ok", spec=cell_info(cell), identity=identity, created=now(),
        wall_s=round(time.perf_counter() - start, 2), provenance=environment(),
        results=out["results"], groups=out.get("groups", {}), group_subtasks=out.get("group_subtasks", {}),
        tasks={t: TaskInfo(version=out["versions"].get(t), n_shot=out["n-shot"].get(t),
                           n=out["n-samples"].get(t, {}).get("effective")) for t in out["results"]},
        higher_is_better=out.get("higher_is_better", {}),
        model=ModelInfo(name=ref.name, kind=ref.kind, source=ref.source, fingerprint=ref.fingerprint, params=ready.params),
        footprint={**ready.footprint.summary(), "layers": ready.footprint.layers},
        heldout=ready.fidelity,
        eval={"backend": cell.backend, "batch_size": getattr(lm, "batch_size", cell.batch_size),
              "add_bos_token": getattr(lm, "add_bos_token", None), "chat_template": cell.chat_template,
              "meter": getattr(lm, "meter", None), **ready.engine},
        timing={k: round(v, 3) for k, v in timing.items()},
        memory=ready.memory,
        finetune=ready.finetune,
    )


@dataclass
class Ready:
    """A cell's model made ready to evaluate: its lm-eval LM, what it stores, how faithful it is, and the peak
    memory of holding and running it (filled when its ``prepare`` context closes)."""

    lm: Any
    footprint: Footprint
    fidelity: Heldout
    params: int
    memory: dict[str, Any]
    engine: dict[str, Any] = field(default_factory=dict)  # vLLM: its engine arguments
    finetune: dict[str, Any] | None = None  # the fine-tune stage's record section


@contextmanager
def prepare_module(cell: CellSpec, ref: ModelRef, timed) -> Iterator[Ready]:
    """Our backend or stock HFLM around the model as quantized in this process (or loaded packed)."""
    # load-time methods never hold the model unquantized: read the reference first, outside the memory meter
    reference = timed("reference", heldout.reference_logprobs, ref) if cell.quant.load_time else None
    with peak_memory() as memory:
        source = timed("pack", packed_ref, ref, cell.quant) if cell.quant.builds_checkpoint else ref
        model, tok = timed("load", lambda: load(source, **cell.quant.load_kwargs()))
        ids = heldout.probe_ids(tok)
        if reference is None:  # post-load methods: from this very model, before it changes
            reference = heldout.logprobs(model, ids)[0]
        ft, tuned = cell.finetune, None
        if ft and ft.mode == "lora-pre":  # the reference above stays the original 16-bit model's
            tuned = timed("finetune", finetune_stage, lambda: train.lora_pre_(model, ft, tok))
        teacher = distill_teacher(model, ref, cell) if ft and ft.mode == "lora-post" else None
        footprint = timed("quantize", lambda: quantize_(model, cell.quant, tokenizer=tok,
                                                        checkpoint=Path(source.path) if source is not ref else None))
        if ft and ft.mode == "lora-post":  # fidelity and evaluation below include the adapters
            tuned = timed("finetune", finetune_stage, lambda: train.lora_post_(model, ft, tok, teacher))
            del teacher
            add_adapters(footprint, tuned)
        fidelity = heldout.measure(*heldout.logprobs(model, ids), ref=reference)
        del reference
        yield Ready(make_lm(cell.backend, model, tok, cell.batch_size), footprint, fidelity,
                    params=sum(p.numel() for p in model.parameters()), memory=memory, finetune=tuned)


def finetune_stage(fn) -> dict[str, Any]:
    """Run a fine-tune function; its section gets the cell's peak memory as it stands when training ends."""
    out = fn()
    return {**out, "memory": peak_so_far()}


def distill_teacher(model, ref: ModelRef, cell: CellSpec):
    """The frozen unquantized model the distill objective reads: a copy of ``model`` before it is quantized, or for
    load-time methods a fresh load of the source."""
    if cell.finetune.objective != "distill":
        return None
    if cell.quant.load_time:
        return load(ref)[0].eval().requires_grad_(False)
    import copy

    return copy.deepcopy(model).eval().requires_grad_(False)


def add_adapters(footprint: Footprint, tuned: dict[str, Any]) -> None:
    """The adapters are stored too: their bits count in the linears' bits/weight and in the packed bytes."""
    footprint.linear_bits += 8 * tuned["adapter_bytes"]
    footprint.extra.update(adapter_params=tuned["adapter_params"], adapter_bytes=tuned["adapter_bytes"],
                           adapter_dtype=tuned["adapter_dtype"])


@contextmanager
def prepare_vllm(cell: CellSpec, ref: ModelRef, timed) -> Iterator[Ready]:
    """vLLM on a checkpoint: the source for the baseline, else the cell's packed checkpoint (built once). Held-out
    fidelity comes from the same weights in a Hugging Face model (the packed tensors dequantized into it), since
    vLLM returns no full next-token distributions; that model is freed, outside the memory meter, before the
    engine starts."""
    from evalsuite.backend import vllm

    quantized = not isinstance(cell.quant, NoQuant)
    served = timed("pack", packed_ref, ref, cell.quant) if quantized else ref
    model, tok = timed("load", load, ref)
    ids = heldout.probe_ids(tok)
    reference = heldout.logprobs(model, ids)[0]
    if quantized:
        timed("quantize", dequantize_into, model, Path(served.path))
        footprint = checkpoint_footprint(Path(served.path))
    else:
        footprint = quantize_(model, cell.quant)
    fidelity = heldout.measure(*heldout.logprobs(model, ids), ref=reference)
    params, max_len = sum(p.numel() for p in model.parameters()), model.config.max_position_embeddings
    del model, reference
    gc.collect()
    with peak_memory() as memory:
        lm = timed("engine", vllm.make_vllm_lm, served.path, quantized, cell.seed, max_len)
        try:  # vLLM's version is in the provenance with the other libraries'
            yield Ready(lm, footprint, fidelity, params, memory, {"engine": lm.engine_args})
        finally:
            vllm.close(lm)


def evaluate(lm, cell: CellSpec) -> dict[str, Any]:
    """lm-eval's simple_evaluate on the cell's tasks, seeded; all-offline cells skip indexing lm-eval's ~12k
    bundled task files (10-28 s per cell here)."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    offline = set(cell.tasks) <= known_task_names()
    return simple_evaluate(
        model=lm, tasks=list(cell.tasks),
        task_manager=TaskManager(include_path=str(OFFLINE_DIR), include_defaults=not offline),
        limit=cell.limit, log_samples=True, apply_chat_template=cell.chat_template,
        random_seed=cell.seed, numpy_random_seed=cell.seed, torch_random_seed=cell.seed,
        fewshot_random_seed=cell.seed, bootstrap_iters=1000,
    )


def samples(out: dict[str, Any]) -> list[dict[str, Any]]:
    """Per-item rows of lm-eval's sample log: what paired tests and flips read (metric values keyed by name)."""
    return [
        {"task": task, **{k: s[k] for k in (*SAMPLE_KEYS, *s.get("metrics", ())) if k in s}}
        for task, rows in out.get("samples", {}).items() for s in rows
    ]


def failed_record(cell: CellSpec, cid: str, identity: dict[str, Any], error: BaseException, wall_s: float) -> Record:
    return Record(cell_id=cid, status="failed", spec=cell_info(cell), identity=identity, created=now(),
                  wall_s=round(wall_s, 2), provenance=environment(), error=one_line(error))


def one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__

