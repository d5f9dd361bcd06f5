"""Matrix product operator (MPO) compression of linear layers, alone or with RTN on the cores (--method mpo,
mpo+rtn): the module ``MPOLinear`` that replaces an ``nn.Linear``, the configs and their one handler. The tensor
math lives in quant.mpo_tensor.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from quant import Footprint, QuantConfig, QuantError, option, register
from quant.linears import KEEP_HELP, plan, replace_module
from quant.mpo_tensor import (
    Factors,
    bond_for_ratio,
    core_storage_bits,
    fake_quantize_core,
    layer_factors,
    matrix2mpo,
    mpo2matrix,
    parse_factorization,
)
from quant.rtn import RTN_BITS, SYM_HELP


# ---- module -------------------------------------------------------------------------------------------

class MPOLinear(nn.Module):
    """Drop-in for ``nn.Linear`` holding MPO cores. By default it contracts the input against the cores
    one by one and never forms W; ``dense=True`` rebuilds W (cached while the cores are unchanged and no
    gradient is wanted) and runs one matmul, which is faster when the bonds are large."""

    def __init__(self, cores: Sequence[torch.Tensor], bias: torch.Tensor | None = None, dense: bool = False):
        super().__init__()
        self.cores = nn.ParameterList([nn.Parameter(c.detach().clone()) for c in cores])
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())
        self.out_features = math.prod(c.shape[1] for c in cores)
        self.in_features = math.prod(c.shape[2] for c in cores)
        self.dense = dense
        self._cached: tuple[tuple, torch.Tensor] | None = None

    def weight_matrix(self) -> torch.Tensor:
        cores = list(self.cores)
        if torch.is_grad_enabled() and any(c.requires_grad for c in cores):
            return mpo2matrix(cores)
        key = tuple((c.data_ptr(), c._version) for c in cores)  # changes on in-place edits and moves
        if self._cached is None or self._cached[0] != key:
            self._cached = (key, mpo2matrix(cores).detach())
        return self._cached[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dense:
            return F.linear(x, self.weight_matrix(), self.bias)
        lead = x.shape[:-1]
        t = x.reshape(-1, 1, 1, self.in_features)  # [batch, outputs made, open bond, inputs left]
        for core in self.cores:
            d, i, j, d_next = core.shape
            b, made = t.shape[:2]
            t = torch.einsum("bpdjr,dije->bpier", t.reshape(b, made, d, j, -1), core)
            t = t.reshape(b, made * i, d_next, -1)
        y = t.reshape(*lead, self.out_features)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        bonds = [c.shape[-1] for c in self.cores][:-1]
        return f"in_features={self.in_features}, out_features={self.out_features}, bonds={bonds}, dense={self.dense}"


# ---- configs and handler ------------------------------------------------------------------------------

@dataclass(frozen=True)
class MPOConfig(QuantConfig):
    """MPO (--method mpo) with exactly one truncation rule: a bond cap, a per-layer relative Frobenius error budget,
    or a per-layer target compression ratio (core parameters / dense parameters). Cores are stored at 16 bit."""

    bond_dim: int | None = option(None, "MPO: bond dimension cap D")
    rel_error: float | None = option(None, "MPO: per-layer relative Frobenius error budget, in (0, 1)")
    mpo_ratio: float | None = option(None, "MPO: per-layer target compression ratio, in (0, 1]")
    n_factors: int = option(5, "MPO: cores per layer (5, as MPOP)")
    mpo_factors: tuple[str, ...] = option((), "MPO: explicit factorizations such as 576=3x4x4x4x3")
    keep: tuple[str, ...] = option((), KEEP_HELP)
    mpo_contract: bool = option(False, "MPO: evaluate by contracting the cores per call instead of rebuilding W once "
                                       "(slow; the real MPO cost)")

    method: ClassVar[str] = "mpo"

    def __post_init__(self) -> None:
        rules = [r for r in (self.bond_dim, self.rel_error, self.mpo_ratio) if r is not None]
        if len(rules) != 1:
            raise QuantError(f"MPO needs exactly one of --bond-dim, --rel-error, --mpo-ratio; got {len(rules)}")
        if self.bond_dim is not None and self.bond_dim < 1:
            raise QuantError(f"MPO bond dimension must be an integer >= 1; got {self.bond_dim}")
        if self.rel_error is not None and not 0 < self.rel_error < 1:
            raise QuantError(f"MPO relative error budget must lie in (0, 1); got {self.rel_error}")
        if self.mpo_ratio is not None and not 0 < self.mpo_ratio <= 1:
            raise QuantError(f"MPO compression ratio must lie in (0, 1]; got {self.mpo_ratio}")
        if self.n_factors < 2:
            raise QuantError(f"MPO needs n_factors >= 2 (1 is the dense matrix); got {self.n_factors}")
        object.__setattr__(self, "mpo_factors", tuple(self.mpo_factors))
        object.__setattr__(self, "keep", tuple(self.keep))
        for size, fs in self.factor_map().items():
            if len(fs) != self.n_factors:
                raise QuantError(f"MPO factorization of {size} has {len(fs)} factors, not n_factors={self.n_factors}; "
                                 f"pad with 1s or change --n-factors")

    def validate(self, model: nn.Module) -> None:
        """Shape-only checks, fine on a meta-device skeleton: keep patterns, explicit factors, reachable ratio."""
        _layer_plans(plan(model, self.keep)[0], self)

    def factor_map(self) -> dict[int, Factors]:
        return dict(parse_factorization(f) for f in self.mpo_factors)

    def stored_core(self, core: torch.Tensor, central: bool) -> tuple[torch.Tensor, int]:
        """The core as it will be stored, and its packed bits."""
        return core, 16 * core.numel()

    def label(self) -> str:
        rule = (f"D{self.bond_dim}" if self.bond_dim is not None
                else f"eps{self.rel_error:g}" if self.rel_error is not None else f"r{self.mpo_ratio:g}")
        n = "" if self.n_factors == 5 else f"-n{self.n_factors}"
        return f"mpo-{rule}{n}" + (f"-keep:{'+'.join(self.keep)}" if self.keep else "")


@dataclass(frozen=True)
class MPORTNConfig(MPOConfig):
    """MPO, then RTN on the cores (--method mpo+rtn): the largest (central) core at ``bits``, the small auxiliary
    cores at ``aux_bits`` (16 = left unquantized). Groups are ``group_size`` consecutive core entries."""

    bits: int = 4
    aux_bits: int = option(8, "mpo+rtn: bits of the small auxiliary cores (16 = unquantized)")
    group_size: int = option(128, "mpo+rtn: consecutive core entries sharing a scale (-1 = one group per core)")
    sym: bool = option(False, SYM_HELP)

    method: ClassVar[str] = "mpo+rtn"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.bits not in RTN_BITS:
            raise QuantError(f"MPO+RTN bits must be one of {', '.join(map(str, RTN_BITS))}; got {self.bits}")
        if self.aux_bits not in (*RTN_BITS, 16):
            raise QuantError(f"MPO+RTN aux bits must be one of {', '.join(map(str, RTN_BITS))} or 16; got {self.aux_bits}")
        if self.group_size != -1 and self.group_size < 1:
            raise QuantError(f"group size must be a positive integer or -1 (one group per core); got {self.group_size}")

    def stored_core(self, core: torch.Tensor, central: bool) -> tuple[torch.Tensor, int]:
        bits = self.bits if central else self.aux_bits
        if bits >= 16:
            return super().stored_core(core, central)
        return (fake_quantize_core(core, bits, self.group_size, self.sym),
                core_storage_bits(core.numel(), bits, self.group_size, self.sym))

    def label(self) -> str:
        g = "core" if self.group_size == -1 else f"g{self.group_size}"
        return (f"{self.bits}bit-{super().label()}-rtn-{g}-aux{self.aux_bits}" + ("-sym" if self.sym else ""))


def _store_cores(cores: list[torch.Tensor], config: MPOConfig) -> tuple[list[torch.Tensor], int]:
    """Cores as they will be stored (the largest one is the central core) and their exact packed bits."""
    central = max(range(len(cores)), key=lambda k: cores[k].numel())
    stored = [config.stored_core(core, k == central) for k, core in enumerate(cores)]
    return [c for c, _ in stored], sum(b for _, b in stored)


def _rel_error(w: torch.Tensor, cores: Sequence[torch.Tensor]) -> float:
    """||W - MPO||_F / ||W||_F, in float64."""
    norm = float(torch.linalg.norm(w.double()))
    return float(torch.linalg.norm(w.double() - mpo2matrix(cores).double())) / norm if norm else 0.0


def _layer_plans(linears: Mapping[str, nn.Linear], config: MPOConfig) -> dict[str, tuple[Factors, Factors, int | None]]:
    """(out factors, in factors, bond cap) per layer, all validated before any layer is touched."""
    explicit = config.factor_map()
    dims = {d for lin in linears.values() for d in (lin.out_features, lin.in_features)}
    unused = sorted(explicit.keys() - dims)
    if unused:
        raise QuantError(f"--mpo-factors size {unused[0]} matches no compressed layer; sizes are {', '.join(map(str, sorted(dims)))}")
    plans = {}
    for name, lin in linears.items():
        out_f, in_f = layer_factors(lin.out_features, lin.in_features, config.n_factors, explicit)
        cap = config.bond_dim
        if config.mpo_ratio is not None:
            try:
                cap = bond_for_ratio(out_f, in_f, config.mpo_ratio)
            except QuantError as e:
                raise QuantError(f"{name}: {e}") from None
        plans[name] = (out_f, in_f, cap)
    return plans


@register(MPOConfig)
@register(MPORTNConfig)
@torch.no_grad()
def mpo_(model: nn.Module, config: MPOConfig, **_: object) -> Footprint:
    linears, fp = plan(model, config.keep)
    plans = _layer_plans(linears, config)
    params_before = sum(p.numel() for p in model.parameters())
    dense_params = core_total = 0
    for name, lin in linears.items():
        out_f, in_f, cap = plans[name]
        w = lin.weight
        dec = matrix2mpo(w, out_f, in_f, max_bond=cap, rel_error=config.rel_error)
        cores, bits = _store_cores(dec.cores, config)
        norm = float(torch.linalg.norm(w.double()))
        params = sum(c.numel() for c in cores)
        fp.layers[name] = {
            "shape": [w.shape[0], w.shape[1]], "out_factors": list(out_f), "in_factors": list(in_f),
            "bonds": [c.shape[-1] for c in cores][:-1], "params": params, "ratio": params / w.numel(),
            "bits": bits, "bits_per_weight": bits / w.numel(),
            "rel_error": _rel_error(w, cores), "mpo_rel_error": _rel_error(w, dec.cores),
            "error_bound": math.sqrt(sum(dec.discarded)) / norm if norm else 0.0,
        }
        replace_module(model, name, MPOLinear(cores, lin.bias, dense=not config.mpo_contract))
        fp.linear_params += w.numel()
        fp.linear_bits += bits
        dense_params += w.numel()
        core_total += params
    errors = [layer["rel_error"] for layer in fp.layers.values()]
    params_after = sum(p.numel() for p in model.parameters())
    fp.extra.update({
        "mpo_layers": len(linears),
        "mpo_ratio": core_total / dense_params if dense_params else 1.0,
        "mpo_params": core_total,
        "model_params_before": params_before,
        "model_params_after": params_after,
        "model_param_ratio": params_after / params_before,
        "rel_error_mean": sum(errors) / len(errors) if errors else 0.0,
        "rel_error_max": max(errors, default=0.0),
    })
    return fp
