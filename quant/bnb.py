"""bitsandbytes as a load-time method: LLM.int8 (8 bit, with its outlier threshold), NF4 or FP4 (4 bit,
optionally double-quantized), built as a ``BitsAndBytesConfig`` for ``from_pretrained`` (transformers 5
removed the ``load_in_4bit`` keyword arguments). bitsandbytes 0.50 runs on CPU as well as CUDA.

The handler changes nothing: it measures what the loaded Linear8bitLt / Linear4bit layers really hold.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn as nn

from quant import Footprint, QuantConfig, QuantError, option, register

QUANT_TYPES = {8: ("int8",), 4: ("nf4", "fp4")}  # the first is the default for its width
COMPUTE_DTYPES = ("auto", "float32", "float16", "bfloat16")


@dataclass(frozen=True)
class BnbConfig(QuantConfig):
    """bitsandbytes at load time (--method bnb): 8 bits = LLM.int8, 4 bits = nf4 or fp4."""

    bits: int = 4
    bnb_type: str = option("", "4 bits: nf4 (default) or fp4; 8 bits: int8", choices=("nf4", "fp4", "int8"))
    double_quant: bool = option(False, "4 bits: quantize the per-block scales too")
    compute_dtype: str = option("auto", "4-bit matmul dtype; auto: float32 on CPU (bf16 is slower there), float16 on CUDA",
                                choices=COMPUTE_DTYPES)
    int8_threshold: float = option(6.0, "LLM.int8: input features whose magnitude exceeds this run in 16 bit")

    method: ClassVar[str] = "bnb"

    def __post_init__(self) -> None:
        if self.bits not in QUANT_TYPES:
            raise QuantError(f"bitsandbytes quantizes to 8 bits (int8) or 4 bits (nf4, fp4); got {self.bits}; use --method gptq or rtn for other widths")
        if not self.bnb_type:
            object.__setattr__(self, "bnb_type", QUANT_TYPES[self.bits][0])
        if self.bnb_type not in QUANT_TYPES[self.bits]:
            raise QuantError(f"bitsandbytes at {self.bits} bits supports {' or '.join(QUANT_TYPES[self.bits])}; got {self.bnb_type!r}")
        if self.double_quant and self.bits != 4:
            raise QuantError("double quantization applies to 4-bit bitsandbytes only; drop --double-quant or use --bits 4")
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise QuantError(f"compute dtype must be one of {', '.join(COMPUTE_DTYPES)}; got {self.compute_dtype!r}")
        if self.int8_threshold < 0:
            raise QuantError(f"LLM.int8 threshold must be 0 or more; got {self.int8_threshold}")

    def resolved_compute_dtype(self) -> torch.dtype:
        if self.compute_dtype == "auto":
            return torch.float16 if torch.cuda.is_available() else torch.float32
        return getattr(torch, self.compute_dtype)

    def load_kwargs(self) -> dict[str, Any]:
        from transformers import BitsAndBytesConfig

        if self.bits == 8:
            qc = BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=self.int8_threshold)
        else:
            qc = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=self.bnb_type,
                                    bnb_4bit_use_double_quant=self.double_quant,
                                    bnb_4bit_compute_dtype=self.resolved_compute_dtype())
        return {"quantization_config": qc}

    def label(self) -> str:
        return f"{self.bits}bit-bnb-{self.bnb_type}" + ("-dq" if self.double_quant else "")


def _bits(t: torch.Tensor | None) -> int:
    return 0 if t is None else 8 * t.numel() * t.element_size()


def _quant_state_bits(qs: Any) -> int:
    """Per-block scales and the code book of a 4-bit layer; with double quantization, their own state."""
    bits = _bits(qs.absmax) + _bits(qs.code) + _bits(getattr(qs, "offset", None))
    nested = getattr(qs, "state2", None)
    return bits + (_quant_state_bits(nested) if nested is not None else 0)


@register(BnbConfig)
def bnb_(model: nn.Module, config: BnbConfig, **_: object) -> Footprint:
    import bitsandbytes as bnb

    if config.bits == 8:  # LLM.int8 logs "inputs will be cast ... to float16" on every matmul of an fp32 model
        logging.getLogger("bitsandbytes.autograd._functions").setLevel(logging.ERROR)
    fp = Footprint()
    packed: set[str] = set()
    for name, m in model.named_modules():
        if isinstance(m, bnb.nn.Linear8bitLt):
            fp.linear_bits += _bits(m.weight.data) + _bits(getattr(m.weight, "SCB", None))  # int8 codes, fp32 row scales
        elif isinstance(m, bnb.nn.Linear4bit):
            fp.linear_bits += _bits(m.weight.data) + _quant_state_bits(m.weight.quant_state)
        else:
            continue
        packed.add(f"{name}.weight")
        fp.linear_params += m.in_features * m.out_features
    if not packed:
        raise QuantError("the model holds no bitsandbytes layers: load it with load_kwargs(config)")
    fp.other_params = sum(p.numel() for n, p in model.named_parameters() if n not in packed)
    fp.extra["quantized_linears"] = len(packed)
    fp.extra["compute_dtype"] = str(config.resolved_compute_dtype()).removeprefix("torch.")
    fp.extra["measured_bytes"] = sum(_bits(t) // 8 for t in (*model.parameters(), *model.buffers()))
    return fp
