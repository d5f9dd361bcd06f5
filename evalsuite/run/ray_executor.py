"""Cells as Ray tasks: one ``ray.remote`` task per cell with the CPUs, GPUs and memory it needs. Ray does the
placement, the resource accounting and the retries; nothing here schedules.

Faults: a worker process (or node) that dies mid-cell is a system failure, which Ray retries up to ``max_retries``
times; past that the driver records the cell as failed. An exception inside a cell is caught in the task and
returned as a failed record, so Ray never sees it and never retries it (``retry_exceptions=False`` as well). The
task returns the record and its sample log; the driver writes them (no shared filesystem needed). Ctrl-C cancels
this sweep's tasks.
"""
from __future__ import annotations

import time
from collections import Counter
from typing import Any, Iterator

import ray
from ray.util.queue import Queue

from evalsuite.load.models import ModelRef, resolve
from evalsuite.run.cell import failed_record
from evalsuite.run.environment import configure
from evalsuite.run.executors import Finished, Started, placement, run_step, with_placement
from evalsuite.spec.cell import CellSpec

WAIT_S = 1.0  # how often the driver looks at started events between finished cells
EVENT_LAG_S = 2.0  # how long a finished cell's start event may trail its result


class ModelMismatch(RuntimeError):
    """The node's copy of a model is not the weights the driver planned with."""


def _node_ref(name: str, fingerprint: str) -> ModelRef:
    ref = resolve(name)  # the node's own files: paths differ between nodes, the weights must not
    if ref.fingerprint != fingerprint:
        raise ModelMismatch(f"model {name} on this node is {ref.fingerprint}, the driver planned with {fingerprint}")
    return ref


@ray.remote
def run_cell_task(index: int, cell: CellSpec, fingerprint: str, cid: str, identity: dict[str, Any],
                  all_offline: bool, events: Queue):
    import torch

    configure(all_offline)
    torch.set_num_threads(max(1, int(cell.resources.cpus)))  # one thread per reserved CPU, never the whole node
    where = placement("ray", node_ip=ray.util.get_node_ip_address(), threads=torch.get_num_threads())
    # before any work: the driver counts attempts from these. Fire and forget: a task blocked in ray.get hands
    # its CPU back to Ray, which would start another cell on it (seen: 3 cells running on 2 CPUs)
    events.actor.put_nowait.remote((index, where))
    return run_step(cell, lambda: _node_ref(cell.model, fingerprint), cid, identity, where)


class RayExecutor:
    name = "ray"

    def __init__(self, address: str | None = None, max_retries: int = 2, num_cpus: int | None = None):
        """``address`` None: a local Ray instance on this machine; else ``auto`` or ``HOST:PORT`` of a cluster."""
        self.max_retries = max_retries
        if address is None:
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=True)
        else:
            ray.init(address=address, log_to_driver=True)

    def nodes(self) -> list[dict[str, float]]:
        return [n["Resources"] for n in ray.nodes() if n["Alive"]]

    def run(self, steps: list, refs: dict[str, ModelRef], all_offline: bool) -> Iterator[Started | Finished]:
        has_gpus = any(n.get("GPU", 0) for n in self.nodes())
        events = Queue()
        pending, t0 = {}, time.perf_counter()
        for index, step in steps:
            res = step.cell.resources
            options = {"num_cpus": res.cpus, "num_gpus": res.gpus_on(has_gpus), "max_retries": self.max_retries,
                       "retry_exceptions": False}
            if res.memory_gb:
                options["memory"] = int(res.memory_gb * 2**30)
            task = run_cell_task.options(**options).remote(index, step.cell, refs[step.cell.model].fingerprint,
                                                           step.cell_id, step.identity, all_offline, events)
            pending[task] = (index, step)
        attempts: Counter = Counter()
        last: dict[int, dict] = {}
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1, timeout=WAIT_S)
                yield from self._started(events, attempts, last, {i for i, _ in pending.values()})
                for task in done:
                    index, step = pending.pop(task)
                    for _ in range(int(EVENT_LAG_S / 0.05)):  # its start event may still be on its way
                        if attempts[index]:
                            break
                        time.sleep(0.05)
                        yield from self._started(events, attempts, last, {index, *(i for i, _ in pending.values())})
                    seen = {k: v for k, v in last.get(index, placement("ray")).items() if k != "attempt"}
                    where = {**seen, "attempts": attempts[index]}
                    try:
                        rec, samples = ray.get(task)
                    except ray.exceptions.RayError as e:  # the worker or node died more often than max_retries
                        rec, samples = failed_record(step.cell, step.cell_id, step.identity, e,
                                                     time.perf_counter() - t0), None
                    yield Finished(index, with_placement(rec, where), samples)
        finally:  # Ctrl-C, or the driver giving up: this sweep's tasks stop, other jobs' do not
            for task in pending:
                ray.cancel(task, force=True)
            ray.kill(events.actor)

    @staticmethod
    def _started(events: Queue, attempts: Counter, last: dict, live: set[int]) -> Iterator[Started]:
        while not events.empty():
            index, where = events.get_nowait()
            if index not in live:  # a late event of a cell already finished
                continue
            attempts[index] += 1
            last[index] = {**where, "attempt": attempts[index]}
            yield Started(index, last[index])

    def close(self) -> None:
        ray.shutdown()
