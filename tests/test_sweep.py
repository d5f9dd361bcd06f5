"""Sweeps: grid expansion, bad sweep files, and resume after kill -9, corruption and failure."""
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest
import yaml

from evalsuite import evaluate, store, sweep
from evalsuite.errors import UsageError
from quant import NoQuant
from quant.rtn import RTNConfig

SWEEP = {"run": "kill", "models": ["smollm2-135m"], "methods": [{"method": "rtn", "bits": [16, 4, 2]}],
         "suites": ["mmlu_offline_smoke"], "limit": 1}


def test_grid_puts_one_baseline_first_and_applies_model_defaults():
    doc = {**SWEEP, "methods": [{"method": "rtn", "bits": [4, 16]}, {"method": "rtn", "bits": [16, 3], "sym": True}]}
    cells = sweep.cells(doc)
    assert [c.quant for c in cells] == [NoQuant(), RTNConfig(bits=4, group_size=64), RTNConfig(bits=3, group_size=64, sym=True)]
    assert all(c.limit == 1 and c.tasks == ("mmlu_offline_smoke",) for c in cells)
    assert sweep.cells(doc, limit=7)[0].limit == 7


@pytest.mark.parametrize("path", sorted(pathlib.Path(__file__).parent.parent.glob("sweeps/*.yaml")), ids=lambda p: p.name)
def test_shipped_sweep_files_expand_to_distinct_cells_baseline_first(path):
    grid = sweep.cells(sweep.load(path))
    assert isinstance(grid[0].quant, NoQuant)
    assert len({(c.model, c.quant, c.tasks) for c in grid}) == len(grid)
    assert len({(c.model, c.quant.label(), c.suite) for c in grid}) == len(grid)  # labels tell every cell apart


@pytest.mark.parametrize("content,message", [
    ("models: [", "not valid YAML"),
    ("- a\n- b", "must be a mapping"),
    (yaml.safe_dump({**SWEEP, "modles": []}), "unknown key(s) modles"),
    (yaml.safe_dump({**SWEEP, "models": []}), "'models' must be a non-empty list"),
    (yaml.safe_dump({**SWEEP, "methods": [{"method": "rtn", "bits": ["four"]}]}), "bits must be whole numbers"),
    (yaml.safe_dump({**SWEEP, "methods": [{"bits": [4]}]}), "needs 'method' and 'bits'"),
    (yaml.safe_dump({**SWEEP, "suites": ["nope"]}), "unknown suite or task 'nope'"),
    (yaml.safe_dump({**SWEEP, "limit": -1}), "limit must be a positive"),
])
def test_bad_sweep_files_raise_one_clear_line(tmp_path, content, message):
    path = tmp_path / "s.yaml"
    path.write_text(content)
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        sweep.cells(sweep.load(path))


def _records(run_dir):
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in run_dir.glob("*.json")}


@pytest.mark.slow
def test_kill_9_mid_sweep_then_resume_loses_and_redoes_nothing(tmp_path):
    config = tmp_path / "kill.yaml"
    config.write_text(yaml.safe_dump(SWEEP))
    run_dir = tmp_path / "results" / "kill"
    cmd = [sys.executable, "-m", "evalsuite", "sweep", str(config), "--results-dir", str(tmp_path / "results"), "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 600
    while not _records(run_dir) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(1.0)  # well inside the second cell: its load + fidelity probe alone take seconds
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = _records(run_dir)
    assert 1 <= len(finished) < 3, "the kill should land mid-sweep"
    (run_dir / ".tmp-stray.json.abc").write_text("{half a rec")  # what a kill during a write leaves behind

    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    after = _records(run_dir)
    assert len(after) == 3
    assert {k: after[k] for k in finished} == finished  # finished cells untouched: mtime and content
    assert done.stderr.count("done before, skipped") == len(finished)
    records, problems = store.read_run(run_dir)
    assert problems == [] and all(r["status"] == "ok" for r in records)

    # a record that no longer parses is reported and its cell recomputed, never used
    victim = run_dir / sorted(after)[0]
    victim.write_text(victim.read_text()[:100])
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0 and "recomputing" in again.stderr
    assert store.read_record(victim)[1] is None


@pytest.mark.slow
def test_failed_cell_is_recorded_the_sweep_goes_on_and_retry_reruns_it(tmp_path, monkeypatch):
    cells = sweep.cells({**SWEEP, "methods": [{"method": "rtn", "bits": [16, 4]}]})
    real = evaluate.run_cell

    def flaky(cell, *args):
        if cell.quant != NoQuant():
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(cell, *args)

    monkeypatch.setattr(evaluate, "run_cell", flaky)
    logs = []
    recs = evaluate.run_cells(cells, tmp_path, log=logs.append)
    assert [r["status"] for r in recs] == ["ok", "failed"]
    assert recs[1]["error"] == "RuntimeError: CUDA out of memory (simulated)"
    assert json.loads(store.record_path(tmp_path, recs[1]["cell_id"]).read_text())["status"] == "failed"

    assert [r["status"] for r in evaluate.run_cells(cells, tmp_path, log=logs.append)] == ["ok", "failed"]
    monkeypatch.setattr(evaluate, "run_cell", real)
    assert [r["status"] for r in evaluate.run_cells(cells, tmp_path, log=logs.append, retry_failed=True)] == ["ok", "ok"]
