"""Records: the typed Record's round trip, atomic write, validation; cell ids; run names; suites."""
import dataclasses
import json
import os

import pytest
from test_report import TINY, make_record

from evalsuite.errors import UsageError
from evalsuite.records import store
from evalsuite.records.record import Record, RecordError
from evalsuite.report import tidy
from evalsuite.spec.cell import CellSpec, cell_id, check_run_name
from evalsuite.spec.options import make_quant_config
from evalsuite.spec.tasks import expand_suite
from quant import NoQuant
from quant.rtn import RTNConfig


def _record(cid="abc123", status="ok"):
    return make_record(cid, 16, TINY[16], status=status)


def test_record_round_trips_through_json_and_into_the_tidy_frame(tmp_path):
    rec = _record()
    path = store.write_record(tmp_path, rec)
    back, problem = store.read_record(path)
    assert problem is None and back == rec  # every nested dataclass rebuilt, nothing lost
    assert [p.name for p in tmp_path.iterdir()] == ["abc123.json"]
    frame = tidy([back])
    assert set(frame["task"].dropna()) >= {"mmlu_offline", "gsm8k_cot_offline", "ifeval_offline"}


def test_reader_names_a_missing_or_unknown_field(tmp_path):
    data = _record().to_dict()
    del data["spec"]["method"]
    (tmp_path / "abc123.json").write_text(json.dumps(data))
    assert store.read_run(tmp_path)[1] == [f"{tmp_path / 'abc123.json'}: missing field spec.method; its cell will be recomputed"]
    data = {**_record().to_dict(), "surprise": 1}
    with pytest.raises(RecordError, match="unknown field.*surprise"):
        Record.from_dict(data)
    no_heldout = {**_record().to_dict(), "heldout": None}
    with pytest.raises(RecordError, match="status ok without heldout"):
        Record.from_dict(no_heldout)


def test_a_field_added_to_the_record_reads_old_files_with_its_default():
    """Growing the schema: a dataclass with one field more still reads a record written without it."""
    Grown = dataclasses.make_dataclass("Grown", [("future_section", dict, dataclasses.field(default_factory=dict))],
                                       bases=(Record,), frozen=True)
    grown = Grown.from_dict(_record().to_dict())
    assert grown.future_section == {} and grown.cell_id == "abc123"


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
    (json.dumps({"schema": 2, "cell_id": "abc123"}), "missing field status"),
    (json.dumps({**_record().to_dict(), "schema": 1}), "schema 1 is not 2"),
    (json.dumps({**_record().to_dict(), "status": "ok", "results": None}), "without results"),
    (json.dumps(_record(cid="other").to_dict()), "does not match"),
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
    from quant.mpo import MPOConfig

    assert make_quant_config("mpo", 16, {"bond_dim": 8}) == NoQuant()
    assert make_quant_config("mpo", 4, {"bond_dim": 8}) == MPOConfig(bond_dim=8)  # no bit width of its own
    assert MPOConfig(bond_dim=8).bit_width is None and NoQuant().bit_width == 16
    assert make_quant_config("rtn", 16, {"group_size": 64}) == NoQuant()
    assert make_quant_config("rtn", 4, {"group_size": 64}) == RTNConfig(bits=4, group_size=64)
    with pytest.raises(UsageError, match="takes no --bogus"):
        make_quant_config("rtn", 4, {"bogus": 1})
