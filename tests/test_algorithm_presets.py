"""Every preset in configs/algo/ runs end to end on the tiny model (child processes) and its
metrics show its defining mechanism; each preset's advantages on a hand-computed group; rollout
correction and KL-in-reward with vLLM log-probs; dynamic sampling on 2 ranks."""
from __future__ import annotations

import json
import math
import string
from pathlib import Path

import pytest
import torch

from conftest import REPO_ROOT, run_deepspeed_cli, tiny_overrides

COUNTING = "rewards.functions=[{fn: 'rlkit.testing_rewards:CountingReward', name: digits}]"
PRESETS = sorted(p.stem for p in (REPO_ROOT / "configs" / "algo").glob("*.yaml"))


def train_lines(run_dir: Path) -> list[dict]:
    lines = [json.loads(s) for s in (run_dir / "metrics.jsonl").read_text().splitlines() if s.strip()]
    return [m for m in lines if m["kind"] == "train"]


def test_the_documented_presets_exist():
    assert {"grpo", "dr_grpo", "dapo", "rloo", "reinforce_pp", "gspo", "tempo"} <= set(PRESETS)


def contains(name: str, chars: str) -> str:
    """A 0/1 reward component: 1 where the completion holds any of ``chars``."""
    return f"{{fn: 'rlkit.testing_rewards:contains_char', name: {name}, kwargs: {{chars: '{chars}'}}}}"


def reward_entry(name: str, chars: str) -> str:
    return f"rewards.functions=[{contains(name, chars)}]"


# Presets whose advantages vary along a completion (token-level credit); the others give one
# advantage per completion.  GSPO alone writes one loss value per sequence (sequence ratio).
TOKEN_ADVANTAGES = {"tempo", "ppo", "prime"}
SEQUENCE_LOSS = {"gspo"}
# Runs that need another reward or length to show their mechanism: DAPO groups whose scores
# are all equal (a '7' is rare: most groups score 0 and are dropped), PPO a return its critic
# can learn in three steps (nearly every completion holds a letter or digit: scores ~1).
SPECIAL_RUNS = {
    "dapo": ([reward_entry("hit", "7"), "rewards.accuracy_component=hit"], 2),
    "ppo": ([reward_entry("alnum", string.ascii_letters + string.digits), "rewards.accuracy_component=alnum",
             "critic.lr=3e-3"], 3),
    "prime": ([f"rewards.functions=[{contains('digit', string.digits)}, {{fn: 'rewards.prime:ImplicitPRM', "
               "name: prime, kwargs: {label_component: digit, lr: 1.0e-3}}]", "rewards.accuracy_component=digit"], 2),
}
CHECKED = {"grpo", "dr_grpo", "dapo", "rloo", "reinforce_pp", "gspo", "tempo", "ppo", "prime"}


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_trains_and_shows_its_mechanism(cli, tiny_model, tmp_path, preset):
    """Each preset trains two or three steps on the tiny model, and its metrics show what makes
    it that preset (its advantages are checked by hand in test_preset_advantages_by_hand)."""
    assert preset in CHECKED, f"configs/algo/{preset}.yaml: add the check of its mechanism here"
    config = tmp_path / "run.yaml"
    config.write_text(f"include:\n  - {REPO_ROOT / 'configs' / 'algo' / preset}.yaml\n")
    reward, steps = SPECIAL_RUNS.get(preset, ([COUNTING, "rewards.accuracy_component=digits"], 2))
    overrides = tiny_overrides(tiny_model, "hf", train__steps=steps, train__lr="3e-3", eval__before="false",
                               eval__after="false", train__save_final="false") + reward + ["algo.mini_batches=2"]
    res = cli(overrides, config=config, timeout=300)
    assert res.returncode == 0, res.describe()
    lines = train_lines(res.run_dir)
    assert [m["step"] for m in lines] == list(range(1, steps + 1))
    assert any(m.get("trained_rows", 0) > 0 and m["grad_norm"] > 0 for m in lines)
    spread = [m["advantage/seq_spread_max"] for m in lines if "advantage/seq_spread_max" in m]
    if preset in TOKEN_ADVANTAGES:  # TEMPO's branch points, GAE, PRIME's returns
        assert max(spread) > 1e-3, lines
    else:
        assert spread and max(spread) == 0.0, lines
    loss_spread = [m["loss/seq_spread_max"] for m in lines if "loss/seq_spread_max" in m]
    if preset in SEQUENCE_LOSS:  # one length-normalised ratio per sequence, even off-policy
        assert loss_spread and max(loss_spread) == 0.0, lines
    else:  # token ratios differ along a sequence once the first mini-batch moved the policy
        assert max(loss_spread) > 1e-4, lines
    if preset == "dapo":  # groups with equal scores dropped and more prompts drawn; overlong shaping
        assert all(1 <= m["sampling/rounds"] <= 3 for m in lines)
        assert any(m["sampling/rounds"] > 1 and m["sampling/prompts_drawn"] > m["sampling/kept_groups"]
                   for m in lines), lines
        assert all(-1.0 <= m["reward/overlong"] <= 0.0 for m in lines) and min(m["reward/overlong"] for m in lines) < 0
    if preset == "prime":  # the implicit PRM learns from the labels; groups outside the accuracy band
        assert all(m["prime/labelled_rows"] > 0 for m in lines)  # are dropped and more prompts drawn
        assert any(m["sampling/rounds"] > 1 and m["sampling/prompts_drawn"] > m["sampling/kept_groups"]
                   for m in lines), lines
    if preset == "ppo":  # the critic learns the (nearly constant) returns: its loss falls every step
        losses = [m["critic/loss"] for m in lines]
        assert all(b < a for a, b in zip(losses, losses[1:])) and losses[-1] < 0.8 * losses[0], losses


