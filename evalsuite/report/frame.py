"""Records -> the tidy frame: one row per cell x task x metric, with each cell's baseline.

Each task is scored by the metric tasks/suites.yaml names for it (its ``primary`` row) and normalized as the Open
LLM Leaderboard does: ``max(0, (score - chance) / (1 - chance))``, chance = 1/choices for multiple choice and 0 for
generation, so 0 means "no better than guessing". Perplexity-like tasks (``lower_is_better``) are never normalized.

A cell's baseline is the cell of method ``none`` (the unquantized model) with the same model, suite, limit, seed,
backend and chat-template setting in the same run — never "the 16-bit one": a method without a bit width (MPO)
records ``bits: null``, and a baseline is identified by its method. Several such cells: the newest wins.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from evalsuite.records import store
from evalsuite.records.record import CellInfo, Record
from evalsuite.spec.tasks import suites_file

BASELINE_METHOD = "none"
CELL_COLUMNS = ["model", "method", "bits", "group_size", "bits_per_weight", "packed_bytes"]
CELL_FRAME = [
    "cell_id", "status", "error", *CELL_COLUMNS, "label", "family", "params", "suite", "limit", "seed", "backend",
    "chat_template", "baseline_id", "heldout_ppl", "kl_mean", "kl_p95", "top1_agreement", "quantize_s", "finetune_s",
    "wall_s",
]
TASK_FRAME = ["task", "top_level", "ability", "metric", "filter", "primary", "value", "stderr", "n", "lower_is_better",
              "normalized"]
INTEGER_COLUMNS = ["bits", "group_size", "packed_bytes", "params", "limit", "seed", "n"]
BASELINE_KEY = ("model", "suite", "limit", "seed", "backend", "chat_template")
HELDOUT = {"token_ppl": "heldout_ppl", "kl_mean": "kl_mean", "kl_p95": "kl_p95", "top1_agreement": "top1_agreement"}


def task_info() -> dict[str, dict[str, Any]]:
    """suites.yaml ``tasks:``: per task its ability, chance, primary metric ("name,filter"), lower_is_better."""
    return suites_file()["tasks"]


def normalize(score, chance):
    """Open LLM Leaderboard normalization: (score - chance) / (1 - chance), clipped at 0 (works on arrays too)."""
    return np.maximum(0.0, (np.asarray(score, dtype=float) - chance) / (1.0 - chance))


def is_baseline(spec: CellInfo) -> bool:
    return spec.method == BASELINE_METHOD


def baseline_ids(records: list[Record]) -> dict[str, str]:
    """cell id -> the cell id of its baseline (ok records only; a baseline maps to itself)."""
    def key(rec: Record) -> tuple:
        return tuple(json.dumps(getattr(rec.spec, k), sort_keys=True) for k in BASELINE_KEY)

    ok = sorted((r for r in records if r.ok), key=lambda r: r.created)
    base = {key(r): r.cell_id for r in ok if is_baseline(r.spec)}  # the newest wins if there are several
    return {r.cell_id: base[key(r)] for r in ok if key(r) in base}


def family(spec: CellInfo) -> str:
    """The method with its options, without the bit width: '4bit-rtn-g64' -> 'rtn-g64'; the baseline is 'none'."""
    if is_baseline(spec):
        return BASELINE_METHOD
    prefix = f"{spec.bits}bit-"
    return spec.label[len(prefix):] if spec.bits is not None and spec.label.startswith(prefix) else spec.label


def number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _cell_row(rec: Record, baselines: dict[str, str]) -> dict[str, Any]:
    spec, fp = rec.spec, rec.footprint or {}
    return {
        "cell_id": rec.cell_id, "status": rec.status, "error": rec.error, "model": spec.model, "method": spec.method,
        "bits": spec.bits, "group_size": spec.quant.get("group_size"), "bits_per_weight": fp.get("bits_per_weight"),
        "packed_bytes": fp.get("packed_bytes"), "label": spec.label, "family": family(spec),
        "params": rec.model.params if rec.model else None, **{k: getattr(spec, k) for k in BASELINE_KEY},
        "baseline_id": baselines.get(rec.cell_id),
        **{col: number(getattr(rec.heldout, k, None)) for k, col in HELDOUT.items()},
        "quantize_s": quantize_seconds(rec.timing or {}), "finetune_s": (rec.timing or {}).get("finetune_s"),
        "wall_s": rec.wall_s,
    }


def quantize_seconds(timing: dict[str, float]) -> float | None:
    """Time spent making the quantized weights: in place (``quantize``), or writing a packed checkpoint (``pack``,
    zero when it came from the cache). A load-time method without a checkpoint (bitsandbytes: its cell reads a
    ``reference`` first) quantizes inside ``load``, where the time cannot be told apart from reading: None."""
    if "reference_s" in timing and "pack_s" not in timing:
        return None
    parts = [timing[k] for k in ("pack_s", "quantize_s") if k in timing]
    return sum(parts) if parts else None


def tidy(records: list[Record]) -> pd.DataFrame:
    """One row per cell x task x metric (subtasks kept, ``top_level`` False); a failed cell is one row, no task."""
    info, baselines = task_info(), baseline_ids(records)
    rows = []
    for rec in records:
        cell = _cell_row(rec, baselines)
        if not rec.ok:
            rows.append(cell)
            continue
        top = set(rec.spec.tasks)
        for task, metrics in rec.results.items():
            entry = info.get(task, {}) if task in top else {}
            lower = bool(entry.get("lower_is_better", False))
            n = rec.tasks[task].n if task in rec.tasks else metrics.get("sample_len")
            for key, value in metrics.items():
                name, comma, filt = key.partition(",")
                if not comma or name.endswith("_stderr") or number(value) is None:  # alias, name, sample_len
                    continue
                primary = key == entry.get("metric")
                rows.append({
                    **cell, "task": task, "top_level": task in top, "ability": entry.get("ability"), "metric": name,
                    "filter": filt, "primary": primary, "value": float(value),
                    "stderr": number(metrics.get(f"{name}_stderr,{filt}")),
                    "n": n, "lower_is_better": lower,
                    "normalized": float(normalize(value, entry["chance"]))
                    if primary and not lower and entry.get("chance") is not None else None,
                })
    frame = pd.DataFrame(rows, columns=CELL_FRAME + TASK_FRAME)
    return frame.astype({c: "Int64" for c in INTEGER_COLUMNS})  # whole numbers stay whole beside missing values


def load(run_dir: str | Path) -> pd.DataFrame:
    """The tidy frame of every usable record in ``run_dir`` (unusable files are skipped; see store.read_run)."""
    records, _ = store.read_run(Path(run_dir))
    return tidy(records)
