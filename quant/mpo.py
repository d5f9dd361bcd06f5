"""Matrix product operator (MPO) compression of linear layers, alone or with RTN on the cores.

Gao et al. (Phys. Rev. Research 2, 2020) and Liu et al. (MPOP, ACL 2021): W of shape (I, J), with
I = i1*...*in and J = j1*...*jn, is reshaped to (i1..in, j1..jn), permuted to (i1, j1, ..., in, jn) and
split by sequential SVD into cores T_k of shape [D_{k-1}, i_k, j_k, D_k]. Truncating the bonds D_k keeps
the largest singular directions; by MPOP's Theorem 1 the Frobenius error is at most the root of the
singular-value energy discarded over all bonds. Here W is ``nn.Linear.weight``: I = out, J = in features.

Layout: pure functions (factorization, bond sizes, ``matrix2mpo``/``mpo2matrix``, RTN on cores), the
module ``MPOLinear``, then the configs and their one handler.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Mapping, NamedTuple, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from quant import Footprint, QuantConfig, QuantError, register
from quant.linears import plan, replace_module
from quant.rtn import RTN_BITS, fake_quantize, storage_bits

Factors = tuple[int, ...]


# ---- factorization -------------------------------------------------------------------------------------

def prime_factors(n: int) -> list[int]:
    out, p = [], 2
    while p * p <= n:
        while n % p == 0:
            out.append(p)
            n //= p
        p += 1
    return out + ([n] if n > 1 else [])


def balanced_factors(size: int, n: int) -> Factors:
    """``size`` as exactly ``n`` factors, as equal as its primes allow (largest prime into the smallest
    factor first); too few primes leave factors of 1. Small factors go to the ends, large ones to the
    middle, so the central core carries the big bonds as in MPOP."""
    bins = [1] * n
    for p in sorted(prime_factors(size), reverse=True):
        bins[bins.index(min(bins))] *= p
    ascending = sorted(bins)
    return tuple(ascending[0::2] + ascending[1::2][::-1])


def layer_factors(out_features: int, in_features: int, n_factors: int,
                  explicit: Mapping[int, Factors] | None = None) -> tuple[Factors, Factors]:
    """(out factors, in factors) of one layer. An explicit factorization of either size sets the count;
    otherwise a prime or size-1 dimension lowers it to what the other side can split into (one core,
    the dense matrix itself, when neither splits): fewer factors, never a wrong reshape."""
    explicit = explicit or {}
    given = [explicit[d] for d in (out_features, in_features) if d in explicit]
    if given:
        n = len(given[0])
    else:
        n = max(1, min(n_factors, max(len(prime_factors(out_features)), len(prime_factors(in_features)))))
    return (explicit.get(out_features) or balanced_factors(out_features, n),
            explicit.get(in_features) or balanced_factors(in_features, n))


def check_factors(shape: Sequence[int], out_factors: Factors, in_factors: Factors) -> None:
    if len(out_factors) != len(in_factors) or not out_factors:
        raise QuantError(f"MPO needs as many out as in factors (at least one); got {out_factors} and {in_factors}")
    for size, fs, side in ((shape[0], out_factors, "out"), (shape[1], in_factors, "in")):
        if any(f < 1 for f in fs) or math.prod(fs) != size:
            raise QuantError(f"MPO {side} factors {'x'.join(map(str, fs))} multiply to {math.prod(fs)}, "
                             f"not {size}; give positive factors whose product is {size}")


def parse_factorization(text: str) -> tuple[int, Factors]:
    """``"576=3x4x4x4x3"`` -> (576, (3, 4, 4, 4, 3)); the product must be the size."""
    size, sep, rest = text.partition("=")
    try:
        n, fs = int(size), tuple(int(f) for f in rest.split("x"))
    except ValueError:
        raise QuantError(f"MPO factorization {text!r} is not SIZE=F1xF2x...; write e.g. 576=3x4x4x4x3") from None
    if not sep or n < 1 or any(f < 1 for f in fs) or math.prod(fs) != n:
        raise QuantError(f"MPO factorization {text!r}: the factors multiply to {math.prod(fs)}, not {n}; "
                         f"give positive factors whose product is {n}")
    return n, fs


# ---- bond sizes (no SVD needed: a thin SVD always returns min(rows, cols) directions) -------------------

def bond_dims(out_factors: Factors, in_factors: Factors, max_bond: int | None = None) -> list[int]:
    """D_1..D_{n-1} under a bond cap; untruncated D_k = min(prod of left dims, prod of right dims)."""
    pairs = [i * j for i, j in zip(out_factors, in_factors)]
    bonds, d = [], 1
    for k in range(len(pairs) - 1):
        d = min(d * pairs[k], math.prod(pairs[k + 1:]), max_bond or math.inf)
        bonds.append(int(d))
    return bonds


def core_params(out_factors: Factors, in_factors: Factors, bonds: Sequence[int]) -> int:
    """sum_k D_{k-1} i_k j_k D_k with D_0 = D_n = 1."""
    full = [1, *bonds, 1]
    return sum(full[k] * i * j * full[k + 1] for k, (i, j) in enumerate(zip(out_factors, in_factors)))


def bond_for_ratio(out_factors: Factors, in_factors: Factors, ratio: float) -> int:
    """The largest bond cap whose cores hold at most ``ratio`` of the dense parameters."""
    dense = math.prod(out_factors) * math.prod(in_factors)
    fits = lambda cap: core_params(out_factors, in_factors, bond_dims(out_factors, in_factors, cap)) <= ratio * dense  # noqa: E731
    if not fits(1):
        smallest = core_params(out_factors, in_factors, bond_dims(out_factors, in_factors, 1)) / dense
        raise QuantError(f"compression ratio {ratio:g} is below the smallest MPO of this shape (bond 1 gives "
                         f"{smallest:.4g}); raise the ratio, use more factors, or --keep the layer")
    lo, hi = 1, max(bond_dims(out_factors, in_factors), default=1)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo


# ---- decomposition and contraction ----------------------------------------------------------------------

class MPODecomposition(NamedTuple):
    cores: list[torch.Tensor]  # T_k of shape [D_{k-1}, i_k, j_k, D_k]
    discarded: list[float]  # squared singular values dropped at each bond (n-1 entries)


def _kept_rank(s: torch.Tensor, max_bond: int | None, budget_sq: float) -> int:
    rank = len(s) if max_bond is None else min(len(s), max_bond)
    if budget_sq > 0:
        tail = s.square().flip(0).cumsum(0).flip(0)  # tail[r]: energy dropped when keeping r directions
        within = (tail <= budget_sq).nonzero()
        rank = min(rank, int(within[0]) if len(within) else len(s))
    return max(rank, 1)


def _thin_svd(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(U, s, diag(s) V^T). LAPACK's SVD is 5-70x slower than needed on the very wide blocks of the first
    steps, so a wide block goes through the eigenvectors of its small Gram matrix (float64; U stays
    orthonormal, so the dropped energy is exactly the squared norm of the dropped rows)."""
    if a.shape[0] > a.shape[1]:
        u, s, vh = torch.linalg.svd(a, full_matrices=False)
        return u, s, s[:, None] * vh
    u = torch.linalg.eigh(a @ a.T).eigenvectors.flip(-1)
    rest = u.T @ a
    return u, torch.linalg.vector_norm(rest, dim=1), rest


