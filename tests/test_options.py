"""Quantizer options are declared once, on the config fields: the CLI flags and the sweep keys are exactly those
fields, typed as the fields are, and nothing else."""
from __future__ import annotations

import dataclasses

import pytest

import quant
from evalsuite.__main__ import build_parser
from evalsuite.errors import UsageError
from evalsuite.spec.options import AXIS_FIELDS, check_sweep_options, options_from_args, quant_options


def _eval_parser():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return sub.choices["eval"]


def config_fields() -> dict[str, set[str]]:
    return {cls.method: {f.name for f in dataclasses.fields(cls)} - set(AXIS_FIELDS) for cls in quant.config_classes()}


def test_the_cli_flags_are_the_config_fields():
    fields = set().union(*config_fields().values())
    group = next(g for g in _eval_parser()._action_groups if g.title.startswith("quantizer options"))
    assert {a.dest for a in group._group_actions} == fields == set(quant_options())
    for method, names in config_fields().items():
        assert {n for n, o in quant_options().items() if method in o.methods} == names, method


def test_flags_parse_to_typed_options():
    args = _eval_parser().parse_args(["--group-size", "32", "--no-act-order", "--keep", "attention", "ffn",
                                      "--damp", "0.1", "--sym", "--calib-source", "pydoc"])
    assert options_from_args(args) == {"group_size": 32, "act_order": False, "keep": ("attention", "ffn"),
                                       "damp": 0.1, "sym": True, "calib_source": "pydoc"}
    assert options_from_args(_eval_parser().parse_args([])) == {}


@pytest.mark.parametrize("cls", quant.config_classes(), ids=lambda c: c.method)
def test_every_field_is_a_sweep_key_of_its_method(cls):
    needed = {"bond_dim": 8} if cls.method.startswith("mpo") else {}
    config = cls(**needed) if cls.method != "none" else cls()
    values = {k: v for k, v in dataclasses.asdict(config).items() if k not in AXIS_FIELDS and v is not None}
    assert check_sweep_options(cls.method, values) == values
    assert cls(**({"bits": config.bits} if "bits" in {f.name for f in dataclasses.fields(cls)} else {}), **values) == config


def test_a_sweep_key_of_another_method_is_refused():
    with pytest.raises(UsageError, match="sweep method rtn: unknown option 'damp'; rtn takes group_size, keep, keep_outliers, sym"):
        check_sweep_options("rtn", {"damp": 0.1})
