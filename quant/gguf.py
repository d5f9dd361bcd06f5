"""llama.cpp's own formats (--method gguf): the model is written as a GGUF file, quantized to a llama.cpp type, read
back and dequantized into the model, so it computes what a llama.cpp user's file holds (up to arithmetic).

Two producers, fixed per type so a cell never depends on what is installed:

* gguf-py (``gguf.quants``, always installed) quantizes the block formats Q8_0, Q5_1, Q5_0, Q4_1, Q4_0 itself:
  every 2-D weight, token embedding included, at that type. That is ``llama-quantize --pure``; for Q8_0 it is also
  llama.cpp's default mix (tests compare the bytes with llama.cpp's where it is installed).
* llama.cpp's quantizer (``llama_model_quantize`` from llama-cpp-python, optional) makes the k-quant mixes
  (Q4_K_M etc.): per tensor it picks the type llama.cpp picks (attn_v / ffn_down at more bits, the output /
  tied embedding at Q6_K or Q8_0) and falls back to a 32-wide block type where a row is not a multiple of 256
  (SmolLM2's hidden size 576: its q/k/v/o/gate/up rows become Q5_0, Q5_1 or IQ4_NL; only ffn_down holds k-quants).

The file is read back with gguf-py (``GGUFReader`` + ``gguf.quants.dequantize``, as transformers' GGUF loader reads
it) and every weight it holds, embedding included, goes into the model: the embedding stays as the file has it.
The footprint counts the file's own tensor bytes: ``bits_per_weight`` over the linears other methods account for
(all but lm_head), ``file_bits_per_weight`` over every tensor of the file.

Llama-architecture models only: the q/k rows are stored in llama.cpp's rope order (``permute``), as its
``convert_hf_to_gguf.py`` writes them.
"""
from __future__ import annotations

import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import ClassVar, Iterator

import torch
import torch.nn as nn

from quant import Footprint, QuantConfig, QuantError, option, register
from quant.linears import find_linears

PURE = {"Q8_0": 8, "Q5_1": 5, "Q5_0": 5, "Q4_1": 4, "Q4_0": 4}  # gguf-py quantizes these: every 2-D weight alike
MIXES = {"Q6_K": 6, "Q5_K_M": 5, "Q5_K_S": 5, "Q4_K_M": 4, "Q4_K_S": 4, "IQ4_XS": 4, "IQ4_NL": 4,
         "Q3_K_L": 3, "Q3_K_M": 3, "Q3_K_S": 3, "Q2_K": 2}  # llama.cpp's mixes (llama-cpp-python)
TYPES = {**PURE, **MIXES}  # type -> nominal bits, for tables
DEFAULT_TYPE = {8: "Q8_0", 6: "Q6_K", 5: "Q5_K_M", 4: "Q4_K_M", 3: "Q3_K_M", 2: "Q2_K"}
ARCHITECTURES = ("llama",)  # model_type values whose GGUF layout is written here
TYPE_HELP = ("llama.cpp type; default per --bits: " + ", ".join(f"{b} {t}" for b, t in DEFAULT_TYPE.items())
             + f"; {', '.join(PURE)} by gguf-py, the k-quant mixes need llama-cpp-python")


@lru_cache(maxsize=1)
def llama_cpp_available() -> bool:
    """Whether llama.cpp's bindings import (not merely whether the package is present: a wheel installed without
    its dependencies is found yet fails at import, which must be caught in preflight, not after a model loads)."""
    try:
        import llama_cpp  # noqa: F401
    except Exception:  # ImportError, or OSError from a shared library that does not load
        return False
    return True


