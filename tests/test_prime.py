"""PRIME (spec section 5): the Contract example, the batch estimator, the implicit PRM's loss
and learning on a fixed batch, the accuracy-band filter, and training runs (resume exactness,
two DeepSpeed ranks)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from conftest import REPO_ROOT, run_cli, run_deepspeed_cli, tiny_overrides
from rlkit.algorithms.advantages import prime_advantages, prime_batch_advantages

PRIME = str(REPO_ROOT / "configs" / "algo" / "prime.yaml")
LABEL = "{fn: 'rlkit.testing_rewards:contains_char', name: digit, kwargs: {chars: '0123456789'}}"
PRM = "{fn: 'rewards.prime:ImplicitPRM', name: prime, kwargs: {label_component: digit, lr: 1.0e-3}}"
REWARDS = [f"rewards.functions=[{LABEL}, {PRM}]", "rewards.accuracy_component=digit"]

Q = [[0.2, 0.4], [-0.1, 0.0, -0.2], [0.3, -0.3]]


def train_lines(run_dir: Path) -> dict[int, dict]:
    lines = [json.loads(s) for s in (run_dir / "metrics.jsonl").read_text().splitlines() if s.strip()]
    return {m["step"]: m for m in lines if m["kind"] == "train"}


def test_spec_example_advantages():
    raw = prime_advantages(Q, [1, 0, 1], [0, 0, 0], whiten=False)
    expected_returns = [[1.2, 0.95], [-1.75, -1.5, -1.35], [0.3, 0.1]]
    for row, want in zip(raw, expected_returns):
        assert row == pytest.approx(want, abs=1e-9)
    whitened = prime_advantages(Q, [1, 0, 1], [0, 0, 0])
    expected = [[1.220464, 1.01608], [-1.191266, -0.986882, -0.864252], [0.484682, 0.321175]]
    for row, want in zip(whitened, expected):
        assert row == pytest.approx(want, abs=1e-6)


def test_spec_example_prm_loss():
    from rewards.prime import prm_loss_fn
    from rlkit.batch import build_batch

    # summed log-ratios [0.6, -0.3, 0] (beta = 0.05) against outcomes [1, 0, 1]: 0.685694
    batch = build_batch([[1], [1], [1]], [[2, 3], [2, 3], [2, 3]], [0, 0, 0], [True] * 3, pad_token_id=0)
    logp = torch.zeros(batch.input_ids.shape)
    logp[:, 1] = torch.tensor([0.6, -0.3, 0.0])
    import dataclasses
    batch = dataclasses.replace(batch, ref_logprobs=torch.zeros_like(logp), scores=torch.tensor([1.0, 0.0, 1.0]))
    loss, metrics = prm_loss_fn(0.05, 3)(logp, None, batch)
    assert float(loss) == pytest.approx(0.685694, abs=1e-6)
    assert metrics["prm_accuracy"] == pytest.approx(2 / 3)  # 0.6 -> right, -0.3 -> wrong; 0 predicts wrong
    # a NaN label weighs nothing; the denominator is what the caller says (all ranks' rows)
    batch.scores = torch.tensor([1.0, math.nan, 1.0])
    loss_two, _ = prm_loss_fn(0.05, 2)(logp, None, batch)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    want = (bce(torch.tensor(0.03), torch.tensor(1.0)) + bce(torch.tensor(0.0), torch.tensor(1.0))) / 2
    assert float(loss_two) == pytest.approx(float(want), abs=1e-6)


def test_batch_estimator_reads_q_beside_the_outcome():
    """On padded tensors, q as the batch's ``prime`` token term beside the outcome term (as the
    trainer builds them), two groups: the Contract's numbers per group."""
    from rlkit.batch import build_batch

    comps = [[5, 6], [5, 6, 7], [5, 6], [8, 9, 10], [8]]
    batch = build_batch([[1, 2]] * 5, comps, [0, 0, 0, 1, 1], [True] * 5, pad_token_id=0)
    q = [*Q, [0.1, 0.1, 0.1], [-0.5]]
    outcomes = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0])
    batch.add_token_term("outcome", batch.outcome_token_rewards(outcomes))
    implicit = torch.zeros(batch.loss_mask.shape)
    for i, row in enumerate(q):
        implicit[i, 2:2 + len(row)] += torch.tensor(row)
    batch.add_token_term("prime", implicit)
    out = prime_batch_advantages(outcomes, batch.group_ids, batch.loss_mask, token_terms=batch.token_terms,
                                 whiten_returns=False)
    first = prime_advantages(Q, [1, 0, 1], [0, 0, 0], whiten=False)
    second = prime_advantages(q[3:], [0, 1], [1, 1], whiten=False)
    for i, want in enumerate(first + second):
        assert out[i, 2:2 + len(want)].tolist() == pytest.approx(want, abs=1e-6)
        assert (out[i, 2 + len(want):] == 0).all() and (out[i, :2] == 0).all()
    # a group of one learns nothing
    alone = prime_batch_advantages(outcomes[:1], torch.tensor([0]), batch.loss_mask[:1],
                                   token_terms={"prime": implicit[:1]})
    assert (alone == 0).all()


