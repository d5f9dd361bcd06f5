"""Exports on synthetic records: leaderboard and ability tables against values derived by hand from the per-item
verdicts in test_report.TINY, Markdown/LaTeX tables, PNG plots."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from test_report import write_synthetic_run

from evalsuite import report

# Normalized scores by hand, (score - chance) / (1 - chance) clipped at 0: MMLU chance 1/4, generation chance 0.
# tiny MMLU 6/8, 5/8, 2/8 -> 2/3, 1/2, 0; GSM8K 3/5, 3/5, 0/5; IFEval 2/4, 2/4, 1/4. tiny-b MMLU 4/8, 3/8 -> 1/3, 1/6.
ABILITIES = {  # (model, ability) -> {precision: normalized score}
    ("tiny", "icl"): {"16bit": 2 / 3, "4bit-rtn-g64": 1 / 2, "2bit-rtn-g64": 0.0},
    ("tiny", "cot"): {"16bit": 3 / 5, "4bit-rtn-g64": 3 / 5, "2bit-rtn-g64": 0.0},
    ("tiny", "if"): {"16bit": 1 / 2, "4bit-rtn-g64": 1 / 2, "2bit-rtn-g64": 1 / 4},
    ("tiny-b", "icl"): {"16bit": 1 / 3, "4bit-gptq-g64": 1 / 6},
}
BOARD = {  # precision of model tiny -> (average, bits/weight = bits + 32 / 64, MMLU acc, GSM8K flexible, word ppl)
    "16bit": ((2 / 3 + 3 / 5 + 1 / 2) / 3, 16.0, 6 / 8, 4 / 5, 10.0),
    "4bit-rtn-g64": ((1 / 2 + 3 / 5 + 1 / 2) / 3, 4.5, 5 / 8, 4 / 5, 12.0),
    "2bit-rtn-g64": ((0 + 0 + 1 / 4) / 3, 2.5, 2 / 8, 1 / 5, 50.0),
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return write_synthetic_run(tmp_path_factory.mktemp("run"))


def test_ability_table_matches_the_hand_derived_scores(run_dir):
    wide = report.ability_pivot(report.load(run_dir))
    assert list(wide.columns) == ["16bit", "4bit-gptq-g64", "4bit-rtn-g64", "2bit-rtn-g64"]
    assert list(wide.index) == list(ABILITIES)
    for key, row in ABILITIES.items():
        for precision, value in row.items():
            assert wide.loc[key, precision] == pytest.approx(value, rel=1e-12), (key, precision)
        assert wide.loc[key].notna().sum() == len(row)


def test_leaderboard_matches_the_hand_derived_values(run_dir, tmp_path):
    path = tmp_path / "leaderboard.csv"
    report.write_csv(report.leaderboard(report.load(run_dir)), path)
    board = pd.read_csv(path)
    assert list(board["precision"]) == ["16bit", "4bit-rtn-g64", "2bit-rtn-g64", "16bit", "4bit-gptq-g64"]
    tiny = board[board["model"] == "tiny"].set_index("precision")
    for precision, (average, bpw, mmlu, flexible, ppl) in BOARD.items():
        row = tiny.loc[precision]
        assert (row["average"], row["bits_per_weight"], row["mmlu_offline:acc"]) == pytest.approx((average, bpw, mmlu))
        assert row["gsm8k_cot_offline:exact_match[flexible-extract]"] == pytest.approx(flexible)
        assert row["ppl_offline:word_perplexity"] == ppl and row["packed_bytes"] == int(1_000_000 * bpw / 8)
    assert tiny.loc["16bit", "bits"] == 16 and pd.isna(tiny.loc["16bit", "group_size"])


def test_leaderboard_column_order(run_dir):
    cols = list(report.leaderboard(report.load(run_dir)).columns)
    assert cols[:11] == [*report.CELL_COLUMNS, "precision", "params", "average", "ability:icl", "ability:cot"]
    assert cols.index("kl_mean") < cols.index("mmlu_offline:norm") < cols.index("mmlu_offline:acc") \
        < cols.index("gsm8k_cot_offline:norm")
    assert "ppl_offline:norm" not in cols and "ppl_offline:word_perplexity" in cols


def test_markdown_and_latex_tables(run_dir):
    df = report.load(run_dir)
    sections = report.tables(df, report.paired_items(run_dir))
    assert any(t.startswith("Delta vs the baseline") for t in sections) and "Failed cells" in sections
    md = report.to_markdown(sections)
    assert md.count("## ") == len(sections) and "| 2bit-rtn-g64 " in md and "mcnemar-exact" in md
    tex = report.to_latex(sections)
    assert tex.count(r"\begin{tabular}") == len(sections) and r"mmlu\_offline" in tex and "mmlu_offline" not in tex


def test_export_all_writes_every_file_and_non_empty_plots(run_dir):
    import matplotlib.image

    paths = report.export_all(run_dir)
    assert {p.name for p in paths} >= {"leaderboard.csv", "fidelity.csv", "report.md", "report.tex", "significance.csv",
                                      "score_vs_bits.png", "retention.png", "score_vs_size.png"}
    for p in paths:
        assert p.parent == run_dir and p.stat().st_size > 0
    assert not list(run_dir.glob(".tmp-*"))
    for p in (x for x in paths if x.suffix == ".png"):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        pixels = matplotlib.image.imread(p)[..., :3]
        assert pixels.shape[0] > 200 and np.std(pixels) > 0.05, p.name  # something was drawn
    assert len(pd.read_csv(run_dir / "significance.csv")) == 7  # tiny 4/2-bit x 3 tasks + tiny-b 4-bit MMLU


def test_plots_handle_a_run_with_only_a_baseline(tmp_path):
    from test_report import TINY, write_cell

    write_cell(tmp_path, "only16", 16, TINY[16])
    df = report.load(tmp_path)
    for fig in (report.fig_score_vs_bits(df), report.fig_retention(df), report.fig_score_vs_size(df)):
        assert report.png_bytes(fig)[:4] == b"\x89PNG"


def test_export_all_refuses_an_empty_run(tmp_path):
    from evalsuite.errors import UsageError

    with pytest.raises(UsageError, match="no usable records"):
        report.export_all(tmp_path)


def test_export_all_without_matplotlib_writes_the_tables(tmp_path, monkeypatch):
    import importlib.util

    from test_report import TINY, write_cell

    write_cell(tmp_path, "a16", 16, TINY[16])
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    with pytest.warns(UserWarning, match="plots skipped"):
        paths = report.export_all(tmp_path)
    assert [p.suffix for p in paths] == [".csv", ".csv", ".csv", ".csv", ".md", ".tex", ".html"] and not list(tmp_path.glob("*.png"))


def test_score_plot_has_intervals_chance_line_sample_sizes_and_log_fidelity_axes(run_dir):
    from matplotlib.container import ErrorbarContainer

    df = report.load(run_dir)
    from evalsuite.records import store

    records = store.read_run(run_dir)[0]
    intervals = report.ability_intervals(report.item_frame(run_dir, records))
    fig = report.fig_score_vs_bits(df, intervals)
    tiny_scores, tiny_fidelity = fig.axes[0], fig.axes[2]  # row 1: scores per model; row 2: fidelity per model
    labels = tiny_scores.get_legend_handles_labels()[1]
    assert "icl (n=8)" in labels and "cot (n=5)" in labels and "if (n=4)" in labels and "chance" in labels
    bars = [c for c in tiny_scores.containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == 3 and all(c.has_yerr for c in bars)
    chance = [line for line in tiny_scores.get_lines() if line.get_linestyle() == "--" and set(line.get_ydata()) == {0.0}]
    assert chance, "a dashed line at chance (normalized 0)"
    assert tiny_fidelity.get_yscale() == "log"
