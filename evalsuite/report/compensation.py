"""The fine-tuning compensation view: how much of the quantization loss a fine-tune stage wins back.

Each fine-tuned cell is set beside its twin, the cell with the same model, quant config, suite, limit, seed, backend
and chat template but no fine-tune stage, and the unquantized baseline. Per fidelity and score column: the twin's
value (``q``), the fine-tuned value (``ft``) and the share of the 16-bit gap recovered, (ft - q) / (16 - q), where
"16" is the baseline's value (KL 0 and top-1 agreement 1 by definition). Paired significance is against the twin,
on the items both answered (``report.stats.significance``).
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd

from evalsuite.records.record import Record
from evalsuite.report.frame import BASELINE_KEY
from evalsuite.report.items import pair
from evalsuite.report.stats import significance
from evalsuite.report.views import leaderboard

METRICS = ("heldout_ppl", "kl_mean", "top1_agreement", "average")
EXACT_16 = {"kl_mean": 0.0, "top1_agreement": 1.0}  # the baseline against itself
COLUMNS = ["model", "method", "bits", "family", "finetune", "objective", "steps", "tokens", "train_s", "adapter_bytes",
           *(f"{m}{s}" for m in METRICS for s in ("_16", "_q", "_ft", "_recovered")), "label", "cell_id", "twin_id"]


def finetune_of(rec: Record) -> dict | None:
    return rec.spec.finetune


def twin_ids(records: list[Record]) -> dict[str, str]:
    """Fine-tuned cell id -> the id of its un-fine-tuned twin (ok records only; the newest twin wins)."""
    def key(rec: Record) -> tuple:
        return (*(json.dumps(getattr(rec.spec, k), sort_keys=True) for k in BASELINE_KEY),
                json.dumps(rec.spec.quant, sort_keys=True))

    ok = sorted((r for r in records if r.ok), key=lambda r: r.created)
    plain = {key(r): r.cell_id for r in ok if finetune_of(r) is None}
    return {r.cell_id: plain[key(r)] for r in ok if finetune_of(r) is not None and key(r) in plain}


def recovered(ft, q, full):
    """(ft - q) / (full - q); NaN where the twin already equals the baseline."""
    ft, q, full = (np.asarray(x, dtype=float) for x in (ft, q, full))
    with np.errstate(divide="ignore", invalid="ignore"):
        out = (ft - q) / (full - q)
    return np.where(np.isfinite(out), out, np.nan)


def compensation(df: pd.DataFrame, records: list[Record]) -> pd.DataFrame:
    """One row per fine-tuned cell that has a twin: the twin's, the fine-tuned and the baseline's values of
    held-out ppl, KL, top-1 agreement and the average normalized score, and the gap recovered for each."""
    twins = twin_ids(records)
    board = leaderboard(df)
    if not twins or board.empty:
        return pd.DataFrame(columns=COLUMNS)
    board = board.assign(average=board["average"] if "average" in board else np.nan)
    for col in METRICS:
        if col not in board:
            board[col] = np.nan
    values = board.set_index("cell_id")[[*METRICS, "bits"]]
    cells = df.drop_duplicates("cell_id").set_index("cell_id")
    by_id = {r.cell_id: r for r in records}
    rows = []
    for cid, twin in twins.items():
        rec, ft = by_id[cid], by_id[cid].finetune or {}
        base = cells.at[cid, "baseline_id"]
        row = {"model": rec.spec.model, "method": rec.spec.method, "bits": rec.spec.bits,
               "family": cells.at[twin, "family"], "finetune": rec.spec.finetune.get("mode"),
               "objective": rec.spec.finetune.get("objective"), "steps": ft.get("steps"), "tokens": ft.get("tokens"),
               "train_s": ft.get("wall_s"), "adapter_bytes": (rec.footprint or {}).get("adapter_bytes", 0),
               "label": rec.spec.label, "cell_id": cid, "twin_id": twin}
        for m in METRICS:
            full = EXACT_16.get(m, values.at[base, m] if isinstance(base, str) and base in values.index else np.nan)
            q, tuned = values.at[twin, m] if twin in values.index else np.nan, values.at[cid, m]
            row.update({f"{m}_16": full, f"{m}_q": q, f"{m}_ft": tuned, f"{m}_recovered": float(recovered(tuned, q, full))})
        rows.append(row)
    out = pd.DataFrame(rows, columns=COLUMNS).astype({"bits": "Int64"})
    return out.sort_values(["model", "family", "bits", "finetune"], ascending=[True, True, False, True],
                           ignore_index=True)


def compensation_significance(items: pd.DataFrame, records: list[Record]) -> pd.DataFrame:
    """``stats.significance`` of every fine-tuned cell against its twin (``score16`` is the twin's score here)."""
    out = significance(pair(items, records, against=twin_ids(records)))
    return out.rename(columns={"score16": "score_q", "score": "score_ft"})
