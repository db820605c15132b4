"""Advantage estimators: group baselines on outcome scores, GAE with a critic, whitening.

All functions are pure tensor maths (no config objects, no module state besides the
registry).  Shapes: ``B`` sequences, ``T`` token positions; masks are ``True`` = include
and line up with ``RolloutBatch.loss_mask`` (see ``rlkit/batch.py``).

Outcome estimators in ``ADVANTAGE_ESTIMATORS`` share one signature::

    fn(scores: Tensor[B], group_ids: Tensor[B], loss_mask: Tensor[B, T], **hparams) -> Tensor[B, T]

returning the per-sequence advantage on every ``loss_mask`` token and 0 elsewhere.  A user
may pass their own callable with that signature wherever a registered name is accepted.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from rlkit.algorithms.registry import Registry

GROUP_KINDS = ("grpo", "dr_grpo", "rloo")

AdvantageFn = Callable[..., Tensor]
ADVANTAGE_ESTIMATORS = Registry("advantage estimator")
register_advantage = ADVANTAGE_ESTIMATORS.register


def get_advantage(name_or_callable: str | AdvantageFn) -> AdvantageFn:
    """A registered estimator by name, a user's callable unchanged, or ``"module:function"``."""
    return ADVANTAGE_ESTIMATORS.resolve(name_or_callable)


def _float(x: Tensor) -> Tensor:
    return x if x.is_floating_point() else x.float()


def group_advantages(
    scores: Tensor,
    group_ids: Tensor,
    kind: str = "grpo",
    eps: float = 1e-6,
) -> Tensor:
    """Per-sequence advantages with a group baseline, vectorised over groups.

    - ``grpo`` (Shao et al. 2024, arXiv 2402.03300, Sec. 4.1.2 outcome supervision):
      A_i = (R_i - mean_G R) / (std_G R + eps), std unbiased (Bessel-corrected).
    - ``dr_grpo`` (Liu et al. 2025, arXiv 2503.20783, Eq. 3 / Sec. 3.2): A_i = R_i - mean_G R.
    - ``rloo`` (Ahmadian et al. 2024, arXiv 2402.14740, Eq. 7): A_i = R_i - mean_{j!=i} R_j
      = K/(K-1) (R_i - mean_G R).

    A group of one gets 0 for every kind.  Deviation: where ``std + eps`` is 0 (``eps=0`` and
    a group of equal scores) GRPO returns 0 instead of NaN.  Group ids may be any integers
    in any order.  Returns a ``[B]`` float tensor.
    """
    if kind not in GROUP_KINDS:
        raise ValueError(f"group_advantages: unknown kind {kind!r}; known: {', '.join(GROUP_KINDS)}")
    if scores.dim() != 1 or tuple(group_ids.shape) != tuple(scores.shape):
        raise ValueError(
            f"group_advantages: scores {tuple(scores.shape)} and group_ids {tuple(group_ids.shape)} "
            "must both be [B]"
        )
    scores = _float(scores)  # [B]
    if scores.numel() == 0:
        return scores.clone()
    _, inverse = torch.unique(group_ids, return_inverse=True)  # [B] in [0, G)
    num_groups = int(inverse.max().item()) + 1
    zeros = scores.new_zeros(num_groups)  # [G]
    counts = zeros.index_add(0, inverse, torch.ones_like(scores))  # [G]
    sums = zeros.index_add(0, inverse, scores)  # [G]
    n = counts[inverse]  # [B]
    centered = scores - (sums / counts)[inverse]  # [B]
    if kind == "grpo":
        sq = zeros.index_add(0, inverse, centered * centered)  # [G]
        std = (sq / (counts - 1).clamp(min=1)).sqrt()[inverse]  # [B]
        denom = std + eps
        adv = torch.where(denom > 0, centered / torch.where(denom > 0, denom, 1.0), 0.0)
    elif kind == "dr_grpo":
        adv = centered
    else:  # rloo
        adv = centered * n / (n - 1).clamp(min=1)
    return torch.where(n > 1, adv, torch.zeros_like(adv))  # [B]


def broadcast_to_tokens(seq_values: Tensor, loss_mask: Tensor) -> Tensor:
    """``[B]`` per-sequence values -> ``[B, T]`` on ``loss_mask`` tokens, 0 elsewhere."""
    if seq_values.dim() != 1 or loss_mask.dim() != 2 or seq_values.shape[0] != loss_mask.shape[0]:
        raise ValueError(
            f"broadcast_to_tokens: values {tuple(seq_values.shape)} must be [B] and "
            f"loss_mask {tuple(loss_mask.shape)} must be [B, T]"
        )
    return torch.where(loss_mask.bool(), seq_values.unsqueeze(1), seq_values.new_zeros(()))  # [B, T]


