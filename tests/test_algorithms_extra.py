"""TEMPO, REINFORCE++, GSPO, rollout importance correction, KL in the reward, DAPO overlong
shaping: spec sections 1-3 worked examples and invariants."""
from __future__ import annotations

import math
import random
import sys

import pytest
import torch

from rlkit.algorithms.advantages import (
    get_advantage,
    group_advantages,
    tempo_advantages,
    whiten,
)
from rlkit.algorithms.losses import gspo, importance_correction, ppo_clip

A, B, C, D, E, F, G, H, I = range(9)


def test_tempo_worked_example():
    got = tempo_advantages([[A, B, C], [A, B, D], [A, E, F], [G, H, I]], [1, 0, 1, 0])
    expected = [[1.154699, 0.577349, 1.732048], [-0.577349, -1.154699, -1.732048],
                [1.154699, 1.443373, 0.866024], [-1.732048, -0.866024, -0.866024]]
    for row, want in zip(got, expected):
        assert row == pytest.approx(want, abs=1e-5)


def test_tempo_without_std_drops_the_division():
    got = tempo_advantages([[A, B, C], [A, B, D], [A, E, F], [G, H, I]], [1, 0, 1, 0], norm_by_std=False)
    sigma = math.sqrt(1 / 3) + 1e-6
    assert got[0] == pytest.approx([1.154699 * sigma, 0.577349 * sigma, 1.732048 * sigma], abs=1e-5)


def test_tempo_equals_grpo_after_the_root_when_no_two_completions_share_a_first_token():
    """Without shared prefixes the only branching is at the root: every token after the first
    keeps the GRPO value, and the first carries the root's TD term V(S_1) - V(S_0) = R_i - mu on
    top (the spec example's GHI row: -1.732 then -0.866, -0.866)."""
    rng = random.Random(0)
    scores = [rng.random() for _ in range(6)]
    ids = [[10 * i + 1] + [rng.randrange(5) for _ in range(rng.randrange(1, 7))] for i in range(6)]
    grpo = group_advantages(torch.tensor(scores), torch.zeros(6, dtype=torch.long)).tolist()
    for row, value in zip(tempo_advantages(ids, scores), grpo):
        assert row == pytest.approx([2 * value] + [value] * (len(row) - 1), abs=1e-5)


def test_tempo_td_terms_telescope_to_the_leaf_value():
    """Summed over a completion's tokens, the TD terms add V(leaf) - V(root); a lone branch
    keeps the GRPO value.  Identical completions share every node."""
    ids = [[1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 5], [1, 6, 6, 6, 6]]
    scores = [1.0, 0.0, 1.0, 0.0]
    adv = tempo_advantages(ids, scores, norm_by_std=False)
    mu = sum(scores) / 4
    # same tokens, same sets: only the outcome term differs (by R_0 - R_1 = 1) on every token
    assert [a - b for a, b in zip(adv[0], adv[1])] == pytest.approx([1.0] * 4)
    assert sum(adv[2]) == pytest.approx(3 * (1 - mu) + (1.0 - mu))
    assert adv[3][2:] == pytest.approx([0 - mu] * 3)  # alone after the branch: plain GRPO


def test_tempo_group_of_one_and_mismatched_input():
    assert tempo_advantages([[1, 2]], [1.0]) == [[0.0, 0.0]]
    with pytest.raises(ValueError, match="2 completions but 1 scores"):
        tempo_advantages([[1], [2]], [1.0])


def bytecodes_run(fn, *args) -> int:
    """How many bytecode instructions ``fn(*args)`` executes in Python frames (its own, and
    those of the functions and comprehensions it calls): a deterministic count of the work."""
    count = 0

    def local(frame, event, arg):
        nonlocal count
        if event == "opcode":
            count += 1
        return local

    def on_call(frame, event, arg):
        frame.f_trace_opcodes = True
        return local

    sys.settrace(on_call)
    try:
        fn(*args)
    finally:
        sys.settrace(None)
    return count


def work_growth(fn) -> tuple[float, float]:
    """How ``fn(token_ids, scores)``'s bytecode count grows when the group grows 4x (K 4 -> 16)
    and when the completions grow 4x (L 32 -> 128), on groups that share most of their prefix
    (so that a per-node scan of the group costs K, not 1)."""
    def group(k, length):
        rng = random.Random(k * 1000 + length)
        shared = [rng.randrange(5) for _ in range(length - 2)]
        ids = [shared + [rng.randrange(5) for _ in range(length - len(shared))] for _ in range(k)]
        return ids, [rng.random() for _ in range(k)]

    ops = {size: bytecodes_run(fn, *group(*size)) for size in ((4, 32), (16, 32), (4, 128))}
    return ops[16, 32] / ops[4, 32], ops[4, 128] / ops[4, 32]


