"""Views of the tidy frame: per-cell tables, ability and retention pivots, perplexity, the leaderboard.

Every function takes the tidy frame (``frame.tidy``) and returns a new frame; nothing here reads files.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from evalsuite.report.frame import BASELINE_METHOD, CELL_COLUMNS, CELL_FRAME, HELDOUT, task_info


def position(frame: pd.DataFrame) -> pd.Series:
    """Where a cell sits on a precision axis: its bit width, or its bits/weight for methods without one (MPO)."""
    return frame["bits"].astype("Float64").fillna(frame["bits_per_weight"].astype("Float64")).astype(float)


def _sorted_cells(frame: pd.DataFrame) -> pd.DataFrame:
    """Model, then from the most bits down, then label."""
    return (frame.assign(_x=position(frame)).sort_values(["model", "_x", "label"], ascending=[True, False, True])
            .drop(columns="_x").reset_index(drop=True))


def cells(df: pd.DataFrame) -> pd.DataFrame:
    """One row per cell (ok and failed): its identity, footprint and held-out fidelity columns."""
    return _sorted_cells(df[CELL_FRAME].drop_duplicates("cell_id"))


def failures(df: pd.DataFrame) -> pd.DataFrame:
    failed = cells(df)
    return failed.loc[failed["status"] != "ok", ["model", "label", "suite", "error"]].reset_index(drop=True)


def scores(df: pd.DataFrame) -> pd.DataFrame:
    """One row per ok cell x top-level task: its primary metric's raw and normalized value."""
    return df[(df["status"] == "ok") & df["primary"].fillna(False).astype(bool)].reset_index(drop=True)


def label_order(frame: pd.DataFrame) -> list[str]:
    """Precision labels from the most bits down, for pivot columns."""
    return list(dict.fromkeys(_sorted_cells(frame[["model", "bits", "bits_per_weight", "label"]]
                                            .assign(model="")).loc[:, "label"]))


def _in_order(names, known: list[str]) -> list[str]:
    return sorted(set(names), key=lambda x: (known.index(x) if x in known else len(known), x))


def task_order(names) -> list[str]:
    """Tasks in suites.yaml order, unknown ones after them alphabetically."""
    return _in_order(names, list(task_info()))


def ability_order(names) -> list[str]:
    """Abilities in suites.yaml order, unknown ones after them alphabetically."""
    return _in_order(names, list(dict.fromkeys(v["ability"] for v in task_info().values())))


def abilities(df: pd.DataFrame) -> pd.DataFrame:
    """One row per cell x ability: mean normalized score of the ability's tasks (perplexity tasks excluded) and
    ``n``, the items behind it."""
    s = scores(df).dropna(subset=["normalized", "ability"])
    out = s.groupby(["cell_id", "ability"], as_index=False).agg(score=("normalized", "mean"), tasks=("task", "count"),
                                                                 n=("n", "sum"))
    return out.merge(cells(df), on="cell_id")


def ability_pivot(df: pd.DataFrame) -> pd.DataFrame:
    """Ability x precision label per model: mean normalized score (0 = chance)."""
    ab = abilities(df)
    if ab.empty:
        return pd.DataFrame()
    order = ability_order(ab["ability"])
    wide = ab.pivot_table(index=["model", "ability"], columns="label", values="score", aggfunc="first")
    wide = wide.reindex(columns=label_order(ab))
    wide = wide.reindex(sorted(wide.index, key=lambda i: (i[0], order.index(i[1]))))
    wide.columns.name = None
    return wide


def with_baseline(df: pd.DataFrame) -> pd.DataFrame:
    """Primary scores of every other cell next to its baseline's: value16 (the baseline's), delta, retention."""
    s = scores(df)
    base = s[["cell_id", "task", "value"]].rename(columns={"cell_id": "baseline_id", "value": "value16"})
    out = s[s["baseline_id"].notna() & (s["cell_id"] != s["baseline_id"])].merge(base, on=["baseline_id", "task"])
    out["delta"] = out["value"] - out["value16"]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(out["lower_is_better"], out["value16"] / out["value"], out["value"] / out["value16"])
    out["retention"] = np.where(np.isfinite(ratio), ratio, np.nan)
    return out


def retention_pivot(df: pd.DataFrame) -> pd.DataFrame:
    """Task x precision label per model: score / the baseline's score (1 = nothing lost)."""
    r = with_baseline(df)
    if r.empty:
        return pd.DataFrame()
    wide = r.pivot_table(index=["model", "task"], columns="label", values="retention", aggfunc="first")
    wide = wide.reindex(columns=label_order(r))
    tasks = task_order(wide.index.get_level_values("task"))
    wide = wide.reindex(sorted(wide.index, key=lambda i: (i[0], tasks.index(i[1]))))
    wide.columns.name = None
    return wide


