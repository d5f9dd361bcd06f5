"""LoRA training with peft: ``lora_pre_`` (adapters on the 16-bit model, merged back: the quantizer then sees the
merged weights) and ``lora_post_`` (adapters on the frozen quantized linears, kept separate so the quantization is
not undone). Both mutate ``model`` in place and return the record's ``finetune`` section.

Objectives: ``distill`` minimizes KL(p_teacher || p_student) per next-token position over the full vocabulary,
the teacher being the unquantized model (computed on the fly, under no_grad), and needs no labels; ``lm`` is the
next-token loss on the windows.
"""
from __future__ import annotations

import time
from typing import Any

import torch
import torch.nn as nn

from evalsuite.finetune import data
from evalsuite.spec.finetune import BUDGET_NOTE, FinetuneSpec


def attach(model: nn.Module, spec: FinetuneSpec) -> nn.Module:
    """peft LoRA adapters on ``spec.targets`` (every other parameter frozen); returns the PeftModel. The LoRA layers
    are injected into ``model`` itself, so ``model`` runs with them."""
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora.layer import Linear as LoraLinear

    config = LoraConfig(r=spec.rank, lora_alpha=spec.alpha, target_modules=list(spec.targets), lora_dropout=0.0,
                        bias="none")
    if not _has_bnb_layers(model):
        # plain (fake-quant) linears go straight to peft's own LoRA Linear: peft's default dispatch first asks
        # whether GPTQModel layers could be present, which raises when GPTQModel is installed without optimum
        config._register_custom_module({nn.Linear: LoraLinear})
    return get_peft_model(model, config)


def _has_bnb_layers(model: nn.Module) -> bool:
    return any(type(m).__module__.startswith("bitsandbytes") for m in model.modules())


def adapter_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if "lora_" in n}


def adapter_bytes(model: nn.Module) -> int:
    """Bytes of the adapters at their stored dtype (fp32 here: peft keeps adapters in fp32 by default)."""
    return sum(p.numel() * p.element_size() for p in adapter_parameters(model).values())


def loss_fn(objective: str, logits: torch.Tensor, window: torch.Tensor, teacher_logits: torch.Tensor | None):
    """Mean over next-token positions of KL(p_teacher || p_student) (distill) or of -log p(next token) (lm)."""
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    if objective == "distill":
        ref = torch.log_softmax(teacher_logits[:, :-1].float(), dim=-1)
        return (ref.exp() * (ref - logp)).sum(-1).mean()
    return -logp.gather(-1, window[:, 1:, None]).mean()


def train(peft_model: nn.Module, spec: FinetuneSpec, tokenizer, teacher: nn.Module | None = None) -> dict[str, Any]:
    """AdamW on the adapters for ``spec.steps`` batches; the loss curve every ``log_every`` steps (and the last)."""
    torch.manual_seed(spec.seed)
    device = next(peft_model.parameters()).device
    batches = data.windows(spec, tokenizer)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=spec.lr, weight_decay=0.0)
    curve, start = [], time.perf_counter()
    peft_model.train()
    for step in range(spec.steps):
        window = batches[step * spec.batch : (step + 1) * spec.batch].to(device)
        with torch.no_grad():
            target = teacher(window).logits if spec.objective == "distill" else None
        loss = loss_fn(spec.objective, peft_model(window).logits, window, target)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"fine-tune loss is {loss.item()} at step {step}; lower --ft-lr")
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % spec.log_every == 0 or step == spec.steps - 1:
            curve.append({"step": step, "loss": round(loss.item(), 5), "wall_s": round(time.perf_counter() - start, 2)})
    peft_model.eval()
    return {
        "spec": spec.to_dict(), "steps": spec.steps, "tokens": int(batches[: spec.steps * spec.batch].numel()),
        "wall_s": round(time.perf_counter() - start, 2), "loss_curve": curve, "data_hash": data.data_hash(batches),
        "data_kind": spec.data_kind, "trainable_params": sum(p.numel() for p in params), "note": BUDGET_NOTE,
    }


def lora_pre_(model: nn.Module, spec: FinetuneSpec, tokenizer) -> dict[str, Any]:
    """Train adapters on the (16-bit) ``model`` and merge them in: W' = W + B @ A * alpha / rank."""
    peft_model = attach(model, spec)
    out = train(peft_model, spec, tokenizer)
    peft_model.merge_and_unload()
    return {**out, "merged": True, "adapter_params": 0, "adapter_bytes": 0}


def lora_post_(model: nn.Module, spec: FinetuneSpec, tokenizer, teacher: nn.Module | None) -> dict[str, Any]:
    """Train adapters on the quantized ``model`` (its weights frozen, left bit for bit as quantized); they stay."""
    peft_model = attach(model, spec)
    out = train(peft_model, spec, tokenizer, teacher)
    adapters = adapter_parameters(model)
    for p in adapters.values():
        p.requires_grad_(False)
    return {**out, "merged": False, "adapter_params": sum(p.numel() for p in adapters.values()),
            "adapter_bytes": adapter_bytes(model),
            "adapter_dtype": str(next(iter(adapters.values())).dtype).removeprefix("torch.")}
