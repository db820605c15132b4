"""Settings that must change behaviour or be refused when the config loads (issue 10, items 4,
9, 10, 13): step rewards reach the advantages, prompt truncation is explicit, kwargs and
imports are checked at load, and accuracy is only called accuracy on a 0/1 component."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from rewards import RewardOutput, combine
from rlkit.algorithms.advantages import process_rloo_advantages
from rlkit.batch import build_batch
from rlkit.cli import heldout_summary
from rlkit.config import Config, ConfigError, DataConfig, RewardsConfig, RewardSpec, load_config
from rlkit.data import DataError, load_rows, tokenize_prompts
from rlkit.eval.heldout import summarize_heldout
from rlkit.scoring import build_reward, score_batch
from rlkit.trainer import step_metrics

from conftest import REPO_ROOT


# ---------------------------------------------------------------- config checked at load (item 10)

@pytest.mark.parametrize("overrides, key, words", [
    (["algo.advantage=rloo", "algo.advantage_kwargs={eps: 1e-6}"], "algo.advantage_kwargs", "'eps'"),
    (["algo.advantage=gae", "algo.advantage_kwargs={gama: 0.9}"], "algo.advantage_kwargs", "gamma"),
    # a reward function takes **columns by contract: a kwarg it does not name would vanish there
    (["rewards.functions=[{fn: 'rewards.math:correctness', kwargs: {tolerance: 0.1}}]"],
     r"rewards.functions\[0\].kwargs", "'tolerance'"),
    (["rewards.functions=[{fn: 'rewards.prm:ProcessReward', kwargs: {credits: sum}}]"],
     r"rewards.functions\[0\].kwargs", "credit"),
    (["rewards.functions=[{fn: 'rewards.mathh:correctness'}]"], r"rewards.functions\[0\].fn", "cannot import"),
    (["rewards.functions=[{fn: 'rewards.math:no_such_reward'}]"], r"rewards.functions\[0\].fn", "cannot import"),
    (["rewards.functions=[{fn: 'rewards.math:correctness', step_credit: minform}]"],
     r"rewards.functions\[0\].step_credit", "min_form"),
    (["rewards.functions=[{fn: 'rewards.math:correctness', step_credit_kwargs: {tau: 1}}]"],
     r"rewards.functions\[0\].step_credit_kwargs", "temperature"),
    (["rewards.functions=[{fn: 'rewards.math:correctness'}, {fn: 'rewards.math:correctness'}]"],
     r"rewards.functions\[1\].name", "two reward components"),
    (["rewards.accuracy_component=exact"], "rewards.accuracy_component", "correctness"),
    (["backend.name=deepspeed", "backend.zero_stage=3", "rollout.backend=hf"], "rollout.backend", "ZeRO-3"),
    (["data.truncation=middle"], "data.truncation", "error, left or right"),
])
def test_config_refuses_at_load(overrides, key, words):
    with pytest.raises(ConfigError, match=key) as exc:
        load_config(None, overrides)
    assert words in str(exc.value)


def test_config_accepts_what_the_functions_take():
    cfg = load_config(None, [
        "algo.advantage=grpo", "algo.advantage_kwargs={eps: 1e-4}",
        "rewards.functions=[{fn: 'rlkit.testing_rewards:char_fraction', kwargs: {chars: '7'}},"
        " {fn: 'rewards.prm:ProcessReward', name: prm, kwargs: {fn: 'rewards.prm:arithmetic_step_scores'}},"
        " {fn: 'rewards.math:correctness', step_credit: min_form, step_credit_kwargs: {min_form: strict}}]",
    ])
    assert cfg.algo.advantage_kwargs == {"eps": 1e-4}
    # the default accuracy component may name nothing (then no accuracy is reported)
    load_config(None, ["rewards.functions=[{fn: 'rlkit.testing_rewards:char_fraction', name: c}]"])


def test_cli_config_error_is_one_line_before_anything_loads(tmp_path):
    res = subprocess.run([sys.executable, "-m", "rlkit.cli", "train", "algo.advantage=rloo",
                          "algo.advantage_kwargs={eps: 1e-6}", f"train.output_dir={tmp_path / 'run'}"],
                         capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert res.returncode == 2, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.startswith("rlkit")]
    assert len(lines) == 1 and "algo.advantage_kwargs" in lines[0] and "Traceback" not in res.stderr
    assert not (tmp_path / "run").exists()  # refused before the run folder was made


def test_data_errors_name_the_file_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "a", "answer": "1"}\n\n{"question": "b"}\n')
    with pytest.raises(DataError, match=r"d.jsonl, line 3: missing prompt column"):
        load_rows(DataConfig(task="jsonl", path=str(path)), 0)
    path = tmp_path / "d.json"
    path.write_text(json.dumps([{"prompt": "a"}, 5]))
    with pytest.raises(DataError, match=r"d.json, record 2: expected an object"):
        load_rows(DataConfig(task="jsonl", path=str(path)), 0)


# ---------------------------------------------------------------- prompt truncation (item 9)

class CharTokenizer:
    """One token per character; no chat template needed (chat_template off)."""

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [ord(c) for c in text]}


def test_truncation_error_left_right():
    rows = [{"prompt": "abcdef"}, {"prompt": "xyz"}]
    with pytest.raises(DataError, match=r"6 tokens, over data.max_prompt_tokens=4.*'abcdef'"):
        tokenize_prompts(rows, CharTokenizer(), DataConfig(chat_template=False, max_prompt_tokens=4))
    ids, cut = tokenize_prompts(rows, CharTokenizer(), DataConfig(chat_template=False, max_prompt_tokens=4,
                                                                   truncation="left"))
    assert ids == [[ord(c) for c in "cdef"], [ord(c) for c in "xyz"]] and cut == 1
    ids, cut = tokenize_prompts(rows, CharTokenizer(), DataConfig(chat_template=False, max_prompt_tokens=4,
                                                                   truncation="right"))
    assert ids == [[ord(c) for c in "abcd"], [ord(c) for c in "xyz"]] and cut == 1


def test_truncated_prompts_are_logged_only_when_allowed():
    stats = {"scores": [1.0, 0.0], "lengths": [3, 4], "finished": [True, True], "group_ids": [0, 0],
             "components": {}, "failures": 0, "unscored": 0, "truncated": 2}
    allowed = Config(data=DataConfig(truncation="left"))
    assert step_metrics(stats, allowed, 1.0)["data/truncated_prompts"] == 2.0
    assert "data/truncated_prompts" not in step_metrics(stats, Config(), 1.0)


# ---------------------------------------------------------------- step rewards (item 4)

def steps_only(completions, **_):
    """Two steps per row: tokens [0, 2) and [2, 4); the second step's value is the row's index sign."""
    return [RewardOutput(None, steps=[(0, 2, 1.0), (2, 4, 1.0 if i == 0 else -1.0)])
            for i in range(len(completions))]


def make_batch():
    return build_batch(prompt_ids=[[5, 6], [5, 6]], completion_ids=[[1, 2, 3, 4], [1, 2, 3, 4]],
                       group_ids=[0, 0], finished=[True, True], pad_token_id=0,
                       rows=[{"completion": "a"}, {"completion": "b"}])


def test_steps_become_token_rewards_on_each_steps_last_token():
    reward = combine(steps=steps_only)
    result = reward.score(["a", "b"], completion_ids=[[1, 2, 3, 4], [1, 2, 3, 4]])
    assert result.token_rewards == [[0.0, 1.0, 0.0, 1.0], [0.0, 1.0, 0.0, -1.0]]
    assert result.token_totals == {"steps": [2.0, 0.0]} and result.num_unscored == 0
    # the config's step credit: PURE's strict min form makes returns (1, 1) and (-1, -1), placed
    # as step rewards (0, 1) and (0, -1) whose suffix sums are those returns
    cfg = RewardsConfig(functions=(RewardSpec(fn="tests.test_switches:steps_only", name="steps",
                                              step_credit="min_form",
                                              step_credit_kwargs={"min_form": "strict"}),),
                        accuracy_component=None)
    result = build_reward(cfg).score(["a", "b"], completion_ids=[[1, 2, 3, 4], [1, 2, 3, 4]])
    assert result.token_rewards == [[0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, -1.0]]


def test_step_reward_moves_the_advantages():
    batch = make_batch()
    score_batch(combine(steps=steps_only), batch, [[1, 2, 3, 4], [1, 2, 3, 4]])
    # completion tokens sit at positions 2..5; rewards on positions 3 and 5
    assert batch.token_rewards[0].tolist() == [0, 0, 0, 1, 0, 1]
    assert batch.token_rewards[1].tolist() == [0, 0, 0, 1, 0, -1]
    assert batch.reward_components["steps"].tolist() == [2.0, 0.0]  # logged per completion, not NaN
    adv = process_rloo_advantages(batch.scores, batch.group_ids, batch.loss_mask,
                                  token_rewards=batch.token_rewards)
    # returns G: row 0 (2, 2, 1, 1), row 1 (0, 0, -1, -1); leave-one-out baselines 0 and 2:
    # A before whitening: row 0 (2, 2, 1, 1), row 1 (-2, -2, -3, -3); mean -0.5, std (unbiased)
    raw = torch.tensor([2.0, 2, 1, 1, -2, -2, -3, -3])
    want = (raw - raw.mean()) / raw.std()
    got = adv[batch.loss_mask]
    assert torch.allclose(got, want, atol=1e-5)


def test_credit_setting_on_a_reward_with_its_own_token_rewards_is_refused():
    def dense(completions, **_):
        return [RewardOutput(None, steps=[(0, 4, 1.0)], token_rewards=[0.0, 0.0, 0.0, 1.0]) for _ in completions]

    from rewards import Component, RewardError

    reward = combine(d=Component(dense, step_credit=lambda r: r))
    with pytest.raises(RewardError, match="step_credit"):
        reward.score(["a"], completion_ids=[[1, 2, 3, 4]])


# ---------------------------------------------------------------- numbers a user reads (item 13)

def test_accuracy_only_for_a_zero_one_component():
    judged = [{"correct": 7.5, "score": 7.5, "tokens": 3}, {"correct": 2.0, "score": 2.0, "tokens": 5}]
    metrics = summarize_heldout(judged)
    assert "eval/accuracy" not in metrics and metrics["eval/reward"] == 4.75
    exact = [{"correct": 1.0, "score": 1.0, "tokens": 3}, {"correct": 0.0, "score": 0.5, "tokens": 5}]
    assert summarize_heldout(exact)["eval/accuracy"] == 0.5
    no_component = [{"correct": None, "score": 3.0, "tokens": 1}]
    assert "eval/accuracy" not in summarize_heldout(no_component)
    line = heldout_summary({"eval_before": summarize_heldout(judged), "eval_after": {"eval/reward": 6.0}})
    assert "held-out reward 4.75 -> 6" in line and "%" not in line
    line = heldout_summary({"eval_before": {"eval/accuracy": 0.15, "eval/reward": 0.15},
                            "eval_after": {"eval/accuracy": 0.81, "eval/reward": 0.81}})
    assert "held-out accuracy 15.0% -> 81.0%" in line


def test_step_metrics_never_log_nan_for_a_component():
    stats = {"scores": [1.0, 0.0], "lengths": [3, 4], "finished": [True, True], "group_ids": [0, 0],
             "components": {"correctness": [1.0, 0.0], "prime": [math.nan, math.nan], "judge": [7.0, 3.0]},
             "failures": 0, "unscored": 0, "truncated": 0}
    metrics = step_metrics(stats, Config(), 1.0)
    assert "reward/prime" not in metrics and metrics["accuracy"] == 0.5
    judged = Config(rewards=RewardsConfig(functions=(RewardSpec(name="judge"),), accuracy_component="judge"))
    metrics = step_metrics(stats, judged, 1.0)
    assert metrics["reward/judge"] == 5.0 and "accuracy" not in metrics


@pytest.mark.parametrize("env, overrides, key", [
    ({"WORLD_SIZE": "2"}, ["backend.name=deepspeed", "train.prompts_per_step=1"], "train.prompts_per_step"),
    ({"WORLD_SIZE": "3"}, ["backend.name=deepspeed", "rollout.tensor_parallel_size=2"],
     "rollout.tensor_parallel_size"),
    ({}, ["rollout.tensor_parallel_size=2"], "rollout.tensor_parallel_size"),
    ({"WORLD_SIZE": "2"}, [], "backend.name"),
])
def test_launch_refusals_at_load(monkeypatch, env, overrides, key):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError, match=key):
        load_config(None, overrides)


def digit_run(cli, tiny_model, **extra) -> list[dict]:
    """A 2-step hf run on the tiny model rewarded by "the completion holds a digit" (a 0/1 label
    a random model gets right part of the time); its train records."""
    from conftest import tiny_overrides

    overrides = tiny_overrides(tiny_model, "hf", train__steps=2, eval__before="false", eval__after="false",
                               train__save_final="false", rewards__accuracy_component="digit", **extra)
    overrides.append("rewards.functions=[{fn: 'rlkit.testing_rewards:contains_char', name: digit, "
                     "kwargs: {chars: '0123456789'}}]")
    res = cli(overrides)
    assert res.returncode == 0, res.describe()
    records = [json.loads(line) for line in (res.run_dir / "metrics.jsonl").read_text().splitlines()]
    return [m for m in records if m.get("kind") == "train"]


def test_no_group_in_the_accuracy_band_trains_nothing(tiny_model, cli):
    """When no round keeps a group, the last round only keeps the ranks in step: its groups are
    outside the band, so nothing of it may be trained (its advantages are zeroed)."""
    steps = digit_run(cli, tiny_model, algo__max_sampling_rounds=1, algo__accuracy_band="[0.99, 1.0]")
    assert [m["sampling/kept_groups"] for m in steps] == [0, 0]
    assert any(m["reward/std"] > 0 for m in steps)  # the scores varied: GRPO advantages were not all 0
    assert all(m.get("trained_rows", 0) == 0 for m in steps)


def test_gspo_clip_frac_counts_clipped_sequences():
    """GSPO clips one ratio per sequence: clip_frac is the share of tokens in clipped sequences."""
    from types import SimpleNamespace

    from rlkit.config import AlgoConfig
    from rlkit.objective import make_loss_fn

    algo = AlgoConfig(loss="gspo", eps_low=3e-4, eps_high=4e-4)
    mask = torch.tensor([[False, True, True], [False, True, True]])
    old = torch.zeros(2, 3)
    logp = torch.tensor([[0.0, 0.1, -0.1], [0.0, 0.1, 0.1]])  # sequence ratios exp(0) and exp(0.1)
    micro = SimpleNamespace(loss_mask=mask, old_logprobs=old, advantages=torch.ones(2, 3), rollout_logprobs=None,
                            ref_logprobs=None)
    _, metrics = make_loss_fn(algo, 2, 4, 3, metric_tokens=4)(logp, None, micro)
    assert metrics["clip_frac"] == 0.5  # row 1's two tokens; row 0's tokens leave the band, its sequence not


def test_kl_in_the_reward_is_logged(tiny_model, cli):
    steps = digit_run(cli, tiny_model, train__lr="1e-2", algo__kl_coef="0.1", algo__kl_mode="reward")
    assert all(m["accuracy"] == m["reward/digit"] for m in steps)  # a 0/1 component is an accuracy
    kls = [m["kl_ref"] for m in steps]
    assert kls[0] == 0.0 and kls[1] > 0  # the policy equals the reference until the first update
