"""Everything else keeps working when rollouts are generated ahead (``rollout.mode=async``, the
in-process vLLM engine, the tiny model): dynamic sampling, PRIME's learning reward, evaluation
during training, LoRA, multi-turn agent episodes and two DeepSpeed ranks.  Each run checks its
feature's own metrics, the staleness bound and that the ledger consumed every draw once, in order.
Slow: six short training runs."""
from __future__ import annotations

import json

import pytest

from conftest import REPO_ROOT, run_cli, run_deepspeed_cli, tiny_overrides
from test_async_rollout import _ledger

pytest.importorskip("vllm")
pytestmark = pytest.mark.slow

COUNTING = ["rewards.functions=[{fn: 'rlkit.testing_rewards:CountingReward', name: digits}]",
            "rewards.accuracy_component=digits"]
PRIME = ["rewards.functions=[{fn: 'rlkit.testing_rewards:contains_char', name: digit, kwargs: {chars: '0123456789'}}, "
         "{fn: 'rewards.prime:ImplicitPRM', name: prime, kwargs: {label_component: digit, lr: 1.0e-3}}]",
         "rewards.accuracy_component=digit"]
FEATURES = {
    # feature: (config, overrides, a check of the train metrics, of the eval metrics)
    "dynamic_sampling": (None, COUNTING + ["algo.dynamic_sampling=true", "algo.max_sampling_rounds=3"],
                         lambda m: m["sampling/rounds"] >= 1 and "sampling/kept_groups" in m, None),
    "prime": (REPO_ROOT / "configs/algo/prime.yaml", PRIME,
              lambda m: m["prime/loss"] > 0 and m["prime/labelled_rows"] > 0, None),
    "eval": (None, COUNTING + ["eval.every=2"], None, lambda evals: [e["step"] for e in evals] == [2, 4]),
    "lora": (None, COUNTING + ["model.lora.r=4", "model.lora.target_modules=[q_proj,v_proj]", "train.lr=5e-2"],
             lambda m: m["grad_norm"] >= 0, None),
    # multi-turn episodes: tests/helpers/agent_kit.py's TalkEnv (short messages: the tiny model has 512 positions)
    "agent": (None, COUNTING + ["agent.env=helpers.agent_kit:TalkEnv", "agent.env_kwargs={turns: 2}",
                                "agent.max_turns=2", "agent.max_episode_tokens=160", "agent.tool_workers=1"],
              lambda m: 1.0 <= m["agent/turns_mean"] <= 2.0 and m["agent/model_token_frac"] < 1.0, None),
}


def _overrides(tiny_model, extra):
    return tiny_overrides(tiny_model, "vllm", rollout__mode="async", rollout__max_staleness="2",
                          algo__rollout_correction="token_tis", train__steps="4") + [
        "eval.before=false", "eval.every=0", *extra]


def _check(run_dir, train_check, eval_check, prompts=2):
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert len(train) == 4 and all(r["staleness/max"] <= 2 for r in train)
    if train_check is not None:
        assert all(train_check(r) for r in train), train
    if eval_check is not None:
        assert eval_check([r for r in records if r["kind"] == "eval"])
    steps = _ledger(run_dir)
    draws = [i for s in sorted(steps) for i in steps[s]]
    assert sorted(steps) == [1, 2, 3, 4] and draws == list(range(len(draws))) and len(draws) >= 4 * prompts


@pytest.mark.parametrize("feature", list(FEATURES))
def test_feature_works_with_rollouts_made_ahead(feature, tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT / "tests"))  # the run imports helpers.agent_kit
    config, extra, train_check, eval_check = FEATURES[feature]
    res = run_cli(_overrides(tiny_model, extra), tmp_path / "run", config=config, timeout=600)
    assert res.returncode == 0, res.describe()
    _check(res.run_dir, train_check, eval_check)


def test_two_deepspeed_ranks_each_generate_ahead(tiny_model, tmp_path):
    """ZeRO-2 on 2 ranks, each with its own engine and producer thread; the ranks agree on
    every collective (a disagreement would hang or fail the run)."""
    res = run_deepspeed_cli(_overrides(tiny_model, COUNTING + ["train.prompts_per_step=4"]), tmp_path / "run")
    assert res.returncode == 0, res.describe()
    _check(res.run_dir, None, None, prompts=4)
