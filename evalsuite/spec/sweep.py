"""A sweep is one YAML file: models x methods (with their options and bit widths) x suites -> a list of cells.

    run: local                 # results/<run>/
    models: [smollm2-135m]     # or {model: llama-65b, gpus: 4, cpus: 8, memory_gb: 200}: what one cell needs
    methods:
      - {method: rtn, bits: [16, 8, 4, 3, 2]}          # any other key is a quantizer option: its CLI flag with _
    suites: [smoke]
    limit: 4                   # optional: items per task
    seed: 1234                 # optional
    backend: hf                # optional
    executor: ray              # optional: in-process (default) | ray
    max_retries: 2             # optional: Ray reruns a cell whose worker died, at most this often
    recovery: {mmlu: 0.97}     # optional: exit 1 when a cell's score / its baseline's falls below the gate
    finetune:                  # optional axis: every quantized cell once per entry (the 16-bit baseline once)
      - none
      - {mode: lora-post, steps: 60}                   # any FinetuneSpec field: steps, rank, alpha, lr, data, ...

Bits 16 is each model's unquantized baseline (method none); it appears once per model x suite however many methods
list it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from evalsuite.errors import UsageError
from evalsuite.spec.cell import DEFAULT_BACKEND, DEFAULT_SEED, CellSpec, check_run_name
from evalsuite.spec.finetune import finetune_spec
from evalsuite.spec.options import check_sweep_options, make_quant_config
from evalsuite.spec.resources import model_entry
from evalsuite.spec.tasks import expand_suite
from quant import NoQuant

TOP_KEYS = {"run", "models", "methods", "suites", "limit", "seed", "backend", "batch_size", "chat_template", "executor",
            "max_retries", "recovery", "finetune"}
EXECUTORS = ("in-process", "ray")
MAX_RETRIES = 10  # a cell whose worker keeps dying is a broken node or cell, not bad luck


def load(path: Path) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise UsageError(f"cannot read sweep file {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise UsageError(f"sweep file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(doc, dict):
        raise UsageError(f"sweep file {path} must be a mapping with models, methods and suites")
    unknown = sorted(set(doc) - TOP_KEYS)
    if unknown:
        raise UsageError(f"sweep file {path}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(TOP_KEYS))}")
    for key in ("models", "methods", "suites"):
        if not isinstance(doc.get(key), list) or not doc[key]:
            raise UsageError(f"sweep file {path}: '{key}' must be a non-empty list")
    return doc


def cells(doc: dict[str, Any], limit: int | None = None) -> list[CellSpec]:
    """Expand the grid. ``limit`` (from the command line) overrides the file's."""
    backend = doc.get("backend", DEFAULT_BACKEND)
    lim = limit if limit is not None else doc.get("limit")
    if lim is not None and (not isinstance(lim, int) or lim < 1):
        raise UsageError(f"sweep limit must be a positive whole number; got {lim!r}")
    axis = doc.get("finetune", [None])
    if not isinstance(axis, list) or not axis:
        raise UsageError(f"finetune must be a non-empty list of none or mappings with a mode; got {axis!r}")
    finetunes = list(dict.fromkeys(finetune_spec(f) for f in axis))
    out: dict[tuple, CellSpec] = {}
    for entry in doc["models"]:
        model, resources = model_entry(entry)
        for suite in doc["suites"]:
            tasks = expand_suite(str(suite))
            for method in doc["methods"]:
                if not isinstance(method, dict) or "method" not in method or "bits" not in method:
                    raise UsageError(f"each sweep method needs 'method' and 'bits'; got {method!r}")
                options = check_sweep_options(method["method"], {k: v for k, v in method.items() if k not in ("method", "bits")})
                for bits in method["bits"]:
                    if not isinstance(bits, int):
                        raise UsageError(f"bits must be whole numbers such as 16 8 4 3 2; got {bits!r}")
                    cfg = make_quant_config(method["method"], bits, options, model=model)
                    for ft in finetunes:
                        if ft and isinstance(cfg, NoQuant):  # fine-tuning compensates quantization: none to compensate
                            continue
                        cell = CellSpec(model=model, quant=cfg, suite=str(suite), tasks=tasks, limit=lim,
                                        seed=doc.get("seed", DEFAULT_SEED), backend=backend,
                                        batch_size=doc.get("batch_size", "auto"),
                                        chat_template=doc.get("chat_template", False), resources=resources, finetune=ft)
                        out.setdefault((model, suite, cfg, ft), cell)
    # the baselines first: their records are what retention and flips are measured against
    return sorted(out.values(), key=lambda c: not isinstance(c.quant, NoQuant))


def run_name(doc: dict[str, Any], override: str | None, path: Path) -> str:
    return check_run_name(override or doc.get("run") or Path(path).stem)


def executor(doc: dict[str, Any], override: str | None) -> tuple[str, int]:
    """(executor name, max_retries): the command line's executor wins over the file's."""
    name = override or doc.get("executor", "in-process")
    if name not in EXECUTORS:
        raise UsageError(f"unknown executor {name!r}; use one of {', '.join(EXECUTORS)}")
    retries = doc.get("max_retries", 2)
    if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= MAX_RETRIES:
        raise UsageError(f"max_retries must be a whole number from 0 to {MAX_RETRIES}; got {retries!r}")
    return name, retries


def recovery(doc: dict[str, Any], cells: list[CellSpec]) -> dict[str, float]:
    """``recovery: {task: ratio}``: each task must be one the sweep evaluates, each ratio in (0, 2]."""
    gates = doc.get("recovery") or {}
    if not isinstance(gates, dict):
        raise UsageError(f"recovery must map task names to ratios, e.g. {{mmlu_offline: 0.97}}; got {gates!r}")
    tasks = {t for c in cells for t in c.tasks}
    for task, ratio in gates.items():
        if task not in tasks:
            raise UsageError(f"recovery gate for {task!r}, which this sweep does not evaluate; its tasks: {', '.join(sorted(tasks))}")
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio <= 2:
            raise UsageError(f"recovery gate for {task} must be a ratio such as 0.97 (quantized / baseline score); got {ratio!r}")
    return {str(t): float(r) for t, r in gates.items()}
