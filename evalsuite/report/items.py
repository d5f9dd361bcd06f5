"""Per-item values from the cells' sample logs, and their pairing with the baseline's answers to the same items.

Each sample row of a cell's ``<cell id>.samples.jsonl`` carries the per-item value of every metric its task
logs; the value of the task's primary metric (suites.yaml) is what paired tests, flips and score intervals use.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from evalsuite.records import store
from evalsuite.records.record import Record
from evalsuite.report.frame import baseline_ids, family, number, task_info

ITEM_COLUMNS = ["task", "subtask", "doc_id", "doc_hash", "target", "answer", "value", "question", "response"]
PAIR_FRAME = ["cell_id", "baseline_id", "model", "label", "family", "bits", "task", "subtask", "doc_id", "target",
              "answer16", "answer", "value16", "value", "question", "response16", "response"]
QUESTION_FIELDS = ("question", "input", "prompt", "problem", "text")  # where the datasets we run keep the question


def leaf_to_top(rec: Record) -> dict[str, str]:
    """Every task or subtask name a record's samples can carry -> the top-level task it counts towards."""
    out: dict[str, str] = {}

    def walk(name: str, top: str) -> None:
        out.setdefault(name, top)
        for child in rec.group_subtasks.get(name, ()):
            walk(child, top)

    for top in rec.spec.tasks:
        walk(top, top)
    return out


def item_values(run_dir: Path, rec: Record) -> pd.DataFrame:
    """Per-item value of each top-level task's primary metric, read from the cell's samples log."""
    path = store.samples_path(Path(run_dir), rec.cell_id)
    info, tops = task_info(), leaf_to_top(rec)
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            s = json.loads(line)
            top = tops.get(s.get("task"))
            name, _, filt = info.get(top, {}).get("metric", "").partition(",")
            value = s.get(name)
            if top is None or s.get("filter", "none") != filt or not isinstance(value, (bool, int, float)):
                continue
            rows.append({"task": top, "subtask": s["task"], "doc_id": s.get("doc_id"), "doc_hash": s.get("doc_hash"),
                         "target": str(s.get("target")), "answer": _answer(s.get("filtered_resps")),
                         "value": float(value), "question": question_text(s.get("doc")),
                         "response": _generation(s.get("resps"))})
    return pd.DataFrame(rows, columns=ITEM_COLUMNS)


def _answer(filtered_resps: Any) -> str:
    """What the model answered: the chosen option's index for multiple choice (lm-eval logs one
    [loglikelihood, is_greedy] pair per option), else the filtered generation."""
    resps = filtered_resps if isinstance(filtered_resps, list) else [filtered_resps]
    if resps and all(isinstance(r, list) and r and number(r[0]) is not None for r in resps):
        return str(int(np.argmax([r[0] for r in resps])))
    return str(resps[0]) if len(resps) == 1 else str(resps)


def question_text(doc: Any) -> str | None:
    """The question part of a logged item (its first question-like field), its options numbered as the multiple
    choice answers are; None where the log has no doc (records written before docs were logged)."""
    if not isinstance(doc, dict):
        return None
    text = next((str(doc[k]) for k in QUESTION_FIELDS if isinstance(doc.get(k), str)), None)
    choices = doc.get("choices")
    if isinstance(choices, list):
        text = "\n".join([text or "", *(f"{i}. {c}" for i, c in enumerate(choices))]).strip()
    return text


def _generation(resps: Any) -> str | None:
    """The full generated text of a generation item (lm-eval logs [[text]]); None for multiple choice."""
    first = resps[0] if isinstance(resps, list) and resps else None
    first = first[0] if isinstance(first, list) and first else first
    return first if isinstance(first, str) else None


def item_frame(run_dir: str | Path, records: list[Record]) -> pd.DataFrame:
    """Every ok cell's per-item values, with its ``cell_id``."""
    frames = [item_values(Path(run_dir), r).assign(cell_id=r.cell_id) for r in records if r.ok]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=[*ITEM_COLUMNS, "cell_id"])


def pair(items: pd.DataFrame, records: list[Record], against: dict[str, str] | None = None) -> pd.DataFrame:
    """One row per non-baseline cell x item its baseline also answered: both per-item values (``value16`` is the
    baseline's, ``value`` the cell's). Items are paired on (subtask, doc_id, doc_hash). ``against`` (cell id ->
    the cell it is compared with) replaces the baselines, e.g. a fine-tuned cell's un-fine-tuned twin."""
    by_id = {r.cell_id: r for r in records}
    per_cell = {cid: g.drop(columns="cell_id") for cid, g in items.groupby("cell_id", sort=False)}
    empty = pd.DataFrame(columns=ITEM_COLUMNS)
    frames = []
    for cid, base in (baseline_ids(records) if against is None else against).items():
        if cid == base:
            continue
        base_values = per_cell.get(base, empty).drop(columns=["task", "target", "question"]).rename(
            columns={"answer": "answer16", "value": "value16", "response": "response16"})
        pairs = per_cell.get(cid, empty).merge(base_values, on=["subtask", "doc_id", "doc_hash"])
        spec = by_id[cid].spec
        frames.append(pairs.assign(cell_id=cid, baseline_id=base, model=spec.model, label=spec.label,
                                   family=family(spec), bits=spec.bits))
    frames = [f for f in frames if not f.empty]
    out = pd.concat(frames, ignore_index=True)[PAIR_FRAME] if frames else pd.DataFrame(columns=PAIR_FRAME)
    return out.astype({"bits": "Int64"})  # None for methods without a bit width


def paired_items(run_dir: str | Path) -> pd.DataFrame:
    """``pair`` over every usable record of ``run_dir``."""
    records, _ = store.read_run(Path(run_dir))
    return pair(item_frame(run_dir, records), records)
