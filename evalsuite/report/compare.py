"""Two runs side by side, item by item: per matched cell and task, how often the two runs gave the same answer and
the same verdict, and the items where they differ. Made for backend gaps (HF vs vLLM: lm-eval #2851, #3150), so
cells are matched on what they evaluate — model, precision, suite, limit, seed, chat template — and not on the
backend that ran them."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from evalsuite.records import store
from evalsuite.report.items import item_frame

MATCH_KEY = ("model", "label", "suite", "limit", "seed", "chat_template")
ITEM_KEY = ["subtask", "doc_id", "doc_hash"]
SUMMARY = ["model", "label", "task", "n", "same_answer", "same_verdict", "score_a", "score_b", "backend_a", "backend_b"]
DIFFS = ["model", "label", "task", "subtask", "doc_id", "target", "answer_a", "answer_b", "value_a", "value_b"]


def _cells(run_dir: Path) -> tuple[pd.DataFrame, dict]:
    records, _ = store.read_run(run_dir)
    ok = [r for r in records if r.ok]
    keys = {r.cell_id: tuple(getattr(r.spec, k) for k in MATCH_KEY) for r in ok}
    items = item_frame(run_dir, ok)
    return items.assign(key=items["cell_id"].map(keys)), {r.cell_id: r.spec for r in ok}


def compare(run_a: str | Path, run_b: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per matched cell x task, one row per item whose answer differs)."""
    items_a, specs_a = _cells(Path(run_a))
    items_b, specs_b = _cells(Path(run_b))
    both = items_a.merge(items_b, on=["key", "task", *ITEM_KEY], suffixes=("_a", "_b"))
    if both.empty:
        return pd.DataFrame(columns=SUMMARY), pd.DataFrame(columns=DIFFS)
    spec_a = both["cell_id_a"].map(specs_a)
    both = both.assign(model=[s.model for s in spec_a], label=[s.label for s in spec_a],
                       backend_a=[s.backend for s in spec_a],
                       backend_b=[specs_b[c].backend for c in both["cell_id_b"]],
                       same_answer=both["answer_a"] == both["answer_b"], same_verdict=both["value_a"] == both["value_b"])
    summary = (both.groupby(["model", "label", "task", "backend_a", "backend_b"], as_index=False, sort=True)
               .agg(n=("doc_id", "size"), same_answer=("same_answer", "mean"), same_verdict=("same_verdict", "mean"),
                    score_a=("value_a", "mean"), score_b=("value_b", "mean")))
    diffs = both.loc[~both["same_answer"]].rename(columns={"target_a": "target"})
    return summary[SUMMARY], diffs[DIFFS].reset_index(drop=True)
