"""The value model of PPO with a critic: a transformer backbone with a scalar head.

The critic is trained by a training backend of its own (``make_backend(..., role="critic")``,
single or DeepSpeed), so ZeRO, offload and checkpoints work for it as for the policy.  Its
per-token output takes the place of the policy's log-probs: ``values[:, t]`` is V of the
state before completion token t (read from the hidden state at t - 1, the alignment of
``RolloutBatch``), 0 outside ``loss_mask``.

Loss (spec section 2; Schulman et al. 2017, arXiv 1707.06347, Eq. 9 with the value clipping of
the PPO2 baselines): 0.5 max((V - R)^2, (clip(V, V_old - c, V_old + c) - R)^2) per token,
averaged over all completion tokens of the batch (global counts).
"""
from __future__ import annotations

import contextlib
import dataclasses

import torch
from torch import nn

from rlkit.algorithms.losses import aggregate_partial


class ValueModel(nn.Module):
    """``backbone`` (the causal LM's decoder) + ``head`` (hidden -> 1, zero-initialised)."""

    def __init__(self, backbone: nn.Module, hidden_size: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        return self.head(hidden).squeeze(-1)  # [b, T]


def load_value_model(path: str, device: str = "cpu", gradient_checkpointing: bool = False) -> ValueModel:
    """A critic initialised from a causal-LM checkpoint (its decoder; the LM head is dropped)."""
    from rlkit.models import load_causal_lm

    lm = load_causal_lm(path, "float32", device, gradient_checkpointing)
    return ValueModel(lm.base_model, lm.config.hidden_size).to(device)


def forward_values(model, micro, with_entropy: bool = False, autocast: bool = False, entropy_grad: bool = False):
    """``(values [b, T], None)``: the backends' forward signature, with V in place of log-probs."""
    ids = micro.input_ids
    ctx = torch.autocast(ids.device.type, dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    with ctx:
        raw = model(input_ids=ids, attention_mask=micro.attention_mask.long()).float()  # [b, T]
    shifted = torch.cat([torch.zeros_like(raw[:, :1]), raw[:, :-1]], dim=1)  # V before token t
    return torch.where(micro.loss_mask, shifted, torch.zeros((), device=ids.device)), None


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip: float | None = 0.5) -> torch.Tensor:
    """Per-token 0.5 max((V - R)^2, (clip(V, V_old +- clip) - R)^2); 0 where ``mask`` is False."""
    mask = mask.bool()
    zero = values.new_zeros(())
    loss = (values - returns) ** 2
    if clip is not None:
        clipped = old_values + (values - old_values).clamp(-clip, clip)
        loss = torch.maximum(loss, (clipped - returns) ** 2)
    return torch.where(mask, 0.5 * loss, zero)


def make_value_loss_fn(algo, num_seqs: int, num_tokens: int, max_len: int, metric_tokens: int, clip=0.5):
    """``loss_fn(values, _, micro) -> (loss, metrics)`` for the critic backend's ``train_step``
    (the signature of ``rlkit.objective.make_loss_fn``; token-mean over global counts)."""
    denom = max(metric_tokens, 1)

    def loss_fn(values: torch.Tensor, _entropy, micro):
        mask = micro.loss_mask
        per_token = value_loss(values, micro.values, micro.returns, mask, clip)
        loss = aggregate_partial(per_token, mask, "token_mean", num_seqs, num_tokens, max_len)
        with torch.no_grad():
            outside = ((values - micro.values).abs() > clip) & mask if clip is not None else mask & False
            metrics = {"critic/loss": float(loss.detach()),
                       "critic/clip_frac": float(outside.sum()) / denom,
                       "critic/value_mean": float(torch.where(mask, values, 0.0).sum()) / denom}
        return loss, metrics

    return loss_fn


def critic_config(cfg):
    """The run config the critic's backend is built from: ``critic.path`` (default: the policy's
    starting weights), ``critic.lr``, no LoRA, no KL or entropy terms."""
    model = dataclasses.replace(cfg.model, path=cfg.critic.path or cfg.model.path,
                                lora=dataclasses.replace(cfg.model.lora, r=0), reference=None)
    train = dataclasses.replace(cfg.train, lr=cfg.critic.lr, skip_zero_advantage=False, share_prompt_prefix=False)
    algo = dataclasses.replace(cfg.algo, kl_coef=0.0, entropy_coef=0.0)
    return dataclasses.replace(cfg, model=model, train=train, algo=algo)
