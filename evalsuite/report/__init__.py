"""Records -> frames -> tables, statistics, plots and files. ``report.load(run_dir)`` gives the tidy frame (one row
per cell x task x metric); every other function shapes it (views), reads per-item values from the sample logs and
pairs them with the baseline's (items), tests them (stats), or writes them out (tables, plots, export).

May import: pandas, numpy, matplotlib (inside plots), jinja2 (inside html), evalsuite.records, evalsuite.spec.tasks (suites.yaml).
"""
from evalsuite.report.compare import compare
from evalsuite.report.export import export_all, png_bytes, write_csv
from evalsuite.report.frame import CELL_COLUMNS, baseline_ids, load, normalize, tidy
from evalsuite.report.items import item_frame, pair, paired_items
from evalsuite.report.plots import fig_retention, fig_score_vs_bits, fig_score_vs_size
from evalsuite.report.stats import (
    ability_intervals,
    flips,
    mcnemar_exact,
    paired_bootstrap,
    score_intervals,
    significance,
)
from evalsuite.report.tables import format_table, summary, tables, to_latex, to_markdown
from evalsuite.report.views import (
    abilities,
    ability_order,
    ability_pivot,
    cells,
    failures,
    fidelity,
    leaderboard,
    perplexity,
    retention_pivot,
    scores,
    task_order,
    with_baseline,
)

__all__ = [
    "CELL_COLUMNS", "abilities", "ability_intervals", "ability_order", "ability_pivot", "baseline_ids", "cells", "compare",
    "export_all",
    "failures", "fig_retention", "fig_score_vs_bits", "fig_score_vs_size", "flips", "format_table", "item_frame",
    "leaderboard", "load", "mcnemar_exact", "normalize", "pair", "paired_bootstrap", "paired_items", "perplexity",
    "png_bytes", "retention_pivot", "score_intervals", "scores", "significance", "summary", "tables", "task_order", "tidy",
    "to_latex", "to_markdown", "with_baseline", "write_csv",
]
