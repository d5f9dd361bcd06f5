"""Quantizers as (frozen config dataclass, handler) pairs, in the style of torchao's `quantize_`.

A post-load method mutates the model in place: ``quantize_(model, RTNConfig(bits=4))``.
A load-time method (bitsandbytes, packed GPTQ checkpoints) instead contributes
``from_pretrained`` kwargs through ``load_kwargs(config)``.
Either way the caller gets a ``Footprint`` describing how big the result really is.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch.nn as nn


class QuantError(ValueError):
    """A config or model that a quantizer cannot accept; the message names the fix."""


@dataclass(frozen=True)
class QuantConfig:
    """Base of every quantizer config. Subclasses are frozen dataclasses that validate in __post_init__."""

    method: ClassVar[str] = "none"
    load_time: ClassVar[bool] = False  # True: applied through from_pretrained kwargs, not quantize_

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, **dataclasses.asdict(self)}

    def label(self) -> str:
        """Short human label used in tables, e.g. ``4bit-rtn-g64``."""
        return self.method


@dataclass(frozen=True)
class NoQuant(QuantConfig):
    """The 16-bit baseline: the model as loaded."""

    method: ClassVar[str] = "none"

    def label(self) -> str:
        return "16bit"


@dataclass
class Footprint:
    """Storage accounting of one compressed model, as it would be stored packed.

    ``linear_bits`` counts every bit of the compressed linears (codes, scales, zeros, kept channels);
    ``other_params`` are the parameters left uncompressed (embeddings, norms, lm_head), stored at 16 bit.
    """

    linear_params: int = 0
    linear_bits: int = 0
    other_params: int = 0
    layers: dict[str, dict[str, Any]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def bits_per_weight(self) -> float:
        return self.linear_bits / self.linear_params if self.linear_params else 16.0

    @property
    def packed_bytes(self) -> int:
        return (self.linear_bits + 16 * self.other_params + 7) // 8

    def summary(self) -> dict[str, Any]:
        return {
            "bits_per_weight": round(self.bits_per_weight, 4),
            "packed_bytes": self.packed_bytes,
            "linear_params": self.linear_params,
            "linear_bytes": (self.linear_bits + 7) // 8,
            "other_params": self.other_params,
            **self.extra,
        }


Handler = Callable[..., Footprint]
_HANDLERS: dict[type, Handler] = {}
_BY_NAME: dict[str, type] = {}


def register(config_cls: type) -> Callable[[Handler], Handler]:
    """Register ``handler(model, config, **ctx) -> Footprint`` for ``config_cls``."""

    def deco(fn: Handler) -> Handler:
        _HANDLERS[config_cls] = fn
        _BY_NAME[config_cls.method] = config_cls
        return fn

    return deco


def config_class(method: str) -> type:
    _load_builtin()
    try:
        return _BY_NAME[method]
    except KeyError:
        raise QuantError(f"unknown method {method!r}; known: {', '.join(sorted(_BY_NAME))}") from None


def known_methods() -> list[str]:
    _load_builtin()
    return sorted(_BY_NAME)


def quantize_(model: nn.Module, config: QuantConfig, **ctx: Any) -> Footprint:
    """Apply ``config`` to ``model`` in place and return its footprint.

    ``ctx`` carries what some methods need beyond the model: ``tokenizer``, ``calib`` (calibration
    token ids). Load-time configs were applied by the loader; their handler only measures.
    """
    _load_builtin()
    try:
        handler = _HANDLERS[type(config)]
    except KeyError:
        raise QuantError(f"no handler registered for {type(config).__name__}") from None
    return handler(model, config, **ctx)


def validate(model: nn.Module, config: QuantConfig) -> None:
    """Raise QuantError if ``config`` cannot apply to ``model`` (a meta-device skeleton is enough)."""
    check = getattr(config, "validate", None)
    if check:
        check(model)


def load_kwargs(config: QuantConfig) -> dict[str, Any]:
    """``from_pretrained`` kwargs for load-time methods; empty for post-load ones."""
    fn = getattr(config, "load_kwargs", None)
    return fn() if config.load_time and fn else {}


def _load_builtin() -> None:
    # An explicit import list is the whole registry: each module registers its configs on import.
    # None of them imports a heavy backend (bitsandbytes, gptqmodel) at module level.
    from quant import baseline, bnb, gptq, mpo, rtn  # noqa: F401
