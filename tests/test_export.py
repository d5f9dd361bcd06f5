"""Exports on synthetic records: leaderboard and ability CSVs against golden files, Markdown/LaTeX tables, PNG plots.

The golden files were written by this code and checked by hand against the per-item verdicts in test_report.TINY
(e.g. 2-bit MMLU 2/8 = 0.25 = chance -> normalized 0). After a deliberate change, rewrite them with
``EVALSUITE_REGOLD=1 .venv/bin/pytest tests/test_export.py`` and review the diff.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_report import write_synthetic_run

from evalsuite import export, report

GOLDEN = Path(__file__).parent / "golden"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return write_synthetic_run(tmp_path_factory.mktemp("run"))


@pytest.mark.parametrize("name,build", [
    ("leaderboard_synthetic.csv", lambda df: report.leaderboard(df)),
    ("leaderboard_abilities.csv", lambda df: report.ability_pivot(df).reset_index()),
])
def test_csv_matches_golden(run_dir, tmp_path, name, build):
    path = tmp_path / name
    report.write_csv(build(report.load(run_dir)), path)
    if os.environ.get("EVALSUITE_REGOLD"):
        (GOLDEN / name).write_bytes(path.read_bytes())
    got, want = pd.read_csv(path), pd.read_csv(GOLDEN / name)
    assert list(got.columns) == list(want.columns)
    pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=1e-9)


def test_leaderboard_column_order(run_dir):
    cols = list(report.leaderboard(report.load(run_dir)).columns)
    assert cols[:11] == [*report.CELL_COLUMNS, "precision", "params", "average", "ability:icl", "ability:cot"]
    assert cols.index("kl_mean") < cols.index("mmlu_offline:norm") < cols.index("mmlu_offline:acc") \
        < cols.index("gsm8k_cot_offline:norm")
    assert "ppl_offline:norm" not in cols and "ppl_offline:word_perplexity" in cols


def test_markdown_and_latex_tables(run_dir):
    df = report.load(run_dir)
    sections = export.tables(df, report.paired_items(run_dir))
    assert any(t.startswith("Delta vs 16-bit") for t in sections) and "Failed cells" in sections
    md = export.to_markdown(sections)
    assert md.count("## ") == len(sections) and "| 2bit-rtn-g64 " in md and "mcnemar-exact" in md
    tex = export.to_latex(sections)
    assert tex.count(r"\begin{tabular}") == len(sections) and r"mmlu\_offline" in tex and "mmlu_offline" not in tex


def test_export_all_writes_every_file_and_non_empty_plots(run_dir):
    import matplotlib.image

    paths = export.export_all(run_dir)
    assert {p.name for p in paths} >= {"leaderboard.csv", "report.md", "report.tex", "significance.csv",
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
    for fig in (export.fig_score_vs_bits(df), export.fig_retention(df), export.fig_score_vs_size(df)):
        assert export.png_bytes(fig)[:4] == b"\x89PNG"


def test_export_all_refuses_an_empty_run(tmp_path):
    from evalsuite.errors import UsageError

    with pytest.raises(UsageError, match="no usable records"):
        export.export_all(tmp_path)


def test_export_all_without_matplotlib_writes_the_tables(tmp_path, monkeypatch):
    import importlib.util

    from test_report import TINY, write_cell

    write_cell(tmp_path, "a16", 16, TINY[16])
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    with pytest.warns(UserWarning, match="plots skipped"):
        paths = export.export_all(tmp_path)
    assert [p.suffix for p in paths] == [".csv", ".csv", ".csv", ".md", ".tex"] and not list(tmp_path.glob("*.png"))
