"""The GPTQ checkpoint format, as pure tensor functions: codes, scales and zero points of a linear packed into
``qweight`` / ``qzeros`` / ``scales`` / ``g_idx`` the way GPTQModel, auto-gptq, transformers and vLLM read them, and
back. RTN is GPTQ without error feedback, so its codes export here too.

Layout (per linear of shape [out, in], ``b`` bits, groups of ``g`` input columns):
``qweight`` int32 [in * b / 32, out]: each column's codes as one little-endian bit stream down the input axis
(for b = 3 a code may straddle two words, as auto-gptq packs it); ``qzeros`` int32 [in / g, out * b / 32]: the zero
points as a bit stream along the output axis; ``scales`` fp16 [in / g, out]; ``g_idx`` int32 [in] (group of each
input column). Checkpoint format ``gptq`` (v1) stores zero - 1, which cannot hold a zero point of 0: asymmetric
groups are written as ``gptq_v2`` (zeros as they are), which GPTQModel reads; symmetric zeros (2^(b-1)) fit v1.
"""
from __future__ import annotations

from pathlib import Path

import torch

WORD = 32
PACKED = ("qweight", "qzeros", "scales", "g_idx")


def _to_int32(words: torch.Tensor) -> torch.Tensor:
    """int64 words holding 32-bit patterns -> int32 with the same bits."""
    return ((words + 2**31) % 2**32 - 2**31).to(torch.int32)


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Codes [n, m] (0 <= c < 2^bits) -> int32 words [n * bits / 32, m], each column one little-endian bit stream."""
    n, m = codes.shape
    if (n * bits) % WORD:
        raise ValueError(f"{n} codes of {bits} bits do not fill whole 32-bit words")
    words = torch.zeros(n * bits // WORD, m, dtype=torch.int64)
    c = codes.to(torch.int64)
    for i in range(n):
        start = i * bits
        w, off = divmod(start, WORD)
        words[w] |= (c[i] << off) & 0xFFFFFFFF
        if off + bits > WORD:  # the rest of this code starts the next word
            words[w + 1] |= c[i] >> (WORD - off)
    return _to_int32(words)


def unpack_bits(words: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Inverse of ``pack_bits``: int32 words [n * bits / 32, m] -> codes [n, m] (int64)."""
    u = words.to(torch.int64) & 0xFFFFFFFF
    mask = 2**bits - 1
    out = torch.empty(n, words.shape[1], dtype=torch.int64)
    for i in range(n):
        w, off = divmod(i * bits, WORD)
        value = u[w] >> off
        if off + bits > WORD:
            value = value | (u[w + 1] << (WORD - off))
        out[i] = value & mask
    return out


