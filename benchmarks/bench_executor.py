"""The same 4 smoke cells in-process vs on a 2-worker local Ray cluster (one torch thread per cell): wall time and
Ray's overhead (start-up, one model load per cell in its worker), printed as ratios.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_executor.py [--limit 1] [--backend evalsuite|hf]

On 2 cores the gain is bounded by 2; on a GPU cluster the start-up is paid once per sweep and the model load once
per cell either way, so the overhead that matters is start-up / (cells x cell time / workers).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from evalsuite.run.cells import run_cells
from evalsuite.run.preflight import preflight
from evalsuite.spec import sweep


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--limit", type=int, default=1)
    p.add_argument("--backend", default="evalsuite")
    args = p.parse_args()
    torch.set_num_threads(1)
    doc = {"models": ["smollm2-135m"], "methods": [{"method": "rtn", "bits": [16, 8, 4, 2]}], "suites": ["smoke"],
           "limit": args.limit, "backend": args.backend}
    cells = sweep.cells(doc)
    refs = preflight(cells)  # converts the bundled model once, outside both timings
    quiet = lambda _: None  # noqa: E731

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        local = run_cells(cells, Path(tmp) / "local", refs, log=quiet)
        t_local = time.perf_counter() - t0

        from evalsuite.run.ray_executor import RayExecutor

        t0 = time.perf_counter()
        ray = RayExecutor(num_cpus=2)
        t_start = time.perf_counter() - t0
        t0 = time.perf_counter()
        remote = run_cells(cells, Path(tmp) / "ray", refs, log=quiet, executor=ray)
        t_ray = time.perf_counter() - t0
        ray.close()

    assert all(r.ok for r in local + remote), [r.error for r in local + remote if not r.ok]
    cell_local = sum(r.wall_s for r in local)
    cell_ray = sum(r.wall_s for r in remote)
    load_local = sum(r.timing["load_s"] for r in local) / len(local)
    load_ray = sum(r.timing["load_s"] for r in remote) / len(remote)
    same = all(a.results == b.results for a, b in zip(local, remote))
    print(f"{len(cells)} cells, smoke suite, limit {args.limit}, backend {args.backend}, 1 thread per cell; same scores: {same}")
    print(f"in-process wall {t_local:.1f} s; Ray start-up {t_start:.1f} s + sweep {t_ray:.1f} s (2 workers)")
    print(f"speed-up in-process / Ray: {t_local / t_ray:.2f}x without start-up, {t_local / (t_ray + t_start):.2f}x with it")
    print(f"per cell: in-process {cell_local / len(cells):.1f} s, in a Ray worker {cell_ray / len(cells):.1f} s "
          f"(ratio {cell_ray / cell_local:.2f}: two cells share 2 cores); model load {load_local:.2f} s vs {load_ray:.2f} s")
    print(f"Ray start-up = {t_start / (cell_local / len(cells)):.2f} in-process cells' time; model load in a fresh "
          f"worker {load_ray / load_local:.1f}x the in-process load")

if __name__ == "__main__":
    sys.exit(main())
