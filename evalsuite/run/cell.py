"""run_cell(cell) -> record: load, compress, evaluate through lm-eval, write. run_cells: many, resumable."""
from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

from evalsuite import fidelity, models, store
from evalsuite.errors import UsageError
from evalsuite.spec import OFFLINE_DIR, TASKS_DIR, CellSpec, cell_id, check_offline_data, known_task_names
from quant import QuantError

SAMPLE_KEYS = ("doc_id", "target", "resps", "filtered_resps", "filter", "metrics", "doc_hash", "prompt_hash")


def configure_environment(tasks: tuple[str, ...]) -> None:
    """Offline tasks never touch a hub; hub tasks (the `paper` suite) keep whatever the user set.

    NLTK's punkt_tab ships in tasks/nltk_data: lm-eval's IFEval checker (hub and offline task alike) would
    otherwise try to download it at import, fail offline, and then break sentence counting.
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    nltk_data = str(TASKS_DIR / "nltk_data")
    paths = os.environ.get("NLTK_DATA", "").split(os.pathsep)
    if nltk_data not in paths:
        os.environ["NLTK_DATA"] = os.pathsep.join(p for p in (nltk_data, *paths) if p)
    if "nltk" in sys.modules and nltk_data not in sys.modules["nltk"].data.path:
        sys.modules["nltk"].data.path.insert(0, nltk_data)
    if all(t in known_task_names() for t in tasks):
        os.environ["HF_DATASETS_OFFLINE"] = "1"
        os.environ["HF_HUB_OFFLINE"] = "1"


def preflight(cells: list[CellSpec]) -> dict[str, models.ModelRef]:
    """Every check that can fail on user input, before any file is written: model, configs against the
    model's real layer shapes (on a weightless skeleton), backend. Returns the resolved model refs."""
    import quant

    refs: dict[str, models.ModelRef] = {}
    for tasks in {cell.tasks for cell in cells}:
        configure_environment(tasks)
        check_offline_data(tasks)
    for cell in cells:
        if cell.model not in refs:
            refs[cell.model] = models.resolve(cell.model)
        skeleton = models.skeleton(refs[cell.model])
        quant.validate(skeleton, cell.quant)
    return refs


@contextmanager
def peak_memory() -> Iterator[dict[str, Any]]:
    """Peak RSS of this cell (Linux resets the high-water mark via clear_refs), and CUDA max allocated."""
    import torch

    out: dict[str, Any] = {}
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    yield out
    try:
        status = Path("/proc/self/status").read_text()
        out["peak_rss_bytes"] = int(next(l for l in status.splitlines() if l.startswith("VmHWM")).split()[1]) * 1024
    except (OSError, StopIteration):
        import resource

        out["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if torch.cuda.is_available():
        out["cuda_max_allocated_bytes"] = torch.cuda.max_memory_allocated()


def make_lm(backend: str, model, tokenizer, batch_size: int | str):
    if backend == "hf":
        import torch
        from lm_eval.models.huggingface import HFLM

        # HFLM's "auto" batch search relies on CUDA OOM errors; on CPU it would probe for minutes.
        if batch_size == "auto" and not torch.cuda.is_available():
            batch_size = 8
        return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    from evalsuite.lm import EvalsuiteLM

    return EvalsuiteLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)


