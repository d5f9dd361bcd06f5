"""bitsandbytes as a load-time config: validation, the BitsAndBytesConfig it builds, and the real bundled
model loaded in NF4 and LLM.int8 on this machine, with its measured footprint."""
from __future__ import annotations

import pytest
import torch

from quant import QuantError, load_kwargs, quantize_
from quant.bnb import BnbConfig


@pytest.mark.parametrize("bits", [3, 2, 16])
def test_only_8_and_4_bits(bits):
    with pytest.raises(QuantError, match="8 bits \\(int8\\) or 4 bits"):
        BnbConfig(bits=bits)


def test_bits_choose_the_format():
    assert BnbConfig(bits=8).quant_type == "int8"
    assert BnbConfig(bits=4).quant_type == "nf4"
    assert BnbConfig(bits=4, quant_type="fp4", double_quant=True).label() == "4bit-bnb-fp4-dq"
    assert BnbConfig(bits=8).label() == "8bit-bnb-int8"
    for bad in (dict(bits=8, quant_type="nf4"), dict(bits=4, quant_type="int8"), dict(bits=8, double_quant=True),
                dict(bits=4, compute_dtype="float64"), dict(bits=8, int8_threshold=-1.0)):
        with pytest.raises(QuantError):
            BnbConfig(**bad)


def test_load_kwargs_build_a_bitsandbytes_config():
    from transformers import BitsAndBytesConfig

    qc = load_kwargs(BnbConfig(bits=4, quant_type="fp4", double_quant=True, compute_dtype="bfloat16"))["quantization_config"]
    assert isinstance(qc, BitsAndBytesConfig)
    assert qc.load_in_4bit and not qc.load_in_8bit
    assert (qc.bnb_4bit_quant_type, qc.bnb_4bit_use_double_quant, qc.bnb_4bit_compute_dtype) == ("fp4", True, torch.bfloat16)
    qc8 = load_kwargs(BnbConfig(bits=8, int8_threshold=4.0))["quantization_config"]
    assert qc8.load_in_8bit and qc8.llm_int8_threshold == 4.0
    assert BnbConfig().to_dict() == {"method": "bnb", "bits": 4, "quant_type": "nf4", "double_quant": False,
                                     "compute_dtype": "auto", "int8_threshold": 6.0}


# ---- the real bundled model -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def baseline():
    from evalsuite.models import load, resolve
    from quant.calib import heldout_ids
    from quant.linears import find_linears

    ref = resolve("smollm2-135m")
    model, tok = load(ref)
    ids = heldout_ids(tok, 64).unsqueeze(0)
    with torch.no_grad():
        logits = model(ids.to(model.device)).logits[0].float().cpu()
    fp32_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    return ref, ids, logits, len(find_linears(model)), fp32_bytes


@pytest.mark.slow
@pytest.mark.parametrize("cfg,lo,hi", [(BnbConfig(bits=4), 4.0, 5.0), (BnbConfig(bits=8), 8.0, 9.0)])
def test_real_model_loads_quantized_and_is_measured(baseline, cfg, lo, hi):
    from evalsuite.models import load

    ref, ids, logits16, n_linears, fp32_bytes = baseline
    model, tok = load(ref, **load_kwargs(cfg))
    fp = quantize_(model, cfg, tokenizer=tok)
    assert fp.extra["quantized_linears"] == n_linears
    assert lo < fp.bits_per_weight < hi
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
    from evalsuite.models import load

    cfg = BnbConfig(bits=4, double_quant=True)
    model, tok = load(baseline[0], **load_kwargs(cfg))
    fp = quantize_(model, cfg, tokenizer=tok)
    assert fp.extra["compute_dtype"] == "float16" and 4.0 < fp.bits_per_weight < 4.5


@pytest.mark.slow
def test_load_time_method_measures_fidelity_against_a_reference_load(baseline):
    from evalsuite import fidelity
    from evalsuite.models import load

    reference = fidelity.reference_logprobs(baseline[0])
    model, tok = load(baseline[0], **load_kwargs(BnbConfig(bits=8)))
    out = fidelity.measure(*fidelity.logprobs(model, fidelity.probe_ids(tok)), ref=reference)
    # measured here: KL 0.018 nats, agreement 0.937 (LLM.int8 rounds per row, coarser than 8-bit RTN g64: 0.0012)
    assert 0 < out["kl_mean"] < 0.05 and out["top1_agreement"] > 0.9, out