def test_batch_max_normalisation():
    from rlkit.batch import build_batch

    batch = build_batch([[1]] * 3, [[2, 3], [2, 3, 4], [2, 3]], [0, 0, 0], [True] * 3, pad_token_id=0)
    outcomes = torch.tensor([1.0, 0.0, 1.0])
    implicit = torch.zeros(batch.loss_mask.shape)
    for i, row in enumerate(Q):
        implicit[i, 1:1 + len(row)] += torch.tensor(row)
    out = prime_batch_advantages(outcomes, batch.group_ids, batch.loss_mask, token_terms={"prime": implicit},
                                 normalize="batch_max", whiten_returns=False)
    largest = 0.6  # |reverse cumsum| of q: row 0 starts at 0.6, row 1 at -0.3, row 2 at 0
    q = [[v / (largest + 1e-6) for v in row] for row in Q]
    means = [sum(r) / len(r) for r in q]
    group_mean = sum(means) / 3  # the baseline includes the row's own mean
    o_adv = [1 - 0.5, 0 - 1, 1 - 0.5]
    for i, row in enumerate(q):
        rewards = [v - group_mean for v in row]
        rewards[-1] += o_adv[i]
        returns = [sum(rewards[t:]) for t in range(len(rewards))]
        assert out[i, 1:1 + len(row)].tolist() == pytest.approx(returns, abs=1e-6)
    with pytest.raises(ValueError, match="normalize"):
        prime_batch_advantages(outcomes, batch.group_ids, batch.loss_mask, token_terms={"prime": implicit},
                               normalize="max")


def test_accuracy_band_rows():
    from rlkit.batch import build_batch
    from rlkit.sampling import accuracy_band_rows, kept_group_rows

    batch = build_batch([[1]] * 8, [[2]] * 8, [0, 0, 1, 1, 2, 2, 3, 3], [True] * 8, pad_token_id=0)
    batch.scores = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0, math.nan])
    batch.reward_components = {"acc": batch.scores.clone()}
    keep = accuracy_band_rows(batch, "acc", 0.2, 0.8)
    assert keep.tolist() == [False, False, True, True, False, False, False, False]  # group 3: NaN left out -> 1.0
    assert kept_group_rows(batch, False, [0.0, 1.0], "acc").all()
    assert kept_group_rows(batch, True, None, "acc").tolist() == [False, False, True, True, False, False,
                                                                 True, True]
    with pytest.raises(KeyError, match="accuracy_component"):
        accuracy_band_rows(batch, "missing", 0.2, 0.8)


def test_accuracy_band_config_errors(tiny_model):
    from rlkit.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="algo.accuracy_band"):
        load_config(PRIME, tiny_overrides(tiny_model) + ["algo.accuracy_band=[0.9, 0.1]"])
    with pytest.raises(ConfigError, match="accuracy_component"):
        load_config(PRIME, tiny_overrides(tiny_model) + ["rewards.accuracy_component=null"])


def test_implicit_prm_learns_on_a_fixed_batch(tiny_model, one_thread):
    from rewards.prime import ImplicitPRM
    from rlkit.batch import build_batch
    from rlkit.config import load_config
    from rlkit.reward_api import RewardContext

    cfg = load_config(PRIME, tiny_overrides(tiny_model) + REWARDS)
    prm = ImplicitPRM(lr=3e-3, label_component="digit", beta=0.5)
    prm.attach(RewardContext.for_run(cfg))
    try:
        batch = build_batch([[3, 4, 5], [6, 7]] * 2, [[7, 8, 9], [9, 10], [11, 12, 13], [14, 15]], [0, 0, 1, 1],
                            [True] * 4, pad_token_id=0)
        labels = torch.tensor([1.0, 0.0, 0.0, 1.0])
        losses = []
        for _ in range(6):
            b = batch.select(torch.arange(4))
            b.scores = labels.clone()
            b.reward_components = {"digit": labels.clone()}
            b.add_token_term("outcome", b.outcome_token_rewards(labels))
            metrics = prm.update(b)
            losses.append(metrics["loss"])
        assert losses[0] == pytest.approx(math.log(2), abs=1e-3)  # PRM == reference at the start
        assert losses[-1] < 0.5 * losses[0], losses
        assert metrics["accuracy"] == 1.0 and metrics["labelled_rows"] == 4
        # q is its own term beside the outcome: right rows sum above 0, wrong ones below
        assert set(b.token_terms) == {"outcome", "prime"}
        q_sums = b.token_terms["prime"].sum(dim=1)
        assert (q_sums[labels == 1] > 0).all() and (q_sums[labels == 0] < 0).all()
        assert (b.token_rewards[~b.loss_mask] == 0).all()
    finally:
        prm.close()


