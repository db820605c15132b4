"""Advantage estimators: group baselines on outcome scores, GAE with a critic, whitening.

All functions are pure tensor maths (no config objects, no module state besides the
registry).  Shapes: ``B`` sequences, ``T`` token positions; masks are ``True`` = include
and line up with ``RolloutBatch.loss_mask`` (see ``rlkit/batch.py``).

Estimators in ``ADVANTAGE_ESTIMATORS`` share one signature::

    fn(scores: Tensor[B], group_ids: Tensor[B], loss_mask: Tensor[B, T], **hparams) -> Tensor[B, T]

returning the advantage of every ``loss_mask`` token and 0 elsewhere.  An estimator that needs
more of the batch names it in an ``inputs`` attribute (``input_ids``, ``all_reduce``; see
``estimator_inputs``) and receives it as a keyword.  A user may pass their own callable with
that signature wherever a registered name is accepted.
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


def whiten(x: Tensor, mask: Tensor, eps: float = 1e-8, all_reduce=None) -> Tensor:
    """Masked whitening: (x - mean) / sqrt(var + eps) over the ``mask`` entries of ``x``.

    ``var`` is unbiased (Bessel-corrected); ``eps`` sits under the root.  The mean is not
    added back.  Masked-out entries become 0; with fewer than two entries the result is 0.
    ``all_reduce`` (a backend's ``all_reduce(list) -> list`` sum) makes the statistics those
    of all ranks' entries, so data-parallel ranks whiten as one process would.
    """
    if x.shape != mask.shape:
        raise ValueError(f"whiten: x {tuple(x.shape)} and mask {tuple(mask.shape)} differ in shape")
    mask = mask.bool()
    x = _float(x)
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    n = mask.sum().to(x.dtype)
    total = torch.where(mask, x, zero).sum()
    if all_reduce is not None:
        n, total = (torch.tensor(v, dtype=x.dtype) for v in all_reduce([float(n), float(total)]))
    mean = total / n.clamp(min=1)
    centered = torch.where(mask, x - mean, zero)
    square = (centered * centered).sum()
    if all_reduce is not None:
        square = torch.tensor(all_reduce([float(square)])[0], dtype=x.dtype)
    var = square / (n - 1).clamp(min=1)
    return centered * torch.rsqrt(var + eps)


@register_advantage("reinforce_pp")
def reinforce_pp_advantages(scores: Tensor, group_ids: Tensor, loss_mask: Tensor, *, all_reduce=None,
                            eps: float = 1e-8) -> Tensor:
    """REINFORCE++ with a group baseline (Hu et al. 2025, arXiv 2501.03262, Sec. 3, the
    "baseline" variant): A_i = R_i - mean_G R on every token, then whitened over the tokens of
    the whole batch (all ranks): ``[B, T]``."""
    centered = broadcast_to_tokens(group_advantages(scores, group_ids, "dr_grpo"), loss_mask)
    return whiten(centered, loss_mask, eps, all_reduce=all_reduce)


reinforce_pp_advantages.inputs = ("all_reduce",)


@register_advantage("gae")
def gae_advantages(scores: Tensor, group_ids: Tensor, loss_mask: Tensor, *, values: Tensor, token_rewards: Tensor,
                   all_reduce=None, gamma: float = 1.0, lam: float = 0.95) -> tuple[Tensor, Tensor]:
    """PPO with a critic: ``gae`` on the token rewards (outcome score on the last token, dense
    rewards where a reward module gives them) and the critic's values, advantages whitened over
    the whole batch (all ranks).  Returns ``(advantages, returns)``, both ``[B, T]``; the
    returns are the critic's regression targets."""
    advantages, returns = gae(token_rewards, values, loss_mask, gamma, lam)
    return whiten(advantages, loss_mask, all_reduce=all_reduce), returns


gae_advantages.inputs = ("values", "token_rewards", "all_reduce")


@register_advantage("process_rloo")
def process_rloo_advantages(scores: Tensor, group_ids: Tensor, loss_mask: Tensor, *, token_rewards: Tensor,
                            all_reduce=None) -> Tensor:
    """Token-level RLOO on dense rewards (spec section 4; PURE, arXiv 2504.15275, Sec. 3.3):
    G_{i,t} = sum_{t' >= t} r_{i,t'}; baseline b_i = mean_{j != i} G_{j,0} over the other
    completions of the prompt (0 for a group of one); A_{i,t} = G_{i,t} - b_i, whitened over
    every valid token of the batch (all ranks).  ``token_rewards`` carry the outcome score on
    the last token plus the credited step rewards: ``[B, T]``."""
    mask = loss_mask.bool()
    rewards = torch.where(mask, _float(token_rewards), torch.zeros((), dtype=torch.float32))
    returns = rewards.flip(1).cumsum(1).flip(1)  # [B, T] G_{i,t}
    totals = rewards.sum(dim=1)  # [B] G_{i,0}
    baseline = _loo_baseline(totals, group_ids)
    advantages = torch.where(mask, returns - baseline[:, None], torch.zeros_like(returns))
    return whiten(advantages, mask, all_reduce=all_reduce)


process_rloo_advantages.inputs = ("token_rewards", "all_reduce")


def estimator_inputs(estimator: AdvantageFn, available: dict) -> dict:
    """The extra keyword inputs an estimator declares in its ``inputs`` attribute (for example
    ``("input_ids",)`` for TEMPO, ``("all_reduce",)`` for batch whitening, ``("values", ...)``
    for a critic), from ``available``.  An estimator that reads ``values`` makes the trainer
    build and train a critic (rlkit/critic.py) and may return ``(advantages, returns)``."""
    wanted = getattr(estimator, "inputs", ())
    missing = [name for name in wanted if name not in available]
    if missing:
        raise ValueError(f"advantage estimator needs {missing}, which this loop does not provide")
    return {name: available[name] for name in wanted}


def estimate(estimator: AdvantageFn, scores: Tensor, group_ids: Tensor, loss_mask: Tensor, available: dict,
             hparams: dict) -> tuple[Tensor, Tensor | None]:
    """``(advantages, returns or None)`` from any estimator: the one call shape of the registry
    (``fn(scores, group_ids, loss_mask, **declared inputs, **hparams)``), whether it returns the
    advantages alone or with returns (GAE's, for the critic)."""
    out = estimator(scores, group_ids, loss_mask, **estimator_inputs(estimator, available), **hparams)
    return out if isinstance(out, tuple) else (out, None)


def tempo_advantages(token_ids: list[list[int]], scores: list[float], norm_by_std: bool = True) -> list[list[float]]:
    """TEMPO prefix-tree advantages for one group (arXiv 2509.18314, Sec. 3; spec section 3).

    S_0 is the whole group and S_{t+1} the members of S_t whose token at position t equals
    completion i's; V(S) is the mean raw score of S.  Then
    A_{i,t} = [(R_i - mu) + (V(S_{t+1}) - V(S_t))] / (sigma + 1e-6), with mu and sigma the
    group mean and unbiased std (no division with ``norm_by_std=False``).  The TD term is
    non-zero only where the tree branches; once a completion is alone its remaining tokens keep
    the plain GRPO value.  The sets are the nodes of a prefix trie built once (a dict per
    depth keyed by (parent node, token)), so the cost is O(K L), not O(K^2 L).  A group of
    one gets zeros, as in GRPO.
    """
    if len(token_ids) != len(scores):
        raise ValueError(f"tempo_advantages: {len(token_ids)} completions but {len(scores)} scores")
    k = len(scores)
    if k < 2:
        return [[0.0] * len(ids) for ids in token_ids]
    mu = sum(scores) / k
    sigma = (sum((s - mu) ** 2 for s in scores) / (k - 1)) ** 0.5
    scale = 1.0 / (sigma + 1e-6) if norm_by_std else 1.0
    # paths[i][t] = the trie node of completion i's first t+1 tokens; node 0 is the root (S_0).
    node_sum, node_count = [float(sum(scores))], [k]
    children: dict[tuple[int, int], int] = {}
    paths: list[list[int]] = []
    for ids, score in zip(token_ids, scores):
        node, path = 0, []
        for tok in ids:
            key = (node, int(tok))
            child = children.get(key)
            if child is None:
                child = children[key] = len(node_sum)
                node_sum.append(0.0)
                node_count.append(0)
            node_sum[child] += score
            node_count[child] += 1
            path.append(child)
            node = child
        paths.append(path)
    value = [s / c for s, c in zip(node_sum, node_count)]
    out = []
    for path, score in zip(paths, scores):
        base = score - mu
        parent = value[0]
        row = []
        for node in path:
            row.append((base + value[node] - parent) * scale)
            parent = value[node]
        out.append(row)
    return out


@register_advantage("tempo")
def tempo_batch_advantages(scores: Tensor, group_ids: Tensor, loss_mask: Tensor, *, input_ids: Tensor,
                           norm_by_std: bool = True) -> Tensor:
    """TEMPO over a batch: ``tempo_advantages`` per group on the completion tokens (the
    ``loss_mask`` positions of ``input_ids``), written back onto those positions: ``[B, T]``."""
    mask = loss_mask.bool()
    out = torch.zeros(mask.shape, dtype=torch.float32, device=loss_mask.device)
    values = _float(scores).tolist()
    completions = [row[m].tolist() for row, m in zip(input_ids, mask)]
    members: dict[int, list[int]] = {}
    for i, g in enumerate(group_ids.tolist()):
        members.setdefault(g, []).append(i)
    for rows in members.values():
        advs = tempo_advantages([completions[i] for i in rows], [values[i] for i in rows], norm_by_std)
        for i, adv in zip(rows, advs):
            out[i, mask[i]] = torch.tensor(adv, dtype=out.dtype, device=out.device)
    return out


tempo_batch_advantages.inputs = ("input_ids",)  # what the trainer passes besides the usual three


def _loo_baseline(values: Tensor, group_ids: Tensor, include_self: bool = False) -> Tensor:
    """[B] mean of ``values`` over the other members of each row's group (over all members with
    ``include_self``); 0 for a group of one."""
    _, inverse = torch.unique(group_ids, return_inverse=True)
    num_groups = int(inverse.max().item()) + 1 if inverse.numel() else 0
    sums = values.new_zeros(num_groups).index_add(0, inverse, values)[inverse]
    counts = values.new_zeros(num_groups).index_add(0, inverse, torch.ones_like(values))[inverse]
    if include_self:
        return sums / counts
    return torch.where(counts > 1, (sums - values) / (counts - 1).clamp(min=1), torch.zeros_like(values))


@register_advantage("prime")
def prime_batch_advantages(scores: Tensor, group_ids: Tensor, loss_mask: Tensor, *, token_terms: dict[str, Tensor],
                           all_reduce=None, normalize: str = "none", whiten_returns: bool = True,
                           implicit_term: str = "prime") -> Tensor:
    """PRIME advantages (arXiv 2502.01456, Sec. 3.3, Eq. 5; spec section 5): leave-one-out per
    reward source, summed, as returns (gamma = 1), whitened over the batch (all ranks).

    The outcome o_i is ``scores``; the implicit process rewards q are the batch's token term
    ``implicit_term`` (``rewards.prime.ImplicitPRM`` writes it; zeros where there is none).
    Process: q'_{i,t} = q_{i,t} - mean_{j != i} mean_t q_j; outcome: o'_i = o_i - mean_{j != i} o_j
    on the last token.  ``normalize="batch_max"`` follows the released code instead: q is first
    divided by the batch's largest |reverse cumulative sum of q| and the process baseline
    includes the row's own mean.  A group of one gets zeros."""
    if normalize not in ("none", "batch_max"):
        raise ValueError(f"prime: normalize must be 'none' or 'batch_max', not {normalize!r}")
    mask = loss_mask.bool()
    zero = torch.zeros((), dtype=torch.float32, device=mask.device)
    outcome = _float(scores).to(mask.device)
    last = torch.where(mask.any(dim=1), mask.shape[1] - 1 - mask.flip(1).float().argmax(dim=1),
                       torch.full_like(outcome, -1, dtype=torch.long))
    at_last = torch.zeros(mask.shape, dtype=torch.bool, device=mask.device)
    rows = torch.nonzero(last >= 0).flatten()
    at_last[rows, last[rows]] = True
    implicit = token_terms.get(implicit_term)
    q = torch.where(mask, _float(implicit).to(mask.device), zero) if implicit is not None else torch.zeros(
        mask.shape, dtype=torch.float32, device=mask.device)
    if normalize == "batch_max":
        largest = q.flip(1).cumsum(1).flip(1).abs().max() if q.numel() else zero
        if all_reduce is not None:
            largest = torch.tensor(all_reduce([float(largest)], "max")[0], dtype=torch.float32)
        q = q / (largest + 1e-6)
    lengths = mask.sum(dim=1).clamp(min=1).float()
    mean_q = q.sum(dim=1) / lengths  # [B]
    process = torch.where(mask, q - _loo_baseline(mean_q, group_ids, normalize == "batch_max")[:, None], zero)
    outcome_adv = outcome - _loo_baseline(outcome, group_ids)
    rewards = process + torch.where(at_last, outcome_adv[:, None], zero)
    _, inverse = torch.unique(group_ids, return_inverse=True)
    sizes = torch.bincount(inverse)[inverse] if inverse.numel() else inverse
    rewards = torch.where((sizes > 1)[:, None] & mask, rewards, zero)
    returns = torch.where(mask, rewards.flip(1).cumsum(1).flip(1), zero)
    return whiten(returns, mask, all_reduce=all_reduce) if whiten_returns else returns


prime_batch_advantages.inputs = ("token_terms", "all_reduce")


def prime_advantages(token_rewards: list[list[float]], outcomes: list[float], group_ids: list[int],
                     whiten=True) -> list[list[float]]:
    """**Contract** (spec section 5): PRIME advantages of ragged rows, ``normalize="none"``.
    ``token_rewards`` are the implicit process rewards q alone (the outcomes are separate);
    ``prime_batch_advantages`` does the work on padded tensors."""
    if not (len(token_rewards) == len(outcomes) == len(group_ids)):
        raise ValueError(f"prime_advantages: {len(token_rewards)} rows of token rewards, {len(outcomes)} "
                         f"outcomes and {len(group_ids)} group ids")
    width = max((len(r) for r in token_rewards), default=0)
    mask = torch.zeros((len(token_rewards), width), dtype=torch.bool)
    dense = torch.zeros((len(token_rewards), width), dtype=torch.float64)
    for i, row in enumerate(token_rewards):
        mask[i, :len(row)] = True
        dense[i, :len(row)] = torch.tensor(row, dtype=torch.float64)
    out = prime_batch_advantages(torch.tensor(outcomes, dtype=torch.float64), torch.tensor(group_ids), mask,
                                 token_terms={"prime": dense}, whiten_returns=whiten)
    return [out[i, :len(row)].tolist() for i, row in enumerate(token_rewards)]