@dataclass(frozen=True)
class GGUFConfig(QuantConfig):
    """A llama.cpp GGUF type, written, quantized and loaded back dequantized (--method gguf)."""

    bits: int = 4
    gguf_type: str = option("", TYPE_HELP, choices=tuple(TYPES))

    method: ClassVar[str] = "gguf"

    def __post_init__(self) -> None:
        if self.bits not in DEFAULT_TYPE:
            raise QuantError(f"gguf bits must be one of {', '.join(map(str, DEFAULT_TYPE))} (16 = unquantized); got {self.bits}")
        if not self.gguf_type:
            object.__setattr__(self, "gguf_type", DEFAULT_TYPE[self.bits])
        if self.gguf_type not in TYPES:
            raise QuantError(f"unknown --gguf-type {self.gguf_type!r}; known: {', '.join(TYPES)}")
        if TYPES[self.gguf_type] != self.bits:
            raise QuantError(f"{self.gguf_type} is a {TYPES[self.gguf_type]}-bit type; use --bits {TYPES[self.gguf_type]} with it")

    @property
    def needs_llama_cpp(self) -> bool:
        return self.gguf_type in MIXES

    def validate(self, model: nn.Module) -> None:
        model_type = getattr(model.config, "model_type", None)
        if model_type not in ARCHITECTURES:
            raise QuantError(f"--method gguf writes llama-architecture models only (this one is {model_type}); "
                             f"use --method rtn or gptq for it")
        if self.needs_llama_cpp and not llama_cpp_available():
            raise QuantError(f"{self.gguf_type} is a llama.cpp k-quant mix, made by llama-cpp-python, which is not "
                             f"installed: pip install llama-cpp-python==0.3.36 (it builds llama.cpp), or use "
                             f"--gguf-type {' / '.join(t for t in PURE if PURE[t] == self.bits) or 'Q8_0 (--bits 8)'}")

    def label(self) -> str:
        return f"{self.bits}bit-gguf-{self.gguf_type}"


# ---- the llama GGUF layout -----------------------------------------------------------------------------------

def permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """HF q/k rows -> llama.cpp's rope order (convert_hf_to_gguf.py's ``LlamaModel.permute``)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Inverse of ``permute`` (transformers' ``_reverse_permute_weights``)."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def rope_heads(config) -> dict[str, int]:
    """GGUF tensor-name infix -> the head count its rows are permuted over."""
    return {".attn_q.": config.num_attention_heads,
            ".attn_k.": getattr(config, "num_key_value_heads", None) or config.num_attention_heads}


def gguf_names(model: nn.Module) -> dict[str, str]:
    """HF parameter name -> GGUF tensor name, by gguf-py's own name map; a tied lm_head is not stored."""
    import gguf

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, model.config.num_hidden_layers)
    out = {}
    for pname, _ in model.named_parameters():  # named_parameters lists a tied weight once
        mapped = names.get_name(pname, try_suffixes=(".weight", ".bias"))
        if mapped is None:
            raise QuantError(f"{pname} has no GGUF name in llama.cpp's llama layout; use --method rtn for this model")
        out[pname] = mapped
    return out


def _add_metadata(writer, config, file_type: int) -> None:
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_rope_dimension_count(head_dim)
    rope = getattr(config, "rope_parameters", None) or {}
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(file_type)