@register_advantage("grpo")
def grpo_advantages(scores: Tensor, group_ids: Tensor, loss_mask: Tensor, *, eps: float = 1e-6) -> Tensor:
    """GRPO outcome advantages (arXiv 2402.03300), broadcast onto ``loss_mask``: ``[B, T]``."""
    return broadcast_to_tokens(group_advantages(scores, group_ids, "grpo", eps=eps), loss_mask)


@register_advantage("dr_grpo")
def dr_grpo_advantages(scores: Tensor, group_ids: Tensor, loss_mask: Tensor) -> Tensor:
    """Dr. GRPO outcome advantages (arXiv 2503.20783), no std division: ``[B, T]``."""
    return broadcast_to_tokens(group_advantages(scores, group_ids, "dr_grpo"), loss_mask)


@register_advantage("rloo")
def rloo_advantages(scores: Tensor, group_ids: Tensor, loss_mask: Tensor) -> Tensor:
    """RLOO leave-one-out advantages (arXiv 2402.14740): ``[B, T]``."""
    return broadcast_to_tokens(group_advantages(scores, group_ids, "rloo"), loss_mask)


def gae(
    token_rewards: Tensor,
    values: Tensor,
    mask: Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, arXiv 1506.02438, Eq. 16).

    delta_t = r_t + gamma V_{t+1} - V_t,  A_t = delta_t + gamma lam A_{t+1},  returns = A + V.

    Only positions where ``mask`` is True take part: the recursion jumps over masked
    positions (so "t+1" is the next *valid* position of the row), the value after the last
    valid token is 0, and masked positions get advantage and return 0 whatever
    ``token_rewards``/``values`` hold there (rewards on masked positions are ignored).
    Advantages are returned before whitening (use ``whiten``).  Loops over ``T`` only.
    """
    if not (token_rewards.shape == values.shape == mask.shape) or mask.dim() != 2:
        raise ValueError(
            f"gae: token_rewards {tuple(token_rewards.shape)}, values {tuple(values.shape)} and "
            f"mask {tuple(mask.shape)} must all be [B, T]"
        )
    dtype = torch.promote_types(_float(token_rewards).dtype, _float(values).dtype)
    mask = mask.bool()
    zero = torch.zeros((), dtype=dtype, device=values.device)
    rewards = torch.where(mask, token_rewards.to(dtype), zero)  # [B, T]
    vals = torch.where(mask, values.to(dtype), zero)  # [B, T]
    next_value = rewards.new_zeros(rewards.shape[0])  # [B]
    next_adv = rewards.new_zeros(rewards.shape[0])  # [B]
    columns: list[Tensor] = []
    for t in reversed(range(rewards.shape[1])):
        valid = mask[:, t]  # [B]
        delta = rewards[:, t] + gamma * next_value - vals[:, t]
        adv_t = delta + gamma * lam * next_adv
        columns.append(torch.where(valid, adv_t, zero))
        next_value = torch.where(valid, vals[:, t], next_value)
        next_adv = torch.where(valid, adv_t, next_adv)
    advantages = torch.stack(columns[::-1], dim=1) if columns else rewards.clone()  # [B, T]
    returns = torch.where(mask, advantages + vals, zero)  # [B, T]
    return advantages, returns


def whiten(x: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """Masked whitening: (x - mean) / sqrt(var + eps) over the ``mask`` entries of ``x``.

    ``var`` is unbiased (Bessel-corrected); ``eps`` sits under the root.  The mean is not
    added back.  Masked-out entries become 0; with fewer than two entries the result is 0.
    """
    if x.shape != mask.shape:
        raise ValueError(f"whiten: x {tuple(x.shape)} and mask {tuple(mask.shape)} differ in shape")
    mask = mask.bool()
    x = _float(x)
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    n = mask.sum().to(x.dtype)
    mean = torch.where(mask, x, zero).sum() / n.clamp(min=1)
    centered = torch.where(mask, x - mean, zero)
    var = (centered * centered).sum() / (n - 1).clamp(min=1)
    return centered * torch.rsqrt(var + eps)