def perplexity(df: pd.DataFrame) -> pd.DataFrame:
    """Perplexity-like results per cell (never normalized): every metric of lower-is-better tasks, and the
    held-out token perplexity where the record has it."""
    ok = df[df["status"] == "ok"]
    ppl = ok[ok["lower_is_better"].fillna(False).astype(bool) & ok["top_level"].fillna(False).astype(bool)]
    ppl = ppl.assign(column=[metric_column(t, m, f) for t, m, f in zip(ppl["task"], ppl["metric"], ppl["filter"])])
    wide = ppl.pivot_table(index="cell_id", columns="column", values="value", aggfunc="first")
    board = cells(ok)[["cell_id", "model", "label", "bits", "heldout_ppl"]].merge(wide, on="cell_id", how="left")
    values = [c for c in board.columns if c == "heldout_ppl" or ":" in c]
    board = board.dropna(subset=values, how="all").dropna(axis=1, how="all")
    return board.drop(columns="cell_id").reset_index(drop=True) if board.shape[1] > 4 else pd.DataFrame()


def fidelity(df: pd.DataFrame) -> pd.DataFrame:
    """Every quantized cell's held-out fidelity against its storage, methods side by side: one row per cell, from
    the most bits/weight down (the axis on which methods are comparable, whatever bit width they are named by)."""
    ok = cells(df[df["status"] == "ok"])
    ok = ok[ok["method"] != BASELINE_METHOD].dropna(subset=["heldout_ppl"])
    if ok.empty:
        return pd.DataFrame()
    out = ok.assign(size_MB=ok["packed_bytes"].astype(float) / 1e6).sort_values(
        ["model", "bits_per_weight", "heldout_ppl"], ascending=[True, False, True])
    columns = ["model", "label", "bits_per_weight", "size_MB", "heldout_ppl", "kl_mean", "top1_agreement", "quantize_s",
               "finetune_s"]
    return out[columns].dropna(axis=1, how="all").reset_index(drop=True)


def metric_column(task: str, metric: str, filt: str) -> str:
    return f"{task}:{metric}" + ("" if filt in ("none", "", None) else f"[{filt}]")


def leaderboard(df: pd.DataFrame) -> pd.DataFrame:
    """One row per ok cell, in the spirit of the Open LLM Leaderboard: identity and size, the overall average
    (mean normalized score over tasks), per-ability averages, held-out fidelity where present, then per task its
    normalized score (``task:norm``) and every raw top-level metric (``task:metric[filter]``); last the ``cell_id``,
    which joins a row to its record, significance rows and score intervals."""
    ok = df[df["status"] == "ok"]
    board = cells(ok)
    if board.empty:
        return pd.DataFrame(columns=[*CELL_COLUMNS, "cell_id"])
    board = board.rename(columns={"label": "precision"})
    s = scores(ok).dropna(subset=["normalized"])
    board = board.merge(s.groupby("cell_id")["normalized"].mean().rename("average"), on="cell_id", how="left")
    ab = abilities(ok)
    ability_cols = []
    if not ab.empty:
        wide = ab.pivot_table(index="cell_id", columns="ability", values="score", aggfunc="first")
        wide = wide[ability_order(wide.columns)].add_prefix("ability:")
        ability_cols = list(wide.columns)
        board = board.merge(wide, on="cell_id", how="left")

    top = ok[ok["top_level"].fillna(False).astype(bool)]
    task_cols = []
    for task in task_order(top["task"]):
        rows = top[top["task"] == task].sort_values(["primary", "metric", "filter"], ascending=[False, True, True])
        if rows["normalized"].notna().any():
            board = board.merge(rows.dropna(subset=["normalized"]).set_index("cell_id")["normalized"]
                                .rename(f"{task}:norm"), on="cell_id", how="left")
            task_cols.append(f"{task}:norm")
        for (metric, filt), g in rows.groupby(["metric", "filter"], sort=False):
            col = metric_column(task, metric, filt)
            board = board.merge(g.set_index("cell_id")["value"].rename(col), on="cell_id", how="left")
            task_cols.append(col)
    fidelity = [c for c in HELDOUT.values() if board[c].notna().any()]
    columns = [*CELL_COLUMNS, "precision", "params", "average", *ability_cols, *fidelity, *task_cols, "cell_id"]
    return board[columns].reset_index(drop=True)
