"""Rollout correction in the policy objective: engine log-probs that differ from the trainer's
change the loss and its gradient by hand-computed importance weights (``objective.make_loss_fn``).

The end-to-end check with vLLM's log-probs (top-p truncation at T = 0.7, a real mismatch) is
``test_rollout_correction_and_kl_in_reward_with_vllm_logprobs`` in test_algorithm_presets.py.
"""
from __future__ import annotations

import math

import pytest
import torch

from rlkit.batch import build_batch
from rlkit.config import load_config
from rlkit.objective import make_loss_fn

# two rows, two completion tokens each (columns 1 and 2)
TRAINER = [[-1.0, -2.0], [-0.5, -0.5]]
ENGINE = [[-1.5, -1.0], [-0.5, -0.7]]          # old - rollout: [0.5, -1.0], [0.0, 0.2]
ADVANTAGES = [1.0, -2.0]

# expected per-token weights, worked out by hand
E = math.exp
WEIGHTS = {
    "none": [[1.0, 1.0], [1.0, 1.0]],
    "token_tis": [[1.5, E(-1.0)], [1.0, E(0.2)]],                 # min(exp(diff), cap 1.5)
    "seq_tis": [[E(-0.5), E(-0.5)], [E(0.2), E(0.2)]],           # min(exp(sum diff), 1.5) per row
    "seq_mask": [[0.0, 0.0], [1.0, 1.0]],                        # exp(mean diff) = 0.78 < 0.9: dropped; 1.105 kept
}


def _batch():
    batch = build_batch([[5], [6]], [[7, 8], [9, 10]], [0, 1], [True, True], pad_token_id=0,
                        rollout_logprobs=ENGINE)
    batch.advantages = torch.tensor([[0.0] + [ADVANTAGES[0]] * 2, [0.0] + [ADVANTAGES[1]] * 2])
    return batch


@pytest.mark.parametrize("mode", ["none", "token_tis", "seq_tis", "seq_mask"])
def test_correction_weights_the_loss_and_its_gradient(mode):
    algo = load_config(None, [f"algo.rollout_correction={mode}", "algo.rollout_is_cap=1.5",
                              "algo.rollout_mask_band=[0.9, 2.0]"]).algo
    batch = _batch()
    loss_fn = make_loss_fn(algo, num_seqs=2, num_tokens=4, max_len=2, metric_tokens=4)
    logp = torch.zeros(2, 3)
    logp[:, 1:] = torch.tensor(TRAINER)
    logp.requires_grad_(True)
    loss, metrics = loss_fn(logp, None, batch)
    loss.backward()
    w = WEIGHTS[mode]
    # one on-policy update: ratio 1, per-token loss -A w; seq_mean_token_mean: (1/2) sum_i (1/2) sum_t
    expected = 0.5 * sum(0.5 * sum(-ADVANTAGES[i] * w[i][t] for t in range(2)) for i in range(2))
    assert float(loss.detach()) == pytest.approx(expected, abs=1e-6)
    expected_grad = [[0.0] + [-ADVANTAGES[i] * w[i][t] / 4 for t in range(2)] for i in range(2)]
    assert logp.grad.tolist() == [pytest.approx(row, abs=1e-6) for row in expected_grad]
    assert metrics["rollout/logp_gap_mean"] == pytest.approx((0.5 + 1.0 + 0.0 + 0.2) / 4, abs=1e-6)
    assert metrics["rollout/logp_gap_max"] == pytest.approx(1.0, abs=1e-6)
    if mode != "none":
        assert metrics["rollout/is_weight"] == pytest.approx(sum(map(sum, w)) / 4, abs=1e-6)
        assert float(loss.detach()) != pytest.approx(0.5, abs=1e-3)       # 0.5: the uncorrected loss