def quadratic_tempo(token_ids, scores, norm_by_std=True):
    """TEMPO straight from its definition: S_{t+1} filtered out of S_t for every completion
    and position, O(K^2 L) when the completions share their prefixes."""
    k = len(scores)
    mu = sum(scores) / k
    scale = 1 / ((sum((s - mu) ** 2 for s in scores) / (k - 1)) ** 0.5 + 1e-6) if norm_by_std else 1.0
    out = []
    for ids, score in zip(token_ids, scores):
        members, parent, row = list(range(k)), mu, []
        for t, tok in enumerate(ids):
            members = [j for j in members if len(token_ids[j]) > t and token_ids[j][t] == tok]
            value = sum(scores[j] for j in members) / len(members)
            row.append((score - mu + value - parent) * scale)
            parent = value
        out.append(row)
    return out


def test_tempo_work_grows_linearly_in_group_size_and_length():
    """A guard against O(K^2 L) and O(K L^2), by counting the work instead of timing it: 4x
    the completions or 4x their length costs about 4x the bytecodes, where the definition's
    direct O(K^2 L) reading costs about 16x the first (checked below, so the guard can fail)."""
    by_group, by_length = work_growth(tempo_advantages)
    assert by_group < 6 and by_length < 6, (by_group, by_length)


def test_the_work_count_catches_a_quadratic_tempo():
    rng = random.Random(1)
    ids = [[rng.randrange(3) for _ in range(rng.randrange(1, 9))] for _ in range(6)]
    scores = [rng.random() for _ in range(6)]
    for fast, slow in zip(tempo_advantages(ids, scores), quadratic_tempo(ids, scores)):
        assert fast == pytest.approx(slow, abs=1e-9)  # the same advantages ...
    by_group, by_length = work_growth(quadratic_tempo)
    assert by_group > 10 and by_length < 5, (by_group, by_length)  # ... at O(K^2 L) cost


def test_tempo_batch_estimator_reads_completion_tokens_per_group():
    estimator = get_advantage("tempo")
    assert estimator.inputs == ("input_ids",)
    # two groups; row layout: prompt token, completion tokens, padding
    input_ids = torch.tensor([[9, A, B, C, 0], [9, A, B, D, 0], [9, A, E, F, 0], [9, G, H, I, 0],
                              [8, 1, 0, 0, 0], [8, 2, 0, 0, 0]])
    mask = torch.zeros(6, 5, dtype=torch.bool)
    mask[:4, 1:4] = True
    mask[4:, 1] = True
    out = estimator(torch.tensor([1.0, 0, 1, 0, 1, 0]), torch.tensor([0, 0, 0, 0, 1, 1]), mask, input_ids=input_ids)
    assert out[0, 1:4].tolist() == pytest.approx([1.154699, 0.577349, 1.732048], abs=1e-5)
    assert out[3, 1:4].tolist() == pytest.approx([-1.732048, -0.866024, -0.866024], abs=1e-5)
    assert out[4, 1].item() == pytest.approx(2 * 0.707106, abs=1e-5)  # GRPO of [1, 0] plus the root term
    assert (out[~mask] == 0).all()


def test_reinforce_pp_centers_per_group_then_whitens_over_the_batch():
    scores = torch.tensor([1.0, 0.0, 0.0, 1.0, 3.0, 1.0])
    groups = torch.tensor([0, 0, 0, 0, 1, 1])
    mask = torch.tensor([[True, True, False]] * 3 + [[True, False, False]] * 3)
    out = get_advantage("reinforce_pp")(scores, groups, mask)
    centered = torch.tensor([0.5, -0.5, -0.5, 0.5, 1.0, -1.0])[:, None].expand(6, 3) * mask
    assert torch.allclose(out, whiten(centered, mask))
    assert out[mask].mean().abs() < 1e-6 and out[mask].std() == pytest.approx(1.0, abs=1e-4)


def test_whiten_with_all_reduce_matches_whitening_everything_at_once():
    """Two "ranks" holding halves of a batch, summing their statistics, whiten as one."""
    torch.manual_seed(0)
    x = torch.randn(6, 4)
    mask = torch.rand(6, 4) > 0.3
    whole = whiten(x, mask)
    halves = [(x[:3], mask[:3]), (x[3:], mask[3:])]

    def fake_all_reduce_for(rank):
        def all_reduce(values, op="sum"):
            # the other rank contributes the same statistic of its half
            other_x, other_m = halves[1 - rank]
            if len(values) == 2:
                n, s = float(other_m.sum()), float(other_x[other_m].sum())
                return [values[0] + n, values[1] + s]
            total_n = float(mask.sum())
            mean = float(x[mask].sum()) / total_n
            return [values[0] + float(((other_x - mean)[other_m] ** 2).sum())]
        return all_reduce

    parts = [whiten(hx, hm, all_reduce=fake_all_reduce_for(r)) for r, (hx, hm) in enumerate(halves)]
    assert torch.allclose(torch.cat(parts), whole, atol=1e-6)


