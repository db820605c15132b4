"""Worked examples of shared/specs/algorithms.md sections 1 and 2, plus invariants."""
from __future__ import annotations

import math

import pytest
import torch

from rlkit.algorithms import (
    ADVANTAGE_ESTIMATORS,
    AGGREGATION_MODES,
    POLICY_LOSSES,
    aggregate,
    aggregate_partial,
    entropy_from_logits,
    gae,
    get_advantage,
    get_loss,
    group_advantages,
    kl,
    ppo_clip,
    whiten,
)

TOL = dict(atol=1e-5, rtol=0)


def _t(values, dtype=torch.float64):
    return torch.tensor(values, dtype=dtype)


def _ppo_one(adv, ratio, **kwargs):
    logp = _t([[math.log(ratio)]])
    return ppo_clip(logp, torch.zeros_like(logp), _t([[adv]]), torch.ones(1, 1, dtype=torch.bool), **kwargs).item()


# --- section 1: PPO clip ---------------------------------------------------------------------

@pytest.mark.parametrize(
    "adv, ratio, kwargs, expected",
    [
        (1.0, 1.5, {}, -1.2),
        (-1.0, 0.5, {}, 0.8),
        (-1.0, 5.0, {"dual_clip": 3.0}, 3.0),
        (-1.0, 5.0, {}, 5.0),
        (1.0, 1.5, {"eps_high": 0.28}, -1.28),
        (1.0, 5.0, {"dual_clip": 3.0}, -1.2),  # dual clip only acts where A < 0
    ],
)
def test_ppo_clip_worked_examples(adv, ratio, kwargs, expected):
    assert _ppo_one(adv, ratio, **kwargs) == pytest.approx(expected, abs=1e-5)


def test_ppo_clip_rejects_bad_dual_clip():
    with pytest.raises(ValueError, match="dual_clip"):
        _ppo_one(-1.0, 2.0, dual_clip=0.5)


def test_ppo_clip_zero_at_masked_positions_even_with_nan_and_inf():
    mask = torch.tensor([[False, True, True, False]])
    logp = torch.tensor([[float("nan"), -0.5, -1.0, float("inf")]], requires_grad=True)
    old = torch.tensor([[float("-inf"), -0.6, -1.0, float("nan")]])
    adv = torch.tensor([[float("nan"), 1.0, -2.0, float("inf")]])
    loss = ppo_clip(logp, old, adv, mask, dual_clip=3.0)
    assert loss[0, 0].item() == 0.0 and loss[0, 3].item() == 0.0
    assert torch.isfinite(loss).all()
    aggregate(loss, mask, "token_mean").backward()
    assert torch.isfinite(logp.grad).all()
    assert logp.grad[0, 0].item() == 0.0 and logp.grad[0, 3].item() == 0.0


def test_ppo_clip_gradient_at_ratio_one_is_minus_a_over_length():
    torch.manual_seed(0)
    mask = torch.tensor([
        [False, True, True, False, False],
        [False, False, True, True, True],
        [False, True, True, True, True],
    ])
    old = torch.randn(3, 5, dtype=torch.float64)
    logp = old.clone().requires_grad_(True)  # ratio exactly 1
    adv = torch.randn(3, 5, dtype=torch.float64)
    aggregate(ppo_clip(logp, old, adv, mask), mask, "seq_mean_token_mean").backward()
    lengths = mask.sum(dim=1, keepdim=True).double()
    expected = torch.where(mask, -adv / (lengths * mask.shape[0]), torch.zeros_like(adv))
    torch.testing.assert_close(logp.grad, expected, **TOL)


# --- section 1: aggregation ------------------------------------------------------------------

def _aggregation_example():
    loss = _t([[1, 1, 0, 0], [2, 2, 2, 2]])
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    return loss, mask


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("seq_mean_token_mean", 1.5),
        ("token_mean", 10 / 6),
        ("seq_mean_token_sum_norm", 1.25),
        ("seq_mean_token_sum", 5.0),
    ],
)
def test_aggregate_worked_example(mode, expected):
    loss, mask = _aggregation_example()
    assert aggregate(loss, mask, mode, max_len=4).item() == pytest.approx(expected, abs=1e-4)
    assert aggregate(loss, mask, mode).item() == pytest.approx(expected, abs=1e-4)  # L_max = T = 4


def test_aggregate_ignores_nan_at_masked_positions_and_unknown_mode():
    loss, mask = _aggregation_example()
    loss[0, 2:] = float("nan")
    assert aggregate(loss, mask, "token_mean").item() == pytest.approx(10 / 6, abs=1e-5)
    with pytest.raises(ValueError, match="token_mean"):
        aggregate(loss, mask, "mean_of_everything")


