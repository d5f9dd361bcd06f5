"""Packed-kernel GPTQ backends: GPTQModel quantizes and saves a real packed checkpoint, which is then
evaluated with its kernels, so speed and memory are measured rather than estimated.

GPTQModel (``pip install gptqmodel==7.6.0``, the last release whose torch requirement torch 2.13 meets) is
an optional dependency, imported only here. auto-gptq is unmaintained, needs CUDA to quantize and
transformers<5; its checkpoints load through GPTQModel instead.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import torch.nn as nn

from quant import Footprint, QuantError

if TYPE_CHECKING:
    from evalsuite.models import ModelRef
    from quant.gptq import GPTQConfig

GPTQMODEL_VERSION = "7.6.0"
PACKED_BUFFERS = ("qweight", "qzeros", "scales", "g_idx")  # what a GPTQ-format linear stores


def require_gptqmodel():
    # GPTQModel sizes its CPU pool once, when the pool is first built, and its model loader takes 2 workers of it:
    # its own default ((cores + 1) // 2) and any setting below 2 fail with "requests 2 workers" on 2 cores.
    workers = max(2, os.cpu_count() or 1, int(os.environ.get("GPTQMODEL_CPU_WORKERS") or 0))
    os.environ["GPTQMODEL_CPU_WORKERS"] = str(workers)
    try:
        import gptqmodel
    except ModuleNotFoundError:
        raise QuantError("gptqmodel is not installed; run make setup, which installs the gptq extra") from None
    return gptqmodel


def refuse_auto_gptq() -> NoReturn:
    raise QuantError(
        "auto-gptq cannot run here: it is unmaintained, needs CUDA to quantize and transformers<5; "
        "use --gptq-backend gptqmodel, which also loads auto-gptq checkpoints (pass the checkpoint directory as --model)"
    )


def is_packed_gptq(path: str | Path) -> bool:
    """Whether ``path`` holds a GPTQ-format checkpoint (GPTQModel's or auto-gptq's)."""
    config = Path(path) / "config.json"
    if not config.exists():
        return False
    qc = json.loads(config.read_text()).get("quantization_config") or {}
    return str(qc.get("quant_method", "")).lower() == "gptq"


def checkpoint_key(ref: "ModelRef", config: "GPTQConfig") -> str:
    payload = json.dumps({"weights": ref.fingerprint, "config": config.to_dict(), "gptqmodel": GPTQMODEL_VERSION},
                         sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def gptqmodel_checkpoint(ref: "ModelRef", config: "GPTQConfig") -> "ModelRef":
    """The ref of ``ref`` quantized by GPTQModel with ``config``: made once, cached by the config's hash."""
    from evalsuite.models import ModelRef, cache_dir

    require_gptqmodel()  # fail fast, before any work
    key = checkpoint_key(ref, config)
    out = cache_dir() / "gptq" / f"{ref.name.replace('/', '--')}-{key}"
    if not (out / "config.json").exists():
        quantize_with_gptqmodel(ref, config, out)
    return ModelRef(ref.name, "packed", str(out), f"{ref.fingerprint}+gptqmodel:{key}", ref.source)


def gptqmodel_quantize_config(config: "GPTQConfig"):
    """GPTQModel's config with the settings of ours; its own defaults differ (sym, damp 0.05, act_group_aware)."""
    gptqmodel = require_gptqmodel()
    return gptqmodel.QuantizeConfig(
        bits=config.bits,
        group_size=config.group_size,
        sym=config.sym,
        desc_act=config.act_order,
        act_group_aware=False,
        static_groups=config.static_groups,
        damp_percent=config.damp,
        true_sequential=True,
        offload_to_disk=False,
    )


def quantize_with_gptqmodel(ref: "ModelRef", config: "GPTQConfig", out: Path) -> None:
    """Quantize with GPTQModel on our calibration windows and save the packed checkpoint at ``out``."""
    from evalsuite.models import load
    from quant.calib import calibration_ids
    from quant.outliers import FORWARD_BATCH

    gptqmodel = require_gptqmodel()
    _, tokenizer = load(ref)  # also converts a bundled GGUF into the checkpoint GPTQModel reads
    ids = calibration_ids(tokenizer, config.calib_n, config.calib_seqlen, config.calib_seed, config.calib_source)
    model = gptqmodel.GPTQModel.load(ref.path, gptqmodel_quantize_config(config))
    model.quantize([{"input_ids": row.tolist(), "attention_mask": [1] * len(row)} for row in ids],
                   batch_size=FORWARD_BATCH, tokenizer=tokenizer)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        model.save(str(tmp))
        tokenizer.save_pretrained(tmp)
        tmp.rename(out)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (out / "config.json").exists():  # another process may have won the race
            raise


def load_packed(ref: "ModelRef", kernel: str = "auto", **kwargs: Any):
    """(model, tokenizer) of a packed GPTQ checkpoint, on GPTQModel's ``kernel`` (auto: its fastest for this
    machine; gptq_torch and gptq_triton need no compilation, where auto may build a CUDA extension first)."""
    import torch
    from transformers import AutoTokenizer

    gptqmodel = require_gptqmodel()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    wrapped = gptqmodel.GPTQModel.load(ref.path, backend=gptqmodel.BACKEND(kernel), device=device, **kwargs)
    model = wrapped.model
    model.eval()
    return model, AutoTokenizer.from_pretrained(ref.path)


def packed_footprint(model: nn.Module, ref: "ModelRef | None" = None) -> Footprint:
    """Footprint of a loaded packed model: the bytes its quantized linears really hold, and on disk."""
    fp = Footprint()
    packed_names = set()
    for name, module in model.named_modules():
        qweight = getattr(module, "qweight", None)
        if qweight is None:
            continue
        packed_names.add(name)
        fp.linear_params += module.in_features * module.out_features
        fp.linear_bits += sum(8 * t.numel() * t.element_size()
                              for b in PACKED_BUFFERS if (t := getattr(module, b, None)) is not None)
    if not packed_names:
        raise QuantError("the loaded model has no packed GPTQ linears; load it through quant.backends.load_packed")
    fp.other_params = sum(p.numel() for n, p in model.named_parameters() if n.rpartition(".")[2] not in PACKED_BUFFERS)
    fp.extra["quantized_linears"] = len(packed_names)
    fp.extra["kernel"] = sorted({type(model.get_submodule(n)).__name__ for n in packed_names})
    if ref is not None:
        fp.extra["measured_bytes"] = sum(f.stat().st_size for f in Path(ref.path).glob("*.safetensors"))
    return fp
