"""RTN numerics against closed-form expectations."""
import pytest
import torch
import torch.nn as nn

from quant import NoQuant, QuantError, quantize_
from quant.rtn import RTNConfig, dequantize, fake_quantize, grid_params, quantize, storage_bits


def sqnr_db(w, q):
    return (10 * torch.log10(w.pow(2).sum() / (w - q).pow(2).sum())).item()


@pytest.fixture
def gaussian():
    return torch.randn(256, 512, generator=torch.Generator().manual_seed(0))


def test_sqnr_rises_with_bits_and_8bit_above_40db(gaussian):
    sqnr = {b: sqnr_db(gaussian, fake_quantize(gaussian, b, 128)) for b in (2, 3, 4, 5, 6, 8)}
    assert list(sqnr.values()) == sorted(sqnr.values())
    assert sqnr[8] > 40
    # each extra bit halves the step: ~6 dB per bit between 3 and 8 bits
    assert 5.0 < (sqnr[8] - sqnr[3]) / 5 < 7.0


def test_asymmetric_grid_data_is_reproduced_exactly():
    bits, g = 3, 16
    gen = torch.Generator().manual_seed(1)
    scale = torch.rand(8, 4, 1, generator=gen) + 0.1
    zero = torch.randint(0, 2**bits, (8, 4, 1), generator=gen).float()
    q = torch.randint(0, 2**bits, (8, 4, g), generator=gen).float()
    q[..., 0], q[..., 1] = 0, 2**bits - 1  # both ends of the grid present, so min-max recovers the scale
    w = (scale * (q - zero)).reshape(8, 4 * g)
    assert torch.allclose(fake_quantize(w, bits, g), w, atol=1e-6)


def test_symmetric_grid_is_centered_and_worse_on_shifted_data():
    w = torch.rand(64, 128) + 0.5  # all positive: symmetric wastes half its levels
    sym = fake_quantize(w, 4, 64, sym=True)
    asym = fake_quantize(w, 4, 64, sym=False)
    assert sqnr_db(w, asym) > sqnr_db(w, sym) + 3
    scale, zero = grid_params(w.reshape(64, 2, 64), 4, sym=True)
    assert torch.all(zero == 8)


def test_codes_stay_in_range_and_roundtrip():
    w = torch.randn(32, 64) * 10
    scale, zero = grid_params(w, 2, False)
    q = quantize(w, scale[:, None], zero[:, None], 2)
    assert q.min() >= 0 and q.max() <= 3
    assert torch.allclose(dequantize(q, scale[:, None], zero[:, None]), fake_quantize(w, 2, -1))


def test_all_zero_group_stays_zero():
    w = torch.zeros(4, 64)
    w[0, :32] = torch.randn(32)
    out = fake_quantize(w, 4, 32)
    assert torch.all(out[1:] == 0) and torch.all(out[0, 32:] == 0)


@pytest.mark.parametrize("in_f,group,ok", [(576, 64, True), (576, 128, False), (512, 128, True), (576, -1, True)])
def test_group_must_divide_in_features(in_f, group, ok):
    model = nn.Sequential(nn.Linear(in_f, 8))
    cfg = RTNConfig(bits=4, group_size=group)
    if ok:
        quantize_(model, cfg)
    else:
        with pytest.raises(QuantError, match="does not divide in_features=576.*--group-size 64"):
            quantize_(model, cfg)


@pytest.mark.parametrize("bits", [0, 1, 7, 16, 17])
def test_rtn_rejects_unsupported_bits(bits):
    with pytest.raises(QuantError, match="RTN bits must be one of"):
        RTNConfig(bits=bits)


def test_footprint_counts_codes_scales_zeros_and_16bit_rest():
    model = nn.Sequential(nn.Linear(128, 64), nn.Linear(64, 32, bias=False))
    fp = quantize_(model, RTNConfig(bits=4, group_size=32))
    codes = 4 * (128 * 64 + 64 * 32)
    groups = 64 * 4 + 32 * 2
    assert fp.linear_bits == codes + groups * (16 + 4)
    assert fp.bits_per_weight == pytest.approx(4 + 20 / 32)
    assert fp.other_params == 64  # the first layer's bias
    assert fp.packed_bytes == (fp.linear_bits + 16 * 64 + 7) // 8
    assert storage_bits((64, 128), 4, 32, sym=True) == 4 * 64 * 128 + 64 * 4 * 16


def test_baseline_footprint_is_16_bits(bundled):
    model, _ = bundled
    fp = quantize_(model, NoQuant())
    assert fp.bits_per_weight == 16
    # tied embeddings count once: every parameter is either a linear weight or "other"
    assert fp.linear_params + fp.other_params == sum(p.numel() for p in model.parameters())


def test_keep_leaves_attention_at_16_bit_and_counts_it():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.self_attn = nn.Module()
            self.self_attn.q_proj = nn.Linear(64, 64)
            self.mlp = nn.Module()
            self.mlp.up_proj = nn.Linear(64, 128)

    model = Block()
    before = model.self_attn.q_proj.weight.clone()
    fp = quantize_(model, RTNConfig(bits=2, group_size=32, keep=("attention",)))
    assert torch.equal(model.self_attn.q_proj.weight, before)
    assert fp.linear_params == 64 * 64 + 64 * 128
    assert fp.linear_bits == 16 * 64 * 64 + storage_bits((128, 64), 2, 32, False)
    with pytest.raises(QuantError, match="matches no linear"):
        quantize_(Block(), RTNConfig(bits=2, group_size=32, keep=("nothing.*",)))
