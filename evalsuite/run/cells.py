"""Many cells: plan (which are done, failed, unusable or still to do), run the rest on an executor, record each.

Cells are independent and content-addressed, so resuming is skipping a cell whose record exists. A cell that
raises — OOM, NaN, a load error, a Hessian that is not positive definite — is recorded as failed with its one-line
error and the rest go on; bad user input never gets this far (``preflight`` refuses it first).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from evalsuite.console import say
from evalsuite.load.models import ModelRef
from evalsuite.records import store
from evalsuite.records.record import Record
from evalsuite.run.environment import configure
from evalsuite.run.executors import InProcess, Started
from evalsuite.run.progress import Progress
from evalsuite.spec.cell import CellSpec, cell_id
from evalsuite.spec.tasks import hub_tasks


@dataclass(frozen=True)
class Planned:
    cell: CellSpec
    identity: dict[str, Any]
    cell_id: str
    state: str  # done | failed | corrupt (an unusable record) | todo
    problem: str | None = None  # why a record is unusable


def plan(cells: list[CellSpec], run_dir: Path, refs: dict[str, ModelRef]) -> list[Planned]:
    out = []
    for cell in cells:
        identity = cell.identity(refs[cell.model].fingerprint)
        cid = cell_id(identity)
        path = store.record_path(run_dir, cid)
        rec, problem = store.read_record(path) if path.exists() else (None, None)
        state = "todo" if not path.exists() else "corrupt" if rec is None else "done" if rec.ok else "failed"
        out.append(Planned(cell, identity, cid, state, problem))
    return out


def run_cells(cells: list[CellSpec], run_dir: Path, refs: dict[str, ModelRef], log: Callable[[str], None] = say,
              retry_failed: bool = False, executor: InProcess | None = None) -> list[Record]:
    """Evaluate every cell of ``cells`` without a usable record in ``run_dir`` on ``executor`` (default: in this
    process); return the records of all of them, in plan order. ``refs`` come from ``preflight(cells)``, which must
    have passed. Every record and sample log is written here, atomically, as its cell finishes."""
    all_offline = not hub_tasks(tuple(t for c in cells for t in c.tasks))
    configure(all_offline=all_offline)
    steps = plan(cells, run_dir, refs)
    labels = {i: f"[{i}/{len(steps)}] {step.cell.describe()}" for i, step in enumerate(steps, 1)}
    records, todo = {}, []
    for i, step in enumerate(steps, 1):
        path = store.record_path(run_dir, step.cell_id)
        if step.state == "done" or (step.state == "failed" and not retry_failed):
            log(f"{labels[i]}: {step.state} before, skipped")
            records[i] = store.read_record(path)[0]
            continue
        if step.state == "corrupt":
            log(f"{labels[i]}: {path.name} {step.problem}; recomputing")
        todo.append((i, step))
    progress = Progress(len(todo), log)
    for event in (executor or InProcess()).run(todo, refs, all_offline):
        if isinstance(event, Started):
            progress.started(event.index, labels[event.index], event.where)
            continue
        rec = event.record
        if event.samples is not None:  # the sample log first: a record that exists always has its samples
            store.write_atomic(store.samples_path(run_dir, rec.cell_id), event.samples)
        store.write_record(run_dir, rec)
        progress.finished(event.index, labels[event.index], rec)
        records[event.index] = rec
    return [records[i] for i in sorted(records)]


def failure_lines(records: list[Record]) -> list[str]:
    """One line per failed cell: what it was and its error."""
    return [f"{r.spec.model} {r.spec.label} {r.spec.suite} ({r.cell_id}): {r.error}" for r in records if not r.ok]
