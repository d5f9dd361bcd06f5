"""The GPTQ checkpoint format written by the RTN export: bit-exact against GPTQModel's own packer, unpacked back to
the fake-quant weights, v1's zero-point limit, and a whole exported checkpoint read back by GPTQModel."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn

from quant.gptq_format import (
    PACKED,
    checkpoint_footprint,
    dequantize_linear,
    gptq_format,
    pack_bits,
    pack_linear,
    unpack_bits,
)
from quant.rtn import RTNConfig, fake_quantize, quantize_groups


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_bit_streams_round_trip(bits):
    codes = torch.randint(0, 2**bits, (96, 40), generator=torch.Generator().manual_seed(bits))
    words = pack_bits(codes, bits)
    assert words.dtype == torch.int32 and words.shape == (96 * bits // 32, 40)
    assert torch.equal(unpack_bits(words, bits, 96), codes)


@pytest.mark.parametrize("bits,sym", [(2, False), (3, False), (4, False), (4, True), (8, True)])
def test_packing_is_bit_exact_with_gptqmodels_packer(bits, sym):
    """GPTQModel's reference packer (pack_original, zero points as they are: its internal v2) on the same codes."""
    pytest.importorskip("gptqmodel")
    from gptqmodel.nn_modules.qlinear.torch import TorchLinear

    out_f, in_f, g = 64, 128, 32
    w = torch.randn(out_f, in_f, generator=torch.Generator().manual_seed(bits))
    codes, scale, zero = quantize_groups(w, bits, g, sym)
    scale = scale.half().float()  # the stored scale: the reference rounds codes against it
    lin = nn.Linear(in_f, out_f, bias=False)
    lin.weight.data = (scale.repeat_interleave(g, 1) * (codes - zero.repeat_interleave(g, 1))).float()
    ref = TorchLinear(bits=bits, group_size=g, sym=sym, desc_act=False, in_features=in_f, out_features=out_f)
    ref.pack_original(lin, scale, zero, g_idx=torch.arange(in_f, dtype=torch.int32) // g)
    ours = pack_linear(codes, scale, zero, bits, g, v1=False)
    assert torch.equal(ours["qweight"], ref.qweight) and torch.equal(ours["qzeros"], ref.qzeros)
    assert torch.equal(ours["scales"], ref.scales) and torch.equal(ours["g_idx"], ref.g_idx.to(torch.int32))


@pytest.mark.parametrize("bits,sym", [(2, False), (3, True), (4, False), (8, False)])
def test_unpacked_weights_are_the_fake_quant_weights_up_to_fp16_scales(bits, sym):
    w = torch.randn(64, 192, generator=torch.Generator().manual_seed(7)) * 0.05
    codes, scale, zero = quantize_groups(w, bits, 64, sym)
    packed = pack_linear(codes, scale, zero, bits, 64, v1=sym)
    back = dequantize_linear(packed, bits, v1=sym)
    fake = fake_quantize(w, bits, 64, sym)
    assert torch.allclose(back, fake, rtol=1e-3, atol=1e-6)  # fp16 scales: 11 bits of mantissa
    exact = (scale.half().float().repeat_interleave(64, 1) * (codes - zero.repeat_interleave(64, 1)))
    assert torch.equal(back, exact)


def test_v1_cannot_hold_a_zero_point_of_0_so_asymmetric_exports_write_v2():
    w = torch.rand(8, 64) + 0.1  # every group's minimum is 0 (the range always contains it): zero point 0
    codes, scale, zero = quantize_groups(w, 2, 64, sym=False)
    assert (zero == 0).all()
    with pytest.raises(ValueError, match="zero point of 0 cannot be stored in GPTQ v1"):
        pack_linear(codes, scale, zero, 2, 64, v1=True)
    assert gptq_format(2, 64, sym=False)["checkpoint_format"] == "gptq_v2"
    assert gptq_format(4, 64, sym=True)["checkpoint_format"] == "gptq"


@pytest.mark.slow
def test_exported_checkpoint_reads_back_through_gptqmodel(bundled_ref, tmp_path):
    """The whole bundled model exported at 4-bit asym g64 (gptq_v2) and 4-bit sym (v1): GPTQModel's loader decodes
    every packed linear to the weights our own unpacking gives, and the footprint is the file's tensors."""
    from safetensors import safe_open

    from quant.gptq_packed import load_packed

    for cfg in (RTNConfig(bits=4, group_size=64), RTNConfig(bits=4, group_size=64, sym=True)):
        out = tmp_path / cfg.label()
        cfg.build_checkpoint(Path(bundled_ref.path), out)
        packed, _ = load_packed(out, kernel="torch")
        v1 = cfg.packed_format()["checkpoint_format"] == "gptq"
        with safe_open(str(out / "model.safetensors"), framework="pt") as f:
            for name in ("model.layers.0.self_attn.k_proj", "model.layers.17.mlp.down_proj"):
                ours = dequantize_linear({k: f.get_tensor(f"{name}.{k}") for k in PACKED}, 4, v1)
                theirs = packed.get_submodule(name).dequantize_weight().float()
                theirs = theirs if theirs.shape == ours.shape else theirs.t()
                # GPTQModel dequantizes in bf16 on CPU (measured: within 0.07 of a step); a wrong code or zero point
                # would be off by at least one whole quantization step
                step = f.get_tensor(f"{name}.scales").float().t().repeat_interleave(64, 1)
                assert ((theirs - ours).abs() / step).max() < 0.1, (cfg.label(), name)
        fp = checkpoint_footprint(out)
        assert fp.extra["quantized_linears"] == 210
        assert fp.extra["measured_bytes"] == (out / "model.safetensors").stat().st_size