def matrix2mpo(w: torch.Tensor, out_factors: Factors, in_factors: Factors, max_bond: int | None = None,
               rel_error: float | None = None) -> MPODecomposition:
    """Sequential SVD of ``w`` (float64 inside, cores in ``w``'s dtype). ``max_bond`` caps every bond;
    ``rel_error`` gives each of the n-1 bonds an equal share of the budget (eps*||W||)^2, so the whole
    reconstruction stays within eps*||W||_F (TT-SVD, Oseledets 2011)."""
    check_factors(w.shape, out_factors, in_factors)
    n = len(out_factors)
    t = w.detach().double().reshape(*out_factors, *in_factors)
    rest = t.permute([a for k in range(n) for a in (k, n + k)]).reshape(1, -1)  # (i1, j1, ..., in, jn)
    budget_sq = (rel_error * float(torch.linalg.norm(t))) ** 2 / max(n - 1, 1) if rel_error else 0.0
    cores, discarded, bond = [], [], 1
    for i, j in zip(out_factors[:-1], in_factors[:-1]):
        u, s, s_vh = _thin_svd(rest.reshape(bond * i * j, -1))
        keep = _kept_rank(s, max_bond, budget_sq)
        discarded.append(float(s[keep:].square().sum()))
        cores.append(u[:, :keep].reshape(bond, i, j, keep).to(w.dtype))
        rest, bond = s_vh[:keep], keep
    cores.append(rest.reshape(bond, out_factors[-1], in_factors[-1], 1).to(w.dtype))
    return MPODecomposition(cores, discarded)


def mpo2matrix(cores: Sequence[torch.Tensor]) -> torch.Tensor:
    """Contract the cores back to the (I, J) matrix."""
    w = cores[0].new_ones(1, 1, 1)  # (rows so far, columns so far, open bond)
    for core in cores:
        _, i, j, d = core.shape
        w = torch.einsum("abd,dije->aibje", w, core).reshape(w.shape[0] * i, w.shape[1] * j, d)
    return w.reshape(w.shape[0], w.shape[1])


# ---- RTN on cores ---------------------------------------------------------------------------------------

