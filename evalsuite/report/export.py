"""A run's exports: leaderboard CSV, Markdown and LaTeX tables, PNG plots. ``export_all(run_dir)`` writes them all.

matplotlib is imported inside the plot functions, so the CLI and the tables work without it.
"""
from __future__ import annotations

import importlib.util
import io
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from evalsuite import report, store
from evalsuite.errors import UsageError

MB = 1e6


# ---- tables -------------------------------------------------------------------------------------------------------

def summary(board: pd.DataFrame) -> pd.DataFrame:
    """The leaderboard without the per-task columns: what fits on a page."""
    keep = [c for c in board.columns if ":" not in c or c.startswith("ability:")]
    out = board[keep].drop(columns=["method", "group_size"])
    out.insert(out.columns.get_loc("packed_bytes"), "size_MB", out.pop("packed_bytes") / MB)
    return out.rename(columns=lambda c: c.removeprefix("ability:"))


def tables(df: pd.DataFrame, items: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Titled tables of a run, in reading order; empty ones left out."""
    sig = report.significance(items).drop(columns="cell_id")
    sections = {
        "Leaderboard (normalized scores: 0 = chance, 1 = perfect)": summary(report.leaderboard(df)),
        "Ability x precision (mean normalized score)": report.ability_pivot(df).reset_index(),
        "Retention vs 16-bit (score / 16-bit score)": report.retention_pivot(df).reset_index(),
        "Delta vs 16-bit on paired items (95% bootstrap CI; p: exact McNemar for right/wrong items)": sig,
        "Perplexity (lower is better; not normalized)": report.perplexity(df),
        "Failed cells": report.failures(df),
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


# ---- plots --------------------------------------------------------------------------------------------------------

def _figure(n_panels: int, width: float = 5.0, height: float = 4.0):
    """A bare Figure (no pyplot: no global state, no GUI backend, nothing to close)."""
    from matplotlib.figure import Figure

    n = max(n_panels, 1)
    fig = Figure(figsize=(width * n, height), layout="constrained")
    return fig, fig.subplots(1, n, squeeze=False)[0]


def _empty(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what} in this run", ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()


def fig_score_vs_bits(df: pd.DataFrame):
    """Normalized score per ability against bit width, one panel per model, one line per ability and method
    family (the 16-bit baseline starts every family's line): the paper's main figure."""
    ab = report.abilities(df)
    models = sorted(ab["model"].unique())
    fig, axes = _figure(len(models))
    if ab.empty:
        _empty(axes[0], "ability scores")
    styles = ["-", "--", ":", "-."]
    for ax, model in zip(axes, models):
        mine = ab[ab["model"] == model]
        families = sorted(set(mine["family"]) - {"none"}) or ["none"]
        for i, ability in enumerate(report.ability_order(mine["ability"])):
            for j, family in enumerate(families):
                line = mine[(mine["ability"] == ability) & mine["family"].isin({family, "none"})].sort_values("bits")
                ax.plot(line["bits"], line["score"], marker="o", color=f"C{i}", linestyle=styles[j % len(styles)],
                        label=ability if len(families) == 1 else f"{ability} {family}")
        bits = sorted(mine["bits"].unique())
        ax.set_xscale("log", base=2)
        ax.set_xticks(bits, [str(b) for b in bits])
        ax.minorticks_off()
        ax.set_ylim(-0.02, max(1.0, mine["score"].max() + 0.05))
        ax.set(title=model, xlabel="bit width", ylabel="normalized score (0 = chance)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return fig


def fig_retention(df: pd.DataFrame):
    """Heatmap of retention (score / 16-bit score) per task and precision, one panel per model."""
    wide = report.retention_pivot(df)
    models = sorted(wide.index.get_level_values("model").unique()) if not wide.empty else []
    tasks_max = max((len(wide.loc[m]) for m in models), default=1)
    fig, axes = _figure(len(models), width=max(4.0, 1.2 + 1.1 * wide.shape[1]), height=max(3.0, 1.5 + 0.45 * tasks_max))
    if wide.empty:
        _empty(axes[0], "16-bit baseline to compare with")
    for ax, model in zip(axes, models):
        grid = wide.loc[model].dropna(axis=1, how="all")
        image = ax.imshow(grid.to_numpy(float), cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto")
        ax.set_xticks(range(grid.shape[1]), grid.columns, rotation=30, ha="right")
        ax.set_yticks(range(grid.shape[0]), grid.index)
        for (r, c), v in np.ndenumerate(grid.to_numpy(float)):
            ax.text(c, r, "-" if np.isnan(v) else f"{v:.2f}", ha="center", va="center", fontsize="small")
        ax.set_title(f"{model}: retention vs 16-bit")
        fig.colorbar(image, ax=ax, shrink=0.8)
    return fig


def fig_score_vs_size(df: pd.DataFrame):
    """Overall average normalized score against packed size, every cell a point coloured by method family; the
    dashed line per model is its Pareto front (no smaller cell scores higher)."""
    from matplotlib.ticker import FuncFormatter

    board = report.leaderboard(df)
    board = board.dropna(subset=["average", "packed_bytes"]) if "average" in board else board.iloc[0:0]
    fig, axes = _figure(1, width=6.5, height=4.5)
    ax = axes[0]
    if board.empty:
        _empty(ax, "scored cells with a size")
        return fig
    family_of = dict(zip(report.cells(df)["label"], report.cells(df)["family"]))
    families = sorted({family_of[p] for p in board["precision"]})
    markers = "osD^vP*X"
    for k, (model, mine) in enumerate(board.groupby("model")):
        for _, row in mine.iterrows():
            family = family_of[row["precision"]]
            ax.scatter(row["packed_bytes"] / MB, row["average"], color=f"C{families.index(family)}",
                       marker=markers[k % len(markers)], zorder=3)
            ax.annotate(row["precision"], (row["packed_bytes"] / MB, row["average"]), fontsize="x-small",
                        textcoords="offset points", xytext=(4, 3))
        front = mine.sort_values(["packed_bytes", "average"], ascending=[True, False])
        front = front[front["average"] > front["average"].cummax().shift(fill_value=-np.inf)]
        ax.step(front["packed_bytes"] / MB, front["average"], where="post", linestyle="--", color="grey", alpha=0.6,
                label="Pareto front" if k == 0 else None)
        ax.scatter([], [], marker=markers[k % len(markers)], color="black", label=model)
    for family in families:
        ax.scatter([], [], color=f"C{families.index(family)}", label="16-bit baseline" if family == "none" else family)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set(xlabel="packed size (MB)", ylabel="average normalized score (0 = chance)", title="score vs size")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def png_bytes(fig, dpi: int = 120) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def save_png(fig, path: Path) -> Path:
    store.write_atomic(path, png_bytes(fig))
    return path


# ---- everything ---------------------------------------------------------------------------------------------------

def export_all(run_dir: str | Path) -> list[Path]:
    """Write a run's leaderboard.csv, significance.csv, flips.csv, report.md, report.tex and, when matplotlib is
    installed (the ``plots`` extra), three PNG plots into ``run_dir``; return the paths written."""
    run_dir = Path(run_dir)
    df = report.load(run_dir)
    if df.empty:
        raise UsageError(f"no usable records in {run_dir}; run `make eval` or `make sweep` into it first")
    items = report.paired_items(run_dir)
    sections = tables(df, items)
    written = [run_dir / name
               for name in ("leaderboard.csv", "significance.csv", "flips.csv", "report.md", "report.tex")]
    report.write_csv(report.leaderboard(df), written[0])
    report.write_csv(report.significance(items), written[1])
    report.write_csv(report.flips(items), written[2])
    store.write_atomic(written[3], f"# Run {run_dir.name}\n\n{to_markdown(sections)}".encode())
    store.write_atomic(written[4], to_latex(sections).encode())
    if importlib.util.find_spec("matplotlib") is None:
        warnings.warn("matplotlib is not installed: plots skipped (pip install 'evalsuite[plots]')", stacklevel=2)
        return written
    for name, plot in (("score_vs_bits.png", fig_score_vs_bits), ("retention.png", fig_retention),
                       ("score_vs_size.png", fig_score_vs_size)):
        written.append(save_png(plot(df), run_dir / name))
    return written
