"""The sweep's progress: one line per event, each with the done / running / failed counts, an ETA and where the cell
runs. Lines, not a redrawn bar, so the log and a CI console read the same as a terminal."""
from __future__ import annotations

import time
from typing import Any, Callable

from evalsuite.records.record import Record


def where_text(where: dict[str, Any]) -> str:
    return f"{where.get('host')} (pid {where.get('pid')})"


class Progress:
    def __init__(self, todo: int, log: Callable[[str], None]):
        self.todo, self.log = todo, log
        self.done = self.failed = 0
        self.running: dict[int, float] = {}  # plan index -> when it (last) started
        self.spent: list[float] = []
        self.slots = 1  # the most cells seen running at once: how many the executor runs in parallel

    def started(self, index: int, label: str, where: dict[str, Any]) -> None:
        retry = f", attempt {where['attempt']} (the previous worker died)" if where.get("attempt", 1) > 1 else ""
        self.running[index] = time.perf_counter()
        self.slots = max(self.slots, len(self.running))
        self.log(f"{label}: running on {where_text(where)}{retry} | {self.counts()}")

    def finished(self, index: int, label: str, rec: Record) -> None:
        start = self.running.pop(index, None)
        if start is not None:
            self.spent.append(time.perf_counter() - start)
        if rec.ok:
            self.done += 1
            self.log(f"{label}: done in {rec.wall_s:.0f} s on {where_text(rec.provenance.get('placement', {}))} | {self.counts()}")
        else:
            self.failed += 1
            self.log(f"{label}: FAILED: {rec.error} | {self.counts()}")

    def counts(self) -> str:
        left = self.todo - self.done - self.failed
        eta = f", about {sum(self.spent) / len(self.spent) * left / self.slots / 60:.0f} min left" if self.spent and left else ""
        return f"{self.done} done, {len(self.running)} running, {self.failed} failed of {self.todo}{eta}"
