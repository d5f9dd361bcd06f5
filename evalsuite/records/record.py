"""The typed record of one cell: what ``run_cell`` writes, ``store`` reads back, the report turns into frames and the
tests build. One dataclass tree, so a change of the record shows up everywhere at once.

``Record.from_dict`` checks the JSON against the dataclasses: a missing required field or an unknown one is a
``RecordError`` naming its path (``spec.method``), never a KeyError deep in pandas.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = 2  # 2: typed record; method "none" marks the baseline; bits null for methods without a bit width
STATUSES = ("ok", "failed")


class RecordError(ValueError):
    """A record file that does not match the Record dataclasses."""


@dataclass(frozen=True)
class CellInfo:
    """The cell as specified (what ``evalsuite sweep`` expanded), with the quant config flattened."""

    model: str
    method: str  # "none" for the unquantized baseline
    bits: int | None  # None for methods without a bit width (MPO)
    label: str  # e.g. 4bit-rtn-g64
    quant: dict[str, Any]  # the config's to_dict()
    suite: str
    tasks: list[str]
    limit: int | None
    seed: int
    backend: str
    batch_size: int | str
    chat_template: bool
    finetune: dict[str, Any] | None = None  # the FinetuneSpec's to_dict(), when the cell has a fine-tune stage


@dataclass(frozen=True)
class ModelInfo:
    name: str
    kind: str  # bundled | local | hub | packed
    source: str
    fingerprint: str
    params: int


@dataclass(frozen=True)
class TaskInfo:
    version: Any
    n_shot: int | None
    n: int | None  # items evaluated


@dataclass(frozen=True)
class Heldout:
    """Fidelity on held-out text: token perplexity; against the unquantized model KL and top-1 agreement."""

    tokens: int
    token_ppl: float
    kl_mean: float | None = None
    kl_p95: float | None = None
    top1_agreement: float | None = None


@dataclass(frozen=True)
class Record:
    cell_id: str
    status: str  # ok | failed
    spec: CellInfo
    identity: dict[str, Any]  # everything the cell id hashes
    created: str  # ISO time, seconds
    wall_s: float
    provenance: dict[str, Any]  # library versions, git sha, device
    error: str | None = None  # failed cells: "Type: message"
    # what an ok cell measured
    results: dict[str, dict[str, Any]] | None = None  # lm-eval's results, per task and subtask
    groups: dict[str, Any] = field(default_factory=dict)
    group_subtasks: dict[str, list[str]] = field(default_factory=dict)  # which top-level task each subtask counts toward
    tasks: dict[str, TaskInfo] = field(default_factory=dict)
    higher_is_better: dict[str, Any] = field(default_factory=dict)
    model: ModelInfo | None = None
    footprint: dict[str, Any] | None = None  # quant.Footprint.summary() plus per-layer details
    heldout: Heldout | None = None
    eval: dict[str, Any] | None = None  # backend, batch size, BOS, chat template, the backend's meter
    timing: dict[str, float] | None = None
    memory: dict[str, Any] | None = None
    finetune: dict[str, Any] | None = None  # the LoRA stage: spec, steps, tokens, wall_s, peak memory, loss curve, data hash
    schema: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if self.schema != SCHEMA_VERSION:
            raise RecordError(f"schema {self.schema} is not {SCHEMA_VERSION}")
        if self.status not in STATUSES:
            raise RecordError(f"status {self.status!r} is not one of {', '.join(STATUSES)}")
        if self.status == "ok":
            missing = [n for n in ("results", "model", "footprint", "heldout") if getattr(self, n) is None]
            if missing:
                raise RecordError(f"status ok without {', '.join(missing)}")
            for key in ("bits_per_weight", "packed_bytes"):
                if key not in self.footprint:
                    raise RecordError(f"missing field footprint.{key}")
        elif not self.error:
            raise RecordError("status failed without an error")

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> Record:
        return _build(cls, data, "")


def _build(cls: type, data: Any, where: str):
    """``cls`` from JSON ``data``, nested dataclasses included; RecordError names the first problem's path."""
    if not isinstance(data, dict):
        raise RecordError(f"{where.rstrip('.') or 'record'} is not a JSON object")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise RecordError(f"unknown field(s) {', '.join(where + u for u in unknown)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, f in fields.items():
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise RecordError(f"missing field {where}{name}")
            continue
        values[name] = _value(hints[name], data[name], f"{where}{name}")
    return cls(**values)


def _value(hint: Any, value: Any, where: str):
    """Nested dataclasses (also as dict values or optional) are built; everything else is kept as read."""
    if value is None:
        return None
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    target = args[0] if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1 else hint
    if dataclasses.is_dataclass(target):
        return _build(target, value, f"{where}.")
    if typing.get_origin(target) is dict and dataclasses.is_dataclass(typing.get_args(target)[1]):
        if not isinstance(value, dict):
            raise RecordError(f"{where} is not a JSON object")
        return {k: _build(typing.get_args(target)[1], v, f"{where}.{k}.") for k, v in value.items()}
    return value