@pytest.mark.parametrize("mode", AGGREGATION_MODES)
def test_aggregate_partial_sums_to_aggregate(mode):
    torch.manual_seed(1)
    loss = torch.randn(5, 6, dtype=torch.float64)
    mask = torch.tensor([
        [False, True, True, True, False, False],
        [False, False, False, False, False, False],  # no tokens at all
        [False, True, True, True, True, True],
        [False, False, True, False, False, False],
        [False, True, True, False, False, False],
    ])
    whole = aggregate(loss, mask, mode, max_len=6)
    num_seqs, num_tokens = mask.shape[0], int(mask.sum())
    parts = [
        aggregate_partial(loss[rows], mask[rows], mode, num_seqs=num_seqs, num_tokens=num_tokens, max_len=6)
        for rows in (slice(0, 2), slice(2, 5))
    ]
    assert torch.isfinite(whole)
    torch.testing.assert_close(parts[0] + parts[1], whole, **TOL)
    # a micro-batch made only of an empty row contributes exactly 0, not NaN
    empty = aggregate_partial(loss[1:2], mask[1:2], mode, num_seqs=num_seqs, num_tokens=num_tokens, max_len=6)
    assert empty.item() == 0.0


def test_aggregate_all_masked_is_zero_not_nan():
    loss = torch.ones(2, 3)
    mask = torch.zeros(2, 3, dtype=torch.bool)
    for mode in AGGREGATION_MODES:
        assert aggregate(loss, mask, mode).item() == 0.0


# --- section 1: KL and entropy ---------------------------------------------------------------

def test_kl_estimators_on_hand_values():
    logp = _t([0.0, 0.5, -1.0, -2.0])
    ref = _t([0.0, 0.0, 0.0, -2.5])  # d = [0, 0.5, -1, 0.5]
    torch.testing.assert_close(kl(logp, ref, "k1"), _t([0.0, 0.5, -1.0, 0.5]), **TOL)
    torch.testing.assert_close(kl(logp, ref, "k2"), _t([0.0, 0.125, 0.5, 0.125]), **TOL)
    k3 = _t([0.0, math.exp(-0.5) - 0.5, math.e - 2.0, math.exp(-0.5) - 0.5])  # 0.106531, 0.718282
    torch.testing.assert_close(kl(logp, ref, "k3"), k3, **TOL)
    assert (kl(torch.randn(100), torch.randn(100), "k3") >= 0).all()
    with pytest.raises(ValueError, match="k3"):
        kl(logp, ref, "k4")


def test_entropy_from_logits():
    uniform = torch.zeros(2, 3, 8)
    torch.testing.assert_close(entropy_from_logits(uniform), torch.full((2, 3), math.log(8)), **TOL)
    big = torch.tensor([1e4, 1e4, -1e4])  # would overflow a naive softmax-then-log
    assert entropy_from_logits(big).item() == pytest.approx(math.log(2), abs=1e-5)
    masked = torch.tensor([0.0, 0.0, float("-inf")])
    assert entropy_from_logits(masked).item() == pytest.approx(math.log(2), abs=1e-5)
    logits = torch.randn(4, 10, dtype=torch.float64)
    p = torch.softmax(logits, dim=-1)
    torch.testing.assert_close(entropy_from_logits(logits), -(p * p.log()).sum(-1), **TOL)


# --- section 2: group advantages -------------------------------------------------------------

@pytest.mark.parametrize(
    "kind, eps, magnitude",
    [("grpo", 1e-6, 0.866024), ("grpo", 0.0, 0.866025), ("dr_grpo", 1e-6, 0.5), ("rloo", 1e-6, 0.666667)],
)
def test_group_advantages_worked_example(kind, eps, magnitude):
    scores = _t([1.0, 0.0, 0.0, 1.0])
    adv = group_advantages(scores, torch.zeros(4, dtype=torch.long), kind=kind, eps=eps)
    torch.testing.assert_close(adv, magnitude * _t([1.0, -1.0, -1.0, 1.0]), atol=1e-6, rtol=0)


def test_rloo_equals_leave_one_out_mean():
    scores = _t([0.3, 1.0, -0.2, 0.7, 0.1])
    adv = group_advantages(scores, torch.zeros(5, dtype=torch.long), kind="rloo")
    loo = torch.stack([scores[i] - torch.cat([scores[:i], scores[i + 1:]]).mean() for i in range(5)])
    torch.testing.assert_close(adv, loo, **TOL)


@pytest.mark.parametrize("kind", ["grpo", "dr_grpo", "rloo"])
def test_group_advantages_sum_to_zero_per_group_and_singletons_get_zero(kind):
    torch.manual_seed(2)
    group_ids = torch.tensor([7, 7, 7, 7, 3, 3, 3, 42, 3, 100, 100, 5, 5, 5, 5])  # 42: group of one
    perm = torch.randperm(group_ids.numel())
    group_ids = group_ids[perm]
    scores = torch.randn(group_ids.numel(), dtype=torch.float64)
    adv = group_advantages(scores, group_ids, kind=kind)
    for g in group_ids.unique():
        assert adv[group_ids == g].sum().item() == pytest.approx(0.0, abs=1e-9)
    assert adv[group_ids == 42].item() == 0.0
    # each group computed alone gives the same values as the batched call
    for g in group_ids.unique():
        rows = group_ids == g
        alone = group_advantages(scores[rows], group_ids[rows], kind=kind)
        torch.testing.assert_close(adv[rows], alone, **TOL)