def test_gspo_uses_one_clipped_ratio_per_sequence():
    logp = torch.tensor([[0.0, -1.0, -2.0], [0.0, -1.0, 0.0]])
    old = torch.tensor([[0.0, -1.2, -1.8], [0.0, -1.0, 0.0]])
    mask = torch.tensor([[False, True, True], [False, True, False]])
    adv = torch.tensor([[0.0, 1.0, 1.0], [0.0, -1.0, 0.0]])
    out = gspo(logp, old, adv, mask, eps_low=0.2, eps_high=0.2)
    # row 0: mean log ratio (0.2 - 0.2)/2 = 0 -> s = 1 -> loss -1 on both tokens; row 1: s = 1 -> +1
    assert out.flatten().tolist() == pytest.approx([0.0, -1.0, -1.0, 0.0, 1.0, 0.0])
    shifted = gspo(logp + 0.5, old, adv, mask, eps_low=0.2, eps_high=0.2)
    assert shifted[0, 1].item() == pytest.approx(-1.2)  # s = e^0.5 clipped at 1.2 for A > 0
    assert shifted[1, 1].item() == pytest.approx(math.exp(0.5))  # A < 0: unclipped max


def test_gspo_gradient_on_policy_equals_sequence_mean_of_token_gradients():
    logp = torch.tensor([[0.0, -1.0, -2.0, -0.5]], requires_grad=True)
    mask = torch.tensor([[False, True, True, True]])
    adv = torch.tensor([[0.0, 2.0, 2.0, 2.0]])
    gspo(logp, logp.detach(), adv, mask)[0, 1].backward()
    assert logp.grad.flatten().tolist() == pytest.approx([0.0, -2 / 3, -2 / 3, -2 / 3])


def test_ppo_ratio_is_one_on_the_first_on_policy_micro_batch():
    logp = torch.randn(2, 5)
    mask = torch.ones(2, 5, dtype=torch.bool)
    adv = torch.randn(2, 5)
    assert torch.allclose(ppo_clip(logp, logp, adv, mask), -adv)


def test_importance_correction_modes():
    old = torch.tensor([[0.0, -1.0, -1.0], [0.0, -1.0, -3.0]])
    rollout = torch.tensor([[0.0, -1.5, -0.9], [0.0, -1.0, -1.0]])
    mask = torch.tensor([[False, True, True], [False, True, True]])
    token = importance_correction(old, rollout, mask, "token_tis", cap=1.5)
    assert token.flatten().tolist() == pytest.approx([0, 1.5, math.exp(-0.1), 0, 1.0, math.exp(-2)])
    seq = importance_correction(old, rollout, mask, "seq_tis", cap=2.0)
    assert seq[0, 1:].tolist() == pytest.approx([math.exp(0.4)] * 2)
    assert seq[1, 1:].tolist() == pytest.approx([math.exp(-2)] * 2)
    masked = importance_correction(old, rollout, mask, "seq_mask", band=(0.5, 2.0))
    assert masked.tolist() == [[0, 1, 1], [0, 0, 0]]  # row 1: exp(-1) < 0.5
    assert importance_correction(old, rollout, mask, "none").tolist() == [[0, 1, 1], [0, 1, 1]]
    with pytest.raises(ValueError, match="unknown mode"):
        importance_correction(old, rollout, mask, "tis")


# ---------------------------------------------------------------- DAPO pieces, KL in the reward

def test_overlong_shaping_worked_example_and_reward_function():
    from rewards.shaping import overlong_penalty, overlong_shaping

    assert [overlong_shaping(n, 20480, 4096) for n in (16000, 18432, 20480)] == pytest.approx([0, -0.5, -1.0])
    assert overlong_penalty(["a", "b"], [[1] * 10, [1] * 60], max_len=48, cache_len=8, factor=0.5) == [0.0, -0.5]
    with pytest.raises(ValueError, match="cache_len"):
        overlong_shaping(10, 48, 0)


def _tiny_batch(scores, groups, lengths):
    from rlkit.batch import build_batch

    batch = build_batch(prompt_ids=[[5, 6]] * len(scores), completion_ids=[[7] * n for n in lengths],
                        group_ids=groups, finished=[True] * len(scores), pad_token_id=0,
                        rows=[{"i": i} for i in range(len(scores))])
    batch.scores = torch.tensor(scores, dtype=torch.float32)
    batch.reward_components = {"correctness": batch.scores.clone()}
    batch.add_token_term("outcome", batch.outcome_token_rewards(batch.scores))
    return batch


