"""End to end on the real bundled model: eval -> records -> CSV; resume; equality with stock lm-eval."""
import json
import subprocess
import sys

import pandas as pd
import pytest
from conftest import E2E_ARGV as ARGV

from evalsuite.__main__ import main
from evalsuite.records import store

pytestmark = pytest.mark.slow


def test_records_and_csv(e2e_run):
    records, problems = store.read_run(e2e_run)
    assert problems == [] and len(records) == 2
    for rec in records:
        assert rec.status == "ok"
        assert store.samples_path(e2e_run, rec.cell_id).stat().st_size > 0
        assert rec.model.fingerprint.startswith("sha256:")
        assert rec.tasks["gsm8k_cot_offline"].n_shot == 7
        assert rec.provenance["versions"]["lm_eval"]
    csv = pd.read_csv(e2e_run / "leaderboard.csv")
    assert list(csv.columns[:6]) == ["model", "method", "bits", "group_size", "bits_per_weight", "packed_bytes"]
    assert sorted(csv["bits"]) == [4, 16]
    assert "mmlu_offline_smoke:acc" in csv.columns and "gsm8k_cot_offline:exact_match[strict-match]" in csv.columns
    four = csv[csv["bits"] == 4].iloc[0]
    assert four["group_size"] == 64 and four["bits_per_weight"] == pytest.approx(4 + 20 / 64)
    # 4-bit codes + fp16 scale + 4-bit zero per 64 weights for the linears; embeddings and norms stay 16-bit
    fp = next(r for r in records if r.spec.bits == 4).footprint
    assert four["packed_bytes"] == pytest.approx(fp["linear_params"] * (4 + 20 / 64) / 8 + 2 * fp["other_params"], abs=1)
    assert four["packed_bytes"] < csv[csv["bits"] == 16].iloc[0]["packed_bytes"] / 2


def test_second_run_recomputes_nothing(e2e_run, capsys):
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in e2e_run.glob("*.json")}
    assert main([*ARGV, "--results-dir", str(e2e_run.parent)]) == 0
    assert capsys.readouterr().err.count("skipped") == 2
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in e2e_run.glob("*.json")} == before


def test_baseline_matches_stock_lm_eval_cli(e2e_run, bundled_ref, tmp_path):
    """Stock `lm_eval --model hf` on the same task YAML and checkpoint gives the same MMLU accuracy."""
    out = tmp_path / "stock"
    subprocess.run(
        [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", f"pretrained={bundled_ref.path},dtype=float32",
         "--device", "cpu", "--tasks", "mmlu_offline_smoke", "--include_path", "tasks/offline", "--limit", "2",
         "--batch_size", "8", "--output_path", str(out)],
        check=True, capture_output=True, text=True,
    )
    stock = json.loads(next(out.rglob("results_*.json")).read_text())["results"]
    ours = next(r for r in store.read_run(e2e_run)[0] if r.spec.method == "none").results
    for task in stock:
        assert ours[task]["acc,none"] == pytest.approx(stock[task]["acc,none"], abs=1e-12), task


def test_offline_cot_and_if_suites_run_and_roll_up(tmp_path):
    """The CoT and instruction-following families end to end: one item per task, scored and rolled up."""
    assert main(["eval", "--bits", "16", "--suite", "cot,if", "--limit", "1", "--run", "abilities",
                 "--results-dir", str(tmp_path)]) == 0
    (rec,), problems = store.read_run(tmp_path / "abilities")
    assert problems == [] and rec.status == "ok"
    assert rec.tasks["gsm8k_cot_offline"].n_shot == 7 and rec.tasks["ifeval_offline"].n_shot == 0
    assert rec.results["bbh_cot_offline_navigate"]["sample_len"] == 1
    csv = pd.read_csv(tmp_path / "abilities" / "leaderboard.csv").iloc[0]
    res = rec.results
    for col, task, key in (("ifeval_offline:prompt_level_strict_acc", "ifeval_offline", "prompt_level_strict_acc,none"),
                           ("ifeval_offline:inst_level_loose_acc", "ifeval_offline", "inst_level_loose_acc,none"),
                           ("gsm8k_cot_offline:exact_match[flexible-extract]", "gsm8k_cot_offline", "exact_match,flexible-extract"),
                           ("bbh_cot_offline:exact_match[get-answer]", "bbh_cot_offline", "exact_match,get-answer")):
        assert csv[col] == pytest.approx(res[task][key], abs=1e-12), col
    # chance is 0 for generation: an ability is the mean of its tasks' raw primary scores
    cot = (res["gsm8k_cot_offline"]["exact_match,strict-match"] + res["bbh_cot_offline"]["exact_match,get-answer"]) / 2
    assert csv["ability:cot"] == pytest.approx(cot, abs=1e-12)
    assert csv["ability:if"] == pytest.approx(res["ifeval_offline"]["prompt_level_strict_acc,none"], abs=1e-12)
    assert pd.isna(csv.get("ability:icl"))  # no ICL task ran


MPO_ONLY_BLOCK_0 = ["--method", "mpo", "--bond-dim", "8", "--keep", "model.layers.[1-9]*"]
SMALL = ["--suite", "mmlu_offline_smoke", "--limit", "1"]


def test_mpo_is_compared_with_the_unquantized_cell_and_a_nan_cell_fails_the_run(tmp_path, monkeypatch, capsys):
    """An MPO run (its --bits 16 adds the baseline), then a 4-bit cell whose weights turn to NaN into the same run:
    the report's baseline is the method-none cell, the MPO row has no bit width, and the NaN cell is recorded as
    failed, listed, and makes the exit status 1 while the other cells stay done."""
    argv = ["eval", *SMALL, "--run", "mpo", "--results-dir", str(tmp_path)]
    assert main([*argv, *MPO_ONLY_BLOCK_0, "--bits", "16", "4"]) == 0
    records = {r.spec.method: r for r in store.read_run(tmp_path / "mpo")[0]}
    assert set(records) == {"none", "mpo"} and records["mpo"].spec.bits is None
    board = pd.read_csv(tmp_path / "mpo" / "leaderboard.csv").set_index("method")
    assert pd.isna(board.loc["mpo", "bits"]) and board.loc["none", "bits"] == 16
    sig = pd.read_csv(tmp_path / "mpo" / "significance.csv")
    assert set(sig["label"]) == {records["mpo"].spec.label} and (sig["n"] == 4).all()  # MPO against the baseline

    import quant.rtn

    real = quant.rtn.fake_quantize
    monkeypatch.setattr(quant.rtn, "fake_quantize", lambda w, *a, **k: real(w, *a, **k) * float("nan"))
    capsys.readouterr()
    assert main([*argv, "--bits", "16", "4"]) == 1
    err = capsys.readouterr().err
    assert "1 of 2 cells failed" in err and "4bit-rtn-g64" in err and "FloatingPointError" in err
    after = store.read_run(tmp_path / "mpo")[0]
    assert sorted(r.status for r in after) == ["failed", "ok", "ok"]
