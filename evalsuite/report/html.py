"""report.html: a run's report as one self-contained page (no network: CSS, script and figures inline) built from
the same frames as the CSV and Markdown files. Every text goes through Jinja2's autoescape: task text and model
outputs are untrusted. Flipped items are capped per cell, task and direction (all of them are in flips.csv) and
sit in closed <details>, so a sweep of a hundred cells stays a page a browser opens at once."""
from __future__ import annotations

import base64
import json
import math
from typing import Any

import pandas as pd

from evalsuite.records.record import Record
from evalsuite.report import views
from evalsuite.report.stats import flips
from evalsuite.report.tables import MB

FLIPS_SHOWN = 10  # per cell x task x direction: enough to read, bounds the page of a large sweep
FIGURES = {"score_vs_bits.png": "Normalized score per ability against precision (95% intervals), held-out fidelity",
           "retention.png": "Retention vs the unquantized baseline (score / baseline score)"}
FIDELITY = {"heldout_ppl": "ppl", "kl_mean": "KL", "top1_agreement": "top-1"}


def _number(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def _fmt(value: Any) -> str:
    """Four significant digits, as the Markdown tables show them; missing values empty."""
    v = _number(value)
    return "" if v is None else f"{v:.4g}"


def _cell(value: Any) -> dict[str, Any]:
    """A table cell: its text and the value the page sorts by (numbers by number, missing ones last); scores add
    their interval."""
    if isinstance(value, str):
        return {"text": value, "sort": value, "ci": None, "n": None, "chance": False}
    v = _number(value)
    return {"text": _fmt(v), "sort": "" if v is None else repr(v), "ci": None, "n": None, "chance": False}


def leaderboard_columns(board: pd.DataFrame) -> list[tuple[str, str]]:
    """(leaderboard column, header) in page order: identity and size, average, abilities, tasks, fidelity."""
    scores = ["average", *[c for c in board.columns if c.startswith("ability:")],
              *[c for c in board.columns if c.endswith(":norm")]]
    fidelity = [c for c in FIDELITY if c in board.columns]
    return [("model", "model"), ("method", "method"), ("bits", "bits"), ("bits_per_weight", "bits/weight"),
            ("packed_bytes", "size (MB)"), *[(c, c.removeprefix("ability:").removesuffix(":norm")) for c in scores],
            *[(c, FIDELITY[c]) for c in fidelity]]


def leaderboard_rows(board: pd.DataFrame, intervals: pd.DataFrame) -> list[dict[str, Any]]:
    """One row per ok cell; a score carries its 95% interval and whether that interval reaches chance (0)."""
    ci = {(r.cell_id, r.column): r for r in intervals.itertuples(index=False)}
    columns = leaderboard_columns(board)
    rows = []
    for _, row in board.iterrows():
        cells = []
        for col, _ in columns:
            cell = _cell(row[col] / MB if col == "packed_bytes" else row[col])
            interval = ci.get((row["cell_id"], col))
            if interval is not None:
                cell.update(ci=f"[{interval.ci_low:.2f}, {interval.ci_high:.2f}]", n=interval.n,
                            chance=interval.ci_low <= 0.0)
            cells.append({"column": col, **cell})
        rows.append({"cell_id": row["cell_id"], "label": row["precision"], "cells": cells})
    return rows


def significance_rows(sig: pd.DataFrame) -> list[dict[str, Any]]:
    return [{"model": r.model, "label": r.label, "task": r.task, "n": r.n, "score16": _fmt(r.score16),
             "score": _fmt(r.score), "delta": _fmt(r.delta), "ci": f"[{r.ci_low:.2f}, {r.ci_high:.2f}]",
             "p": _fmt(r.p_value), "significant": r.p_value < 0.05, "test": r.test,
             "lost": "" if pd.isna(r.lost) else int(r.lost), "gained": "" if pd.isna(r.gained) else int(r.gained)}
            for r in sig.itertuples(index=False)]


def flip_groups(pairs: pd.DataFrame, order: list[str]) -> list[dict[str, Any]]:
    """Per task, per quantized cell (in leaderboard ``order``): its lost and gained items, capped per direction."""
    flipped = flips(pairs, texts=True)
    groups = []
    for task in views.task_order(flipped["task"]):
        mine = flipped[flipped["task"] == task]
        cells = []
        for cid in sorted(mine["cell_id"].unique(), key=lambda c: order.index(c) if c in order else len(order)):
            rows = mine[mine["cell_id"] == cid]
            counts = rows["flip"].value_counts()
            shown = pd.concat([rows[rows["flip"] == d].head(FLIPS_SHOWN) for d in ("lost", "gained")])
            cells.append({"cell_id": cid, "model": rows["model"].iloc[0], "label": rows["label"].iloc[0],
                          "lost": int(counts.get("lost", 0)), "gained": int(counts.get("gained", 0)),
                          "hidden": len(rows) - len(shown),
                          "items": [{k: (None if pd.isna(v) else v) for k, v in item.items()}
                                    for item in shown.to_dict("records")]})
        groups.append({"task": task, "total": len(mine), "cells": cells})
    return groups


def _flat(data: Any, prefix: str = "") -> list[tuple[str, str]]:
    """Nested dicts as dotted keys; lists and other values as compact JSON."""
    if isinstance(data, dict):
        return [kv for k, v in data.items() for kv in _flat(v, f"{prefix}{k}.")]
    return [(prefix.rstrip("."), data if isinstance(data, str) else json.dumps(data, default=str))]


def provenance(rec: Record) -> list[tuple[str, list[tuple[str, str]]]]:
    """(section, key/value rows) of what a cell ran with; the footprint's per-layer details stay in the record."""
    spec = rec.spec
    sections = {
        "quant config": spec.quant,
        "run": {"suite": spec.suite, "tasks": spec.tasks, "limit": spec.limit, "seed": spec.seed,
                "backend": spec.backend, "batch_size": spec.batch_size, "chat_template": spec.chat_template,
                "created": rec.created, "wall_s": rec.wall_s, "timing": rec.timing},
        "model": vars(rec.model) if rec.model else None,
        "footprint": {k: v for k, v in (rec.footprint or {}).items() if k != "layers"},
        "eval": rec.eval, "memory": rec.memory, "environment": rec.provenance,
    }
    return [(title, _flat(data)) for title, data in sections.items() if data]


def figure_sources(figures: dict[str, bytes]) -> list[dict[str, str]]:
    return [{"title": title, "src": "data:image/png;base64," + base64.b64encode(figures[name]).decode()}
            for name, title in FIGURES.items() if name in figures]


def page(run_name: str, df: pd.DataFrame, records: list[Record], pairs: pd.DataFrame, sig: pd.DataFrame,
         intervals: pd.DataFrame, figures: dict[str, bytes]) -> str:
    """The page's HTML from what export_all computed: ``df`` the tidy frame, ``pairs`` ``items.pair``, ``sig``
    ``stats.significance``, ``intervals`` ``stats.score_intervals``, ``figures`` the PNG bytes it wrote (none
    without matplotlib: the page says so)."""
    from jinja2 import Environment, PackageLoader, StrictUndefined

    env = Environment(loader=PackageLoader("evalsuite.report", "templates"), autoescape=True,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    board = views.leaderboard(df)
    rows = leaderboard_rows(board, intervals)
    by_id = {r.cell_id: r for r in records}
    failed = views.failures(df)
    return env.get_template("report.html.j2").render(
        run=run_name, columns=leaderboard_columns(board), rows=rows,
        figures=figure_sources(figures), significance=significance_rows(sig),
        flips=flip_groups(pairs, [r["cell_id"] for r in rows]), flips_shown=FLIPS_SHOWN,
        cells=[(r["label"], by_id[r["cell_id"]].spec.model, provenance(by_id[r["cell_id"]])) for r in rows],
        failed=failed.to_dict("records"),
    )
