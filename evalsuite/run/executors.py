"""Where cells run. An executor takes the cells ``run_cells`` planned and yields events as they happen: a cell
``Started`` somewhere, a cell ``Finished`` with its record and sample log. It never writes into the run directory:
``run_cells`` (the driver) writes every record and sample log, so plan, resume, retries of failed cells and
reporting are one code path for every executor.

``InProcess`` (the default) runs the cells one after another in this process; ``ray_executor.RayExecutor`` runs
each as a Ray task on a cluster.
"""
from __future__ import annotations

import dataclasses
import os
import socket
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from evalsuite.load.models import ModelRef, device_map
from evalsuite.records import store
from evalsuite.records.record import Record
from evalsuite.run.cell import failed_record, run_cell
from evalsuite.spec.cell import CellSpec


@dataclass(frozen=True)
class Started:
    index: int  # the cell's position in the plan, from 1
    where: dict[str, Any]  # placement(): executor, host, pid, ...


@dataclass(frozen=True)
class Finished:
    index: int
    record: Record
    samples: bytes | None  # the cell's sample log (None for a cell that failed before writing one)


def placement(executor: str, **extra: Any) -> dict[str, Any]:
    """Where this process runs a cell: goes into the record's provenance and the progress line."""
    return {"executor": executor, "host": socket.gethostname(), "pid": os.getpid(), "device_map": device_map(), **extra}


def with_placement(rec: Record, where: dict[str, Any]) -> Record:
    return dataclasses.replace(rec, provenance={**rec.provenance, "placement": where})


def run_step(cell: CellSpec, ref_of: Callable[[], ModelRef], cid: str, identity: dict[str, Any],
             where: dict[str, Any]) -> tuple[Record, bytes | None]:
    """One cell wherever this process is: (record, sample log bytes). Any exception in the cell — also in finding
    its model on this node — is a failed record: data, returned once, never retried."""
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="evalsuite-cell-") as tmp:  # run_cell's sample log lands here first
        try:
            rec = run_cell(cell, ref_of(), Path(tmp), cid, identity)
        except Exception as e:  # noqa: BLE001 - a failed cell is data; the sweep goes on
            traceback.print_exc()  # stderr is the run's log: the whole story there, one line on the console
            rec = failed_record(cell, cid, identity, e, time.perf_counter() - t0)
        samples = store.samples_path(Path(tmp), cid)
        data = samples.read_bytes() if samples.exists() else None
    return with_placement(rec, where), data


class InProcess:
    name = "in-process"

    def nodes(self) -> list[dict[str, float]]:
        """This machine, in Ray's resource names, for the same plan-time check."""
        import psutil
        import torch

        return [{"CPU": os.cpu_count() or 1, "GPU": torch.cuda.device_count(), "memory": psutil.virtual_memory().total}]

    def run(self, steps: list, refs: dict[str, ModelRef], all_offline: bool) -> Iterator[Started | Finished]:
        for index, step in steps:
            where = placement(self.name, attempt=1)
            yield Started(index, where)
            rec, samples = run_step(step.cell, lambda: refs[step.cell.model], step.cell_id, step.identity, where)
            yield Finished(index, rec, samples)

    def close(self) -> None:
        pass
