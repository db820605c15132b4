"""LoRA policies (PEFT) in the training backends, and their weights as the rollout engine needs them.

The trainer holds a PEFT model: frozen base weights plus trainable adapters ``A`` (r x in) and
``B`` (out x r), so a targeted linear layer computes ``W x + (alpha / r) B A x``
(Hu et al. 2021, "LoRA", eq. 3).  vLLM serves plain weights, so after every step
``merged_weights`` hands it ``W + (alpha / r) B A`` for the layers whose weights changed.

Why merge instead of loading the adapter into vLLM (``enable_lora`` + a ``LoRARequest`` per
step): the merged path keeps the engine a plain model, so generation, the bulk of a step, runs
at full speed with no per-token LoRA matmuls, and it needs no adapter files written and re-read
every step.  Its cost is moving the merged layers, which ``changed_only`` cuts to the modules that
hold an adapter and their siblings: vLLM fuses q/k/v and gate/up into one weight, so a fused
weight must be sent whole (a partial reload leaves its other shards undefined).  The merge is
computed out of place (``W + delta``), never by PEFT's merge/unmerge, which would add rounding
drift to the trained base weights on every step in bf16.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch


def apply_lora(model, lora_cfg, gradient_checkpointing: bool = False):
    """Wrap a causal LM with fresh LoRA adapters (PEFT ``get_peft_model``)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=lora_cfg.r, lora_alpha=lora_cfg.alpha, lora_dropout=lora_cfg.dropout,
                        target_modules=list(lora_cfg.target_modules), bias=lora_cfg.bias, task_type="CAUSAL_LM")
    if gradient_checkpointing:  # checkpointed blocks need inputs that require grad when the base is frozen
        model.enable_input_require_grads()
    try:
        return get_peft_model(model, config)
    except ValueError as exc:  # PEFT names the modules it could not find
        raise ValueError(f"model.lora.target_modules={list(lora_cfg.target_modules)}: {exc}") from exc


def is_lora(model) -> bool:
    return hasattr(model, "peft_config")


def merged_weights(model, changed_only: bool = False,
                   gather: Callable[[list], contextlib.AbstractContextManager] | None = None
                   ) -> Iterator[tuple[str, torch.Tensor]]:
    """``(hf_name, tensor)`` of the base model with every adapter merged in, out of place.

    ``changed_only``: only the parameters of modules that share a parent with a LoRA layer (what
    training can change, including fused siblings; see the module docstring).  ``gather(params)``
    is a context manager that makes sharded parameters whole (ZeRO-3), one module at a time.
    """
    from peft.tuners.lora import LoraLayer

    gather = gather or (lambda params: contextlib.nullcontext())
    base = model.get_base_model()
    lora_modules = {name: m for name, m in base.named_modules() if isinstance(m, LoraLayer)}
    parents = {name.rpartition(".")[0] for name in lora_modules}
    inside_lora = tuple(f"{name}." for name in lora_modules)
    for name, module in base.named_modules():
        if name in lora_modules:
            params = list(module.parameters())
            with gather(params), torch.no_grad():
                layer = module.base_layer
                weight = layer.weight
                for adapter in module.active_adapters:
                    if adapter in module.lora_A:
                        weight = weight + module.get_delta_weight(adapter).to(weight.dtype)
                yield f"{name}.weight", weight.detach()
                if getattr(layer, "bias", None) is not None:
                    yield f"{name}.bias", layer.bias.detach()
            continue
        if name.startswith(inside_lora):  # base_layer, lora_A/B, dropout of a LoRA layer
            continue
        own = list(module.named_parameters(recurse=False))
        if not own or (changed_only and name.rpartition(".")[0] not in parents):
            continue
        with gather([p for _, p in own]):
            for pname, param in own:
                yield f"{name}.{pname}" if name else pname, param.detach()


def save_adapter(model, folder) -> None:
    """The adapter alone (``adapter_config.json`` + ``adapter_model.safetensors``), PEFT format."""
    model.save_pretrained(str(folder))
