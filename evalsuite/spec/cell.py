"""What one evaluation cell is, and its content-addressed id.

A cell is (model, quant config, optional fine-tune stage, tasks, limit, seed, backend). Its id hashes everything that can change a
score — the model's weight fingerprint, the full quant config, the task names with a hash of the task files
that define them, limit, seed, backend and its version — so resume is "skip a cell whose record exists",
and any change to those inputs makes a new cell instead of silently reusing an old answer.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from evalsuite.backend import choose_backend
from evalsuite.errors import UsageError
from evalsuite.records.provenance import package_version
from evalsuite.spec.finetune import FinetuneSpec
from evalsuite.spec.resources import Resources
from evalsuite.spec.tasks import tasks_hash
from quant import QuantConfig

BACKENDS = ("auto", "evalsuite", "hf", "vllm")
DEFAULT_BACKEND = "auto"  # vLLM on CUDA where it serves the cell, else ours (see backend.choose)
DEFAULT_SEED = 1234
RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


@dataclass(frozen=True)
class CellSpec:
    model: str
    quant: QuantConfig
    suite: str
    tasks: tuple[str, ...]
    limit: int | None = None
    seed: int = DEFAULT_SEED
    backend: str = DEFAULT_BACKEND
    batch_size: int | str = "auto"
    chat_template: bool = False
    resources: Resources = Resources()  # where it can run, not what it computes: not in the id
    finetune: FinetuneSpec | None = None  # the optional LoRA stage (evalsuite/finetune)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise UsageError(f"unknown backend {self.backend!r}; use one of {', '.join(BACKENDS)}")
        if self.backend == "auto":  # resolved now: the cell id names the backend that really runs it
            object.__setattr__(self, "backend", choose_backend(self.quant))

    def identity(self, fingerprint: str) -> dict[str, Any]:
        """Everything the id hashes. Batch size and resources are left out: they change speed, not answers."""
        return {
            "model_fingerprint": fingerprint,
            "quant": self.quant.to_dict(),
            "tasks": list(self.tasks),
            "tasks_hash": tasks_hash(self.tasks),
            "limit": self.limit,
            "seed": self.seed,
            "backend": self.backend,
            "backend_version": package_version({"evalsuite": "evalsuite", "vllm": "vllm"}.get(self.backend, "lm_eval")),
            "lm_eval_version": package_version("lm_eval"),
            "chat_template": self.chat_template,
            # only when set: cells without a fine-tune stage keep the ids of runs made before it existed
            **({"finetune": self.finetune.to_dict()} if self.finetune else {}),
        }

    def label(self) -> str:
        """The quant label, with the fine-tune stage when there is one: 3bit-rtn-g64+lora-post-distill-r8-s60."""
        return self.quant.label() + (f"+{self.finetune.label()}" if self.finetune else "")

    def describe(self) -> str:
        return f"{self.model} {self.label()} {self.suite}"


def cell_id(identity: dict[str, Any]) -> str:
    blob = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def check_run_name(run: str) -> str:
    if not RUN_NAME.match(run) or ".." in run:
        raise UsageError(f"run name {run!r} must be a plain name (letters, digits, . _ -; no slashes or '..'), e.g. --run default")
    return run
