"""What one evaluation cell is, and its content-addressed id.

A cell is (model, quant config, tasks, limit, seed, backend). Its id hashes everything that can change a
score — the model's weight fingerprint, the full quant config, the task names with a hash of the task files
that define them, limit, seed, backend and its version — so resume is "skip a cell whose record exists",
and any change to those inputs makes a new cell instead of silently reusing an old answer.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

import quant
from evalsuite.errors import UsageError
from quant import NoQuant, QuantConfig

TASKS_DIR = Path(__file__).resolve().parent.parent / "tasks"
OFFLINE_DIR = TASKS_DIR / "offline"
BACKENDS = ("evalsuite", "hf")
DEFAULT_BACKEND = "evalsuite"  # prefix-reusing, metered; hf (stock HFLM) stays for cross-checks
RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


@dataclass(frozen=True)
class CellSpec:
    model: str
    quant: QuantConfig
    suite: str
    tasks: tuple[str, ...]
    limit: int | None = None
    seed: int = 1234
    backend: str = DEFAULT_BACKEND
    batch_size: int | str = "auto"
    chat_template: bool = False
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def identity(self, fingerprint: str) -> dict[str, Any]:
        """Everything the id hashes. Batch size is left out: it changes speed, not answers."""
        from evalsuite.provenance import package_version

        return {
            "model_fingerprint": fingerprint,
            "quant": self.quant.to_dict(),
            "tasks": list(self.tasks),
            "tasks_hash": tasks_hash(self.tasks),
            "limit": self.limit,
            "seed": self.seed,
            "backend": self.backend,
            "backend_version": package_version("evalsuite" if self.backend == "evalsuite" else "lm_eval"),
            "lm_eval_version": package_version("lm_eval"),
            "chat_template": self.chat_template,
        }


def cell_id(identity: dict[str, Any]) -> str:
    blob = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def check_run_name(run: str) -> str:
    if not RUN_NAME.match(run) or ".." in run:
        raise UsageError(f"run name {run!r} must be a plain name (letters, digits, . _ -; no slashes or '..'), e.g. --run default")
    return run


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


def make_quant_config(method: str, bits: int, options: dict[str, Any], model: str | None = None) -> QuantConfig:
    """``bits == 16`` is the unquantized baseline for every method. ``options`` holds only what the user set;
    the model's own defaults (models.yaml, e.g. a group size that divides its hidden size) fill the rest."""
    if bits == 16:
        return NoQuant()
    from evalsuite.models import quant_defaults

    cls = quant.config_class(method)
    fields = set(cls.__dataclass_fields__)
    unknown = sorted(k for k in options if k not in fields)
    if unknown:
        raise UsageError(f"method {method} takes no {', '.join('--' + k.replace('_', '-') for k in unknown)}")
    defaults = {k: v for k, v in quant_defaults(model).items() if k in fields} if model else {}
    # methods without a bit width (MPO: its size is set by the bond) give one cell for any bits but 16
    return cls(**({"bits": bits} if "bits" in fields else {}), **{**defaults, **options})
