"""Credit assignment for process (step) rewards: how per-step PRM scores become returns.

Spec section 4.  Every function takes one completion's step rewards (a list, one value per
step, the step's reward sitting on its last token) and returns a list of the same length.

- Sum form: G_k = sum_{k' >= k} r_k'.  Summing invites reward hacking: more "good" steps,
  more reward.
- Min form (PURE, Cheng et al. 2025, arXiv 2504.15275): the return is the worst step's reward.
  ``softmin`` (the released training code) reweights r*_k = softmax(-r / T)_k r_k and then
  sums; ``strict`` (the paper, Eq. 4) is G_k = min_{k' >= k} r_k'.
- Clip (Gao et al. 2024, arXiv 2410.15115, Sec. 4.1): r'_k = min(r_k - eta, 0), so no step adds
  reward.  Delta (same paper, Sec. 4.2): r'_k = r_k - r_{k+1}, r'_K = 0, so returns telescope
  and stay bounded however many steps are added.  Clip-delta: delta of the clipped rewards.

``credit_step_rewards`` applies a named mode and returns the per-step rewards to place on the
steps' last tokens (for the strict min form: rewards whose suffix sums are the min-form returns,
so every mode feeds the same return computation).
"""
from __future__ import annotations

import math

CREDIT_MODES = ("sum", "min_form", "clip", "delta", "clip_delta")
MIN_FORMS = ("softmin", "strict")


def softmin_weighted(step_rewards: list[float], temperature: float = 0.1) -> list[float]:
    """r*_k = softmax(-r / T)_k * r_k (PURE's softmin; sum_k r*_k -> min_k r_k as T -> 0)."""
    if not step_rewards:
        return []
    if temperature <= 0:
        raise ValueError(f"softmin_weighted: temperature must be > 0, got {temperature}")
    logits = [-r / temperature for r in step_rewards]
    top = max(logits)
    weights = [math.exp(x - top) for x in logits]
    total = sum(weights)
    return [w / total * r for w, r in zip(weights, step_rewards)]


def min_form_returns(step_rewards: list[float]) -> list[float]:
    """G_k = min_{k' >= k} r_k' (PURE's strict min form, over steps only)."""
    out: list[float] = []
    current = math.inf
    for r in reversed(step_rewards):
        current = min(current, r)
        out.append(current)
    return out[::-1]


def sum_form_returns(step_rewards: list[float]) -> list[float]:
    """G_k = sum_{k' >= k} r_k'."""
    out: list[float] = []
    total = 0.0
    for r in reversed(step_rewards):
        total += r
        out.append(total)
    return out[::-1]


def clip_rewards(step_rewards: list[float], eta: float = 0.5) -> list[float]:
    """r'_k = min(r_k - eta, 0): every step reward <= 0."""
    return [min(r - eta, 0.0) for r in step_rewards]


def delta_rewards(step_rewards: list[float]) -> list[float]:
    """r'_k = r_k - r_{k+1} for k < K, r'_K = 0: returns telescope to r_k - r_K."""
    return [r - nxt for r, nxt in zip(step_rewards, step_rewards[1:])] + ([0.0] if step_rewards else [])


def credit_step_rewards(step_rewards: list[float], mode: str = "min_form", *, min_form: str = "softmin",
                        temperature: float = 0.1, eta: float = 0.5) -> list[float]:
    """Per-step rewards after credit assignment ``mode`` (one of ``CREDIT_MODES``; ``min_form``
    is ``softmin`` or ``strict``): the sum of a suffix of the result is the return from that
    step on, so every mode feeds the same return computation."""
    if mode == "sum":
        return list(step_rewards)
    if mode == "min_form":
        if min_form == "softmin":
            return softmin_weighted(step_rewards, temperature)
        if min_form == "strict":  # rewards whose suffix sums are the strict min-form returns
            returns = min_form_returns(step_rewards)
            return [g - nxt for g, nxt in zip(returns, returns[1:] + [0.0])]
        raise ValueError(f"unknown min_form {min_form!r}; choose softmin or strict")
    if mode == "clip":
        return clip_rewards(step_rewards, eta)
    if mode == "delta":
        return delta_rewards(step_rewards)
    if mode == "clip_delta":
        return delta_rewards(clip_rewards(step_rewards, eta))
    raise ValueError(f"unknown credit mode {mode!r}; choose one of {', '.join(CREDIT_MODES)}")