def test_implicit_prm_needs_its_label_component(tiny_model, one_thread):
    from rewards.prime import ImplicitPRM
    from rlkit.batch import build_batch
    from rlkit.config import load_config
    from rlkit.reward_api import RewardContext

    with pytest.raises(ValueError, match="update"):
        ImplicitPRM(update="during")
    prm = ImplicitPRM(label_component="correctness")
    batch = build_batch([[3]], [[4, 5]], [0], [True], pad_token_id=0)
    with pytest.raises(RuntimeError, match="attach"):
        prm.update(batch)
    prm.attach(RewardContext.for_run(load_config(PRIME, tiny_overrides(tiny_model) + REWARDS)))
    try:
        batch.reward_components = {"digit": torch.tensor([1.0])}
        with pytest.raises(KeyError, match="correctness"):
            prm.update(batch)
    finally:
        prm.close()


@pytest.fixture(scope="module")
def prime_runs(tiny_model, tmp_path_factory):
    """PRIME on the tiny model: A runs 4 steps, B runs 2 and is resumed to 4 (hf, deterministic)."""
    root = tmp_path_factory.mktemp("prime")
    base = tiny_overrides(tiny_model, "hf", train__lr="3e-3", train__save_every=2, eval__before="false",
                          rollout__num_samples=4) + REWARDS
    a = run_cli(base + ["train.steps=4"], root / "A", config=PRIME)
    b1 = run_cli(base + ["train.steps=2"], root / "B", config=PRIME)
    b2 = run_cli(base + ["train.steps=4", "train.resume=auto"], root / "B", config=PRIME)
    for res in (a, b1, b2):
        assert res.returncode == 0, res.describe()
    return a.run_dir, b2.run_dir


def test_prime_run_logs_prm_and_filter_metrics(prime_runs):
    lines = train_lines(prime_runs[0])
    assert sorted(lines) == [1, 2, 3, 4]
    for m in lines.values():
        assert m["prime/loss"] > 0 and m["prime/grad_norm"] > 0 and 0 <= m["prime/accuracy"] <= 1
        assert m["prime/labelled_rows"] > 0 and math.isfinite(m["prime/reward_std"])
        # 2 prompts a round; rounds stop once 2 groups in the accuracy band are kept (or after 4).
        # (a group dropped by the band: test_algorithm_presets.py's prime run)
        assert m["sampling/prompts_drawn"] == 2 * m["sampling/rounds"] and m["sampling/kept_groups"] <= 2
        assert m["sampling/rounds"] == 4 or m["sampling/kept_groups"] == 2
    step = prime_runs[0] / "checkpoints" / "step_4" / "reward_state" / "prime"
    assert (step / "model.safetensors").is_file() and (step / "optimizer.pt").is_file()


def test_prime_resume_restores_the_prm_exactly(prime_runs):
    a, b = (train_lines(r) for r in prime_runs)
    for step in (3, 4):
        for key in ("reward/mean", "loss/policy", "grad_norm", "prime/loss", "prime/accuracy", "prime/grad_norm",
                    "prime/reward_mean", "sampling/prompts_drawn"):
            assert b[step][key] == pytest.approx(a[step][key], abs=1e-6), (step, key)


@pytest.mark.slow
def test_prime_on_two_zero2_ranks(tiny_model, tmp_path):
    """The PRM gets a DeepSpeed engine of its own beside the policy's; its loss is normalised by
    the labelled rows of both ranks."""
    pytest.importorskip("deepspeed")
    overrides = tiny_overrides(tiny_model, "vllm", train__steps=2, train__lr="3e-3", train__prompts_per_step=4,
                               rollout__gpu_memory_utilization="0.05", eval__before="false",
                               train__save_final="false", train__save_every=2) + REWARDS
    res = run_deepspeed_cli(overrides, tmp_path / "run", config=PRIME)
    assert res.returncode == 0, res.describe()
    lines = train_lines(res.run_dir)
    assert all(m["prime/grad_norm"] > 0 and m["prime/labelled_rows"] >= 16 for m in lines.values())
    assert (res.run_dir / "checkpoints" / "step_2" / "reward_state" / "prime" / "deepspeed").is_dir()
