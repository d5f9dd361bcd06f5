"""Suites and tasks: what ``--suite`` names expand to, the offline task index, the bundled data check, and which
tasks need the Hugging Face hub.

tasks/suites.yaml maps suites to lm-eval task or group names; tasks/offline/ holds lm-eval task YAML over data
bundled in this repository (the offline twins). Everything here reads files only: no lm-eval import, no network.
"""
from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from evalsuite.errors import UsageError

TASKS_DIR = Path(__file__).resolve().parents[2] / "tasks"
OFFLINE_DIR = TASKS_DIR / "offline"


@lru_cache(maxsize=1)
def suites_file() -> dict[str, Any]:
    return yaml.safe_load((TASKS_DIR / "suites.yaml").read_text())


def expand_suite(names: str) -> tuple[str, ...]:
    """``icl,cot`` -> the lm-eval task/group names, in order, without repeats. Unknown names list the known ones."""
    suites = suites_file()["suites"]
    known_tasks = known_task_names()
    out: list[str] = []

    def visit(name: str, seen: tuple[str, ...]) -> None:
        if name in suites:
            if name in seen:
                raise UsageError(f"suite {name!r} includes itself (tasks/suites.yaml)")
            for member in suites[name]:
                visit(member, seen + (name,))
        elif name in known_tasks or name in suites_file()["tasks"]:
            if name not in out:
                out.append(name)
        else:
            raise UsageError(
                f"unknown suite or task {name!r}; suites: {', '.join(suites)}; offline tasks: see `evalsuite ls tasks`"
            )

    for name in [n.strip() for n in names.split(",") if n.strip()]:
        visit(name, ())
    if not out:
        raise UsageError("empty --suite; name a suite (e.g. smoke) or tasks, comma-separated")
    return tuple(out)


class _TaskYamlLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
    """Reads lm-eval task YAML, keeping ``!function module.name`` as the plain string ``module.name``."""


_TaskYamlLoader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))


@lru_cache(maxsize=1)
def offline_index() -> dict[str, dict[str, Any]]:
    """Offline task and group name -> its YAML (``include`` resolved), read directly: lm-eval's TaskManager
    indexes every bundled task and takes seconds."""
    index = {}
    for f in OFFLINE_DIR.glob("*.yaml"):
        doc = yaml.load(f.read_text(), Loader=_TaskYamlLoader) or {}
        if "include" in doc:
            doc = {**yaml.load((OFFLINE_DIR / doc["include"]).read_text(), Loader=_TaskYamlLoader), **doc}
        name = doc.get("group") or doc.get("task")
        if isinstance(name, str):
            index[name] = doc
    return index


def known_task_names() -> frozenset[str]:
    return frozenset(offline_index())


def check_offline_data(tasks: tuple[str, ...]) -> None:
    """Load every bundled data file the tasks read, through the same loader lm-eval will call, so a missing
    or malformed file is one line naming it (and the line) before anything runs."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("evalsuite_offline_loader", OFFLINE_DIR / "loader.py")
    loader = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loader)
    index, seen = offline_index(), set()
    pending = [t for t in tasks if t in index]
    while pending:
        doc = index[pending.pop()]
        if "group" in doc:
            pending += [t for t in doc["task"] if t in index and t not in seen]
            seen.update(doc["task"])
            continue
        module, _, fn = str(doc.get("custom_dataset", "")).partition(".")
        if module == "loader":
            try:
                getattr(loader, fn)(**doc.get("dataset_kwargs", {}))
            except loader.OfflineDataError as e:
                raise UsageError(str(e)) from None


@lru_cache(maxsize=1)
def _offline_tree_hash() -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in OFFLINE_DIR.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        h.update(str(f.relative_to(OFFLINE_DIR)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def tasks_hash(tasks: tuple[str, ...]) -> str:
    """Offline tasks: a hash of the whole tasks/offline tree (coarse but never stale). Hub tasks: lm-eval's version."""
    offline = [t for t in tasks if t in known_task_names()]
    return _offline_tree_hash() if offline else ""


def hub_tasks(tasks: tuple[str, ...]) -> list[str]:
    """The tasks that read their datasets from the hub (no offline twin in tasks/offline)."""
    return [t for t in tasks if t not in known_task_names()]
