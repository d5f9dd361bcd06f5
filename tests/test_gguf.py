"""--method gguf on the real bundled model: the GGUF layout round trip, held-out perplexity per type, bits/weight
from the file's own tensors, gguf-py's Q8_0 against llama.cpp's bytes, and the refusals before any model loads."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from quant import QuantError, quantize_
from quant.gguf import GGUFConfig, llama_cpp_available, read_gguf, write_gguf

needs_llama_cpp = pytest.mark.skipif(not llama_cpp_available(),
                                     reason="llama-cpp-python is not installed: the k-quant mixes need llama.cpp")


@pytest.fixture(scope="module")
def probe(bundled):
    from evalsuite.run.heldout import heldout_ids, perplexity

    ids = heldout_ids(bundled[1], 1024)
    return lambda model: perplexity(model, ids)


@pytest.fixture(scope="module")
def ppl16(bundled, probe):
    return probe(bundled[0])


def test_f32_round_trip_is_exact(bundled, tmp_path):
    model = bundled[0]
    write_gguf(model, tmp_path / "f32.gguf")
    back = read_gguf(tmp_path / "f32.gguf", model)
    params = dict(model.named_parameters())
    assert back.keys() == params.keys()
    for name, w in back.items():
        assert torch.equal(w, params[name].float()), name


def test_q8_0_perplexity_and_bits_from_the_file(fresh_model, probe, ppl16, tmp_path):
    from gguf import GGUFReader

    model = fresh_model()
    fp = quantize_(model, GGUFConfig(bits=8), workdir=tmp_path)
    assert abs(probe(model) / ppl16 - 1) < 0.01
    tensors = {t.name: t for t in GGUFReader(tmp_path / "Q8_0.gguf").tensors}
    linear = [t for n, t in tensors.items() if n.startswith("blk.") and n.endswith(".weight") and len(t.shape) == 2]
    assert fp.bits_per_weight == 8 * sum(int(t.n_bytes) for t in linear) / sum(int(t.n_elements) for t in linear)
    assert fp.bits_per_weight == 8.5  # Q8_0: 32 int8 codes + one fp16 scale per block
    assert fp.extra["file_bits_per_weight"] == round(8 * sum(int(t.n_bytes) for t in tensors.values())
                                                     / sum(int(t.n_elements) for t in tensors.values()), 4)
    assert fp.extra["embedding_type"] == "Q8_0"
    # the packed size is the file's tensor bytes: its Q8_0 embedding is not counted at 16 bit
    assert fp.packed_bytes == sum(int(t.n_bytes) for t in tensors.values()) == fp.extra["file_tensor_bytes"]


@needs_llama_cpp
def test_gguf_py_q8_0_is_llama_cpps_bytes(bundled, tmp_path):
    from gguf import GGUFReader

    from quant.gguf import llama_quantize

    model = bundled[0]
    write_gguf(model, tmp_path / "f32.gguf")
    llama_quantize(tmp_path / "f32.gguf", tmp_path / "llama.gguf", "Q8_0")
    write_gguf(model, tmp_path / "py.gguf", "Q8_0")
    ours = {t.name: t for t in GGUFReader(tmp_path / "py.gguf").tensors}
    theirs = {t.name: t for t in GGUFReader(tmp_path / "llama.gguf").tensors}
    assert ours.keys() == theirs.keys()
    for name, t in theirs.items():
        assert t.tensor_type == ours[name].tensor_type and (t.data == ours[name].data).all(), name


@needs_llama_cpp
def test_k_quant_lands_between_q8_0_and_q2_k(fresh_model, probe):
    ppl = {}
    for t, bits in (("Q8_0", 8), ("Q4_K_M", 4), ("Q2_K", 2)):
        model = fresh_model()
        fp = quantize_(model, GGUFConfig(bits=bits, gguf_type=t))
        ppl[t] = probe(model)
        assert fp.extra["quantizer"] == ("gguf-py" if t == "Q8_0" else "llama.cpp")
    assert ppl["Q8_0"] < ppl["Q4_K_M"] < ppl["Q2_K"], ppl


def test_bad_types_are_refused():
    with pytest.raises(QuantError, match="unknown --gguf-type"):
        GGUFConfig(bits=4, gguf_type="Q4_Z")
    with pytest.raises(QuantError, match="use --bits 4"):
        GGUFConfig(bits=8, gguf_type="Q4_K_M")
    assert GGUFConfig(bits=3).gguf_type == "Q3_K_M"


def test_preflight_refusals(bundled, monkeypatch):
    from evalsuite.backend.vllm import refusal

    model = bundled[0]
    with pytest.raises(QuantError, match="llama-architecture models only"):
        GGUFConfig(bits=8).validate(type("M", (), {"config": dataclasses.make_dataclass("C", [("model_type", str)])("gpt2")})())
    monkeypatch.setattr("quant.gguf.llama_cpp_available", lambda: False)
    with pytest.raises(QuantError, match="needs llama-cpp-python|made by llama-cpp-python.*--gguf-type Q4_1 / Q4_0"):
        GGUFConfig(bits=4).validate(model)
    GGUFConfig(bits=4, gguf_type="Q4_0").validate(model)  # gguf-py's own types need no llama.cpp
    assert "use --backend evalsuite" in refusal(GGUFConfig(bits=8), cuda=False)
