"""The optional fine-tune stage of a cell, as specified: LoRA before (``lora-pre``: on the 16-bit model, merged,
then quantized) or after quantization (``lora-post``: adapters on the frozen quantized linears, kept separate), with
a distillation (KL(p16 || p_student), no labels) or next-token objective.

Defaults follow the paper's released scripts (RUCAIBox/QuantizedEmpirical run.sh): rank 8, alpha 16, lr 3e-4, LoRA
on the q, k, v, o, gate, up and down projections. They trained 3 epochs on cleaned Alpaca; the budgets here are far
smaller, and every record says so.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evalsuite.errors import UsageError

MODES = ("lora-post", "lora-pre")
OBJECTIVES = ("distill", "lm")
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
OFFLINE_DATA = "pydoc"  # the calibration part of quant.calib's corpus: disjoint from held-out text and task items
FILE_SUFFIXES = (".txt", ".md", ".json", ".jsonl")
BUDGET_NOTE = ("the paper fine-tunes 3 epochs on cleaned Alpaca (about 52k instructions); this budget is far smaller, "
               "so recovery here is a lower bound of what fine-tuning can do")


@dataclass(frozen=True)
class FinetuneSpec:
    mode: str
    steps: int = 60
    rank: int = 8
    alpha: int = 16
    lr: float = 3e-4
    data: str = OFFLINE_DATA  # pydoc | a local text file | a hub dataset name (needs the hub)
    objective: str = ""  # distill (lora-post default) | lm (lora-pre default: distilling the 16-bit model into itself learns nothing)
    batch: int = 8
    seqlen: int = 256
    seed: int = 0
    log_every: int = 10
    targets: tuple[str, ...] = TARGETS

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise UsageError(f"unknown --finetune {self.mode!r}; use one of {', '.join(MODES)}")
        if not self.objective:
            object.__setattr__(self, "objective", "distill" if self.mode == "lora-post" else "lm")
        if self.objective not in OBJECTIVES:
            raise UsageError(f"unknown --ft-objective {self.objective!r}; use one of {', '.join(OBJECTIVES)}")
        if self.mode == "lora-pre" and self.objective == "distill":
            raise UsageError("--finetune lora-pre with --ft-objective distill trains the 16-bit model toward itself "
                             "(its KL is 0 from the first step); use --ft-objective lm, or --finetune lora-post")
        for name in ("steps", "rank", "alpha", "batch", "seqlen", "log_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise UsageError(f"--ft-{name} must be a positive whole number; got {value!r}")
        if not isinstance(self.lr, (int, float)) or not self.lr > 0:
            raise UsageError(f"--ft-lr must be a positive learning rate such as 3e-4; got {self.lr!r}")
        object.__setattr__(self, "targets", tuple(self.targets))

    @property
    def data_kind(self) -> str:
        """pydoc | file | hub: a path that exists, or looks like a text file, is a file; anything else a hub name."""
        if self.data == OFFLINE_DATA:
            return "pydoc"
        return "file" if Path(self.data).is_file() or self.data.endswith(FILE_SUFFIXES) else "hub"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def label(self) -> str:
        return f"{self.mode}-{self.objective}-r{self.rank}-s{self.steps}"


def finetune_spec(value: Any) -> FinetuneSpec | None:
    """A sweep file's ``finetune:`` entry: none, or a mapping of FinetuneSpec fields (``mode`` required)."""
    if value in (None, "none"):
        return None
    if not isinstance(value, dict) or "mode" not in value:
        raise UsageError(f"each finetune entry is none or a mapping with a mode (lora-post | lora-pre); got {value!r}")
    fields = {f.name for f in dataclasses.fields(FinetuneSpec)}
    unknown = sorted(set(value) - fields)
    if unknown:
        raise UsageError(f"finetune: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(fields))}")
    return FinetuneSpec(**value)
