"""Quantizers as (frozen config dataclass, handler) pairs, in the style of torchao's ``quantize_``.

Owns: the config base class and its hooks, the option declaration every config field uses, the footprint
accounting, and the registry. Imports torch and each method's own library (inside the method's file) — never
``evalsuite``: this layer works on modules, tensors, configs and paths it is given.

A method is applied one of three ways, which its config says through the hooks of ``QuantConfig``:

* post-load (RTN, native GPTQ, AWQ, MPO): ``quantize_(model, RTNConfig(bits=4))`` mutates the model in place;
* load kwargs (bitsandbytes): ``config.load_kwargs()`` goes to ``from_pretrained``;
* packed checkpoint (GPTQModel): ``config.build_checkpoint(src, out, ...)`` writes a packed checkpoint once, which
  the loader then loads; the caller owns where it lives and its cache. Post-load methods with a packed format
  (RTN: GPTQ without error feedback) can write one too (``exports_checkpoint``), for engines that need a file.

Either way ``quantize_`` returns a ``Footprint`` describing how big the result really is. Adding a method is one
file that registers its config and handler, plus one line in ``_load_builtin``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar

import torch
import torch.nn as nn

if TYPE_CHECKING:
    from quant.calib import Calibration


class QuantError(ValueError):
    """A config or model that a quantizer cannot accept; the message names the fix."""


def option(default: Any, help: str, *, choices: tuple | None = None) -> Any:
    """A config field that is also a user option: ``--name-with-dashes`` on the CLI and ``name`` in sweep files."""
    kind = {"default_factory": default} if callable(default) else {"default": default}
    return field(**kind, metadata={"help": help, "choices": choices})


@dataclass(frozen=True)
class QuantConfig:
    """Base of every quantizer config: frozen dataclasses that check their own values in ``__post_init__`` and
    their fit to a model in ``validate``. The hooks below default to a post-load method that needs nothing."""

    method: ClassVar[str] = "none"

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, **dataclasses.asdict(self)}

    def label(self) -> str:
        """Short human label used in tables, e.g. ``4bit-rtn-g64``."""
        return self.method

    @property
    def bit_width(self) -> int | None:
        """The bits of its codes, or None for methods without one (MPO: the bond sets the size)."""
        return getattr(self, "bits") if "bits" in {f.name for f in dataclasses.fields(self)} else None

    def validate(self, model: nn.Module) -> None:
        """Raise QuantError if this config cannot apply to ``model``; a meta-device skeleton is enough."""

    def calibration(self) -> Calibration | None:
        """The calibration windows this method reads, or None."""
        return None

    def load_kwargs(self) -> dict[str, Any]:
        """``from_pretrained`` kwargs of a load-time method."""
        return {}

    @property
    def builds_checkpoint(self) -> bool:
        """True: ``build_checkpoint`` writes a packed checkpoint, which is loaded instead of the source model."""
        return False

    def packed_format(self) -> dict[str, Any] | None:
        """The ``quantization_config`` of the packed checkpoint ``build_checkpoint`` writes for this config, or None
        when it has no packed format. Engines that load a file rather than take a module (vLLM) decide from it."""
        return None

    @property
    def exports_checkpoint(self) -> bool:
        return self.packed_format() is not None

    def build_checkpoint(self, source: Path, out: Path, calib: torch.Tensor | None, tokenizer) -> None:
        """Write the model at ``source`` quantized with this config into the directory ``out``."""
        raise NotImplementedError(f"{self.label()} has no packed checkpoint format")

    @property
    def load_time(self) -> bool:
        """Whether the model is never held unquantized (so the 16-bit reference needs a load of its own)."""
        return self.builds_checkpoint or bool(self.load_kwargs())


@dataclass(frozen=True)
class NoQuant(QuantConfig):
    """The 16-bit baseline: the model as loaded."""

    method: ClassVar[str] = "none"

    @property
    def bit_width(self) -> int:
        return 16

    def label(self) -> str:
        return "16bit"


@dataclass
class Footprint:
    """Storage accounting of one compressed model, as it would be stored packed.

    ``linear_bits`` counts every bit of the compressed linears (codes, scales, zeros, kept channels);
    ``other_params`` are the parameters left uncompressed (embeddings, norms, lm_head), stored at 16 bit unless
    ``other_bits`` says otherwise (a GGUF file quantizes its embedding too).
    """

    linear_params: int = 0
    linear_bits: int = 0
    other_params: int = 0
    other_bits: int | None = None
    layers: dict[str, dict[str, Any]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def bits_per_weight(self) -> float:
        return self.linear_bits / self.linear_params if self.linear_params else 16.0

    @property
    def packed_bytes(self) -> int:
        other = 16 * self.other_params if self.other_bits is None else self.other_bits
        return (self.linear_bits + other + 7) // 8

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


def config_classes() -> list[type]:
    """Every registered config class, the baseline first."""
    _load_builtin()
    return sorted(set(_BY_NAME.values()), key=lambda c: (c.method != "none", c.method))


def quantize_(model: nn.Module, config: QuantConfig, **ctx: Any) -> Footprint:
    """Apply ``config`` to ``model`` in place and return its footprint.

    ``ctx`` carries what some methods need beyond the model: ``tokenizer``, ``calib`` (calibration token ids),
    ``checkpoint`` (the directory a packed model was loaded from). Load-time configs were applied by the loader;
    their handler only measures.
    """
    _load_builtin()
    try:
        handler = _HANDLERS[type(config)]
    except KeyError:
        raise QuantError(f"no handler registered for {type(config).__name__}") from None
    return handler(model, config, **ctx)


def _load_builtin() -> None:
    # An explicit import list is the whole registry: each module registers its configs on import.
    # None of them imports a heavy backend (bitsandbytes, gptqmodel, hqq, llama.cpp) at module level.
    from quant import awq, baseline, bnb, gguf, gptq, hqq, mpo, rtn  # noqa: F401
