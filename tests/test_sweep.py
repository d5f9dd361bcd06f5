"""Sweeps: grid expansion, bad sweep files, and resume after kill -9, corruption and failure."""
import json
import os
import pathlib
import signal
import subprocess
import sys

import pytest
import yaml

from evalsuite.errors import UsageError
from evalsuite.records import store
from evalsuite.run import cells as run_cells_module
from evalsuite.run import executors
from evalsuite.run.preflight import preflight
from evalsuite.spec import sweep
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
    assert len({(c.model, c.quant, c.tasks, c.finetune) for c in grid}) == len(grid)
    assert len({(c.model, c.label(), c.suite) for c in grid}) == len(grid)  # labels tell every cell apart


@pytest.mark.parametrize("content,message", [
    ("models: [", "not valid YAML"),
    ("- a\n- b", "must be a mapping"),
    (yaml.safe_dump({**SWEEP, "modles": []}), "unknown key(s) modles"),
    (yaml.safe_dump({**SWEEP, "models": []}), "'models' must be a non-empty list"),
    (yaml.safe_dump({**SWEEP, "methods": [{"method": "rtn", "bits": ["four"]}]}), "bits must be whole numbers"),
    (yaml.safe_dump({**SWEEP, "methods": [{"bits": [4]}]}), "needs 'method' and 'bits'"),
    (yaml.safe_dump({**SWEEP, "suites": ["nope"]}), "unknown suite or task 'nope'"),
    (yaml.safe_dump({**SWEEP, "limit": -1}), "limit must be a positive"),
    (yaml.safe_dump({**SWEEP, "methods": [{"method": "rtn", "bits": [4], "bond_dim": 8}]}), "unknown option 'bond_dim'"),
    (yaml.safe_dump({**SWEEP, "methods": [{"method": "rtn", "bits": [4], "group_size": "64"}]}), "group_size must be int"),
    (yaml.safe_dump({**SWEEP, "methods": [{"method": "gptq", "bits": [4], "calib_source": "web"}]}), "calib_source must be one of"),
    (yaml.safe_dump({**SWEEP, "backend": "nope"}), "unknown backend 'nope'"),
])
def test_bad_sweep_files_raise_one_clear_line(tmp_path, content, message):
    path = tmp_path / "s.yaml"
    path.write_text(content)
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        sweep.cells(sweep.load(path))


def _records(run_dir):
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in store.record_files(run_dir)}


NOISE = ("Failed to load", "_pytree", "Custom kwargs", "model kwarg is not of type")


@pytest.mark.slow
def test_kill_9_mid_sweep_then_resume_loses_and_redoes_nothing(tmp_path):
    config = tmp_path / "kill.yaml"
    config.write_text(yaml.safe_dump(SWEEP))
    run_dir = tmp_path / "results" / "kill"
    cmd = [sys.executable, "-m", "evalsuite", "sweep", str(config), "--results-dir", str(tmp_path / "results")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    seen = []
    for line in proc.stderr:  # our progress lines: kill on an observed event, not after a guessed delay
        seen.append(line)
        if line.startswith("[2/3]") and "running" in line:
            break
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = _records(run_dir)
    assert len(finished) == 1, seen  # the first cell's record exists; the second was killed mid-cell
    cid = next(iter(finished)).removesuffix(".json")
    stray = run_dir / f".tmp-{cid}.json"  # what a kill during a write could leave behind, ending in .json
    stray.write_text("{half a rec")

    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    after = _records(run_dir)
    assert len(after) == 3 and stray.exists() and stray.name not in after  # never read as a record
    assert {k: after[k] for k in finished} == finished  # finished cells untouched: mtime and content
    assert done.stderr.count("done before, skipped") == 1
    records, problems = store.read_run(run_dir)
    assert problems == [] and all(r.status == "ok" for r in records)
    # the console: our progress lines only; library noise went to the run's log
    assert not [line for line in done.stderr.splitlines() if any(n in line for n in NOISE)], done.stderr
    assert all(line.startswith("[") for line in done.stderr.splitlines() if line.strip()), done.stderr
    assert any(n in (run_dir / "log.txt").read_text() for n in NOISE)

    # a record that no longer parses is reported and its cell recomputed, never used
    victim = run_dir / sorted(after)[0]
    victim.write_text(victim.read_text()[:100])
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0 and "recomputing" in again.stderr
    assert store.read_record(victim)[1] is None


@pytest.mark.slow
def test_failed_cell_is_recorded_the_sweep_goes_on_and_retry_reruns_it(tmp_path, monkeypatch):
    cells = sweep.cells({**SWEEP, "methods": [{"method": "rtn", "bits": [16, 4]}]})
    refs = preflight(cells)
    real = executors.run_cell

    def flaky(cell, *args):
        if cell.quant != NoQuant():
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(cell, *args)

    monkeypatch.setattr(executors, "run_cell", flaky)
    logs = []
    recs = run_cells_module.run_cells(cells, tmp_path, refs, log=logs.append)
    assert [r.status for r in recs] == ["ok", "failed"]
    assert recs[1].error == "RuntimeError: CUDA out of memory (simulated)"
    assert json.loads(store.record_path(tmp_path, recs[1].cell_id).read_text())["status"] == "failed"
    assert run_cells_module.failure_lines(recs) == [f"smollm2-135m 4bit-rtn-g64 mmlu_offline_smoke ({recs[1].cell_id}): "
                                                    "RuntimeError: CUDA out of memory (simulated)"]

    assert [r.status for r in run_cells_module.run_cells(cells, tmp_path, refs, log=logs.append)] == ["ok", "failed"]
    monkeypatch.setattr(executors, "run_cell", real)
    again = run_cells_module.run_cells(cells, tmp_path, refs, log=logs.append, retry_failed=True)
    assert [r.status for r in again] == ["ok", "ok"]


@pytest.mark.slow
def test_a_hessian_that_is_not_positive_definite_is_a_failed_cell_not_an_aborted_sweep(tmp_path, monkeypatch):
    from quant import QuantError

    cells = sweep.cells({**SWEEP, "methods": [{"method": "gptq", "bits": [16, 4], "calib_n": 2, "calib_seqlen": 64}]})
    refs = preflight(cells)

    def not_pd(*_a, **_k):
        raise QuantError("GPTQ Hessian is not positive definite even after dampening 0.01; raise --damp")

    monkeypatch.setattr("quant.gptq._inverse_hessian_factor", not_pd)
    recs = run_cells_module.run_cells(cells, tmp_path, refs, log=lambda _: None)
    assert [r.status for r in recs] == ["ok", "failed"] and "not positive definite" in recs[1].error
