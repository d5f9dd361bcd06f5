"""The deployed quantizers beside the paper's, through the CLI on the real bundled model: AWQ, HQQ and GGUF cells
(a gguf-py type and a llama.cpp k-quant mix) in one sweep, each recorded, in the leaderboard and in the fidelity
table with the footprint its record holds. Budgets are tiny: this checks the plumbing; tests/test_awq.py,
test_hqq.py and test_gguf.py check each method's numbers against its reference."""
import pandas as pd
import pytest
import yaml

from evalsuite.__main__ import main
from evalsuite.records import store
from quant.gguf import llama_cpp_available

pytestmark = pytest.mark.slow

GGUF_TYPES = ["Q8_0", *(["Q4_K_M"] if llama_cpp_available() else [])]  # the k-quant mix needs llama.cpp
SWEEP = {
    "run": "methods", "models": ["smollm2-135m"], "suites": ["mmlu_offline_smoke"], "limit": 1,
    "methods": [
        {"method": "awq", "bits": [16, 4], "calib_n": 2, "calib_seqlen": 64, "n_grid": 4},
        {"method": "hqq", "bits": [4]},
        *({"method": "gguf", "bits": [int(t[1])], "gguf_type": t} for t in GGUF_TYPES),
    ],
}


def test_awq_hqq_and_gguf_cells_run_through_a_sweep_into_the_tables(tmp_path):
    config = tmp_path / "methods.yaml"
    config.write_text(yaml.safe_dump(SWEEP))
    assert main(["sweep", str(config), "--results-dir", str(tmp_path / "results")]) == 0
    run_dir = tmp_path / "results" / "methods"
    records, problems = store.read_run(run_dir)
    assert problems == [] and all(r.status == "ok" for r in records)
    by_label = {r.spec.label: r for r in records}
    expected = {"16bit", "4bit-awq-g64-grid4", "4bit-hqq-g64", *(f"{t[1]}bit-gguf-{t}" for t in GGUF_TYPES)}
    assert set(by_label) == expected
    board = pd.read_csv(run_dir / "leaderboard.csv").set_index("precision")
    fidelity = pd.read_csv(run_dir / "fidelity.csv").set_index("label")
    assert set(fidelity.index) == expected - {"16bit"}
    for label, rec in by_label.items():
        assert board.loc[label, "bits_per_weight"] == pytest.approx(rec.footprint["bits_per_weight"])
        assert board.loc[label, "packed_bytes"] == rec.footprint["packed_bytes"]
        assert rec.results["mmlu_offline_smoke"]["acc,none"] is not None
        if label != "16bit":
            assert fidelity.loc[label, "kl_mean"] == pytest.approx(rec.heldout.kl_mean) and rec.heldout.kl_mean > 0
            assert fidelity.loc[label, "quantize_s"] > 0
    assert by_label["4bit-hqq-g64"].footprint["bits_per_weight"] == 4.5  # 4-bit codes + fp16 scale and zero per 64
    assert by_label["8bit-gguf-Q8_0"].footprint["bits_per_weight"] == 8.5  # Q8_0: 32 int8 codes + one fp16 scale
