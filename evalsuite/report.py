"""Records -> pandas. ``load`` gives the tidy frame (one row per cell x task x metric); everything else pivots it."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from evalsuite import store

CELL_COLUMNS = ["model", "method", "bits", "group_size", "bits_per_weight", "packed_bytes"]


def tidy(records: list[dict]) -> pd.DataFrame:
    rows = []
    for rec in records:
        spec = rec["spec"]
        base = {
            "cell_id": rec["cell_id"], "status": rec["status"], "model": spec["model"], "method": spec["method"],
            "bits": spec["bits"], "label": spec["quant"]["label"], "group_size": spec["quant"].get("group_size"),
            "suite": spec["suite"], "bits_per_weight": rec.get("footprint", {}).get("bits_per_weight"),
            "packed_bytes": rec.get("footprint", {}).get("packed_bytes"), "wall_s": rec.get("wall_s"),
        }
        if rec["status"] != "ok":
            rows.append({**base, "task": None, "metric": None, "value": None, "error": rec.get("error")})
            continue
        top = set(spec["tasks"])
        for task, metrics in rec["results"].items():
            for key, value in metrics.items():
                name, _, filt = key.partition(",")
                if name.endswith("_stderr") or name == "alias" or not isinstance(value, (int, float)):
                    continue
                stderr = metrics.get(f"{name}_stderr,{filt}")
                rows.append({
                    **base, "task": task, "top_level": task in top, "metric": name, "filter": filt,
                    "value": float(value), "stderr": float(stderr) if isinstance(stderr, (int, float)) else None,
                    "n": rec["tasks"].get(task, {}).get("n"),
                })
    return pd.DataFrame(rows)


def load(run_dir: str | Path) -> pd.DataFrame:
    """The tidy frame of every usable record in ``run_dir`` (unusable files are skipped; see store.read_run)."""
    records, _ = store.read_run(Path(run_dir))
    return tidy(records)


def metric_column(task: str, metric: str, filt: str) -> str:
    return f"{task}:{metric}" + ("" if filt in ("none", "", None) else f"[{filt}]")


def leaderboard(df: pd.DataFrame) -> pd.DataFrame:
    """One row per cell: the cell's identity columns, then one column per top-level task metric."""
    ok = df[(df["status"] == "ok") & df["top_level"].fillna(False).astype(bool)].copy()
    if ok.empty:
        return pd.DataFrame(columns=CELL_COLUMNS)
    ok["column"] = [metric_column(t, m, f) for t, m, f in zip(ok["task"], ok["metric"], ok["filter"])]
    wide = ok.pivot_table(index=["cell_id", *CELL_COLUMNS], columns="column", values="value", aggfunc="first", dropna=False)
    wide = wide.reset_index().drop(columns="cell_id")
    wide.columns.name = None
    return wide.sort_values(["model", "method", "bits"], ascending=[True, True, False], ignore_index=True)


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    store.write_atomic(path, frame.to_csv(index=False).encode())


def format_table(frame: pd.DataFrame) -> str:
    shown = frame.copy()
    if "packed_bytes" in shown:
        shown["packed_MB"] = (shown.pop("packed_bytes") / 1e6).round(1)
    return shown.to_string(index=False, float_format=lambda v: f"{v:.4g}")