def pack_linear(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int, group_size: int,
                v1: bool) -> dict[str, torch.Tensor]:
    """codes [out, in], scale and zero [out, groups] (group_size -1: one group) -> the layer's packed tensors."""
    out_f, in_f = codes.shape
    g = in_f if group_size == -1 else group_size
    zeros = zero.to(torch.int64) - (1 if v1 else 0)
    if v1 and (zeros < 0).any():
        raise ValueError("a zero point of 0 cannot be stored in GPTQ v1 (it stores zero - 1); write gptq_v2")
    return {
        "qweight": pack_bits(codes.t().contiguous(), bits),
        "qzeros": pack_bits(zeros, bits).t().contiguous(),  # [out, groups] packed along out, one row per group
        "scales": scale.t().contiguous().to(torch.float16),
        "g_idx": (torch.arange(in_f) // g).to(torch.int32),
    }


def dequantize_linear(tensors: dict[str, torch.Tensor], bits: int, v1: bool) -> torch.Tensor:
    """The weight [out, in] (fp32) that a layer's packed tensors stand for: scale * (code - zero) per group."""
    scales, g_idx = tensors["scales"].float(), tensors["g_idx"].long()
    in_f, out_f = len(g_idx), scales.shape[1]
    codes = unpack_bits(tensors["qweight"], bits, in_f)  # [in, out]
    zeros = unpack_bits(tensors["qzeros"].t().contiguous(), bits, out_f).t() + (1 if v1 else 0)  # [groups, out]
    return ((codes - zeros[g_idx]).float() * scales[g_idx]).t().contiguous()


# ---- checkpoints ---------------------------------------------------------------------------------------------

def linear_names(source: Path) -> list[str]:
    """The linears a checkpoint's model quantizes (all but lm_head), found on a weightless skeleton."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from quant.linears import find_linears

    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(source))
    return list(find_linears(skeleton))


def source_tensors(source: Path):
    """(name, tensor) of every tensor in a checkpoint's safetensors files, one at a time."""
    from safetensors import safe_open

    files = sorted(Path(source).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{source} has no .safetensors weights to export")
    for f in files:
        with safe_open(str(f), framework="pt") as handle:
            for name in handle.keys():
                yield name, handle.get_tensor(name)


def gptq_format(bits: int, group_size: int, sym: bool) -> dict:
    """The quantization_config of a GPTQ checkpoint whose groups are the input columns in order (no act-order)."""
    # v1 stores zero - 1: fine for symmetric zeros (2^(b-1)), not for an asymmetric zero of 0, which needs v2
    return {"quant_method": "gptq", "bits": bits, "group_size": group_size, "desc_act": False, "sym": sym,
            "static_groups": False, "true_sequential": True, "lm_head": False,
            "checkpoint_format": "gptq" if sym else "gptq_v2"}


def write_checkpoint(source: Path, out: Path, quantize_weight, qconfig: dict) -> None:
    """Write ``source`` (a Hugging Face checkpoint directory) into ``out`` in the GPTQ format ``qconfig``: every
    linear's weight through ``quantize_weight(w) -> (codes, scale, zero)`` and packed, everything else in fp16
    (GPTQ kernels run in fp16/bf16), plus the config carrying ``qconfig`` and the tokenizer files."""
    import json
    import shutil

    from safetensors.torch import save_file

    bits, group_size, v1 = qconfig["bits"], qconfig["group_size"], qconfig["checkpoint_format"] == "gptq"
    linears = {f"{n}.weight" for n in linear_names(source)}
    tensors: dict[str, torch.Tensor] = {}
    for name, w in source_tensors(source):
        if name in linears:
            codes, scale, zero = quantize_weight(w)
            base = name.removesuffix(".weight")
            for key, t in pack_linear(codes, scale, zero, bits, group_size, v1).items():
                tensors[f"{base}.{key}"] = t
        else:
            tensors[name] = w.to(torch.float16) if w.is_floating_point() else w
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((Path(source) / "config.json").read_text())
    config.update(dtype="float16", quantization_config=qconfig)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    (out / "quantize_config.json").write_text(json.dumps(qconfig, indent=2))
    for f in Path(source).iterdir():
        if f.is_file() and f.suffix != ".safetensors" and f.name not in ("config.json", "model.safetensors.index.json"):
            shutil.copy(f, out / f.name)


def read_qconfig(checkpoint: Path) -> dict:
    import json

    return json.loads((Path(checkpoint) / "config.json").read_text()).get("quantization_config") or {}


@torch.no_grad()
def dequantize_into(model: torch.nn.Module, checkpoint: Path) -> None:
    """Load a GPTQ-format checkpoint's tensors into ``model`` (an unquantized model of the same architecture): each
    packed linear as the weight it stands for, everything else as stored. The model then computes what a packed
    kernel computes, up to its arithmetic: the reference the packed engines are checked against."""
    qc = read_qconfig(checkpoint)
    bits, v1 = qc["bits"], qc.get("checkpoint_format", "gptq") == "gptq"
    layers: dict[str, dict[str, torch.Tensor]] = {}
    params = dict(model.named_parameters())
    for name, t in source_tensors(checkpoint):
        base, _, key = name.rpartition(".")
        if key in PACKED:
            layers.setdefault(base, {})[key] = t
        elif name in params:
            params[name].copy_(t.to(params[name].dtype))
    for base, tensors in layers.items():
        weight = params[f"{base}.weight"]
        weight.copy_(dequantize_linear(tensors, bits, v1).to(weight.dtype))


def checkpoint_footprint(checkpoint: Path):
    """What a GPTQ-format checkpoint holds: every bit of its packed linears (codes, zero points, fp16 scales, group
    indices), every other parameter at 16 bit (the convention of every footprint), and the files' bytes."""
    from quant import Footprint

    fp, layers = Footprint(), {}
    for name, t in source_tensors(checkpoint):
        base, _, key = name.rpartition(".")
        if key in PACKED:
            layers.setdefault(base, {})[key] = t
        else:
            fp.other_params += t.numel()
    for tensors in layers.values():
        fp.linear_params += len(tensors["g_idx"]) * tensors["scales"].shape[1]
        fp.linear_bits += sum(8 * t.numel() * t.element_size() for t in tensors.values())
    fp.extra["quantized_linears"] = len(layers)
    fp.extra["measured_bytes"] = sum(f.stat().st_size for f in Path(checkpoint).glob("*.safetensors"))
    return fp
