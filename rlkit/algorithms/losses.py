"""Policy losses, loss aggregation, KL estimators and entropy.

Per-token losses are ``[B, T]`` and exactly 0 where the mask is False; reduction to a
scalar is a separate step (``aggregate``/``aggregate_partial``) so that every loss can be
combined with every normalisation.  Masks are ``True`` = include and line up with
``RolloutBatch.loss_mask`` (see ``rlkit/batch.py``).

Policy losses in ``POLICY_LOSSES`` share one signature::

    fn(logp: Tensor[B, T], old_logp: Tensor[B, T], advantages: Tensor[B, T],
       mask: Tensor[B, T], **hparams) -> Tensor[B, T]

A user may pass their own callable with that signature wherever a registered name is accepted.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from rlkit.algorithms.registry import Registry

AGGREGATION_MODES = ("seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm", "seq_mean_token_sum")
KL_ESTIMATORS = ("k1", "k2", "k3")
CORRECTION_MODES = ("none", "token_tis", "seq_tis", "seq_mask")

LossFn = Callable[..., Tensor]
POLICY_LOSSES = Registry("policy loss")
register_loss = POLICY_LOSSES.register


def get_loss(name_or_callable: str | LossFn) -> LossFn:
    """A registered policy loss by name, a user's callable unchanged, or ``"module:function"``."""
    return POLICY_LOSSES.resolve(name_or_callable)


def _check_same_shape(fn: str, **tensors: Tensor) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) != 1:
        listed = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise ValueError(f"{fn}: tensors must share one shape, got {listed}")


@register_loss("ppo_clip")
def ppo_clip(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    dual_clip: float | None = None,
) -> Tensor:
    """PPO clipped surrogate per token (Schulman et al. 2017, arXiv 1707.06347, Eq. 7).

    rho = exp(logp - old_logp);  l = max(-A rho, -A clip(rho, 1 - eps_low, 1 + eps_high)).
    Asymmetric bounds give DAPO's clip-higher (arXiv 2503.14476, Eq. 10; eps_high = 0.28).
    Dual clip (Ye et al. 2020, arXiv 1912.09729, Eq. 5), only where A < 0:
    l = min(l, -A c) with c = ``dual_clip`` > 1.

    Returns ``[B, T]``, exactly 0 where ``mask`` is False even when the inputs there are
    inf/NaN (inputs are replaced before use, so gradients there are 0 too, never NaN).
    Advantages are treated as constants (detached).
    """
    _check_same_shape("ppo_clip", logp=logp, old_logp=old_logp, advantages=advantages, mask=mask)
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"ppo_clip: dual_clip must be > 1, got {dual_clip}")
    mask = mask.bool()
    zero = logp.new_zeros(())
    log_ratio = torch.where(mask, logp - torch.where(mask, old_logp, zero).detach(), zero)  # [B, T]
    adv = torch.where(mask, advantages.detach().to(logp.dtype), zero)  # [B, T]
    ratio = torch.exp(log_ratio)  # [B, T]
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high)
    loss = torch.maximum(unclipped, clipped)  # [B, T]
    if dual_clip is not None:
        loss = torch.where(adv < 0, torch.minimum(loss, -adv * dual_clip), loss)
    return torch.where(mask, loss, zero)


