"""GPTQ through GPTQModel: a real packed checkpoint is built once, then evaluated on GPTQModel's kernels, so speed
and memory are measured rather than estimated. Works on directories it is given; the caller owns the cache.

GPTQModel (``pip install gptqmodel==7.6.0``, the last release whose torch requirement torch 2.13 meets) is an
optional dependency, imported only here. auto-gptq is unmaintained, needs CUDA to quantize and transformers<5;
its checkpoints load through GPTQModel instead.
"""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import torch
import torch.nn as nn

from quant import Footprint, QuantError

if TYPE_CHECKING:
    from quant.gptq import GPTQConfig

GPTQMODEL_VERSION = "7.6.0"
PACKED_BUFFERS = ("qweight", "qzeros", "scales", "g_idx")  # what a GPTQ-format linear stores


def check_gptqmodel() -> None:
    """Fail with one line, before anything loads, when GPTQModel is missing (without importing it: slow, noisy)."""
    if importlib.util.find_spec("gptqmodel") is None:
        raise QuantError("gptqmodel is not installed; run make setup, which installs the gptq extra")


def require_gptqmodel():
    # GPTQModel sizes its CPU pool once, when the pool is first built, and its model loader takes 2 workers of it:
    # its own default ((cores + 1) // 2) and any setting below 2 fail with "requests 2 workers" on 2 cores.
    check_gptqmodel()
    workers = max(2, os.cpu_count() or 1, int(os.environ.get("GPTQMODEL_CPU_WORKERS") or 0))
    os.environ["GPTQMODEL_CPU_WORKERS"] = str(workers)
    import gptqmodel

    return gptqmodel


def refuse_auto_gptq() -> NoReturn:
    raise QuantError(
        "auto-gptq cannot run here: it is unmaintained, needs CUDA to quantize and transformers<5; "
        "use --gptq-impl gptqmodel, which also loads auto-gptq checkpoints (pass the checkpoint directory as --model)"
    )


def is_packed_gptq(path: str | Path) -> bool:
    """Whether ``path`` holds a GPTQ-format checkpoint (GPTQModel's or auto-gptq's)."""
    config = Path(path) / "config.json"
    if not config.exists():
        return False
    qc = json.loads(config.read_text()).get("quantization_config") or {}
    return str(qc.get("quant_method", "")).lower() == "gptq"


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


def quantize_with_gptqmodel(source: Path, config: "GPTQConfig", out: Path, calib: torch.Tensor, tokenizer) -> None:
    """Quantize the checkpoint at ``source`` with GPTQModel on the calibration windows ``calib`` [n, seqlen] and save
    the packed checkpoint (and the tokenizer) into the directory ``out``."""
    from quant.outliers import FORWARD_BATCH

    gptqmodel = require_gptqmodel()
    model = gptqmodel.GPTQModel.load(str(source), gptqmodel_quantize_config(config))
    model.quantize([{"input_ids": row.tolist(), "attention_mask": [1] * len(row)} for row in calib],
                   batch_size=FORWARD_BATCH, tokenizer=tokenizer)
    model.save(str(out))
    tokenizer.save_pretrained(out)


def load_packed(path: str | Path, kernel: str = "auto", **kwargs: Any):
    """(model, tokenizer) of a packed GPTQ checkpoint, on GPTQModel's ``kernel`` (auto: its fastest for this
    machine; gptq_torch and gptq_triton need no compilation, where auto may build a CUDA extension first)."""
    from transformers import AutoTokenizer

    gptqmodel = require_gptqmodel()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    wrapped = gptqmodel.GPTQModel.load(str(path), backend=gptqmodel.BACKEND(kernel), device=device, **kwargs)
    model = wrapped.model
    model.eval()
    return model, AutoTokenizer.from_pretrained(path)


def packed_footprint(model: nn.Module, checkpoint: Path | None = None) -> Footprint:
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
        raise QuantError("the loaded model has no packed GPTQ linears; load it through quant.gptq_packed.load_packed")
    fp.other_params = sum(p.numel() for n, p in model.named_parameters() if n.rpartition(".")[2] not in PACKED_BUFFERS)
    fp.extra["quantized_linears"] = len(packed_names)
    fp.extra["kernel"] = sorted({type(model.get_submodule(n)).__name__ for n in packed_names})
    if checkpoint is not None:
        fp.extra["measured_bytes"] = sum(f.stat().st_size for f in Path(checkpoint).glob("*.safetensors"))
    return fp
