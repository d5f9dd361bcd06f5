"""Matrix product operators as pure tensor functions: factorization of layer sizes, bond sizes, the sequential-SVD
decomposition and its contraction, and RTN on cores.

Gao et al. (Phys. Rev. Research 2, 2020) and Liu et al. (MPOP, ACL 2021): W of shape (I, J), with
I = i1*...*in and J = j1*...*jn, is reshaped to (i1..in, j1..jn), permuted to (i1, j1, ..., in, jn) and
split by sequential SVD into cores T_k of shape [D_{k-1}, i_k, j_k, D_k]. Truncating the bonds D_k keeps
the largest singular directions; by MPOP's Theorem 1 the Frobenius error is at most the root of the
singular-value energy discarded over all bonds. Here W is ``nn.Linear.weight``: I = out, J = in features.
"""
from __future__ import annotations

import math
from typing import Mapping, NamedTuple, Sequence

import torch

from quant import QuantError
from quant.rtn import fake_quantize, storage_bits

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