@torch.no_grad()
def write_gguf(model: nn.Module, path: Path, gguf_type: str | None = None) -> None:
    """Write ``model``'s weights as a llama GGUF file: 1-D tensors in F32 (llama.cpp keeps them so), 2-D ones in
    F16 when the model is fp16, else F32, or quantized by gguf-py to ``gguf_type`` (one of ``PURE``)."""
    import gguf
    import numpy as np

    qtype = gguf.GGMLQuantizationType[gguf_type] if gguf_type else None
    half = next(model.parameters()).dtype == torch.float16
    file_type = gguf.LlamaFileType[f"MOSTLY_{gguf_type}"] if gguf_type else (
        gguf.LlamaFileType.MOSTLY_F16 if half else gguf.LlamaFileType.ALL_F32)
    writer = gguf.GGUFWriter(path, "llama")
    _add_metadata(writer, model.config, file_type)
    if qtype is not None:
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    heads = rope_heads(model.config)
    params = dict(model.named_parameters())
    for pname, name in gguf_names(model).items():
        w = params[pname].detach().float().cpu()
        n_head = next((n for infix, n in heads.items() if infix in name), None)
        if n_head is not None:
            w = permute(w, n_head)
        data = w.numpy()
        if w.dim() == 1:
            writer.add_tensor(name, data)
        elif qtype is not None:
            writer.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(name, data.astype(np.float16) if half else data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def llama_quantize(source: Path, out: Path, gguf_type: str, pure: bool = False) -> None:
    """llama.cpp's own quantizer on a GGUF file (what ``llama-quantize SOURCE OUT TYPE`` does); ``pure``: every
    2-D tensor at ``gguf_type``, no mix (``--pure``)."""
    import ctypes

    import gguf
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(gguf.LlamaFileType[f"MOSTLY_{gguf_type}"])
    params.nthread = torch.get_num_threads()
    params.pure = pure
    rc = llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama.cpp failed to quantize {source.name} to {gguf_type} (return code {rc})")


def read_gguf(path: Path, model: nn.Module) -> dict[str, torch.Tensor]:
    """HF parameter name -> the fp32 weight the GGUF file at ``path`` holds for it (dequantized, q/k rows back
    in HF order)."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    by_gguf = {g: p for p, g in gguf_names(model).items()}
    heads = rope_heads(model.config)
    out = {}
    for t in GGUFReader(path).tensors:
        w = torch.from_numpy(dequantize(t.data, t.tensor_type).copy())
        n_head = next((n for infix, n in heads.items() if infix in t.name), None)
        out[by_gguf[t.name]] = unpermute(w, n_head) if n_head is not None else w
    return out


def file_footprint(path: Path, model: nn.Module) -> Footprint:
    """Bits from the file's own tensor bytes: the model's linears (all but lm_head) as ``linear_*``, every other
    tensor in ``other_params``; the whole file's bits/weight, its bytes and its tensor types in ``extra``."""
    from collections import Counter

    from gguf import GGUFReader

    tensors = {t.name: t for t in GGUFReader(path).tensors}
    names = gguf_names(model)
    linears = {names[f"{n}.weight"] for n in find_linears(model)}
    fp = Footprint(other_bits=0)
    for name, t in tensors.items():
        if name in linears:
            fp.linear_params += int(t.n_elements)
            fp.linear_bits += 8 * int(t.n_bytes)
        else:
            fp.other_params += int(t.n_elements)
            fp.other_bits += 8 * int(t.n_bytes)  # the embedding as the file stores it (Q8_0 in the k-quant mixes)
    total = sum(int(t.n_elements) for t in tensors.values())
    fp.extra.update(
        quantized_linears=len(linears),
        file_bits_per_weight=round(8 * sum(int(t.n_bytes) for t in tensors.values()) / total, 4),
        file_tensor_bytes=sum(int(t.n_bytes) for t in tensors.values()),
        measured_bytes=path.stat().st_size,
        tensor_types=dict(Counter(t.tensor_type.name for t in tensors.values())),
        embedding_type=tensors[names["model.embed_tokens.weight"]].tensor_type.name,
    )
    return fp


@contextmanager
def _workdir(keep: Path | None) -> Iterator[Path]:
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep
        return
    with tempfile.TemporaryDirectory(prefix="evalsuite-gguf-") as tmp:
        yield Path(tmp)


@register(GGUFConfig)
@torch.no_grad()
def gguf_(model: nn.Module, config: GGUFConfig, workdir: Path | None = None, **_: object) -> Footprint:
    """Quantize ``model`` in place through a GGUF file of ``config.gguf_type``; ``workdir`` keeps that file
    (``<type>.gguf``), else it lives in a temporary directory removed on return."""
    config.validate(model)
    with _workdir(workdir) as d:
        out = d / f"{config.gguf_type}.gguf"
        if config.needs_llama_cpp:
            with tempfile.TemporaryDirectory(prefix="evalsuite-gguf-src-", dir=d) as src:
                source = Path(src) / "source.gguf"
                write_gguf(model, source)
                llama_quantize(source, out, config.gguf_type)
        else:
            write_gguf(model, out, config.gguf_type)
        params = dict(model.named_parameters())
        for pname, w in read_gguf(out, model).items():
            params[pname].copy_(w.to(params[pname].dtype))
        fp = file_footprint(out, model)
    fp.extra["quantizer"] = "llama.cpp" if config.needs_llama_cpp else "gguf-py"
    return fp
