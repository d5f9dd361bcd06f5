"""Packed checkpoints: of the methods that only exist as one (``config.builds_checkpoint``, e.g. GPTQ through
GPTQModel) and of those that can be exported for engines that load files (``exports_checkpoint``: RTN in the GPTQ
format, for vLLM). Made once per (weights, config, library versions) under the cache directory, then reused.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from evalsuite.load.cache import build_once
from evalsuite.load.models import ModelRef, cache_dir, load_tokenizer
from evalsuite.records.provenance import package_version
from quant import QuantConfig

KEY_LIBRARIES = ("torch", "transformers", "gptqmodel")  # a packer's output can change with any of these


def checkpoint_key(ref: ModelRef, config: QuantConfig) -> str:
    payload = {"weights": ref.fingerprint, "config": config.to_dict(),
               "versions": {lib: package_version(lib) for lib in KEY_LIBRARIES}}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def packed_ref(ref: ModelRef, config: QuantConfig) -> ModelRef:
    """The ref of ``ref`` packed with ``config``: built on first use (minutes: it quantizes), then cached."""
    key = checkpoint_key(ref, config)
    out = cache_dir() / "packed" / f"{ref.name.replace('/', '--')}-{key}"
    build_once(out, lambda tmp: _build(ref, config, tmp))
    return ModelRef(ref.name, "packed", str(out), f"{ref.fingerprint}+{config.method}:{key}", ref.source)


def _build(ref: ModelRef, config: QuantConfig, out: Path) -> None:
    tokenizer = load_tokenizer(ref)  # also converts a bundled GGUF into the checkpoint the packer reads
    calib = config.calibration()
    config.build_checkpoint(Path(ref.path), out, calib.ids(tokenizer) if calib else None, tokenizer)
