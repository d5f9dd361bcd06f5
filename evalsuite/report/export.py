"""A run's files: leaderboard, significance and flips CSVs, Markdown, LaTeX and HTML reports, PNG plots, all
written atomically from one read of the records. ``export_all(run_dir)`` writes them all."""
from __future__ import annotations

import importlib.util
import io
import warnings
from pathlib import Path

import pandas as pd

from evalsuite.errors import UsageError
from evalsuite.records import store
from evalsuite.report import html, plots, views
from evalsuite.report.compensation import compensation, compensation_significance
from evalsuite.report.frame import tidy
from evalsuite.report.items import item_frame, pair
from evalsuite.report.stats import ability_rows, flips, score_intervals, significance
from evalsuite.report.tables import tables, to_latex, to_markdown


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    store.write_atomic(Path(path), frame.to_csv(index=False).encode())


def png_bytes(fig, dpi: int = 120) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def export_all(run_dir: str | Path) -> list[Path]:
    """Write a run's leaderboard.csv, significance.csv, flips.csv, fidelity.csv, report.md, report.tex, with fine-tuned cells
    compensation.csv and compensation_significance.csv, when matplotlib is installed (the ``plots`` extra) three PNG
    plots (four with compensation.png), and last report.html into ``run_dir``; return the paths written."""
    run_dir = Path(run_dir)
    records, _ = store.read_run(run_dir)
    df = tidy(records)
    if df.empty:
        raise UsageError(f"no usable records in {run_dir}; run `make eval` or `make sweep` into it first")
    items = item_frame(run_dir, records)
    pairs = pair(items, records)
    sections, sig, intervals = tables(df, pairs), significance(pairs), score_intervals(items)
    files = {
        "leaderboard.csv": views.leaderboard(df).to_csv(index=False),
        "significance.csv": sig.to_csv(index=False),
        "flips.csv": flips(pairs).to_csv(index=False),
        "fidelity.csv": views.fidelity(df).to_csv(index=False),
        "report.md": f"# Run {run_dir.name}\n\n{to_markdown(sections)}",
        "report.tex": to_latex(sections),
    }
    comp = compensation(df, records)
    if not comp.empty:  # a run with fine-tuned cells: what each fine-tune stage recovered, and its significance
        files["compensation.csv"] = comp.to_csv(index=False)
        files["compensation_significance.csv"] = compensation_significance(items, records).to_csv(index=False)
    written = []
    for name, text in files.items():
        store.write_atomic(run_dir / name, text.encode())
        written.append(run_dir / name)
    figures = {}
    if importlib.util.find_spec("matplotlib") is None:
        warnings.warn("matplotlib is not installed: plots skipped (pip install 'evalsuite[plots]')", stacklevel=2)
    else:
        figures = {"score_vs_bits.png": plots.fig_score_vs_bits(df, ability_rows(intervals)),
                   "retention.png": plots.fig_retention(df), "score_vs_size.png": plots.fig_score_vs_size(df),
                   **({"compensation.png": plots.fig_compensation(comp)} if not comp.empty else {})}
        figures = {name: png_bytes(fig) for name, fig in figures.items()}
    for name, data in figures.items():
        store.write_atomic(run_dir / name, data)
        written.append(run_dir / name)
    page = html.page(run_dir.name, df, records, pairs, sig, intervals, figures)
    store.write_atomic(run_dir / "report.html", page.encode())
    return [*written, run_dir / "report.html"]
