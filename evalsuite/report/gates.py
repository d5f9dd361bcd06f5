"""Recovery gates, as llm-compressor's lm-eval tests use them: a task's score in a quantized cell over the same
task's score in its baseline (method none of the same model, suite, limit, seed, backend) must reach the gate."""
from __future__ import annotations

import pandas as pd

from evalsuite.report.views import with_baseline

GATE_COLUMNS = ["model", "label", "suite", "task", "value", "value16", "retention", "gate"]


def below_gates(df: pd.DataFrame, gates: dict[str, float]) -> pd.DataFrame:
    """Every cell x gated task below its gate, or with no ratio to check (its baseline scored 0)."""
    r = with_baseline(df)
    r = r[r["task"].isin(gates)].assign(gate=lambda f: f["task"].map(gates))
    return r.loc[~(r["retention"] >= r["gate"]), GATE_COLUMNS].reset_index(drop=True)


def gate_lines(below: pd.DataFrame) -> list[str]:
    return [f"{row.model} {row.label} {row.suite} {row.task}: "
            + (f"{row.retention:.3f} < {row.gate:g}" if pd.notna(row.retention) else f"no ratio (baseline {row.value16:g})")
            + f" (score {row.value:g}, baseline {row.value16:g})" for row in below.itertuples()]
