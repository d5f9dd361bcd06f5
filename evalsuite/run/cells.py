"""Many cells: plan (which are done, failed, unusable or still to do), run the rest one after another, record each.

Cells are independent and content-addressed, so resuming is skipping a cell whose record exists. A cell that
raises — OOM, NaN, a load error, a Hessian that is not positive definite — is recorded as failed with its one-line
error and the rest go on; bad user input never gets this far (``preflight`` refuses it first).
"""
from __future__ import annotations

import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from evalsuite.console import say
from evalsuite.load.models import ModelRef
from evalsuite.records import store
from evalsuite.records.record import Record
from evalsuite.run.cell import failed_record, run_cell
from evalsuite.run.environment import configure
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
              retry_failed: bool = False) -> list[Record]:
    """Evaluate every cell of ``cells`` without a usable record in ``run_dir``; return the records of all of them.
    ``refs`` come from ``preflight(cells)``, which must have passed."""
    configure(all_offline=not hub_tasks(tuple(t for c in cells for t in c.tasks)))
    steps = plan(cells, run_dir, refs)
    records, spent = [], []
    for i, step in enumerate(steps, 1):
        label = f"[{i}/{len(steps)}] {step.cell.describe()}"
        path = store.record_path(run_dir, step.cell_id)
        if step.state == "done" or (step.state == "failed" and not retry_failed):
            log(f"{label}: {step.state} before, skipped")
            records.append(store.read_record(path)[0])
            continue
        if step.state == "corrupt":
            log(f"{label}: {path.name} {step.problem}; recomputing")
        todo = sum(1 for s in steps[i - 1 :] if s.state != "done")
        eta = f" (about {sum(spent) / len(spent) * todo / 60:.0f} min left)" if spent else ""
        log(f"{label}: running{eta}")
        t0 = time.perf_counter()
        try:
            rec = run_cell(step.cell, refs[step.cell.model], run_dir, step.cell_id, step.identity)
        except Exception as e:  # noqa: BLE001 - a failed cell is data; the sweep goes on
            traceback.print_exc()  # stderr is the run's log: the whole story there, one line on the console
            rec = failed_record(step.cell, step.cell_id, step.identity, e, time.perf_counter() - t0)
            log(f"{label}: FAILED: {rec.error}")
        spent.append(time.perf_counter() - t0)
        store.write_record(run_dir, rec)
        if rec.ok:
            log(f"{label}: done in {rec.wall_s:.0f} s")
        records.append(rec)
    return records


def failure_lines(records: list[Record]) -> list[str]:
    """One line per failed cell: what it was and its error."""
    return [f"{r.spec.model} {r.spec.label} {r.spec.suite} ({r.cell_id}): {r.error}" for r in records if not r.ok]
