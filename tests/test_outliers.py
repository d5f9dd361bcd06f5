"""Outlier channels kept at 16 bit (--keep-outliers) and component-wise precision (--keep): the pure
pieces on tiny tensors, then RTN and GPTQ on the real bundled model."""
from __future__ import annotations

import pytest
import torch

from quant import QuantError, quantize_
from quant.outliers import top_channels
from quant.rtn import RTNConfig, fake_quantize, storage_bits


def test_top_channels_are_the_largest():
    amax = torch.tensor([0.1, 9.0, 0.3, 7.0, 0.2, 8.0])
    assert top_channels(amax, 3).tolist() == [1, 3, 5]
    assert top_channels(amax, 0).numel() == 0
    with pytest.raises(QuantError, match="--keep-outliers 6"):
        top_channels(amax, 6)


def test_kept_columns_stay_exact_and_do_not_widen_their_group():
    torch.manual_seed(0)
    w = torch.randn(8, 64)
    w[:, 5] = 50.0  # an outlier column that would dominate its group's range
    keep = torch.tensor([5])
    q = fake_quantize(w, 3, 32, keep=keep)
    assert torch.equal(q[:, 5], w[:, 5])
    zeroed = w.clone()
    zeroed[:, 5] = 0
    others = torch.ones(64, dtype=torch.bool)
    others[5] = False
    assert torch.equal(q[:, others], fake_quantize(zeroed, 3, 32)[:, others])
    assert (q - w)[:, others].abs().mean() < (fake_quantize(w, 3, 32) - w)[:, others].abs().mean()


def test_storage_bits_prices_kept_channels_and_group_indices():
    shape = (96, 128)
    base = storage_bits(shape, 4, 32, sym=False)
    assert base == 96 * 128 * 4 + 96 * 4 * (16 + 4)
    # a kept channel trades its 4-bit codes for fp16 values plus one int32 index
    assert storage_bits(shape, 4, 32, False, kept=2) - base == 2 * (96 * (16 - 4) + 32)
    # act-order: one int32 group index per input channel
    assert storage_bits(shape, 4, 32, False, g_idx=True) - base == 128 * 32


def test_rtn_keep_outliers_validated_and_labelled():
    with pytest.raises(QuantError, match="--keep-outliers"):
        RTNConfig(keep_outliers=-1)
    assert RTNConfig(bits=3, group_size=64, keep_outliers=8).label() == "3bit-rtn-g64-out8"
    assert RTNConfig(bits=3, group_size=64, keep_outliers=8).to_dict()["keep_outliers"] == 8


# ---- the real bundled model -------------------------------------------------------------------------------

@pytest.fixture
def smollm(bundled, fresh_model):
    from quant.calib import calibration_ids

    _, tok = bundled
    return fresh_model, tok, calibration_ids(tok, 2, 128, seed=0)


def fresh(smollm):
    return smollm[0]()


@pytest.mark.slow
def test_rtn_keeps_the_highest_activation_channels_exactly(smollm):
    from quant.outliers import activation_amax

    _, tok, calib = smollm
    original = fresh(smollm)
    model = fresh(smollm)
    name = "model.layers.2.mlp.down_proj"
    amax = activation_amax(original, {name: original.get_submodule(name)}, calib)[name]
    fp = quantize_(model, RTNConfig(bits=3, group_size=64, keep_outliers=4), tokenizer=tok, calib=calib)
    w0, w1 = original.get_submodule(name).weight, model.get_submodule(name).weight
    unchanged = (w0 == w1).all(0).nonzero().flatten()
    assert set(torch.topk(amax, 4).indices.tolist()) <= set(unchanged.tolist())
    plain = quantize_(fresh(smollm), RTNConfig(bits=3, group_size=64))
    assert fp.bits_per_weight > plain.bits_per_weight  # the kept channels are paid for


@pytest.mark.slow
def test_keep_component_leaves_it_at_16_bit_and_costs_bits(smollm):
    original, model = fresh(smollm), fresh(smollm)
    fp = quantize_(model, RTNConfig(bits=3, group_size=64, keep=("attention",)))
    assert torch.equal(model.model.layers[0].self_attn.q_proj.weight, original.model.layers[0].self_attn.q_proj.weight)
    assert not torch.equal(model.model.layers[0].mlp.up_proj.weight, original.model.layers[0].mlp.up_proj.weight)
    assert fp.bits_per_weight > quantize_(fresh(smollm), RTNConfig(bits=3, group_size=64)).bits_per_weight


@pytest.mark.slow
def test_keep_pattern_matching_nothing_is_an_error(smollm):
    from quant.gptq import GPTQConfig

    for cfg in (RTNConfig(bits=3, keep=("*no_such_module*",)), GPTQConfig(bits=3, group_size=64, keep=("attn_typo",))):
        with pytest.raises(QuantError, match="matches no linear module"):
            quantize_(fresh(smollm), cfg, tokenizer=smollm[1], calib=smollm[2])


@pytest.mark.slow
def test_gptq_keep_outliers_lowers_error_and_is_accounted(smollm):
    """GPTQ with kept outlier channels on the real model (first block only, to stay fast; --keep leaves the
    rest at 16 bit): the kept channels cost bits, and the model's outputs err less."""
    from quant.gptq import GPTQConfig

    _, tok, calib = smollm
    original = fresh(smollm)
    errors, bpw = {}, {}
    for k in (0, 16):
        model = fresh(smollm)
        cfg = GPTQConfig(bits=2, group_size=64, keep=("*layers.[1-9]*",), keep_outliers=k)
        fp = quantize_(model, cfg, tokenizer=tok, calib=calib)
        bpw[k] = fp.bits_per_weight
        ids = calib.to(model.device)
        with torch.no_grad():
            errors[k] = (model(ids).logits - original(ids).logits).float().norm().item()
    assert bpw[16] > bpw[0]
    assert errors[16] < errors[0]
