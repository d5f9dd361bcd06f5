"""bitsandbytes as a load-time config: validation, the BitsAndBytesConfig it builds, and the real bundled
model loaded in NF4 and LLM.int8 on this machine, with its measured footprint."""
from __future__ import annotations

import math

import pytest
import torch

from quant import QuantError, quantize_
from quant.bnb import BnbConfig


@pytest.mark.parametrize("bits", [3, 2, 16])
def test_only_8_and_4_bits(bits):
    with pytest.raises(QuantError, match="8 bits \\(int8\\) or 4 bits"):
        BnbConfig(bits=bits)


def test_bits_choose_the_format():
    assert BnbConfig(bits=8).bnb_type == "int8"
    assert BnbConfig(bits=4).bnb_type == "nf4"
    assert BnbConfig(bits=4, bnb_type="fp4", double_quant=True).label() == "4bit-bnb-fp4-dq"
    assert BnbConfig(bits=8).label() == "8bit-bnb-int8"
    for bad in (dict(bits=8, bnb_type="nf4"), dict(bits=4, bnb_type="int8"), dict(bits=8, double_quant=True),
                dict(bits=4, compute_dtype="float64"), dict(bits=8, int8_threshold=-1.0)):
        with pytest.raises(QuantError):
            BnbConfig(**bad)


def test_load_kwargs_build_a_bitsandbytes_config():
    from transformers import BitsAndBytesConfig

    qc = BnbConfig(bits=4, bnb_type="fp4", double_quant=True, compute_dtype="bfloat16").load_kwargs()["quantization_config"]
    assert isinstance(qc, BitsAndBytesConfig)
    assert qc.load_in_4bit and not qc.load_in_8bit
    assert (qc.bnb_4bit_quant_type, qc.bnb_4bit_use_double_quant, qc.bnb_4bit_compute_dtype) == ("fp4", True, torch.bfloat16)
    qc8 = BnbConfig(bits=8, int8_threshold=4.0).load_kwargs()["quantization_config"]
    assert qc8.load_in_8bit and qc8.llm_int8_threshold == 4.0
    assert BnbConfig().to_dict() == {"method": "bnb", "bits": 4, "bnb_type": "nf4", "double_quant": False,
                                     "compute_dtype": "auto", "int8_threshold": 6.0}


# ---- the real bundled model -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def baseline(bundled_ref, bundled):
    from evalsuite.run.heldout import heldout_ids
    from quant.linears import find_linears

    ref, (model, tok) = bundled_ref, bundled
    ids = heldout_ids(tok, 64).unsqueeze(0)
    with torch.no_grad():
        logits = model(ids.to(model.device)).logits[0].float().cpu()
    fp32_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    return ref, ids, logits, len(find_linears(model)), fp32_bytes


def nf4_bits(out_f: int, in_f: int) -> int:
    """NF4 as bitsandbytes stores it: 4-bit codes, one fp32 absmax per block of 64 weights, a 16-entry fp32 code."""
    n = out_f * in_f
    return 4 * n + 32 * math.ceil(n / 64) + 16 * 32


def int8_bits(out_f: int, in_f: int) -> int:
    """LLM.int8: int8 codes and one fp32 scale per output row."""
    return 8 * out_f * in_f + 32 * out_f


@pytest.mark.slow
@pytest.mark.parametrize("cfg,layer_bits", [(BnbConfig(bits=4), nf4_bits), (BnbConfig(bits=8), int8_bits)])
def test_real_model_loads_quantized_and_is_measured(baseline, bundled, cfg, layer_bits):
    from evalsuite.load.models import load
    from quant.linears import find_linears

    ref, ids, logits16, n_linears, fp32_bytes = baseline
    model, tok = load(ref, **cfg.load_kwargs())
    fp = quantize_(model, cfg, tokenizer=tok)
    assert fp.extra["quantized_linears"] == n_linears
    shapes = [(m.out_features, m.in_features) for m in find_linears(bundled[0]).values()]
    assert fp.linear_bits == sum(layer_bits(*shape) for shape in shapes)  # measured 4.5010 and 8.0469 bits/weight
    assert fp.linear_params == sum(o * i for o, i in shapes)
    assert fp.extra["measured_bytes"] < 0.5 * fp32_bytes
    with torch.no_grad():
        logits = model(ids.to(model.device)).logits[0].float().cpu()
    agree = (logits.argmax(-1) == logits16.argmax(-1)).float().mean().item()
    assert agree > (0.9 if cfg.bits == 8 else 0.6), agree


def test_handler_refuses_a_model_without_bnb_layers():
    with pytest.raises(QuantError, match="no bitsandbytes layers"):
        quantize_(torch.nn.Sequential(torch.nn.Linear(4, 4)), BnbConfig())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_nf4_on_cuda_computes_in_fp16(baseline):
    from evalsuite.load.models import load

    cfg = BnbConfig(bits=4, double_quant=True)
    model, tok = load(baseline[0], **cfg.load_kwargs())
    fp = quantize_(model, cfg, tokenizer=tok)
    assert fp.extra["compute_dtype"] == "float16" and 4.0 < fp.bits_per_weight < 4.5


@pytest.mark.slow
def test_load_time_method_measures_fidelity_against_a_reference_load(baseline):
    from evalsuite.load.models import load
    from evalsuite.run import heldout

    reference = heldout.reference_logprobs(baseline[0])
    model, tok = load(baseline[0], **BnbConfig(bits=8).load_kwargs())
    out = heldout.measure(*heldout.logprobs(model, heldout.probe_ids(tok)), ref=reference)
    # measured here: KL 0.018 nats, agreement 0.937 (LLM.int8 rounds per row, coarser than 8-bit RTN g64: 0.0012)
    assert 0 < out.kl_mean < 0.05 and out.top1_agreement > 0.9, out