@register_loss("gspo")
def gspo(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    eps_low: float = 3e-4,
    eps_high: float = 4e-4,
    dual_clip: float | None = None,
) -> Tensor:
    """GSPO: one importance ratio per sequence (Zheng et al. 2025, arXiv 2507.18071, Eq. 5-7).

    s_i = exp(mean_t (logp - old_logp)) over the sequence's mask tokens, clipped like PPO:
    l_i = max(-A_i s_i, -A_i clip(s_i, 1 - eps_low, 1 + eps_high)), written on every mask
    token of the sequence (so ``seq_mean_token_mean`` aggregation gives the paper's
    sequence mean).  ``A_i`` is the advantage of the sequence's first mask token (outcome
    advantages are constant along a sequence).  The paper's ranges are far narrower than
    PPO's (3e-4 / 4e-4), hence the defaults; ``dual_clip`` is accepted for a uniform signature
    and applied per sequence where A < 0.  Returns ``[B, T]``, 0 where ``mask`` is False.
    """
    _check_same_shape("gspo", logp=logp, old_logp=old_logp, advantages=advantages, mask=mask)
    mask = mask.bool()
    zero = logp.new_zeros(())
    log_ratio = torch.where(mask, logp - torch.where(mask, old_logp, zero).detach(), zero)  # [B, T]
    lengths = mask.sum(dim=1).clamp(min=1)  # [B]
    seq_ratio = torch.exp(log_ratio.sum(dim=1) / lengths)  # [B]
    first = mask.float().argmax(dim=1)  # [B] first completion token
    adv = torch.where(mask.any(dim=1), advantages.detach().to(logp.dtype).gather(1, first[:, None])[:, 0], zero)
    loss = torch.maximum(-adv * seq_ratio, -adv * torch.clamp(seq_ratio, 1.0 - eps_low, 1.0 + eps_high))  # [B]
    if dual_clip is not None:
        loss = torch.where(adv < 0, torch.minimum(loss, -adv * dual_clip), loss)
    return torch.where(mask, loss[:, None].expand_as(log_ratio), zero)


gspo.ratio_level = "sequence"  # one ratio per sequence: what clip_frac measures (rlkit/objective.py)


def importance_correction(old_logp: Tensor, rollout_logp: Tensor, mask: Tensor, mode: str,
                          cap: float = 2.0, band: tuple[float, float] = (0.5, 2.0)) -> Tensor:
    """Per-token weights that correct for the rollout engine's log-probs differing from the
    trainer's (truncated importance sampling; Yao et al. 2025, "Your efficient RL framework
    secretly brings you off-policy RL training", Eq. 3; spec section 1).

    - ``token_tis``: w_t = min(exp(old_logp_t - rollout_logp_t), cap)
    - ``seq_tis``: one weight per sequence, min(exp(sum_t (old - rollout)), cap)
    - ``seq_mask``: 1, or 0 for sequences whose ratio exp(mean_t (old - rollout)) leaves ``band``
    - ``none``: 1

    Returns ``[B, T]`` (constants, no gradient), 0 where ``mask`` is False.
    """
    mask = mask.bool()
    zero = old_logp.new_zeros(())
    diff = torch.where(mask, (old_logp - rollout_logp).detach(), zero)  # [B, T]
    if mode == "none":
        weights = torch.ones_like(diff)
    elif mode == "token_tis":
        weights = torch.exp(diff).clamp(max=cap)
    elif mode == "seq_tis":
        weights = torch.exp(diff.sum(dim=1)).clamp(max=cap)[:, None].expand_as(diff)
    elif mode == "seq_mask":
        ratio = torch.exp(diff.sum(dim=1) / mask.sum(dim=1).clamp(min=1))  # [B]
        keep = (ratio >= band[0]) & (ratio <= band[1])
        weights = keep.to(diff.dtype)[:, None].expand_as(diff)
    else:
        raise ValueError(f"importance_correction: unknown mode {mode!r}; choose none, token_tis, seq_tis or seq_mask")
    return torch.where(mask, weights, zero)


