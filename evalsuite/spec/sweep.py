"""A sweep is one YAML file: models x methods (with their options and bit widths) x suites -> a list of cells.

    run: local                 # results/<run>/
    models: [smollm2-135m]
    methods:
      - {method: rtn, bits: [16, 8, 4, 3, 2]}          # any other key is a quantizer option: its CLI flag with _
    suites: [smoke]
    limit: 4                   # optional: items per task
    seed: 1234                 # optional
    backend: hf                # optional

Bits 16 is each model's unquantized baseline (method none); it appears once per model x suite however many methods
list it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from evalsuite.errors import UsageError
from evalsuite.spec.cell import DEFAULT_BACKEND, DEFAULT_SEED, CellSpec, check_run_name
from evalsuite.spec.options import check_sweep_options, make_quant_config
from evalsuite.spec.tasks import expand_suite
from quant import NoQuant

TOP_KEYS = {"run", "models", "methods", "suites", "limit", "seed", "backend", "batch_size", "chat_template"}


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
    out: dict[tuple, CellSpec] = {}
    for model in doc["models"]:
        for suite in doc["suites"]:
            tasks = expand_suite(str(suite))
            for entry in doc["methods"]:
                if not isinstance(entry, dict) or "method" not in entry or "bits" not in entry:
                    raise UsageError(f"each sweep method needs 'method' and 'bits'; got {entry!r}")
                options = check_sweep_options(entry["method"], {k: v for k, v in entry.items() if k not in ("method", "bits")})
                for bits in entry["bits"]:
                    if not isinstance(bits, int):
                        raise UsageError(f"bits must be whole numbers such as 16 8 4 3 2; got {bits!r}")
                    cfg = make_quant_config(entry["method"], bits, options, model=model)
                    cell = CellSpec(model=model, quant=cfg, suite=str(suite), tasks=tasks, limit=lim,
                                    seed=doc.get("seed", DEFAULT_SEED), backend=backend,
                                    batch_size=doc.get("batch_size", "auto"), chat_template=doc.get("chat_template", False))
                    out.setdefault((model, suite, cfg), cell)
    # the baselines first: their records are what retention and flips are measured against
    return sorted(out.values(), key=lambda c: not isinstance(c.quant, NoQuant))


def run_name(doc: dict[str, Any], override: str | None, path: Path) -> str:
    return check_run_name(override or doc.get("run") or Path(path).stem)
