"""Report API on synthetic records with hand-checkable numbers: tidy frame, normalization, ability pivot,
retention, the paired significance test against known answers, flips. ``write_synthetic_run`` is the record
factory the export and notebook tests share."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from evalsuite import report
from evalsuite.records import store
from evalsuite.records.record import CellInfo, Heldout, ModelInfo, Record, TaskInfo

MMLU_SUBTASKS = ("mmlu_offline_anatomy", "mmlu_offline_virology")  # real members of the offline mmlu group

# Per-item right (1) / wrong (0) verdicts; scores are their means. Hand-computed consequences in the tests below.
TINY = {
    16: {"mmlu_offline": [1, 1, 1, 0, 1, 1, 1, 0], "gsm8k_cot_offline": [1, 1, 1, 0, 0], "ifeval_offline": [1, 1, 0, 0]},
    4: {"mmlu_offline": [1, 1, 0, 0, 1, 1, 1, 0], "gsm8k_cot_offline": [1, 1, 0, 1, 0], "ifeval_offline": [1, 0, 1, 0]},
    2: {"mmlu_offline": [0, 1, 0, 1, 0, 0, 0, 0], "gsm8k_cot_offline": [0, 0, 0, 0, 0], "ifeval_offline": [0, 0, 0, 1]},
}
TINY_PPL = {16: 10.0, 4: 12.0, 2: 50.0}
TINY_HELDOUT = {16: (9.0, 0.0, 1.0), 4: (9.5, 0.05, 0.95), 2: (30.0, 0.9, 0.6)}  # token_ppl, kl_mean, top1_agreement


def _label(bits, method, group_size):
    if method == "none":
        return "16bit"
    return f"{bits}bit-{method}-g{group_size}" if bits is not None else f"{method}-D{group_size}"


def _mean_se(values):
    v = np.asarray(values, float)
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(len(v)))


def _samples_and_results(task, values):
    """lm-eval-shaped per-item rows and results entries for one task."""
    rows, results = [], {}
    if task == "mmlu_offline":
        half = len(values) // 2
        for k, sub in enumerate(MMLU_SUBTASKS):
            part = values[k * half:(k + 1) * half]
            rows += [{"task": sub, "doc_id": i, "target": 0, "filter": "none", "metrics": ["acc"],
                      "doc_hash": f"{sub}-{i}", "acc": float(v),
                      "filtered_resps": [[-0.5, True], [-2.0, False]] if v else [[-2.0, False], [-0.5, True]]}
                     for i, v in enumerate(part)]
            m, se = _mean_se(part)
            results[sub] = {"name": sub, "alias": sub, "sample_len": half, "acc,none": m, "acc_stderr,none": se}
        m, se = _mean_se(values)
        results[task] = {"alias": task, "name": task, "sample_len": len(values), "acc,none": m, "acc_stderr,none": se,
                         "sample_count": {"acc,none": len(values)}}
    elif task == "gsm8k_cot_offline":
        flexible = [*values[:-1], 1]  # the flexible filter also finds the last item's number
        for filt, vals in (("strict-match", values), ("flexible-extract", flexible)):
            rows += [{"task": task, "doc_id": i, "target": "42", "filter": filt, "metrics": ["exact_match"],
                      "doc_hash": f"g-{i}", "filtered_resps": ["42" if v else "7"], "exact_match": float(v)}
                     for i, v in enumerate(vals)]
            m, se = _mean_se(vals)
            results.setdefault(task, {"alias": task})
            results[task].update({f"exact_match,{filt}": m, f"exact_match_stderr,{filt}": se})
    elif task == "ifeval_offline":
        rows += [{"task": task, "doc_id": i, "target": "", "filter": "none", "doc_hash": f"i-{i}",
                  "metrics": ["prompt_level_strict_acc", "inst_level_strict_acc"], "filtered_resps": ["..."],
                  "prompt_level_strict_acc": bool(v), "inst_level_strict_acc": [bool(v), True]} for i, v in enumerate(values)]
        results[task] = {"alias": task, "prompt_level_strict_acc,none": float(np.mean(values)),
                         "prompt_level_strict_acc_stderr,none": "N/A",
                         "inst_level_strict_acc,none": float(np.mean([[v, 1] for v in values]))}
    return rows, results


def make_record(cid, bits, items, *, model="tiny", method="rtn", group_size=64, ppl=None, heldout=None, status="ok",
                created=None, **spec):
    """One synthetic Record the way evalsuite.run writes it; its sample rows are ``synthetic_samples``."""
    method = "none" if bits == 16 and method == "rtn" else method
    tasks = [*items, *(["ppl_offline"] if ppl else [])]
    bpw = 16.0 if method == "none" else (bits or 5) + 32 / group_size
    info = CellInfo(**{"model": model, "method": method, "bits": bits, "label": _label(bits, method, group_size),
                       "quant": {"method": method, "bits": bits, "group_size": None if method == "none" else group_size},
                       "suite": "synthetic", "tasks": tasks, "limit": None, "seed": 1234, "backend": "hf",
                       "batch_size": 8, "chat_template": False, **spec})
    head = dict(cell_id=cid, spec=info, identity={"synthetic": cid}, wall_s=1.0, provenance={},
                created=created or f"2026-01-01T00:00:{(bits or 0):02d}+00:00")
    if status != "ok":
        return Record(status=status, error="RuntimeError: out of memory", **head)
    results = {}
    for task, values in items.items():
        results.update(_samples_and_results(task, values)[1])
    if ppl:
        results["ppl_offline"] = {"alias": "ppl_offline", "word_perplexity,none": ppl, "word_perplexity_stderr,none": "N/A",
                                  "bits_per_byte,none": round(math.log2(ppl) / 4, 6)}
    return Record(
        status="ok", results=results,
        tasks={t: TaskInfo(version=1, n_shot=0, n=len(items[t]) if t in items else len(items.get("mmlu_offline", ())) // 2 or 1)
               for t in results},
        group_subtasks={"mmlu_offline": list(MMLU_SUBTASKS)} if "mmlu_offline" in items else {},
        model=ModelInfo(name=model, kind="synthetic", source="-", fingerprint=cid, params=1_000_000),
        footprint={"bits_per_weight": bpw, "packed_bytes": int(1_000_000 * bpw / 8)},
        heldout=Heldout(tokens=4096, **dict(zip(("token_ppl", "kl_mean", "top1_agreement"), heldout or (9.0,)))),
        **head,
    )


def synthetic_samples(items, ppl=None):
    rows = [row for task, values in items.items() for row in _samples_and_results(task, values)[0]]
    if ppl:
        rows.append({"task": "ppl_offline", "doc_id": 0, "filter": "none", "doc_hash": "p-0",
                     "metrics": ["word_perplexity"], "word_perplexity": [-120.0, 50]})
    return rows


def write_cell(run_dir, cid, bits, items, ppl=None, **kwargs):
    """Write one synthetic record and its samples log the way evalsuite.run.cells does."""
    rec = make_record(cid, bits, items, ppl=ppl, **kwargs)
    if rec.ok:
        store.write_jsonl(store.samples_path(run_dir, cid), synthetic_samples(items, ppl))
    store.write_record(run_dir, rec)
    return rec


def write_synthetic_run(run_dir):
    """Model ``tiny`` at 16, 4 and 2 bit (RTN g64) plus a failed 3-bit cell; model ``tiny-b`` at 16 and 4 bit
    (GPTQ g64) on MMLU only, whose 4-bit cell must be compared with tiny-b's baseline, not tiny's."""
    for bits in (16, 4, 2):
        write_cell(run_dir, f"tiny{bits:02d}", bits, TINY[bits], ppl=TINY_PPL[bits], heldout=TINY_HELDOUT[bits])
    write_cell(run_dir, "tiny03", 3, {}, status="failed")
    write_cell(run_dir, "tinyb16", 16, {"mmlu_offline": [1, 0, 1, 0, 1, 0, 1, 0]}, model="tiny-b")
    write_cell(run_dir, "tinyb04", 4, {"mmlu_offline": [1, 0, 1, 0, 0, 0, 1, 0]}, model="tiny-b", method="gptq")
    return run_dir


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir = write_synthetic_run(tmp_path_factory.mktemp("run"))
    return run_dir, report.load(run_dir)


def test_normalize_is_open_llm_leaderboard_formula():
    assert report.normalize(0.55, 0.25) == pytest.approx(0.4)
    assert report.normalize(0.2, 0.25) == 0.0  # below chance clips to 0
    assert report.normalize(0.3, 0.0) == pytest.approx(0.3)
    assert report.normalize(1.0, 0.25) == pytest.approx(1.0)
    np.testing.assert_allclose(report.normalize([0.25, 0.625], 0.25), [0.0, 0.5])


def test_tidy_one_row_per_cell_task_metric_with_subtasks_flagged(run):
    _, df = run
    one = df[(df["cell_id"] == "tiny16")]
    assert not one.duplicated(["task", "metric", "filter"]).any()
    assert set(one["metric"]) == {"acc", "exact_match", "prompt_level_strict_acc", "inst_level_strict_acc",
                                  "word_perplexity", "bits_per_byte"}  # no sample_len, alias or stderr rows
    sub = one[one["task"] == "mmlu_offline_anatomy"]
    assert len(sub) == 1 and not sub["top_level"].iloc[0] and sub["value"].iloc[0] == 0.75
    gsm = one[one["task"] == "gsm8k_cot_offline"].set_index("filter")
    assert set(gsm.index) == {"strict-match", "flexible-extract"}
    assert gsm.loc["strict-match", "primary"] and not gsm.loc["flexible-extract", "primary"]
    assert gsm.loc["strict-match", "normalized"] == pytest.approx(0.6) and gsm.loc["strict-match", "stderr"] > 0
    ifeval = one[(one["task"] == "ifeval_offline") & one["primary"]].iloc[0]
    assert ifeval["ability"] == "if" and pd.isna(ifeval["stderr"])  # lm-eval's "N/A" stderr
    failed = df[df["cell_id"] == "tiny03"]
    assert len(failed) == 1 and failed["status"].iloc[0] == "failed" and "out of memory" in failed["error"].iloc[0]
    assert df.loc[df["cell_id"] == "tiny04", "baseline_id"].iloc[0] == "tiny16"
    assert df.loc[df["cell_id"] == "tinyb04", "baseline_id"].iloc[0] == "tinyb16"
    assert df.loc[df["cell_id"] == "tiny04", "family"].iloc[0] == "rtn-g64"
    assert df.loc[df["cell_id"] == "tiny02", "kl_mean"].iloc[0] == 0.9


def test_perplexity_is_not_normalized_and_kept_apart(run):
    _, df = run
    ppl = df[df["task"] == "ppl_offline"]
    assert ppl["normalized"].isna().all() and ppl["lower_is_better"].all()
    assert "ppl" not in set(report.abilities(df)["ability"])
    table = report.perplexity(df).set_index("label")
    assert table.loc["2bit-rtn-g64", "ppl_offline:word_perplexity"] == 50.0
    assert table.loc["4bit-rtn-g64", "heldout_ppl"] == 9.5


def test_ability_pivot_averages_normalized_task_scores(run):
    _, df = run
    wide = report.ability_pivot(df)
    assert list(wide.columns) == ["16bit", "4bit-gptq-g64", "4bit-rtn-g64", "2bit-rtn-g64"]
    tiny = wide.loc["tiny"]
    assert list(tiny.index) == ["icl", "cot", "if"]  # suites.yaml order
    assert tiny.loc["icl", "16bit"] == pytest.approx((0.75 - 0.25) / 0.75)
    assert tiny.loc["icl", "4bit-rtn-g64"] == pytest.approx(0.5)
    assert tiny.loc["icl", "2bit-rtn-g64"] == 0.0  # 0.25 = chance
    assert tiny.loc["cot", "4bit-rtn-g64"] == pytest.approx(0.6)
    assert tiny.loc["if", "2bit-rtn-g64"] == pytest.approx(0.25)
    assert np.isnan(tiny.loc["icl", "4bit-gptq-g64"])  # tiny has no GPTQ cell


def test_retention_and_delta_against_the_same_models_baseline(run):
    _, df = run
    r = report.with_baseline(df).set_index(["cell_id", "task"])
    assert r.loc[("tiny04", "mmlu_offline"), "retention"] == pytest.approx(0.625 / 0.75)
    assert r.loc[("tiny02", "gsm8k_cot_offline"), "retention"] == 0.0
    assert r.loc[("tiny02", "ppl_offline"), "retention"] == pytest.approx(10 / 50)  # lower is better: 16-bit / quantized
    assert r.loc[("tiny04", "mmlu_offline"), "delta"] == pytest.approx(-0.125)
    assert r.loc[("tinyb04", "mmlu_offline"), "retention"] == pytest.approx(0.375 / 0.5)  # tiny-b's own baseline
    assert "tiny16" not in r.index.get_level_values("cell_id")
    wide = report.retention_pivot(df)
    assert wide.loc[("tiny", "ifeval_offline"), "2bit-rtn-g64"] == pytest.approx(0.5)


def test_mcnemar_exact_known_answers():
    # discordant pairs 10 vs 2: p = 2 * P(X <= 2), X ~ Binomial(12, 1/2) = 2 * (1 + 12 + 66) / 4096
    assert report.mcnemar_exact(10, 2) == pytest.approx(158 / 4096)
    assert report.mcnemar_exact(2, 10) == pytest.approx(158 / 4096)
    assert report.mcnemar_exact(5, 5) == 1.0 and report.mcnemar_exact(0, 0) == 1.0
    assert report.mcnemar_exact(20, 0) == pytest.approx(2 * 0.5 ** 20)
    scipy_stats = pytest.importorskip("scipy.stats")
    for lost, gained in [(37, 21), (300, 250), (1, 0)]:
        expected = scipy_stats.binomtest(gained, lost + gained, 0.5).pvalue
        assert report.mcnemar_exact(lost, gained) == pytest.approx(expected, rel=1e-9)


def test_paired_bootstrap_ci_matches_normal_theory():
    # 400 items; the quantized model loses 40 and gains none: d in {0, -1}, mean -0.1, sd 0.3, se 0.015
    d = np.array([-1.0] * 40 + [0.0] * 360)
    lo, hi, p = report.paired_bootstrap(d, n_boot=4000, seed=1)
    assert lo == pytest.approx(-0.1 - 1.96 * 0.015, abs=0.004) and hi == pytest.approx(-0.1 + 1.96 * 0.015, abs=0.004)
    assert p < 0.001
    lo, hi, p = report.paired_bootstrap(np.zeros(50))
    assert (lo, hi, p) == (0.0, 0.0, 1.0)


def test_significance_and_flips_on_logged_items(run):
    run_dir, _ = run
    items = report.paired_items(run_dir)
    sig = report.significance(items).set_index(["cell_id", "task"])
    two = sig.loc[("tiny02", "mmlu_offline")]
    assert (two["n"], two["lost"], two["gained"]) == (8, 5, 1)  # pairs span both subtasks
    assert two["score16"] == 0.75 and two["score"] == 0.25 and two["delta"] == -0.5
    assert two["p_value"] == pytest.approx(2 * (1 + 6) / 64) and two["test"] == "mcnemar-exact"
    assert two["ci_low"] < -0.5 < two["ci_high"]  # p = 0.22: the CI may reach 0
    gsm = sig.loc[("tiny04", "gsm8k_cot_offline")]  # strict-match items only, not flexible-extract's
    assert (gsm["n"], gsm["lost"], gsm["gained"], gsm["p_value"]) == (5, 1, 1, 1.0)
    assert sig.loc[("tiny04", "ifeval_offline"), "lost"] == 1  # boolean per-item values count as right/wrong
    assert ("tiny04", "ppl_offline") not in sig.index  # no per-item right/wrong for perplexity
    assert sig.loc[("tinyb04", "mmlu_offline"), "lost"] == 1
    flipped = report.flips(items)
    two_mmlu = flipped[(flipped["label"] == "2bit-rtn-g64") & (flipped["task"] == "mmlu_offline")]
    assert sorted(two_mmlu["flip"]) == ["gained"] + ["lost"] * 5
    assert set(two_mmlu["subtask"]) == set(MMLU_SUBTASKS)
    assert set(zip(two_mmlu["flip"], two_mmlu["answer16"], two_mmlu["answer"])) == {("lost", "0", "1"), ("gained", "1", "0")}
    gsm = flipped[(flipped["label"] == "4bit-rtn-g64") & (flipped["task"] == "gsm8k_cot_offline")]
    assert set(zip(gsm["flip"], gsm["answer"])) == {("lost", "7"), ("gained", "42")}


def test_leaderboard_starts_with_issue_2_columns_and_skips_failed_cells(run):
    _, df = run
    board = report.leaderboard(df)
    assert list(board.columns[:8]) == [*report.CELL_COLUMNS, "precision", "params"]
    assert "3bit-rtn-g64" not in set(board["precision"])
    row = board.set_index("precision").loc["2bit-rtn-g64"]
    assert row["average"] == pytest.approx((0 + 0 + 0.25) / 3)
    assert row["mmlu_offline:acc"] == 0.25 and row["mmlu_offline:norm"] == 0.0
    assert row["top1_agreement"] == 0.6
    assert list(report.failures(df)["label"]) == ["3bit-rtn-g64"]


def test_empty_run_gives_empty_frames(tmp_path):
    df = report.load(tmp_path)
    assert df.empty and report.leaderboard(df).empty and report.ability_pivot(df).empty
    assert report.paired_items(tmp_path).empty and report.significance(report.paired_items(tmp_path)).empty


# ---- baselines are identified by method, never by bit width -------------------------------------------------------

def test_mpo_cell_is_compared_with_the_unquantized_cell_and_shows_no_bit_width(tmp_path):
    """The bug this replaces: an MPO record says no bit width, and the report once took 'the newest 16-bit record'
    as the baseline, so the 16-bit model was compared against MPO. Here MPO is written last (the newest)."""
    write_cell(tmp_path, "base", 16, TINY[16], created="2026-01-01T00:00:00+00:00")
    write_cell(tmp_path, "mpo", None, TINY[2], method="mpo", group_size=64, created="2026-01-01T00:09:00+00:00")
    df = report.load(tmp_path)
    assert df.loc[df["cell_id"] == "mpo", "baseline_id"].iloc[0] == "base"
    assert df.loc[df["cell_id"] == "base", "baseline_id"].iloc[0] == "base"
    sig = report.significance(report.paired_items(tmp_path)).set_index("task")
    assert sig.loc["mmlu_offline", "score16"] == 0.75 and sig.loc["mmlu_offline", "score"] == 0.25  # 16-bit vs MPO
    assert (sig.loc["mmlu_offline", "lost"], sig.loc["mmlu_offline", "gained"]) == (5, 1)
    assert report.retention_pivot(df).loc[("tiny", "mmlu_offline"), "mpo-D64"] == pytest.approx(0.25 / 0.75)
    flipped = report.flips(report.paired_items(tmp_path))
    assert set(flipped["label"]) == {"mpo-D64"}
    board = report.leaderboard(df).set_index("precision")
    assert pd.isna(board.loc["mpo-D64", "bits"]) and board.loc["16bit", "bits"] == 16
    assert list(board.index) == ["16bit", "mpo-D64"]  # placed by bits/weight (7) below 16
    report.write_csv(report.leaderboard(df), tmp_path / "board.csv")
    assert (tmp_path / "board.csv").read_text().splitlines()[2].split(",")[2] == ""  # the bits column is empty


def test_two_baselines_with_the_same_key_the_newest_by_the_second_wins(tmp_path):
    write_cell(tmp_path, "old", 16, TINY[16], created="2026-01-01T00:00:00+00:00")
    write_cell(tmp_path, "new", 16, TINY[4], created="2026-01-01T00:00:01+00:00")
    write_cell(tmp_path, "q4", 4, TINY[2])
    df = report.load(tmp_path)
    assert set(df.loc[df["cell_id"].isin(["q4", "old", "new"]), "baseline_id"]) == {"new"}


def test_a_failed_baseline_is_no_baseline(tmp_path):
    write_cell(tmp_path, "base", 16, TINY[16], status="failed")
    write_cell(tmp_path, "q4", 4, TINY[4])
    df = report.load(tmp_path)
    assert df.loc[df["cell_id"] == "q4", "baseline_id"].isna().all()
    assert report.with_baseline(df).empty and report.paired_items(tmp_path).empty


@pytest.mark.parametrize("field,value", [("limit", 5), ("seed", 7), ("backend", "evalsuite"), ("chat_template", True)])
def test_cells_differing_in_limit_seed_backend_or_chat_template_have_their_own_baselines(tmp_path, field, value):
    write_cell(tmp_path, "base", 16, TINY[16])
    write_cell(tmp_path, "base_other", 16, TINY[16], **{field: value})
    write_cell(tmp_path, "q4", 4, TINY[4])
    write_cell(tmp_path, "q4_other", 4, TINY[4], **{field: value})
    df = report.load(tmp_path).drop_duplicates("cell_id").set_index("cell_id")
    assert df.loc["q4", "baseline_id"] == "base" and df.loc["q4_other", "baseline_id"] == "base_other"


def test_compare_matches_cells_across_backends_and_lists_the_items_that_differ(tmp_path):
    """The same cell run by two backends: per-task agreement on the same items, and each differing item."""
    write_cell(tmp_path / "hf", "a16", 16, TINY[16])
    write_cell(tmp_path / "vllm", "b16", 16, TINY[4], backend="vllm")
    write_cell(tmp_path / "vllm", "b02", 2, TINY[2], backend="vllm")  # no counterpart in the other run
    summary, diffs = report.compare(tmp_path / "hf", tmp_path / "vllm")
    rows = summary.set_index("task")
    assert list(summary["label"]) == ["16bit"] * 3 and set(summary["backend_b"]) == {"vllm"}
    assert (rows.loc["mmlu_offline", "n"], rows.loc["mmlu_offline", "same_answer"]) == (8, 7 / 8)  # item 2 of anatomy
    assert rows.loc["gsm8k_cot_offline", "same_verdict"] == 3 / 5  # items 2 and 3 swap verdicts
    assert rows.loc["ifeval_offline", "same_answer"] == 1 and rows.loc["ifeval_offline", "same_verdict"] == 2 / 4
    assert sorted(zip(diffs["task"], diffs["doc_id"], diffs["answer_a"], diffs["answer_b"])) == [
        ("gsm8k_cot_offline", 2, "42", "7"), ("gsm8k_cot_offline", 3, "7", "42"), ("mmlu_offline", 2, "0", "1")]


def test_recovery_gates_list_cells_below_their_ratio_never_baselines(run):
    from evalsuite.report.gates import below_gates, gate_lines

    _, df = run
    below = below_gates(df, {"mmlu_offline": 0.8})
    labels = set(zip(below["model"], below["label"]))
    assert ("tiny-b", "4bit-gptq-g64") in labels  # 0.375 / 0.5 = 0.75 < 0.8
    assert ("tiny", "4bit-rtn-g64") not in labels  # 0.625 / 0.75 = 0.83
    assert not below["label"].str.startswith("16bit").any()
    assert "tiny-b 4bit-gptq-g64 synthetic mmlu_offline: 0.750 < 0.8" in gate_lines(below)[list(below["model"]).index("tiny-b")]
    assert below_gates(df, {"mmlu_offline": 0.7})["model"].tolist().count("tiny-b") == 0


def test_fidelity_puts_methods_side_by_side_by_bits_per_weight_with_quantization_time(tmp_path):
    """Quantized cells only, from the most bits/weight down; quantization time is the in-place step plus any packed
    checkpoint written, and None for a load-time method, which quantizes inside its load."""
    import dataclasses

    cells = {"base": (16, "rtn", 64, {}), "r4": (4, "rtn", 64, {"quantize_s": 0.5}),
             "h8": (8, "hqq", 64, {"quantize_s": 2.0}), "g3": (3, "gptq", 32, {"pack_s": 30.0, "quantize_s": 1.5}),
             "b4": (4, "bnb", 64, {"reference_s": 9.0, "load_s": 3.0, "quantize_s": 0.003})}
    for i, (cid, (bits, method, group, timing)) in enumerate(cells.items()):
        rec = make_record(cid, bits, {"mmlu_offline": [1, 0]}, method=method, group_size=group,
                          heldout=(10.0 + i, 0.1 * i, 1 - 0.1 * i))
        store.write_record(tmp_path, dataclasses.replace(rec, timing=timing))
    table = report.fidelity(report.load(tmp_path))
    assert list(table["label"]) == ["8bit-hqq-g64", "4bit-rtn-g64", "4bit-bnb-g64", "3bit-gptq-g32"]
    assert list(table["bits_per_weight"]) == [8.5, 4.5, 4.5, 4.0]  # the two 4.5s in order of perplexity
    assert table.set_index("label")["quantize_s"].to_dict() == pytest.approx(
        {"8bit-hqq-g64": 2.0, "4bit-rtn-g64": 0.5, "4bit-bnb-g64": math.nan, "3bit-gptq-g32": 31.5}, nan_ok=True)
    assert table["heldout_ppl"].tolist() == [12.0, 11.0, 14.0, 13.0] and "finetune_s" not in table