def aggregate_partial(
    loss: Tensor,
    mask: Tensor,
    mode: str,
    num_seqs: int | float | Tensor,
    num_tokens: int | float | Tensor,
    max_len: int | None = None,
) -> Tensor:
    """This micro-batch's share of the batch loss, with GLOBAL denominators.

    ``num_seqs`` is the number of sequences and ``num_tokens`` the number of mask tokens in the
    whole batch (all micro-batches, all ranks).  Summing the result over micro-batches (and
    ranks) gives ``aggregate`` of the concatenated batch:

    - ``seq_mean_token_mean`` (GRPO, arXiv 2402.03300, Eq. 3): (1/B) sum_i (1/|y_i|) sum_t l
    - ``token_mean`` (DAPO, arXiv 2503.14476, Eq. 8): sum_{i,t} l / sum_i |y_i|
    - ``seq_mean_token_sum_norm`` (Dr. GRPO, arXiv 2503.20783, Sec. 3.2): sum_{i,t} l / (B L_max)
    - ``seq_mean_token_sum``: (1/B) sum_i sum_t l

    ``max_len`` (L_max) is required for ``seq_mean_token_sum_norm``: pass one constant for all
    micro-batches (e.g. the maximum response length), not each micro-batch's padded width.
    Rows with no mask tokens add 0 (they still count in B); zero denominators are clamped to 1,
    so nothing is NaN.  Returns a 0-dim tensor.
    """
    _check_same_shape("aggregate", loss=loss, mask=mask)
    if loss.dim() != 2:
        raise ValueError(f"aggregate: loss must be [B, T], got shape {tuple(loss.shape)}")
    if mode not in AGGREGATION_MODES:
        raise ValueError(f"aggregate: unknown mode {mode!r}; known: {', '.join(AGGREGATION_MODES)}")
    mask = mask.bool()
    masked = torch.where(mask, loss, loss.new_zeros(()))  # [B, T]
    seqs = torch.as_tensor(num_seqs, dtype=loss.dtype, device=loss.device).clamp(min=1)
    if mode == "seq_mean_token_mean":
        lengths = mask.sum(dim=-1).to(loss.dtype).clamp(min=1)  # [B]
        return (masked.sum(dim=-1) / lengths).sum() / seqs
    if mode == "token_mean":
        tokens = torch.as_tensor(num_tokens, dtype=loss.dtype, device=loss.device).clamp(min=1)
        return masked.sum() / tokens
    if mode == "seq_mean_token_sum_norm":
        if max_len is None or max_len <= 0:
            raise ValueError(f"aggregate: mode 'seq_mean_token_sum_norm' needs max_len > 0, got {max_len}")
        return masked.sum() / (seqs * max_len)
    return masked.sum() / seqs  # seq_mean_token_sum


def aggregate(loss: Tensor, mask: Tensor, mode: str, max_len: int | None = None) -> Tensor:
    """Reduce a ``[B, T]`` per-token loss to a scalar (modes: see ``aggregate_partial``).

    Denominators come from this batch alone: B = ``loss.shape[0]`` (rows with no mask tokens
    included), token count = ``mask.sum()``, L_max = ``max_len`` or ``loss.shape[-1]``.
    """
    _check_same_shape("aggregate", loss=loss, mask=mask)
    num_seqs = loss.shape[0]
    num_tokens = mask.bool().sum()
    max_len = loss.shape[-1] if max_len is None else max_len
    return aggregate_partial(loss, mask, mode, num_seqs=num_seqs, num_tokens=num_tokens, max_len=max_len)


def kl(logp: Tensor, ref_logp: Tensor, estimator: str) -> Tensor:
    """Per-token estimate of KL(pi || pi_ref) from samples of pi, elementwise (no mask).

    With d = logp - ref_logp (J. Schulman, "Approximating KL divergence", 2020):
    k1 = d (unbiased, high variance), k2 = d^2 / 2 (biased, low variance),
    k3 = exp(-d) - 1 + d (unbiased, always >= 0; the GRPO paper's Eq. 4 estimator).
    Returns the shape of the inputs; callers mask it.
    """
    _check_same_shape("kl", logp=logp, ref_logp=ref_logp)
    d = logp - ref_logp
    if estimator == "k1":
        return d
    if estimator == "k2":
        return 0.5 * d * d
    if estimator == "k3":
        return torch.expm1(-d) + d
    raise ValueError(f"kl: unknown estimator {estimator!r}; known: {', '.join(KL_ESTIMATORS)}")


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of softmax(logits) over the last dim: H = logsumexp(z) - sum_v p_v z_v.

    Logits are shifted by their row maximum first (H is shift-invariant), which avoids both
    overflow and the cancellation of two large terms; ``-inf`` logits (masked vocabulary)
    contribute 0.  Computed in the logits' dtype (upcast bf16 logits first if precision
    matters).  Shape ``[..., V] -> [...]``.
    """
    zero = logits.new_zeros(())
    row_max = logits.detach().amax(dim=-1, keepdim=True)  # [..., 1]
    shifted = logits - torch.where(torch.isfinite(row_max), row_max, zero)  # [..., V], max 0
    lse = torch.logsumexp(shifted, dim=-1)  # [...]
    probs = torch.softmax(shifted, dim=-1)  # [..., V]
    finite = torch.where(torch.isfinite(shifted), shifted, zero)  # [..., V]
    return lse - (probs * finite).sum(dim=-1)
