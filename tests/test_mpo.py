"""MPO decomposition: exactness at full bond, MPOP's truncation bound, core accounting, the module, the
handlers on the real bundled model, and bad input."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from quant import QuantError, config_class, quantize_
from quant.mpo import MPOConfig, MPOLinear, MPORTNConfig
from quant.mpo_tensor import (
    balanced_factors,
    bond_dims,
    bond_for_ratio,
    core_params,
    core_storage_bits,
    fake_quantize_core,
    layer_factors,
    matrix2mpo,
    mpo2matrix,
)

REAL_LAYERS = ("model.layers.0.self_attn.k_proj", "model.layers.7.mlp.down_proj", "model.layers.29.mlp.gate_proj")
ONLY_LAYER_0 = ("model.layers.[1-9]*",)  # keep every block but the first dense: a fast whole-handler run


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.norm(a.double() - b.double()) / torch.linalg.norm(b.double()))


def random_weight(out_f: int, in_f: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(out_f, in_f, generator=g) / math.sqrt(in_f)


@pytest.fixture
def real(bundled):
    return bundled


@pytest.fixture(scope="module")
def real_weights(bundled):
    model, _ = bundled
    return {name: model.get_submodule(name).weight.detach().clone() for name in REAL_LAYERS}


# ---- factorization ------------------------------------------------------------------------------------

@pytest.mark.parametrize("size,n", [(576, 5), (1536, 5), (192, 5), (4096, 5), (11008, 4), (768, 3)])
def test_balanced_factors_multiply_to_size_with_small_ends(size, n):
    fs = balanced_factors(size, n)
    assert len(fs) == n and math.prod(fs) == size
    assert max(fs[0], fs[-1]) <= min(fs[1:-1])  # small factors outside, the big central core inside


def test_balanced_factors_are_even_when_the_primes_allow():
    assert sorted(balanced_factors(576, 5)) == [3, 3, 4, 4, 4]
    assert sorted(balanced_factors(4096, 4)) == [8, 8, 8, 8]


@pytest.mark.parametrize("shape", [(577, 576), (576, 577), (1, 576), (13, 1), (7, 5), (1, 1)])
def test_prime_and_unit_dimensions_get_fewer_factors_and_stay_exact(shape):
    out_f, in_f = layer_factors(*shape, n_factors=5)
    assert math.prod(out_f) == shape[0] and math.prod(in_f) == shape[1] and len(out_f) == len(in_f)
    assert all(o * i > 1 for o, i in zip(out_f, in_f)) or len(out_f) == 1  # no core that is a pure bond
    w = random_weight(*shape)
    dec = matrix2mpo(w, out_f, in_f)
    assert mpo2matrix(dec.cores).shape == w.shape
    assert rel_err(mpo2matrix(dec.cores), w) < 1e-5


def test_explicit_factors_are_used_and_wrong_ones_rejected():
    out_f, in_f = layer_factors(192, 576, 5, {576: (4, 4, 3, 4, 3)})
    assert in_f == (4, 4, 3, 4, 3) and math.prod(out_f) == 192 and len(out_f) == 5
    with pytest.raises(QuantError, match="multiply to 768, not 576"):
        matrix2mpo(random_weight(192, 576), (2, 3, 4, 4, 2), (4, 4, 3, 4, 4))


# ---- decomposition --------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(192, 576), (576, 576), (1536, 576), (576, 1536), (96, 40)])
def test_full_bond_reconstructs_random_layers(shape):
    w = random_weight(*shape)
    out_f, in_f = layer_factors(*shape, n_factors=5)
    dec = matrix2mpo(w, out_f, in_f)
    assert [c.shape[-1] for c in dec.cores[:-1]] == bond_dims(out_f, in_f)
    assert rel_err(mpo2matrix(dec.cores), w) < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("name", REAL_LAYERS)
def test_full_bond_reconstructs_real_layers(real_weights, name):
    w = real_weights[name]
    dec = matrix2mpo(w, *layer_factors(*w.shape, n_factors=5))
    assert rel_err(mpo2matrix(dec.cores), w) < 1e-5


def _assert_theorem_1(w: torch.Tensor, bond: int) -> None:
    """MPOP Theorem 1: ||W - MPO(W)||_F <= sqrt(sum over bonds of discarded singular-value energy)."""
    out_f, in_f = layer_factors(*w.shape, n_factors=5)
    dec = matrix2mpo(w, out_f, in_f, max_bond=bond)
    assert max(c.shape[-1] for c in dec.cores) <= bond
    error = float(torch.linalg.norm(w.double() - mpo2matrix(dec.cores).double()))
    bound = math.sqrt(sum(dec.discarded))
    assert bound > 0.05 * float(torch.linalg.norm(w))  # a real truncation, not a vacuous one
    assert error <= bound + 1e-5 * float(torch.linalg.norm(w))  # fp32 cores: rounding slack only


@pytest.mark.parametrize("bond", [2, 8, 32])
def test_truncation_obeys_theorem_1_on_random_layers(bond):
    _assert_theorem_1(random_weight(576, 1536, seed=bond), bond)


@pytest.mark.slow
@pytest.mark.parametrize("name", REAL_LAYERS)
@pytest.mark.parametrize("bond", [4, 32])
def test_truncation_obeys_theorem_1_on_real_layers(real_weights, name, bond):
    _assert_theorem_1(real_weights[name], bond)


def _assert_error_budget(w: torch.Tensor, eps: float) -> None:
    factors = layer_factors(*w.shape, n_factors=5)
    dec = matrix2mpo(w, *factors, rel_error=eps)
    err = rel_err(mpo2matrix(dec.cores), w)
    assert eps / 4 < err <= eps + 1e-6  # within budget, and the budget was spent on smaller bonds
    assert sum(c.numel() for c in dec.cores) < core_params(*factors, bond_dims(*factors))


@pytest.mark.parametrize("eps", [0.2, 0.5, 0.7])
def test_relative_error_budget_holds_on_random_layers(eps):
    _assert_error_budget(random_weight(576, 576, seed=3), eps)


@pytest.mark.slow
@pytest.mark.parametrize("name", REAL_LAYERS)
def test_relative_error_budget_holds_on_real_layers(real_weights, name):
    _assert_error_budget(real_weights[name], 0.3)


def test_core_sizes_match_formula_and_ratio_falls_with_bond_cap():
    w = random_weight(1536, 576)
    out_f, in_f = layer_factors(1536, 576, 5)
    ratios = []
    for cap in (1, 2, 4, 8, 16, 32, 64, 128, 192):
        dec = matrix2mpo(w, out_f, in_f, max_bond=cap)
        bonds = [1] + [c.shape[-1] for c in dec.cores]
        assert [tuple(c.shape) for c in dec.cores] == [(bonds[k], out_f[k], in_f[k], bonds[k + 1]) for k in range(5)]
        size = sum(c.numel() for c in dec.cores)
        assert size == sum(bonds[k] * out_f[k] * in_f[k] * bonds[k + 1] for k in range(5))
        assert size == core_params(out_f, in_f, bond_dims(out_f, in_f, cap))
        ratios.append(size / w.numel())
    assert all(a < b for a, b in zip(ratios, ratios[1:]))


@pytest.mark.parametrize("ratio", [0.02, 0.1, 0.5, 1.0])
def test_bond_for_ratio_is_the_largest_cap_within_the_ratio(ratio):
    out_f, in_f = layer_factors(576, 1536, 5)
    cap = bond_for_ratio(out_f, in_f, ratio)
    size = lambda c: core_params(out_f, in_f, bond_dims(out_f, in_f, c)) / (576 * 1536)  # noqa: E731
    assert size(cap) <= ratio < size(cap + 1)


# ---- module -----------------------------------------------------------------------------------------------

def _module(dense: bool, bond: int = 16) -> MPOLinear:
    w = random_weight(192, 576, seed=1)
    dec = matrix2mpo(w, *layer_factors(192, 576, 5), max_bond=bond)
    return MPOLinear(dec.cores, torch.randn(192, generator=torch.Generator().manual_seed(2)), dense=dense)


@pytest.mark.parametrize("dense", [False, True])
def test_mpolinear_matches_rebuilt_matrix(dense):
    m = _module(dense)
    x = torch.randn(2, 7, 576)
    expected = x @ mpo2matrix(list(m.cores)).T + m.bias
    torch.testing.assert_close(m(x), expected, rtol=1e-5, atol=1e-5)
    assert m(x).shape == (2, 7, 192)


@pytest.mark.parametrize("dense", [False, True])
def test_gradients_reach_every_core(dense):
    m = _module(dense)
    m(torch.randn(5, 576)).square().sum().backward()
    assert all(c.grad is not None and c.grad.abs().sum() > 0 for c in m.cores)
    assert m.bias.grad is not None


@torch.no_grad()
def test_dense_cache_follows_edited_cores():
    m, x = _module(dense=True), torch.randn(3, 576)
    before = m(x)
    m.cores[2].mul_(2.0)
    after = m(x)
    m.dense = False
    torch.testing.assert_close(after, m(x), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(before, after)


def test_core_rtn_groups_run_over_consecutive_entries_with_a_short_tail():
    core = torch.randn(1, 3, 3, 9, generator=torch.Generator().manual_seed(4))  # 81 entries: 2 groups of 32 + 17
    q = fake_quantize_core(core, bits=2, group_size=32).reshape(-1)
    assert q.shape == (81,) and not torch.equal(q, core.reshape(-1))
    assert all(len(torch.unique(g)) <= 4 for g in (q[:32], q[32:64], q[64:]))
    assert core_storage_bits(81, 2, 32) == 81 * 2 + 3 * (16 + 2)
    assert core_storage_bits(81, 2, -1, sym=True) == 81 * 2 + 16


# ---- handlers on the real model ------------------------------------------------------------------------

@pytest.mark.slow
@torch.no_grad()
def test_full_bond_mpo_leaves_the_real_model_unchanged(real, fresh_model):
    model, tok = real
    ids = tok("The matrix product operator factorizes a weight matrix.", return_tensors="pt")["input_ids"]
    reference = model(ids).logits
    mpo_model = fresh_model()
    fp = quantize_(mpo_model, MPOConfig(bond_dim=10**6, keep=ONLY_LAYER_0))
    assert len(fp.layers) == 7 and all(isinstance(mpo_model.get_submodule(n), MPOLinear) for n in fp.layers)
    assert max(layer["rel_error"] for layer in fp.layers.values()) < 1e-5
    torch.testing.assert_close(mpo_model(ids).logits, reference, rtol=1e-4, atol=1e-3)


@pytest.mark.slow
@torch.no_grad()
def test_mpo_footprint_on_real_model(fresh_model):
    model = fresh_model()
    dense = {n: model.get_submodule(n).weight.numel() for n in (f"model.layers.0.{p}" for p in (
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"))}
    all_linear = sum(m.weight.numel() for n, m in model.named_modules() if isinstance(m, nn.Linear) and n != "lm_head")
    fp = quantize_(model, MPOConfig(bond_dim=8, keep=ONLY_LAYER_0))
    assert set(fp.layers) == set(dense)
    cores = {n: sum(c.numel() for c in model.get_submodule(n).cores) for n in dense}
    for n, layer in fp.layers.items():
        assert layer["params"] == cores[n] and layer["ratio"] == cores[n] / dense[n]
        assert layer["bits_per_weight"] == pytest.approx(16 * layer["ratio"])
        assert 0 < layer["rel_error"] <= layer["error_bound"] + 1e-5
    assert fp.extra["mpo_ratio"] == pytest.approx(sum(cores.values()) / sum(dense.values()))
    assert fp.linear_params == all_linear
    assert fp.linear_bits == 16 * (all_linear - sum(dense.values())) + 16 * sum(cores.values())
    assert fp.extra["model_params_after"] == sum(p.numel() for p in model.parameters())


def _expected_core_bits(numel: int, bits: int, group: int) -> int:
    return 16 * numel if bits == 16 else numel * bits + math.ceil(numel / group) * (16 + bits)


@pytest.mark.slow
@torch.no_grad()
def test_mpo_rtn_quantizes_the_central_core_and_counts_bits_exactly(fresh_model):
    model = fresh_model()
    config = MPORTNConfig(bond_dim=32, bits=3, aux_bits=8, group_size=32, keep=ONLY_LAYER_0)
    fp = quantize_(model, config)
    for name, layer in fp.layers.items():
        cores = list(model.get_submodule(name).cores)
        central = max(range(len(cores)), key=lambda k: cores[k].numel())
        expected = sum(_expected_core_bits(c.numel(), 3 if k == central else 8, 32) for k, c in enumerate(cores))
        assert layer["bits"] == expected
        groups = cores[central].reshape(-1)[: cores[central].numel() // 32 * 32].reshape(-1, 32)
        assert max(len(torch.unique(g)) for g in groups) <= 2**3  # on a 3-bit grid
        assert layer["rel_error"] > layer["mpo_rel_error"]  # quantization added error on top
    assert fp.bits_per_weight < 16


# ---- bad input -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,needle", [
    ({"bond_dim": 0}, "bond dimension"),
    ({"bond_dim": 8, "n_factors": 1}, "n_factors"),
    ({"mpo_ratio": 0.0}, "(0, 1]"),
    ({"mpo_ratio": 1.5}, "(0, 1]"),
    ({"rel_error": 1.0}, "(0, 1)"),
    ({}, "exactly one of"),
    ({"bond_dim": 8, "mpo_ratio": 0.5}, "exactly one of"),
    ({"bond_dim": 8, "mpo_factors": ("576=3x4x4x4x4",)}, "multiply to 768, not 576"),
    ({"bond_dim": 8, "mpo_factors": ("576=4x4x36",)}, "has 3 factors"),
    ({"bond_dim": 8, "mpo_factors": ("576:3x4",)}, "SIZE=F1xF2"),
])
def test_bad_config_is_one_clear_line(kwargs, needle):
    with pytest.raises(QuantError) as e:
        MPOConfig(**kwargs)
    assert needle in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("kwargs,needle", [({"bits": 7}, "bits"), ({"aux_bits": 1}, "aux bits"), ({"group_size": 0}, "group size")])
def test_bad_mpo_rtn_config_is_one_clear_line(kwargs, needle):
    with pytest.raises(QuantError, match=needle):
        MPORTNConfig(bond_dim=8, **kwargs)


def test_unreachable_ratio_and_unused_factors_fail_before_touching_the_model():
    model = nn.Sequential(nn.Linear(576, 192), nn.Linear(192, 7), nn.Linear(7, 577))
    original = [m.weight.clone() for m in model]
    with pytest.raises(QuantError, match=r"^2: compression ratio 0.5 is below"):  # 7 x 577: one core, ratio 1
        quantize_(model, MPOConfig(mpo_ratio=0.5))
    with pytest.raises(QuantError, match="size 768 matches no compressed layer"):
        quantize_(model, MPOConfig(bond_dim=4, mpo_factors=("768=4x4x4x4x3",)))
    assert all(isinstance(m, nn.Linear) and torch.equal(m.weight, w) for m, w in zip(model, original))


def test_validate_checks_shapes_on_a_meta_skeleton():
    with torch.device("meta"):
        skeleton = nn.Sequential(nn.Linear(576, 192), nn.Linear(7, 577))
    MPOConfig(bond_dim=4).validate(skeleton)
    with pytest.raises(QuantError, match="^1: compression ratio"):
        MPOConfig(mpo_ratio=0.3).validate(skeleton)
    with pytest.raises(QuantError, match="matches no linear"):
        MPORTNConfig(bond_dim=4, keep=("attention",)).validate(skeleton)


def test_configs_serialize_and_label():
    c = MPORTNConfig(bond_dim=64, bits=4, group_size=32)
    assert c.to_dict()["method"] == "mpo+rtn" and c.to_dict()["bond_dim"] == 64
    assert c.label() == "4bit-mpo-D64-rtn-g32-aux8"
    assert MPOConfig(mpo_ratio=0.25, n_factors=3).label() == "mpo-r0.25-n3"
    assert config_class("mpo") is MPOConfig and config_class("mpo+rtn") is MPORTNConfig
