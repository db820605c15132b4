"""PPO with a critic (rlkit/critic.py): the value loss, the values' alignment, the critic
learning on a fixed batch, exact resume with the critic's state, and a 2-rank ZeRO-3 run."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import REPO_ROOT, run_cli, run_deepspeed_cli, tiny_overrides
from rlkit.critic import ValueModel, forward_values, value_loss

COUNTING = "rewards.functions=[{fn: 'rlkit.testing_rewards:CountingReward', name: digits}]"
PPO = str(REPO_ROOT / "configs" / "algo" / "ppo.yaml")


def train_lines(run_dir: Path) -> dict[int, dict]:
    lines = [json.loads(s) for s in (run_dir / "metrics.jsonl").read_text().splitlines() if s.strip()]
    return {m["step"]: m for m in lines if m["kind"] == "train"}


def test_value_loss_by_hand():
    values = torch.tensor([[0.0, 1.0, 0.0]])
    old = torch.tensor([[0.0, 0.2, 1.0]])
    returns = torch.tensor([[5.0, 0.0, 1.2]])
    mask = torch.tensor([[False, True, True]])
    # token 1: (1 - 0)^2 = 1 beats clipped (0.7 - 0)^2; token 2: (0 - 1.2)^2 = 1.44 beats (0.5 - 1.2)^2
    assert value_loss(values, old, returns, mask, clip=0.5)[0].tolist() == pytest.approx([0.0, 0.5, 0.72])
    # unclipped version: the same here; a case where clipping wins: V far past V_old on the far side
    far = value_loss(torch.tensor([[0.0, 2.0]]), torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, 2.0]]),
                     torch.tensor([[False, True]]), clip=0.5)
    assert far[0].tolist() == pytest.approx([0.0, 0.5 * 1.5 ** 2])  # clipped V = 0.5, (0.5 - 2)^2
    assert value_loss(torch.tensor([[2.0]]), torch.tensor([[0.0]]), torch.tensor([[2.0]]),
                      torch.tensor([[True]]), clip=None).tolist() == [[0.0]]


def test_values_read_the_hidden_state_before_each_completion_token(tiny_model, one_thread):
    from rlkit.batch import build_batch
    from rlkit.critic import load_value_model

    model = load_value_model(tiny_model)
    torch.nn.init.normal_(model.head.weight)
    batch = build_batch([[3, 4, 5], [6]], [[7, 8], [9, 10, 11]], [0, 0], [True, True], pad_token_id=0)
    values, _ = forward_values(model, batch)
    raw = model(batch.input_ids, batch.attention_mask.long())
    assert values[0, 3:5].tolist() == pytest.approx(raw[0, 2:4].tolist(), abs=1e-5)
    assert values[1, 1:4].tolist() == pytest.approx(raw[1, 0:3].tolist(), abs=1e-5)
    assert (values[~batch.loss_mask] == 0).all()
    assert isinstance(model, ValueModel) and model.head.out_features == 1


def test_critic_loss_goes_down_on_a_fixed_batch(tiny_model, one_thread):
    from rlkit.batch import build_batch
    from rlkit.config import load_config
    from rlkit.critic import critic_config, make_value_loss_fn
    from rlkit.backends import make_backend

    cfg = load_config(PPO, tiny_overrides(tiny_model) + ["critic.lr=1e-3"])
    critic = make_backend(critic_config(cfg), 50, role="critic")
    batch = build_batch([[3, 4, 5], [6, 7]], [[7, 8, 9], [9, 10]], [0, 0], [True, True], pad_token_id=0)
    batch.returns = torch.where(batch.loss_mask, torch.tensor([[1.0], [-1.0]]), 0.0)
    losses = []
    for _ in range(8):
        batch.values = critic.logprobs(batch, 8)
        loss_fn = make_value_loss_fn(cfg.algo, 2, 5, 8, 5, clip=None)
        losses.append(critic.train_step([batch], loss_fn)["critic/loss"])
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.fixture(scope="module")
def ppo_runs(tiny_model, tmp_path_factory):
    """PPO on the tiny model: A runs 4 steps, B runs 2 and is resumed to 4 (hf, deterministic)."""
    root = tmp_path_factory.mktemp("ppo")
    base = tiny_overrides(tiny_model, "hf", train__lr="3e-3", train__save_every=2, eval__before="false") + [
        COUNTING, "rewards.accuracy_component=digits", "critic.lr=1e-3"]
    a = run_cli(base + ["train.steps=4"], root / "A", config=PPO)
    b1 = run_cli(base + ["train.steps=2"], root / "B", config=PPO)
    b2 = run_cli(base + ["train.steps=4", "train.resume=auto"], root / "B", config=PPO)
    for res in (a, b1, b2):
        assert res.returncode == 0, res.describe()
    return a.run_dir, b2.run_dir


def test_ppo_trains_policy_and_critic(ppo_runs):
    lines = train_lines(ppo_runs[0])
    for m in lines.values():
        assert m["critic/loss"] > 0 and m["critic/grad_norm"] > 0 and m["critic/trained_rows"] > 0
        assert m["grad_norm"] > 0
    from safetensors.torch import load_file

    critic = load_file(ppo_runs[0] / "checkpoints" / "step_4" / "critic" / "model.safetensors")
    # the value head starts at zero: a trained, saved critic has moved it (and predicts non-zero values)
    assert critic["head.weight"].abs().max() > 0 and critic["head.bias"].abs().max() > 0, sorted(critic)
    assert lines[1]["critic/value_mean"] != lines[4]["critic/value_mean"]


def test_ppo_resume_restores_the_critic_exactly(ppo_runs):
    a, b = (train_lines(r) for r in ppo_runs)
    for step in (3, 4):
        for key in ("reward/mean", "loss/policy", "grad_norm", "critic/loss", "critic/grad_norm",
                    "critic/value_mean"):
            assert b[step][key] == pytest.approx(a[step][key], abs=1e-6), (step, key)


@pytest.mark.slow
def test_ppo_on_two_zero3_ranks(tiny_model, tmp_path):
    pytest.importorskip("deepspeed")
    overrides = tiny_overrides(tiny_model, "vllm", train__steps=2, train__lr="3e-3", train__prompts_per_step=4,
                               rollout__gpu_memory_utilization="0.05", eval__before="false",
                               train__save_final="false") + [COUNTING, "rewards.accuracy_component=digits"]
    config = tmp_path / "ppo_zero3.yaml"
    config.write_text(f"include:\n  - {PPO}\nbackend:\n  zero_stage: 3\nrollout:\n  backend: vllm\n")
    res = run_deepspeed_cli(overrides, tmp_path / "run", config=config)
    assert res.returncode == 0, res.describe()
    lines = train_lines(res.run_dir)
    assert all(m["critic/grad_norm"] > 0 and m["critic/trained_rows"] == 16 for m in lines.values())
