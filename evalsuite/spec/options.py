"""Quantizer options, declared once: every field of a quantizer config (``quant.option``) is a CLI flag
(``--group-size``) and a sweep-file key (``group_size``), with the field's type, help and choices. Nothing here
names a method's options by hand, so a new quantizer's options appear on the CLI and in sweeps by themselves.
"""
from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import quant
from evalsuite.errors import UsageError
from quant import NoQuant, QuantConfig

AXIS_FIELDS = ("bits",)  # the --bits axis makes one cell per value; not a per-config option
KINDS = (bool, int, float, str, tuple)


@dataclass(frozen=True)
class Option:
    name: str  # the field name, and the sweep key
    kind: type  # bool | int | float | str | tuple (of strings)
    help: str
    choices: tuple | None
    default: Any  # of the first config declaring it; shown in help only
    methods: tuple[str, ...]  # the methods whose configs have this field

    @property
    def flag(self) -> str:
        dashed = self.name.replace("_", "-")
        return f"--no-{dashed}" if self.kind is bool and self.default is True else f"--{dashed}"


def _kind(annotation: Any) -> type:
    """int | None -> int; tuple[str, ...] -> tuple."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    kind = origin if origin is tuple else (args[0] if origin is not None and args else annotation)
    if kind not in KINDS:
        raise TypeError(f"quantizer option type {annotation!r} has no CLI form")
    return kind


@lru_cache(maxsize=1)
def quant_options() -> dict[str, Option]:
    """Every quantizer option by name, merged over the configs that declare it."""
    out: dict[str, Option] = {}
    for cls in quant.config_classes():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name in AXIS_FIELDS:
                continue
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            known = out.get(f.name)
            if known is None:
                out[f.name] = Option(f.name, _kind(hints[f.name]), f.metadata.get("help", ""), f.metadata.get("choices"),
                                     default, (cls.method,))
            elif known.kind is not _kind(hints[f.name]):
                raise TypeError(f"option {f.name} has type {known.kind} in {known.methods} but not in {cls.method}")
            else:
                more = f.metadata.get("help", "")
                help_text = known.help if not more or more in known.help else f"{known.help}; {more}"
                out[f.name] = dataclasses.replace(known, help=help_text, methods=(*known.methods, cls.method))
    return out


def add_quant_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per option; the help names the methods that take it. Unset flags stay None."""
    group = parser.add_argument_group("quantizer options (each names the methods that take it)")
    for opt in quant_options().values():
        help_text = f"{opt.help} [{', '.join(opt.methods)}]"
        if opt.kind is bool:
            group.add_argument(opt.flag, dest=opt.name, action="store_false" if opt.default else "store_true",
                               default=None, help=help_text)
        elif opt.kind is tuple:
            group.add_argument(opt.flag, dest=opt.name, nargs="+", default=None, help=help_text)
        else:
            group.add_argument(opt.flag, dest=opt.name, type=opt.kind, choices=opt.choices, default=None, help=help_text)


def options_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The quantizer options the user set on the command line."""
    return {name: (tuple(v) if isinstance(v, list) else v)
            for name in quant_options() if (v := getattr(args, name, None)) is not None}


def check_sweep_options(method: str, entry: dict[str, Any]) -> dict[str, Any]:
    """A sweep file's options for ``method``: known keys of that method, values of the declared type."""
    cls = quant.config_class(method)
    fields = {f.name for f in dataclasses.fields(cls)} - set(AXIS_FIELDS)
    out = {}
    for key, value in entry.items():
        opt = quant_options().get(key)
        if key not in fields or opt is None:
            raise UsageError(f"sweep method {method}: unknown option {key!r}; {method} takes {', '.join(sorted(fields)) or 'none'}")
        if opt.kind is tuple:
            value = (value,) if isinstance(value, str) else value
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise UsageError(f"sweep method {method}: {key} must be a list of names; got {value!r}")
            value = tuple(value)
        elif not _is_kind(value, opt.kind):
            raise UsageError(f"sweep method {method}: {key} must be {opt.kind.__name__}; got {value!r}")
        if opt.choices and value not in opt.choices:
            raise UsageError(f"sweep method {method}: {key} must be one of {', '.join(map(str, opt.choices))}; got {value!r}")
        out[key] = value
    return out


def _is_kind(value: Any, kind: type) -> bool:
    if isinstance(value, bool) or kind is bool:
        return isinstance(value, bool) and kind is bool
    return isinstance(value, (int, float)) if kind is float else isinstance(value, kind)


def make_quant_config(method: str, bits: int, options: dict[str, Any], model: str | None = None) -> QuantConfig:
    """``bits == 16`` is the unquantized baseline for every method. ``options`` holds only what the user set;
    the model's own defaults (models.yaml, e.g. a group size that divides its hidden size) fill the rest."""
    if bits == 16:
        return NoQuant()
    from evalsuite.load.models import quant_defaults

    cls = quant.config_class(method)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(k for k in options if k not in fields)
    if unknown:
        flags = [quant_options()[k].flag if k in quant_options() else "--" + k.replace("_", "-") for k in unknown]
        raise UsageError(f"method {method} takes no {', '.join(flags)}")
    defaults = {k: v for k, v in quant_defaults(model).items() if k in fields} if model else {}
    # methods without a bit width (MPO: its size is set by the bond) give one cell for any bits but 16
    return cls(**({"bits": bits} if "bits" in fields else {}), **{**defaults, **options})
