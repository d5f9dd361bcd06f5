"""The compensation view on synthetic records: each fine-tuned cell beside its un-fine-tuned twin and the baseline,
the share of the 16-bit gap recovered by hand, and paired significance against the twin, not the baseline."""
from __future__ import annotations

import dataclasses

import pandas as pd
import pytest

from evalsuite import report
from evalsuite.records import store
from evalsuite.report.compensation import compensation, compensation_significance, twin_ids
from tests.test_report import make_record, synthetic_samples

MMLU = {16: [1, 1, 1, 0, 1, 1, 1, 0], 3: [0, 1, 0, 1, 0, 0, 0, 0], "post": [1, 1, 0, 1, 1, 0, 1, 0],
        "pre": [0, 1, 0, 1, 0, 0, 0, 1]}
HELDOUT = {16: (9.0, 0.0, 1.0), 3: (20.0, 0.8, 0.6), "post": (13.0, 0.4, 0.8), "pre": (18.0, 0.7, 0.65)}


def write(run_dir, cid, bits, key, mode=None, group_size=64):
    rec = make_record(cid, bits, {"mmlu_offline": MMLU[key]}, heldout=HELDOUT[key], group_size=group_size,
                      **({"finetune": {"mode": mode, "objective": "distill" if mode == "lora-post" else "lm"},
                          "label": f"{bits}bit-rtn-g{group_size}+{mode}"} if mode else {}))
    if mode:
        adapter = 4096 if mode == "lora-post" else 0
        rec = dataclasses.replace(rec, finetune={"steps": 30, "tokens": 30 * 512, "wall_s": 12.5},
                                  footprint={**rec.footprint, "adapter_bytes": adapter})
    store.write_jsonl(store.samples_path(run_dir, cid), synthetic_samples({"mmlu_offline": MMLU[key]}))
    store.write_record(run_dir, rec)
    return rec


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("comp")
    write(run_dir, "base16", 16, 16)
    write(run_dir, "rtn3", 3, 3)
    write(run_dir, "rtn3post", 3, "post", "lora-post")
    write(run_dir, "rtn3pre", 3, "pre", "lora-pre")
    write(run_dir, "g128post", 3, "post", "lora-post", group_size=128)  # no un-fine-tuned g128 cell: no twin
    return run_dir


def test_twins_share_everything_but_the_finetune_stage(run):
    records, _ = store.read_run(run)
    assert twin_ids(records) == {"rtn3post": "rtn3", "rtn3pre": "rtn3"}


def test_gap_recovered_by_hand(run):
    records, _ = store.read_run(run)
    comp = compensation(report.tidy(records), records).set_index("cell_id")
    assert list(comp.index) == ["rtn3post", "rtn3pre"]  # sorted by mode within the family and bits
    post = comp.loc["rtn3post"]
    assert (post["heldout_ppl_16"], post["heldout_ppl_q"], post["heldout_ppl_ft"]) == (9.0, 20.0, 13.0)
    assert post["heldout_ppl_recovered"] == pytest.approx((13 - 20) / (9 - 20))
    assert post["kl_mean_recovered"] == pytest.approx(0.5)  # (0.4 - 0.8) / (0 - 0.8)
    assert post["top1_agreement_recovered"] == pytest.approx(0.5)
    # average normalized score (4 choices: chance 1/4): 16-bit 6/8, 3-bit 2/8, post 5/8
    norm = lambda acc: (acc - 0.25) / 0.75  # noqa: E731
    assert post["average_recovered"] == pytest.approx((norm(5 / 8) - norm(2 / 8)) / (norm(6 / 8) - norm(2 / 8)))
    assert (post["finetune"], post["steps"], post["train_s"], post["adapter_bytes"]) == ("lora-post", 30, 12.5, 4096)
    assert comp.loc["rtn3pre", "kl_mean_recovered"] == pytest.approx((0.7 - 0.8) / (0 - 0.8))


def test_significance_is_against_the_twin(run):
    records, _ = store.read_run(run)
    from evalsuite.report.items import item_frame

    sig = compensation_significance(item_frame(run, records), records).set_index("cell_id")
    post = sig.loc["rtn3post"]
    assert (post["score_q"], post["score_ft"], post["gained"], post["lost"]) == (2 / 8, 5 / 8, 3, 0)
    assert post["p_value"] == pytest.approx(report.mcnemar_exact(0, 3))
    assert set(sig.index) == {"rtn3post", "rtn3pre"}


def test_export_writes_the_compensation_files(run):
    written = {p.name for p in report.export_all(run)}
    assert {"compensation.csv", "compensation_significance.csv"} <= written
    assert pd.read_csv(run / "compensation.csv")["cell_id"].tolist() == ["rtn3post", "rtn3pre"]
    pytest.importorskip("matplotlib")
    assert "compensation.png" in written


def test_a_run_without_finetuned_cells_writes_no_compensation_files(tmp_path):
    write(tmp_path, "base16", 16, 16)
    write(tmp_path, "rtn3", 3, 3)
    assert not {"compensation.csv", "compensation.png"} & {p.name for p in report.export_all(tmp_path)}