def _whitened(rows: list[list[float]]) -> list[list[float]]:
    flat = [v for row in rows for v in row]
    mean = sum(flat) / len(flat)
    std = math.sqrt(sum((v - mean) ** 2 for v in flat) / (len(flat) - 1))
    return [[(v - mean) / std for v in row] for row in rows]


# One group of four completions of three tokens (the TEMPO worked example of spec section 3:
# A B C / A B D / A E F / G H I) scored 1, 0, 1, 0; mean 0.5, unbiased std sqrt(1/3).
GRPO_ROWS = [[0.866024] * 3, [-0.866024] * 3] * 2  # (R - 0.5) / (0.57735 + 1e-6)
HAND_ADVANTAGES = {
    "grpo": GRPO_ROWS, "dapo": GRPO_ROWS, "gspo": GRPO_ROWS,
    "dr_grpo": [[0.5] * 3, [-0.5] * 3] * 2,                       # R - mean, no std division
    "rloo": [[2 / 3] * 3, [-2 / 3] * 3] * 2,                      # R - mean of the other three
    "reinforce_pp": [[0.957427] * 3, [-0.957427] * 3] * 2,        # +-0.5 / sqrt(12 * 0.25 / 11)
    "tempo": [[1.154699, 0.577349, 1.732048], [-0.577349, -1.154699, -1.732048],
              [1.154699, 1.443373, 0.866024], [-1.732048, -0.866024, -0.866024]],
    # V = 0, reward on the last token: GAE(gamma 1, lambda 0.95) = 0.95^(2 - t) R, whitened
    "ppo": _whitened([[0.9025, 0.95, 1.0], [0.0] * 3] * 2),
}


@pytest.mark.parametrize("preset", sorted(HAND_ADVANTAGES))
def test_preset_advantages_by_hand(preset):
    """The estimator and keyword arguments a preset names give the hand-computed advantages
    (PRIME's need its PRM's token rewards: tests/test_prime.py)."""
    from rlkit.algorithms.advantages import estimator_inputs, get_advantage
    from rlkit.config import load_config

    algo = load_config(REPO_ROOT / "configs" / "algo" / f"{preset}.yaml").algo
    A, B, C, D, E, F, G, H, I = range(10, 19)
    input_ids = torch.tensor([[A, B, C], [A, B, D], [A, E, F], [G, H, I]])
    scores = torch.tensor([1.0, 0.0, 1.0, 0.0])
    mask = torch.ones(4, 3, dtype=torch.bool)
    token_rewards = torch.zeros(4, 3)
    token_rewards[:, -1] = scores
    estimator = get_advantage(algo.advantage)
    inputs = estimator_inputs(estimator, {"input_ids": input_ids, "all_reduce": None, "values": torch.zeros(4, 3),
                                          "token_rewards": token_rewards})
    out = estimator(scores, torch.zeros(4, dtype=torch.long), mask, **inputs, **algo.advantage_kwargs)
    advantages = out[0] if isinstance(out, tuple) else out
    for got, want in zip(advantages.tolist(), HAND_ADVANTAGES[preset]):
        assert got == pytest.approx(want, abs=1e-5), preset


