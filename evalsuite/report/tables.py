"""Tables of a run for people: the page-wide summary, the console table, and all sections as Markdown or LaTeX."""
from __future__ import annotations

import pandas as pd

from evalsuite.report import views
from evalsuite.report.stats import significance

MB = 1e6


def summary(board: pd.DataFrame) -> pd.DataFrame:
    """The leaderboard without the per-task columns: what fits on a page."""
    keep = [c for c in board.columns if ":" not in c or c.startswith("ability:")]
    out = board[keep].drop(columns=["method", "group_size", "cell_id"])
    out.insert(out.columns.get_loc("packed_bytes"), "size_MB", out.pop("packed_bytes") / MB)
    return out.rename(columns=lambda c: c.removeprefix("ability:"))


def tables(df: pd.DataFrame, pairs: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Titled tables of a run, in reading order; empty ones left out."""
    sig = significance(pairs).drop(columns="cell_id")
    sections = {
        "Leaderboard (normalized scores: 0 = chance, 1 = perfect)": summary(views.leaderboard(df)),
        "Ability x precision (mean normalized score)": views.ability_pivot(df).reset_index(),
        "Retention vs the unquantized baseline (score / baseline score)": views.retention_pivot(df).reset_index(),
        "Delta vs the baseline on paired items (95% bootstrap CI; p: exact McNemar for right/wrong items)": sig,
        "Perplexity (lower is better; not normalized)": views.perplexity(df),
        "Fidelity per bits/weight (held-out text vs the unquantized model; quantization seconds)": views.fidelity(df),
        "Failed cells": views.failures(df),
    }
    return {title: frame for title, frame in sections.items() if not frame.empty}


def to_markdown(sections: dict[str, pd.DataFrame]) -> str:
    def md(frame: pd.DataFrame) -> str:  # tabulate marks None as missing, not NaN
        return frame.astype(object).where(frame.notna(), None).to_markdown(index=False, floatfmt=".4g", missingval="-")

    return "".join(f"## {title}\n\n{md(frame)}\n\n" for title, frame in sections.items())


def to_latex(sections: dict[str, pd.DataFrame]) -> str:
    parts = []
    for title, frame in sections.items():
        body = frame.to_latex(index=False, escape=True, na_rep="--", float_format=lambda v: f"{v:.4g}")
        parts.append(f"% {title}\n\\begin{{table}}[ht]\n\\centering\n\\caption{{{_tex_escape(title)}}}\n"
                     f"{body}\\end{{table}}\n")
    return "\n".join(parts)


def _tex_escape(text: str) -> str:
    for char, escaped in (("\\", r"\textbackslash{}"), ("%", r"\%"), ("&", r"\&"), ("_", r"\_"), ("#", r"\#")):
        text = text.replace(char, escaped)
    return text


def format_table(frame: pd.DataFrame) -> str:
    """The console's table; a method without a bit width shows an empty ``bits``."""
    return frame.to_string(index=False, na_rep="", float_format=lambda v: f"{v:.4g}")