def run_cell(cell: CellSpec, ref: models.ModelRef, run_dir: Path, cid: str) -> dict[str, Any]:
    configure_environment(cell.tasks)  # before lm_eval is imported
    import quant
    import torch
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    torch.manual_seed(cell.seed)
    # all-offline cells skip indexing lm-eval's ~12k bundled task files (10-28 s per cell here)
    offline = set(cell.tasks) <= known_task_names()
    timing: dict[str, float] = {}
    t0 = time.perf_counter()
    # load-time methods never hold the model unquantized: read the reference first, outside the memory meter
    reference = fidelity.reference_logprobs(ref) if cell.quant.load_time else None
    timing["reference_s"] = time.perf_counter() - t0
    with peak_memory() as memory:
        t0 = time.perf_counter()
        load_ref = cell.quant.prepare(ref) if hasattr(cell.quant, "prepare") else ref
        model, tok = models.load(load_ref, **quant.load_kwargs(cell.quant))
        timing["load_s"] = time.perf_counter() - t0
        ids = fidelity.probe_ids(tok)
        if reference is None:  # post-load methods: from this very model, before it changes
            reference = fidelity.logprobs(model, ids)[0]
        t0 = time.perf_counter()
        footprint = quant.quantize_(model, cell.quant, tokenizer=tok, ref=load_ref)
        timing["quantize_s"] = time.perf_counter() - t0
        heldout = fidelity.measure(*fidelity.logprobs(model, ids), ref=reference)
        del reference
        lm = make_lm(cell.backend, model, tok, cell.batch_size)
        t0 = time.perf_counter()
        out = simple_evaluate(
            model=lm, tasks=list(cell.tasks), task_manager=TaskManager(include_path=str(OFFLINE_DIR), include_defaults=not offline),
            limit=cell.limit, log_samples=True, apply_chat_template=cell.chat_template,
            random_seed=cell.seed, numpy_random_seed=cell.seed, torch_random_seed=cell.seed,
            fewshot_random_seed=cell.seed, bootstrap_iters=1000,
        )
        timing["eval_s"] = time.perf_counter() - t0
    samples = [  # per-item metric values (keys named in s["metrics"]) feed paired tests and flips
        {"task": task, **{k: s[k] for k in (*SAMPLE_KEYS, *s.get("metrics", ())) if k in s}}
        for task, rows in out.get("samples", {}).items() for s in rows
    ]
    store.write_jsonl(store.samples_path(run_dir, cid), samples)
    return {
        "results": out["results"],
        "groups": out.get("groups", {}),
        "group_subtasks": out.get("group_subtasks", {}),  # which top-level task each sample's subtask counts toward
        "tasks": {
            t: {"version": out["versions"].get(t), "n_shot": out["n-shot"].get(t), "n": out["n-samples"].get(t, {}).get("effective")}
            for t in out["results"]
        },
        "higher_is_better": out.get("higher_is_better", {}),
        "model": {"name": ref.name, "kind": ref.kind, "source": ref.source, "fingerprint": ref.fingerprint,
                  "params": sum(p.numel() for p in model.parameters())},
        "quant": {**cell.quant.to_dict(), "label": cell.quant.label()},
        "footprint": {**footprint.summary(), "layers": footprint.layers},
        "heldout": heldout,
        "eval": {
            "backend": cell.backend,
            "batch_size": getattr(lm, "batch_size", cell.batch_size),
            "add_bos_token": getattr(lm, "add_bos_token", None),
            "chat_template": cell.chat_template,
            "meter": getattr(lm, "meter", None),
        },
        "timing": timing,
        "memory": memory,
    }


def plan(cells: list[CellSpec], run_dir: Path, refs: dict[str, models.ModelRef]) -> list[tuple[CellSpec, dict, str, str]]:
    """(cell, identity, cell id, state) per cell; state is done, failed, corrupt (unusable record) or todo."""
    out = []
    for cell in cells:
        identity = cell.identity(refs[cell.model].fingerprint)
        cid = cell_id(identity)
        path = store.record_path(run_dir, cid)
        state = "todo"
        if path.exists():
            rec, _ = store.read_record(path)
            state = "corrupt" if rec is None else "done" if rec["status"] == "ok" else "failed"
        out.append((cell, identity, cid, state))
    return out


def run_cells(cells: list[CellSpec], run_dir: Path, log: Callable[[str], None] = print, retry_failed: bool = False) -> list[dict]:
    """Evaluate every cell whose record does not exist yet; return all records of these cells.

    A cell that raises (OOM, NaN, a load error) is recorded as failed and the rest go on; bad user input
    (UsageError, QuantError) is caught by ``preflight`` before anything is written. An unusable record is
    reported and its cell recomputed.
    """
    from evalsuite.provenance import environment

    refs = preflight(cells)
    records, spent = [], []
    steps = plan(cells, run_dir, refs)
    for i, (cell, identity, cid, state) in enumerate(steps, 1):
        path = store.record_path(run_dir, cid)
        label = f"[{i}/{len(cells)}] {cell.model} {cell.quant.label()} {cell.suite}"
        if state == "done" or (state == "failed" and not retry_failed):
            log(f"{label}: {state} before, skipped")
            records.append(store.read_record(path)[0])
            continue
        if state == "corrupt":
            log(f"{label}: {path.name} {store.read_record(path)[1]}; recomputing")
        todo = sum(1 for *_, st in steps[i - 1 :] if st != "done")
        eta = f" (about {sum(spent) / len(spent) * todo / 60:.0f} min left)" if spent else ""
        log(f"{label}: running{eta}")
        t0 = time.perf_counter()
        head = {"schema": store.SCHEMA_VERSION, "cell_id": cid, "spec": _spec_dict(cell), "identity": identity}
        try:
            body = {"status": "ok", **run_cell(cell, refs[cell.model], run_dir, cid)}
        except (UsageError, QuantError):
            raise
        except Exception as e:  # noqa: BLE001 - a failed cell is data; the sweep goes on
            body = {"status": "failed", "error": f"{type(e).__name__}: {e}"}
            log(f"{label}: FAILED: {body['error']}")
        spent.append(time.perf_counter() - t0)
        rec = {**head, **body, "wall_s": round(spent[-1], 2),
               "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "provenance": environment()}
        store.write_json(path, rec)
        if rec["status"] == "ok":
            log(f"{label}: done in {rec['wall_s']:.0f} s")
        records.append(rec)
    return records


def _spec_dict(cell: CellSpec) -> dict[str, Any]:
    d = asdict(cell)
    d["quant"] = {**cell.quant.to_dict(), "label": cell.quant.label()}
    d["bits"] = getattr(cell.quant, "bits", 16)
    d["method"] = cell.quant.method
    return d