def _core_groups(numel: int, group_size: int) -> tuple[int, int, int]:
    """(full groups, group length, tail length): consecutive entries in memory order, last group shorter."""
    g = numel if group_size == -1 else min(group_size, numel)
    full, tail = divmod(numel, g)
    return full, g, tail


def fake_quantize_core(core: torch.Tensor, bits: int, group_size: int, sym: bool = False) -> torch.Tensor:
    """RTN (quant.rtn's grid) on a core of any shape, per group of ``group_size`` consecutive entries."""
    flat = core.reshape(-1)
    full, g, tail = _core_groups(flat.numel(), group_size)
    parts = [fake_quantize(flat[: full * g].reshape(full, g), bits, -1, sym).reshape(-1)]
    if tail:
        parts.append(fake_quantize(flat[full * g :].reshape(1, tail), bits, -1, sym).reshape(-1))
    return torch.cat(parts).reshape(core.shape)


def core_storage_bits(numel: int, bits: int, group_size: int, sym: bool = False) -> int:
    """Packed bits of a core: ``bits``-bit codes plus one fp16 scale (and zero, if asymmetric) per group."""
    full, g, tail = _core_groups(numel, group_size)
    return storage_bits((full, g), bits, -1, sym) + (storage_bits((1, tail), bits, -1, sym) if tail else 0)


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
    """MPO with exactly one truncation rule: a bond cap, a per-layer relative Frobenius error budget, or a
    per-layer target compression ratio (core parameters / dense parameters). Cores are stored at 16 bit."""

    bond_dim: int | None = None
    rel_error: float | None = None
    ratio: float | None = None
    n_factors: int = 5
    factors: tuple[str, ...] = ()  # explicit factorizations "SIZE=F1xF2x..." for dimensions of that size
    keep: tuple[str, ...] = ()  # linears (names, globs or 'attention'/'ffn') left dense at 16 bit
    dense: bool = True  # evaluate with W rebuilt once (fast inference); False contracts the cores per call

    method: ClassVar[str] = "mpo"

    def __post_init__(self) -> None:
        rules = [r for r in ("bond_dim", "rel_error", "ratio") if getattr(self, r) is not None]
        if len(rules) != 1:
            raise QuantError(f"MPO needs exactly one of --bond-dim, --rel-error, --mpo-ratio; got {len(rules)}")
        if self.bond_dim is not None and self.bond_dim < 1:
            raise QuantError(f"MPO bond dimension must be an integer >= 1; got {self.bond_dim}")
        if self.rel_error is not None and not 0 < self.rel_error < 1:
            raise QuantError(f"MPO relative error budget must lie in (0, 1); got {self.rel_error}")
        if self.ratio is not None and not 0 < self.ratio <= 1:
            raise QuantError(f"MPO compression ratio must lie in (0, 1]; got {self.ratio}")
        if self.n_factors < 2:
            raise QuantError(f"MPO needs n_factors >= 2 (1 is the dense matrix); got {self.n_factors}")
        object.__setattr__(self, "factors", tuple(self.factors))
        object.__setattr__(self, "keep", tuple(self.keep))
        for size, fs in self.factor_map().items():
            if len(fs) != self.n_factors:
                raise QuantError(f"MPO factorization of {size} has {len(fs)} factors, not n_factors={self.n_factors}; "
                                 f"pad with 1s or change --n-factors")

    def validate(self, model: nn.Module) -> None:
        """Shape-only checks, fine on a meta-device skeleton: keep patterns, explicit factors, reachable ratio."""
        _layer_plans(plan(model, self.keep)[0], self)

    def factor_map(self) -> dict[int, Factors]:
        return dict(parse_factorization(f) for f in self.factors)

    def stored_core(self, core: torch.Tensor, central: bool) -> tuple[torch.Tensor, int]:
        """The core as it will be stored, and its packed bits."""
        return core, 16 * core.numel()

    def label(self) -> str:
        rule = (f"D{self.bond_dim}" if self.bond_dim is not None
                else f"eps{self.rel_error:g}" if self.rel_error is not None else f"r{self.ratio:g}")
        n = "" if self.n_factors == 5 else f"-n{self.n_factors}"
        return f"mpo-{rule}{n}" + (f"-keep:{'+'.join(self.keep)}" if self.keep else "")


@dataclass(frozen=True)
class MPORTNConfig(MPOConfig):
    """MPO, then RTN on the cores: the largest (central) core at ``bits``, the small auxiliary cores at
    ``aux_bits`` (16 = left unquantized). Groups are ``group_size`` consecutive core entries."""

    bits: int = 4
    aux_bits: int = 8
    group_size: int = 128
    sym: bool = False

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
        if config.ratio is not None:
            try:
                cap = bond_for_ratio(out_f, in_f, config.ratio)
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
        replace_module(model, name, MPOLinear(cores, lin.bias, dense=config.dense))
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
