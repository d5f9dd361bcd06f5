"""Records: atomic write, validation, round trip; cell ids; run names; suites."""
import json
import os

import pytest

from evalsuite import store
from evalsuite.errors import UsageError
from evalsuite.spec import CellSpec, cell_id, check_run_name, expand_suite, make_quant_config
from quant import NoQuant
from quant.rtn import RTNConfig


def _record(cid="abc123", status="ok"):
    return {"schema": store.SCHEMA_VERSION, "cell_id": cid, "status": status, "spec": {}, "identity": {},
            "results": {"t": {"acc,none": 0.5}}}


def test_write_json_roundtrip_leaves_no_temp_files(tmp_path):
    path = store.record_path(tmp_path, "abc123")
    store.write_json(path, _record())
    rec, problem = store.read_record(path)
    assert problem is None and rec["results"]["t"]["acc,none"] == 0.5
    assert [p.name for p in tmp_path.iterdir()] == ["abc123.json"]


def test_write_killed_mid_way_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "x.json"
    store.write_json(path, {"v": 1})

    def crash(fd):
        raise OSError("disk gone")

    monkeypatch.setattr(store.os, "fsync", crash)  # fails after the bytes are written, before the rename
    with pytest.raises(OSError):
        store.write_json(path, {"v": 2})
    assert json.loads(path.read_text()) == {"v": 1}
    assert sorted(os.listdir(tmp_path)) == ["x.json"]


@pytest.mark.parametrize("content,why", [
    ("{not json", "unreadable"),
    ("[]", "not a JSON object"),
    (json.dumps({"schema": 1, "cell_id": "abc123"}), "missing"),
    (json.dumps({**_record(), "status": "ok", "results": None}), "without results"),
    (json.dumps(_record(cid="other")), "does not match"),
])
def test_unusable_records_are_reported_not_used(tmp_path, content, why):
    (tmp_path / "abc123.json").write_text(content)
    records, problems = store.read_run(tmp_path)
    assert records == [] and len(problems) == 1 and why in problems[0]


def test_cell_id_changes_with_every_input_but_batch_size():
    base = CellSpec(model="m", quant=RTNConfig(bits=4, group_size=64), suite="smoke", tasks=("mmlu_offline_smoke",))
    ident = base.identity("sha256:x")
    assert cell_id(ident) == cell_id(CellSpec(**{**base.__dict__, "batch_size": 32}).identity("sha256:x"))
    variants = [
        base.identity("sha256:y"),
        CellSpec(**{**base.__dict__, "quant": RTNConfig(bits=3, group_size=64)}).identity("sha256:x"),
        CellSpec(**{**base.__dict__, "quant": RTNConfig(bits=4, group_size=32)}).identity("sha256:x"),
        CellSpec(**{**base.__dict__, "limit": 5}).identity("sha256:x"),
        CellSpec(**{**base.__dict__, "seed": 1}).identity("sha256:x"),
        CellSpec(**{**base.__dict__, "backend": "hf"}).identity("sha256:x"),
        CellSpec(**{**base.__dict__, "tasks": ("gsm8k_cot_offline",)}).identity("sha256:x"),
    ]
    ids = {cell_id(v) for v in variants}
    assert len(ids) == len(variants) and cell_id(ident) not in ids


@pytest.mark.parametrize("name", ["../x", "a/b", "/abs", "..", "", ".hidden", "x" * 101])
def test_run_names_cannot_escape_results(name):
    with pytest.raises(UsageError):
        check_run_name(name)


def test_suite_expansion_nests_dedups_and_rejects_unknown():
    assert expand_suite("smoke") == ("mmlu_offline_smoke", "gsm8k_cot_offline")
    assert expand_suite("icl,cot") == ("mmlu_offline", "bbh_offline", "gsm8k_cot_offline", "bbh_cot_offline")
    assert expand_suite("smoke,gsm8k_cot_offline") == ("mmlu_offline_smoke", "gsm8k_cot_offline")
    assert "ppl_offline" in expand_suite("offline")
    with pytest.raises(UsageError, match="unknown suite or task 'nope'.*smoke"):
        expand_suite("smoke,nope")


def test_sixteen_bits_is_the_baseline_for_every_method():
    assert make_quant_config("rtn", 16, {"group_size": 64}) == NoQuant()
    assert make_quant_config("rtn", 4, {"group_size": 64}) == RTNConfig(bits=4, group_size=64)
    with pytest.raises(UsageError, match="takes no --bogus"):
        make_quant_config("rtn", 4, {"bogus": 1})
