"""The Ray executor on a real local Ray cluster (one per test session, 2 CPUs, one thread per cell): the same scores
as in-process, a killed worker retried, a killed driver resumed, a cache built once under two processes, and a cell
the cluster cannot hold refused at plan time."""
from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from evalsuite.load.cache import build_once
from evalsuite.records import store

SWEEP = {"models": ["smollm2-135m"], "methods": [{"method": "rtn", "bits": [16, 4, 2]}],
         "suites": ["mmlu_offline_smoke"], "limit": 1, "backend": "evalsuite"}


@pytest.fixture(scope="session")
def cluster():
    """The address of a local Ray instance this session starts (and stops): CLI runs join it with --address."""
    ray = pytest.importorskip("ray")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def _sweep_cmd(tmp_path, cluster, doc=SWEEP, run="r"):
    config = tmp_path / f"{run}.yaml"
    config.write_text(yaml.safe_dump({**doc, "run": run}))
    return [sys.executable, "-m", "evalsuite", "sweep", str(config), "--results-dir", str(tmp_path / "results"),
            "--executor", "ray", "--address", cluster], tmp_path / "results" / run


def _records(run_dir):
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in store.record_files(run_dir)}


def _no_temporaries(run_dir):
    return not [p for p in run_dir.iterdir() if p.name.startswith(".tmp")]


@pytest.mark.slow
def test_ray_cells_score_as_in_process_one_record_each(tmp_path, cluster):
    from evalsuite.run.cells import run_cells
    from evalsuite.run.preflight import preflight
    from evalsuite.spec import sweep

    cells = sweep.cells(SWEEP)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as many as a Ray task of 1 CPU: other thread counts sum floats in another order
    try:
        local = {r.cell_id: r for r in run_cells(cells, tmp_path / "local", preflight(cells), log=lambda _: None)}
    finally:
        torch.set_num_threads(threads)
    cmd, run_dir = _sweep_cmd(tmp_path, cluster)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    remote, problems = store.read_run(run_dir)
    assert problems == [] and len(remote) == 3 and {r.cell_id for r in remote} == set(local)
    for rec in remote:
        assert rec.ok and local[rec.cell_id].ok and rec.results == local[rec.cell_id].results
        assert rec.heldout.token_ppl == pytest.approx(local[rec.cell_id].heldout.token_ppl, rel=1e-4)
        assert rec.provenance["placement"]["executor"] == "ray" and rec.provenance["placement"]["attempts"] == 1
        assert store.samples_path(run_dir, rec.cell_id).read_bytes() == store.samples_path(tmp_path / "local", rec.cell_id).read_bytes()
    assert _no_temporaries(run_dir)


@pytest.mark.slow
def test_a_worker_killed_mid_cell_is_retried_and_every_cell_recorded_once(tmp_path, cluster):
    cmd, run_dir = _sweep_cmd(tmp_path, cluster)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen, victim = [], None
    for line in proc.stderr:  # kill on an observed event: the first cell's worker announcing itself
        seen.append(line)
        if victim is None and ": running on " in line:
            victim = int(line.split("(pid ")[1].split(")")[0])
            label = line.split(": running on ")[0].split("] ", 1)[1]
            os.kill(victim, signal.SIGKILL)
    assert proc.wait(timeout=600) == 0, "".join(seen)[-2000:]
    assert any(label in line and "attempt 2" in line for line in seen), "".join(seen)
    records, problems = store.read_run(run_dir)
    assert problems == [] and len(records) == 3 and all(r.ok for r in records)
    retried = [r for r in records if r.spec.model + " " + r.spec.label + " " + r.spec.suite == label]
    assert retried and retried[0].provenance["placement"]["attempts"] == 2
    assert _no_temporaries(run_dir)


@pytest.mark.slow
def test_driver_killed_mid_sweep_then_rerun_keeps_finished_records_and_does_the_rest(tmp_path, cluster):
    cmd, run_dir = _sweep_cmd(tmp_path, cluster)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if ": done in " in line:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = _records(run_dir)
    assert 1 <= len(finished) < 3, "".join(seen)
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    after = _records(run_dir)
    assert len(after) == 3 and {k: after[k] for k in finished} == finished  # untouched: mtime and content
    assert again.stderr.count("done before, skipped") == len(finished)


def _build_slowly(target, log):
    def build(tmp):
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(1.0)  # long enough that the second process asks while the first builds
        (tmp / "config.json").write_text("{}")

    build_once(target, build)


def test_two_processes_asking_for_one_cache_key_build_it_once(tmp_path):
    target, log = tmp_path / "packed" / "model-key", tmp_path / "builds.log"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_build_slowly, args=(target, log)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert len(log.read_text().splitlines()) == 1 and (target / "config.json").exists()
    assert sorted(p.name for p in target.parent.iterdir()) == [".model-key.lock", "model-key"]  # no temporary left


def test_a_cell_needing_more_gpus_than_the_cluster_has_is_refused_at_plan_time(tmp_path, cluster):
    doc = {**SWEEP, "models": [{"model": "smollm2-135m", "gpus": 4}]}
    cmd, run_dir = _sweep_cmd(tmp_path, cluster, doc)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "need 4 GPUs" in done.stderr and "gpus for smollm2-135m" in done.stderr
    assert not run_dir.exists()


@pytest.mark.parametrize("doc,message", [
    ({**SWEEP, "executor": "slurm"}, "unknown executor 'slurm'"),
    ({**SWEEP, "max_retries": 99}, "max_retries must be a whole number from 0 to 10"),
    ({**SWEEP, "recovery": {"gsm8k_cot": 0.9}}, "recovery gate for 'gsm8k_cot', which this sweep does not evaluate"),
    ({**SWEEP, "recovery": {"mmlu_offline_smoke": 0}}, "must be a ratio such as 0.97"),
    ({**SWEEP, "models": [{"model": "smollm2-135m", "gpus": -1}]}, "gpus must be a whole number >= 0"),
    ({**SWEEP, "models": [{"model": "smollm2-135m", "gpu": 1}]}, r"unknown key\(s\) gpu"),
])
def test_bad_executor_keys_raise_one_clear_line(doc, message):
    from evalsuite.errors import UsageError
    from evalsuite.spec import sweep

    with pytest.raises(UsageError, match=message):
        cells = sweep.cells(doc)
        sweep.executor(doc, None)
        sweep.recovery(doc, cells)


def test_resources_stay_out_of_the_cell_id_and_reach_the_cells():
    from evalsuite.spec import sweep
    from evalsuite.spec.resources import Resources

    plain = sweep.cells(SWEEP)
    placed = sweep.cells({**SWEEP, "models": [{"model": "smollm2-135m", "gpus": 2, "cpus": 4}]})
    assert [c.identity("x") for c in plain] == [c.identity("x") for c in placed]
    assert {c.resources for c in placed} == {Resources(cpus=4, gpus=2)} and plain[0].resources.gpus_on(True) == 1
