"""Bad input: one line naming the problem and what is accepted, exit status 2, nothing written."""
import pytest

from evalsuite.__main__ import main

BAD = [
    (["--model", "nope"], "unknown model 'nope'"),
    (["--bits", "1"], "bits must be one of"),
    (["--bits", "7"], "bits must be one of"),
    (["--bits", "0"], "bits must be one of"),
    (["--bits", "17"], "bits must be one of"),
    (["--bits", "abc"], "--bits takes whole numbers"),
    (["--bits", "4", "--method", "nope"], "unknown method 'nope'"),
    (["--suite", "nope"], "unknown suite or task 'nope'"),
    (["--bits", "4", "--group-size", "128"], "group size 128 does not divide"),
    (["--limit", "-3"], "--limit takes a positive"),
    (["--limit", "0"], "--limit takes a positive"),
    (["--run", "../escape"], "must be a plain name"),
    (["--bits", "4", "--keep", "nothing.*"], "matches no linear"),
    (["--backend", "nope"], "--backend: invalid choice: 'nope'"),
    (["--model", "llama-7b"], "not in the local Hugging Face cache"),
    (["--frobnicate"], "unrecognized arguments"),
    (["--bits", "4", "--method", "gptq", "--group-size", "100"], "group size 100 does not divide"),
    (["--bits", "4", "--method", "gptq", "--keep", "attn_typo"], "matches no linear"),
    (["--bits", "4", "--method", "gptq", "--calib-seqlen", "1000000"], "fewer than one sequence of 1000000"),
    (["--bits", "4", "--method", "gptq", "--keep-outliers", "576"], "must be below the input width 576"),
    (["--bits", "4", "--method", "gptq", "--gptq-impl", "auto-gptq"], "auto-gptq cannot run here"),
    (["--bits", "4", "--method", "gptq", "--calib-source", "c4"], "reads C4 from the Hugging Face hub"),
    (["--bits", "8", "--method", "awq"], "AWQ bits must be one of 2, 3, 4"),
    (["--bits", "4", "--method", "awq", "--group-size", "128"], "group size 128 does not divide"),
    (["--bits", "4", "--method", "awq", "--n-grid", "1"], "--n-grid must be 2 or more"),
    (["--bits", "4", "--method", "awq", "--calib-seqlen", "1000000"], "fewer than one sequence of 1000000"),
    (["--backend", "vllm", "--bits", "4", "--method", "awq"], "MPO, AWQ, --keep"),
    (["--bits", "4", "--method", "mpo"], "exactly one of --bond-dim, --rel-error, --mpo-ratio"),
    (["--bits", "4", "--method", "bnb", "--bnb-type", "fp4", "--sym"], "method bnb takes no --sym"),
    (["--bits", "5", "--method", "hqq"], "HQQ bits must be one of 8, 4, 3, 2, 1"),
    (["--bits", "4", "--method", "hqq", "--group-size", "12"], "multiple of 8"),
    (["--bits", "4", "--method", "hqq", "--group-size", "128"], "group size 128 does not divide in_features=576"),
    (["--bits", "3", "--method", "hqq", "--group-size", "128"], "group size 128 does not divide out_features=576"),
    (["--bits", "4", "--method", "hqq", "--hqq-axis", "2"], "--hqq-axis: invalid choice: 2"),
    # what vLLM cannot serve, refused before anything loads, naming the way out
    (["--backend", "vllm", "--method", "mpo", "--bond-dim", "8"], "no packed checkpoint format vLLM runs"),
    (["--backend", "vllm", "--bits", "4", "--keep-outliers", "8"], "no packed checkpoint format vLLM runs"),
    (["--backend", "vllm", "--bits", "4", "--method", "gptq"], "native GPTQ have none"),
    (["--backend", "vllm", "--bits", "4"], "asymmetric groups with their minimum near 0"),
    (["--backend", "vllm", "--bits", "3", "--sym"], "serves 4-bit GPTQ only"),
    (["--backend", "vllm", "--bits", "4", "--method", "gptq", "--gptq-impl", "gptqmodel", "--sym"], "act-order"),
    (["--backend", "vllm", "--bits", "4", "--method", "bnb"], "no bitsandbytes kernels"),
    (["--backend", "vllm", "--bits", "4", "--method", "hqq"], "vLLM 0.32 has no HQQ kernels"),
]


@pytest.mark.parametrize("argv,message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(argv, message, tmp_path, capsys):
    results = tmp_path / "results"
    rc = main(["eval", *argv, "--results-dir", str(results)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and message in err[0], err
    assert not results.exists()


def test_hub_suite_without_a_hub_is_refused_before_any_load(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)  # the user has not said the datasets are cached
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rc = main(["eval", "--suite", "paper", "--bits", "16", "--results-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "read their datasets from the Hugging Face hub" in err[0] and "--suite offline" in err[0]
    assert not (tmp_path / "r").exists()


def test_table_of_missing_run_exits_2(tmp_path, capsys):
    assert main(["table", "--run", "nothing", "--results-dir", str(tmp_path)]) == 2
    assert "no results for run 'nothing'" in capsys.readouterr().err


def test_ls_lists_suites_methods_models(capsys):
    for what, expected in (("suites", "smoke"), ("methods", "rtn"), ("models", "smollm2-135m"), ("tasks", "gsm8k_cot_offline")):
        assert main(["ls", what]) == 0
        assert expected in capsys.readouterr().out


@pytest.fixture
def offline_copy(tmp_path, monkeypatch):
    """A private copy of tasks/offline that a test may break, swapped in for the real one."""
    import shutil

    from evalsuite.spec import tasks as spec

    copy = tmp_path / "offline"
    shutil.copytree(spec.OFFLINE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(spec, "OFFLINE_DIR", copy)
    spec.offline_index.cache_clear()
    yield copy
    spec.offline_index.cache_clear()


def test_malformed_task_data_names_file_and_line(offline_copy, tmp_path, capsys):
    data = offline_copy / "data" / "gsm8k" / "gsm8k_cot.jsonl"
    lines = data.read_text().splitlines()
    lines[2] = lines[2][:40]
    data.write_text("\n".join(lines) + "\n")
    rc = main(["eval", "--suite", "smoke", "--results-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and f"{data}:3: not valid JSON" in err[0]
    assert not (tmp_path / "r").exists()


def test_missing_task_data_file_is_named(offline_copy, tmp_path, capsys):
    (offline_copy / "data" / "ifeval" / "ifeval_offline.jsonl").unlink()
    assert main(["eval", "--suite", "if", "--results-dir", str(tmp_path / "r")]) == 2
    assert "ifeval_offline.jsonl is missing" in capsys.readouterr().err
