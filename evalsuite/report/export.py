"""A run's files: leaderboard, significance and flips CSVs, Markdown and LaTeX reports, PNG plots, all written
atomically from one read of the records. ``export_all(run_dir)`` writes them all."""
from __future__ import annotations

import importlib.util
import io
import warnings
from pathlib import Path

import pandas as pd

from evalsuite.errors import UsageError
from evalsuite.records import store
from evalsuite.report import plots, views
from evalsuite.report.frame import tidy
from evalsuite.report.items import item_frame, pair
from evalsuite.report.stats import ability_intervals, flips, significance
from evalsuite.report.tables import tables, to_latex, to_markdown


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    store.write_atomic(Path(path), frame.to_csv(index=False).encode())


def png_bytes(fig, dpi: int = 120) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def export_all(run_dir: str | Path) -> list[Path]:
    """Write a run's leaderboard.csv, significance.csv, flips.csv, report.md, report.tex and, when matplotlib is
    installed (the ``plots`` extra), three PNG plots into ``run_dir``; return the paths written."""
    run_dir = Path(run_dir)
    records, _ = store.read_run(run_dir)
    df = tidy(records)
    if df.empty:
        raise UsageError(f"no usable records in {run_dir}; run `make eval` or `make sweep` into it first")
    items = item_frame(run_dir, records)
    pairs = pair(items, records)
    sections = tables(df, pairs)
    files = {
        "leaderboard.csv": views.leaderboard(df).to_csv(index=False),
        "significance.csv": significance(pairs).to_csv(index=False),
        "flips.csv": flips(pairs).to_csv(index=False),
        "report.md": f"# Run {run_dir.name}\n\n{to_markdown(sections)}",
        "report.tex": to_latex(sections),
    }
    written = []
    for name, text in files.items():
        store.write_atomic(run_dir / name, text.encode())
        written.append(run_dir / name)
    if importlib.util.find_spec("matplotlib") is None:
        warnings.warn("matplotlib is not installed: plots skipped (pip install 'evalsuite[plots]')", stacklevel=2)
        return written
    figures = {"score_vs_bits.png": plots.fig_score_vs_bits(df, ability_intervals(items)),
               "retention.png": plots.fig_retention(df), "score_vs_size.png": plots.fig_score_vs_size(df)}
    for name, fig in figures.items():
        store.write_atomic(run_dir / name, png_bytes(fig))
        written.append(run_dir / name)
    return written
