"""Figures of a run, as bare matplotlib Figures (no pyplot: no global state, no GUI backend, nothing to close).

matplotlib is imported inside these functions, so the CLI and the tables work without it. Cells are placed on the
precision axis by their bit width, or by their bits/weight when their method has none (MPO).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from evalsuite.report import views
from evalsuite.report.frame import BASELINE_METHOD
from evalsuite.report.tables import MB

LINE_STYLES = ["-", "--", ":", "-."]
DODGE = 2 ** 0.03  # abilities at one precision are drawn this factor apart on the log2 axis


def _figure(rows: int, cols: int, width: float = 5.0, height: float = 4.0):
    from matplotlib.figure import Figure

    rows, cols = max(rows, 1), max(cols, 1)
    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    return fig, fig.subplots(rows, cols, squeeze=False)


def _empty(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what} in this run", ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()


def _precision_axis(ax, positions) -> None:
    ticks = sorted(set(float(x) for x in positions))
    ax.set_xscale("log", base=2)
    ax.set_xticks(ticks, [f"{x:g}" if x == int(x) else f"{x:.2f}" for x in ticks])
    ax.minorticks_off()
    ax.set_xlabel("bit width (methods without one: bits/weight)")


def _family_lines(frame: pd.DataFrame):
    """(family, its rows with the baseline's) per method family: every family's line starts at the baseline."""
    families = sorted(set(frame["family"]) - {BASELINE_METHOD}) or [BASELINE_METHOD]
    for j, family in enumerate(families):
        yield j, family, len(families), frame[frame["family"].isin({family, BASELINE_METHOD})].sort_values("x")


def fig_score_vs_bits(df: pd.DataFrame, intervals: pd.DataFrame | None = None):
    """The paper's main figure, one column per model. Top: normalized score per ability against precision, each
    point with its 95% interval (``stats.ability_intervals``), a dashed line at chance, n= in the legend. Bottom:
    held-out perplexity and KL to the baseline on log axes."""
    ab = views.abilities(df)
    models = sorted(ab["model"].unique())
    fig, axes = _figure(2, len(models))
    if ab.empty:
        _empty(axes[0, 0], "ability scores")
        _empty(axes[1, 0], "held-out fidelity")
        return fig
    if intervals is not None and not intervals.empty:  # its n counts the items actually behind each score
        ab = ab.drop(columns="n").merge(intervals, on=["cell_id", "ability"], how="left")
    ab = ab.assign(x=views.position(ab))
    cells = views.cells(df)
    cells = cells[cells["status"] == "ok"].assign(x=lambda c: views.position(c))
    for col, model in enumerate(models):
        top, bottom = axes[0, col], axes[1, col]
        mine = ab[ab["model"] == model]
        order = views.ability_order(mine["ability"])
        for i, ability in enumerate(order):
            rows = mine[mine["ability"] == ability]
            rows = rows.assign(x=rows["x"] * DODGE ** (i - (len(order) - 1) / 2))  # side by side, bars apart
            for j, family, n_families, line in _family_lines(rows):
                name = ability if n_families == 1 else f"{ability} {family}"
                n = int(line["n"].max()) if line["n"].notna().any() else 0
                yerr = None
                if "ci_low" in line and line["ci_low"].notna().all():
                    yerr = np.vstack([line["score"] - line["ci_low"], line["ci_high"] - line["score"]]).clip(min=0)
                top.errorbar(line["x"], line["score"], yerr=yerr, marker="o", capsize=3, color=f"C{i}",
                             linestyle=LINE_STYLES[j % len(LINE_STYLES)], label=f"{name} (n={n})")
        top.axhline(0.0, color="grey", linestyle="--", linewidth=1, label="chance")
        _precision_axis(top, mine["x"])
        top.set_ylim(-0.05, max(1.0, float(mine.get("ci_high", mine["score"]).max()) + 0.05))
        top.set(title=model, ylabel="normalized score (0 = chance)")
        top.grid(alpha=0.3)
        top.legend(fontsize="x-small")
        _fidelity_panel(bottom, cells[cells["model"] == model])
    return fig


def _fidelity_panel(ax, cells: pd.DataFrame) -> None:
    """Held-out token perplexity (left) and KL(p_baseline || p) (right), both on log axes; KL 0 is not drawn."""
    if cells["heldout_ppl"].isna().all():
        _empty(ax, "held-out fidelity")
        return
    kl_ax = ax.twinx() if (cells["kl_mean"] > 0).any() else None
    for j, family, _, line in _family_lines(cells):
        style = LINE_STYLES[j % len(LINE_STYLES)]
        ax.plot(line["x"], line["heldout_ppl"], marker="o", color="C0", linestyle=style, label=f"ppl {family}")
        kl = line[line["kl_mean"] > 0]
        if kl_ax is not None and not kl.empty:
            kl_ax.plot(kl["x"], kl["kl_mean"], marker="s", color="C3", linestyle=style, label=f"KL {family}")
    ax.set_yscale("log")
    _precision_axis(ax, cells["x"])
    ax.set_ylabel("held-out token perplexity", color="C0")
    ax.grid(alpha=0.3)
    axes = [ax]
    if kl_ax is not None:
        kl_ax.set_yscale("log")
        kl_ax.set_ylabel("KL to the baseline (nats)", color="C3")
        axes.append(kl_ax)
    ax.legend(handles=[h for a in axes for h in a.get_legend_handles_labels()[0]], fontsize="x-small")


def fig_retention(df: pd.DataFrame):
    """Heatmap of retention (score / baseline score) per task and precision, one panel per model."""
    wide = views.retention_pivot(df)
    models = sorted(wide.index.get_level_values("model").unique()) if not wide.empty else []
    tasks_max = max((len(wide.loc[m]) for m in models), default=1)
    fig, axes = _figure(1, len(models), width=max(4.0, 1.2 + 1.1 * wide.shape[1]), height=max(3.0, 1.5 + 0.45 * tasks_max))
    if wide.empty:
        _empty(axes[0, 0], "baseline to compare with")
    for ax, model in zip(axes[0], models):
        grid = wide.loc[model].dropna(axis=1, how="all")
        image = ax.imshow(grid.to_numpy(float), cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto")
        ax.set_xticks(range(grid.shape[1]), grid.columns, rotation=30, ha="right")
        ax.set_yticks(range(grid.shape[0]), grid.index)
        for (r, c), v in np.ndenumerate(grid.to_numpy(float)):
            ax.text(c, r, "-" if np.isnan(v) else f"{v:.2f}", ha="center", va="center", fontsize="small")
        ax.set_title(f"{model}: retention vs the unquantized baseline")
        fig.colorbar(image, ax=ax, shrink=0.8)
    return fig


def fig_score_vs_size(df: pd.DataFrame):
    """Overall average normalized score against packed size, every cell a point coloured by method family; the
    dashed line per model is its Pareto front (no smaller cell scores higher)."""
    from matplotlib.ticker import FuncFormatter

    board = views.leaderboard(df)
    board = board.dropna(subset=["average", "packed_bytes"]) if "average" in board else board.iloc[0:0]
    fig, axes = _figure(1, 1, width=6.5, height=4.5)
    ax = axes[0, 0]
    if board.empty:
        _empty(ax, "scored cells with a size")
        return fig
    family_of = dict(zip(views.cells(df)["label"], views.cells(df)["family"]))
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
        ax.scatter([], [], color=f"C{families.index(family)}",
                   label="unquantized baseline" if family == BASELINE_METHOD else family)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set(xlabel="packed size (MB)", ylabel="average normalized score (0 = chance)", title="score vs size")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def fig_compensation(comp: pd.DataFrame):
    """Share of the 16-bit gap a fine-tune stage recovers ((ft - q) / (16 - q)) per bit width, one panel per model
    x fidelity metric (KL, held-out ppl, top-1 agreement), one line per method family x fine-tune mode."""
    metrics = [("kl_mean", "KL"), ("heldout_ppl", "held-out ppl"), ("top1_agreement", "top-1 agreement")]
    models = sorted(comp["model"].unique())
    fig, axes = _figure(max(len(models), 1), len(metrics), width=4.5, height=3.5)
    if comp.empty:
        _empty(axes[0, 0], "fine-tuned cell with an un-fine-tuned twin")
    for r, model in enumerate(models):
        rows = comp[comp["model"] == model]
        for ax, (metric, name) in zip(axes[r], metrics):
            for j, ((family, mode), line) in enumerate(rows.groupby(["family", "finetune"], sort=True)):
                line = line.sort_values("bits")
                ax.plot(line["bits"].astype(float), line[f"{metric}_recovered"], marker="o",
                        linestyle=LINE_STYLES[j % len(LINE_STYLES)], label=f"{family} +{mode}")
            ax.axhline(0.0, color="grey", linewidth=1)
            ax.axhline(1.0, color="grey", linestyle="--", linewidth=1)
            _precision_axis(ax, rows["bits"].astype(float))
            ax.set(title=f"{model}: {name}", ylabel="16-bit gap recovered")
            ax.grid(alpha=0.3)
            ax.legend(fontsize="x-small")
    return fig
