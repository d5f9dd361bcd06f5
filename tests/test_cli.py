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
    (["--backend", "nope"], "unknown backend"),
    (["--model", "llama-7b"], "not in the local Hugging Face cache"),
    (["--frobnicate"], "unrecognized arguments"),
]


@pytest.mark.parametrize("argv,message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(argv, message, tmp_path, capsys):
    results = tmp_path / "results"
    rc = main(["eval", *argv, "--results-dir", str(results)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and message in err[0], err
    assert not results.exists()


def test_table_of_missing_run_exits_2(tmp_path, capsys):
    assert main(["table", "--run", "nothing", "--results-dir", str(tmp_path)]) == 2
    assert "no results for run 'nothing'" in capsys.readouterr().err


def test_ls_lists_suites_methods_models(capsys):
    for what, expected in (("suites", "smoke"), ("methods", "rtn"), ("models", "smollm2-135m"), ("tasks", "gsm8k_cot_offline")):
        assert main(["ls", what]) == 0
        assert expected in capsys.readouterr().out