@pytest.mark.parametrize("top_p", [pytest.param(1.0, marks=pytest.mark.slow), 0.8])
def test_rollout_correction_and_kl_in_reward_with_vllm_logprobs(cli, tiny_model, top_p):
    """vLLM's log-probs of the sampled tokens against the trainer's at temperature 0.7, logged
    every step.  top_p 1: both score softmax(logits / 0.7) (float32 on both sides: the gap is
    tiny, weights stay near 1).  top_p 0.8: vLLM samples from (and reports) the truncated,
    renormalised distribution while the trainer scores the full one, so every gap g_t =
    rollout - trainer >= 0 and token_tis weights exp(-g_t) < 1.  For g in [0, M] (M the largest
    gap) exp(-g) lies between exp(-mean g) (Jensen) and the chord 1 - g (1 - exp(-M)) / M, which
    bounds the mean weight by the logged gaps; a no-op correction would log 1."""
    overrides = tiny_overrides(tiny_model, "vllm", train__steps=2, train__lr="3e-3", eval__before="false",
                               eval__after="false", train__save_final="false") + [
        COUNTING, "rewards.accuracy_component=digits", "algo.rollout_correction=token_tis",
        "algo.rollout_is_cap=2.0", "algo.kl_coef=0.05", "algo.kl_mode=reward", "rollout.temperature=0.7",
        f"rollout.top_p={top_p}"]
    res = cli(overrides, timeout=300)
    assert res.returncode == 0, res.describe()
    for m in train_lines(res.run_dir):
        gap, gap_max, weight = m["rollout/logp_gap_mean"], m["rollout/logp_gap_max"], m["rollout/is_weight"]
        assert m["kl_ref"] >= 0  # the KL that went into the scores (measured before the update)
        if top_p == 1.0:
            assert 0 <= gap <= gap_max < 1e-3
            assert weight == pytest.approx(1.0, abs=1e-3)
            continue
        assert gap > 0.02, m                                     # the truncation is visible
        assert math.exp(-gap) - 1e-4 <= weight <= 1 - gap * (1 - math.exp(-gap_max)) / gap_max + 1e-4, m


@pytest.mark.slow  # 30 s, the default suite's slowest; dynamic sampling and 2-rank training are each tested there
def test_dynamic_sampling_on_two_deepspeed_ranks(tiny_model, tmp_path):
    pytest.importorskip("deepspeed")
    overrides = tiny_overrides(tiny_model, "hf", train__steps=2, train__lr="3e-3", train__prompts_per_step=4,
                               backend__zero_stage=2, eval__before="false", train__save_final="false") + [
        reward_entry("hit", "7"), "rewards.accuracy_component=hit", "algo.dynamic_sampling=true",
        "algo.max_sampling_rounds=2", "algo.epochs=2"]  # a rare '7': most groups score all 0 and are dropped
    res = run_deepspeed_cli(overrides, tmp_path / "run")
    assert res.returncode == 0, res.describe()
    lines = train_lines(res.run_dir)
    assert [m["step"] for m in lines] == [1, 2]
    assert all(m["sampling/prompts_drawn"] == 4 * m["sampling/rounds"] and m["sampling/kept_groups"] <= 4
               for m in lines), lines
    assert any(m["sampling/rounds"] == 2 for m in lines), lines  # groups dropped, a second round drawn
    # only the kept groups train (4 samples each), also when one rank kept none of them
    assert all(m["trained_rows"] == 4 * m["sampling/kept_groups"] for m in lines), lines