def test_dynamic_sampling_keeps_varied_groups_and_the_earliest_ones():
    from rlkit.backends.collectives import LocalCollectives
    from rlkit.sampling import first_groups, varied_group_rows

    batch = _tiny_batch([1, 1, 0, 1, 0, 0, 1, 0, 5], [0, 0, 1, 1, 2, 2, 3, 3, 4], [1] * 9)
    assert varied_group_rows(batch).tolist() == [False, False, True, True, False, False, True, True, False]
    kept = first_groups(batch.select(torch.nonzero(varied_group_rows(batch)).flatten()), 1, LocalCollectives())
    assert kept.group_ids.tolist() == [1, 1] and [r["i"] for r in kept.rows] == [2, 3]


def test_concat_batches_pads_to_the_widest_and_fills_missing_components():
    from rlkit.batch import concat_batches

    a = _tiny_batch([1.0], [0], [1])
    b = _tiny_batch([0.0, 1.0], [1, 1], [3, 2])
    b.reward_components["format"] = torch.tensor([1.0, 1.0])
    merged = concat_batches([a, b], pad_token_id=0)
    merged.validate()
    assert merged.input_ids.shape == (3, 5) and merged.input_ids[0].tolist() == [5, 6, 7, 0, 0]
    assert merged.loss_mask.sum(dim=1).tolist() == [1, 3, 2]
    assert merged.group_ids.tolist() == [0, 1, 1] and len(merged.rows) == 3
    assert math.isnan(merged.reward_components["format"][0]) and merged.reward_components["format"][1] == 1


def test_length_penalty_reaches_scores_components_and_token_rewards():
    from rlkit.scoring import add_length_penalty

    batch = _tiny_batch([1.0, 0.0], [0, 0], [2, 3])
    add_length_penalty(batch, torch.tensor([0.0, -0.5]))
    assert batch.scores.tolist() == [1.0, -0.5] and batch.reward_components["overlong"].tolist() == [0.0, -0.5]
    assert batch.token_rewards.sum(dim=1).tolist() == [1.0, -0.5] and batch.token_rewards[1, 4] == -0.5


def test_kl_in_the_reward_subtracts_the_summed_token_penalty():
    from rlkit.config import AlgoConfig
    from rlkit.objective import kl_shaped_scores

    batch = _tiny_batch([1.0, 0.0], [0, 0], [2, 1])
    batch.old_logprobs = torch.zeros(2, 4)
    batch.ref_logprobs = torch.zeros(2, 4)
    batch.ref_logprobs[0, 2:4] = -1.0  # d = 1 on both tokens of row 0: k1 = 1 each
    shaped = kl_shaped_scores(batch, AlgoConfig(kl_coef=0.1, kl_estimator="k1", kl_mode="reward"))
    assert shaped.tolist() == pytest.approx([1.0 - 0.2, 0.0])


def test_first_groups_agree_across_ranks():
    """Two ranks with different varied groups keep the globally earliest ones between them."""
    from types import SimpleNamespace

    from rlkit.sampling import first_groups

    rank0 = _tiny_batch([1, 0, 1, 0], [0, 0, 6, 6], [1] * 4)
    rank1 = _tiny_batch([1, 0, 1, 0], [3, 3, 9, 9], [1] * 4)
    both = SimpleNamespace(all_gather_object=lambda mine: [sorted(set(rank0.group_ids.tolist())),
                                                          sorted(set(rank1.group_ids.tolist()))])
    assert first_groups(rank0, 2, both).group_ids.tolist() == [0, 0]
    assert first_groups(rank1, 2, both).group_ids.tolist() == [3, 3]
    assert first_groups(rank1, 1, both).size == 0  # this rank keeps nothing: the backend's filler row steps in


def test_filler_row_runs_every_loss_with_zero_weight():
    """The DeepSpeed backend's filler (a rank without rows joins ZeRO-3's passes with it) carries
    every per-token field a loss reads, so the policy, KL and value losses run on it."""
    from rlkit.backends.deepspeed import filler_row
    from rlkit.config import AlgoConfig
    from rlkit.critic import make_value_loss_fn
    from rlkit.objective import make_loss_fn

    row = filler_row()
    row.validate()
    logp = torch.tensor([[0.0, -1.0]], requires_grad=True)
    loss, _ = make_loss_fn(AlgoConfig(kl_coef=0.1), 1, 1, 2, metric_tokens=1)(logp, None, row)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logp.grad).all()
    value_loss, _ = make_value_loss_fn(AlgoConfig(), 1, 1, 2, metric_tokens=1, clip=0.5)(
        torch.tensor([[0.0, 0.3]], requires_grad=True), None, row)
    assert torch.isfinite(value_loss)