def test_group_advantages_equal_scores_and_bad_input():
    adv = group_advantages(_t([1.0, 1.0, 1.0]), torch.zeros(3, dtype=torch.long), kind="grpo", eps=0.0)
    assert torch.equal(adv, torch.zeros(3, dtype=torch.float64))
    assert group_advantages(_t([]), torch.zeros(0, dtype=torch.long)).numel() == 0
    with pytest.raises(ValueError, match="rloo"):
        group_advantages(_t([1.0]), torch.zeros(1, dtype=torch.long), kind="ppo")
    with pytest.raises(ValueError, match="group_ids"):
        group_advantages(_t([1.0, 2.0]), torch.zeros(3, dtype=torch.long))


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo"])
def test_registered_outcome_estimators_broadcast_onto_loss_mask(name):
    scores = _t([1.0, 0.0, 0.0, 1.0])
    group_ids = torch.zeros(4, dtype=torch.long)
    loss_mask = torch.tensor([[False, True, True], [False, True, False], [False, False, True], [False, False, False]])
    out = get_advantage(name)(scores, group_ids, loss_mask)
    per_seq = group_advantages(scores, group_ids, kind=name)
    expected = torch.where(loss_mask, per_seq[:, None], torch.zeros((), dtype=torch.float64))
    assert out.shape == loss_mask.shape
    torch.testing.assert_close(out, expected, **TOL)


# --- section 2: GAE and whitening ------------------------------------------------------------

def test_gae_worked_example():
    rewards, values = _t([[0.0, 0.0, 1.0]]), _t([[0.5, 0.6, 0.7]])
    adv, ret = gae(rewards, values, torch.ones(1, 3, dtype=torch.bool), gamma=1.0, lam=0.95)
    torch.testing.assert_close(adv, _t([[0.46575, 0.385, 0.3]]), **TOL)
    torch.testing.assert_close(ret, _t([[0.96575, 0.985, 1.0]]), **TOL)


def test_gae_skips_masked_positions():
    torch.manual_seed(3)
    mask = torch.tensor([[False, False, True, True, False, False, True, True, False]])
    rewards = torch.randn(1, 9, dtype=torch.float64)
    values = torch.randn(1, 9, dtype=torch.float64)
    rewards[~mask] = float("nan")  # whatever sits on masked positions must not leak
    values[0, 4] = float("inf")
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    idx = mask[0].nonzero().flatten()
    compact = torch.ones(1, idx.numel(), dtype=torch.bool)
    adv_c, ret_c = gae(rewards[:, idx], values[:, idx], compact, gamma=0.9, lam=0.8)
    torch.testing.assert_close(adv[:, idx], adv_c, **TOL)
    torch.testing.assert_close(ret[:, idx], ret_c, **TOL)
    assert (adv[~mask] == 0).all() and (ret[~mask] == 0).all()


def test_gae_rows_are_independent():
    mask = torch.tensor([[True, True, True], [False, True, True]])
    rewards = _t([[0.0, 0.0, 1.0], [9.0, 0.0, 1.0]])
    values = _t([[0.5, 0.6, 0.7], [9.0, 0.6, 0.7]])
    adv, _ = gae(rewards, values, mask, gamma=1.0, lam=0.95)
    torch.testing.assert_close(adv[1], _t([0.0, 0.385, 0.3]), **TOL)


def test_whiten_matches_spec_example():
    # spec section 5's whitened returns (unbiased std, 1e-8 under the root)
    returns = _t([[1.2, 0.95, 0.0], [-1.75, -1.5, -1.35], [0.3, 0.1, 0.0]])
    mask = torch.tensor([[True, True, False], [True, True, True], [True, True, False]])
    expected = _t([[1.220464, 1.01608, 0.0], [-1.191266, -0.986882, -0.864252], [0.484682, 0.321175, 0.0]])
    torch.testing.assert_close(whiten(returns, mask), expected, **TOL)


# --- registries ------------------------------------------------------------------------------

def test_registries_reject_unknown_names_and_accept_callables():
    with pytest.raises(ValueError, match="unknown advantage estimator 'nope'.*grpo"):
        get_advantage("nope")
    with pytest.raises(ValueError, match="unknown policy loss 'nope'.*ppo_clip"):
        get_loss("nope")

    def my_adv(scores, group_ids, loss_mask):
        return torch.zeros(loss_mask.shape)

    def my_loss(logp, old_logp, advantages, mask):
        return torch.zeros_like(logp)

    assert get_advantage(my_adv) is my_adv and get_loss(my_loss) is my_loss
    assert {"grpo", "dr_grpo", "rloo"} <= set(ADVANTAGE_ESTIMATORS)
    assert get_loss("ppo_clip") is ppo_clip and POLICY_LOSSES["ppo_clip"] is ppo_clip
