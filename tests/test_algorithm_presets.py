"""Every preset in configs/algo/ runs end to end on the tiny model (child processes), plus
rollout correction and KL-in-reward with vLLM log-probs, and dynamic sampling on 2 ranks."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import REPO_ROOT, run_deepspeed_cli, tiny_overrides

COUNTING = "rewards.functions=[{fn: 'rlkit.testing_rewards:CountingReward', name: digits}]"
PRESETS = sorted(p.stem for p in (REPO_ROOT / "configs" / "algo").glob("*.yaml"))


def train_lines(run_dir: Path) -> list[dict]:
    lines = [json.loads(s) for s in (run_dir / "metrics.jsonl").read_text().splitlines() if s.strip()]
    return [m for m in lines if m["kind"] == "train"]


def test_the_documented_presets_exist():
    assert {"grpo", "dr_grpo", "dapo", "rloo", "reinforce_pp", "gspo", "tempo"} <= set(PRESETS)


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_trains(cli, tiny_model, tmp_path, preset):
    config = tmp_path / "run.yaml"
    config.write_text(f"include:\n  - {REPO_ROOT / 'configs' / 'algo' / preset}.yaml\n")
    overrides = tiny_overrides(tiny_model, "hf", train__steps=2, train__lr="3e-3", eval__before="false",
                               eval__after="false", train__save_final="false") + [
        COUNTING, "rewards.accuracy_component=digits", "algo.mini_batches=2"]
    res = cli(overrides, config=config, timeout=300)
    assert res.returncode == 0, res.describe()
    lines = train_lines(res.run_dir)
    assert [m["step"] for m in lines] == [1, 2]
    assert any(m.get("trained_rows", 0) > 0 and m["grad_norm"] > 0 for m in lines)
    if preset == "dapo":
        assert all(1 <= m["sampling/rounds"] <= 3 and m["sampling/prompts_drawn"] >= 2 for m in lines)
        assert all("reward/overlong" in m for m in lines)


def test_rollout_correction_and_kl_in_reward_with_vllm_logprobs(cli, tiny_model):
    """vLLM's log-probs of the sampled tokens against the trainer's: the gap is logged every
    step (float32 on both sides: tiny) and truncated importance weights stay near 1."""
    overrides = tiny_overrides(tiny_model, "vllm", train__steps=2, train__lr="3e-3", eval__before="false",
                               eval__after="false", train__save_final="false") + [
        COUNTING, "rewards.accuracy_component=digits", "algo.rollout_correction=token_tis",
        "algo.rollout_is_cap=2.0", "algo.kl_coef=0.05", "algo.kl_mode=reward"]
    res = cli(overrides, timeout=300)
    assert res.returncode == 0, res.describe()
    for m in train_lines(res.run_dir):
        assert 0 <= m["rollout/logp_gap_mean"] <= m["rollout/logp_gap_max"] < 1e-3
        assert m["rollout/is_weight"] == pytest.approx(1.0, abs=1e-3)
        assert "kl_ref" not in m  # the KL went into the scores, not the loss


def test_dynamic_sampling_on_two_deepspeed_ranks(tiny_model, tmp_path):
    pytest.importorskip("deepspeed")
    overrides = tiny_overrides(tiny_model, "hf", train__steps=2, train__lr="3e-3", train__prompts_per_step=4,
                               backend__zero_stage=2, eval__before="false", train__save_final="false") + [
        COUNTING, "rewards.accuracy_component=digits", "algo.dynamic_sampling=true", "algo.max_sampling_rounds=2",
        "algo.epochs=2"]
    res = run_deepspeed_cli(overrides, tmp_path / "run")
    assert res.returncode == 0, res.describe()
    lines = train_lines(res.run_dir)
    assert [m["step"] for m in lines] == [1, 2]
    assert all(m["sampling/kept_groups"] <= 4 and m["sampling/prompts_drawn"] in (4, 8) for m in lines)
