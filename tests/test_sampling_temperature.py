"""rollout.temperature reaches the trainer: its log-probs (policy and KL reference) are those of
the sampling distribution softmax(logits / T), the engines' too (tests/test_rollout_parity.py);
the critic's values and a greedy (T = 0) run are unaffected."""
from __future__ import annotations

import pytest
import torch

from rlkit.batch import build_batch
from rlkit.config import load_config
from rlkit.backends.prefix import forward_logprobs_shared
from rlkit.backends.single import SingleBackend, forward_logprobs
from rlkit.backends.token_logprobs import token_logprobs

T = 0.7


def _textbook(logits: torch.Tensor, targets: torch.Tensor, temperature: float):
    """log_softmax(z / T) at the targets and the entropy of softmax(z / T), by autograd."""
    logq = torch.log_softmax(logits.double() / temperature, dim=-1)
    return logq.gather(-1, targets.unsqueeze(-1)).squeeze(-1), -(logq.exp() * logq).sum(-1)


@pytest.mark.parametrize("block_elements", [11, 1 << 20])
def test_token_logprobs_at_a_temperature_match_autograd(block_elements):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 11, generator=g) * 3
    targets = torch.randint(0, 11, (2, 5), generator=g)
    mine, ref = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
    lp, ent = token_logprobs(mine, targets, with_entropy=True, entropy_grad=True, block_elements=block_elements,
                             temperature=T)
    lp_ref, ent_ref = _textbook(ref, targets, T)
    plain, _ = token_logprobs(logits, targets)
    assert (lp.double() - plain.double()).abs().max() > 0.1     # T changes the numbers
    w_lp, w_ent = torch.randn(2, 5, generator=g), torch.randn(2, 5, generator=g)
    ((lp * w_lp).sum() + (ent * w_ent).sum()).backward()
    ((lp_ref * w_lp).sum() + (ent_ref * w_ent).sum()).backward()
    torch.testing.assert_close(lp.double(), lp_ref.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent.double(), ent_ref.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mine.grad, ref.grad, atol=1e-5, rtol=1e-4)


def test_token_logprobs_gradcheck_at_a_temperature():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 4, 7, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 7, (2, 4), generator=g)
    assert torch.autograd.gradcheck(
        lambda z: token_logprobs(z, targets, True, True, block_elements=14, temperature=T), (logits,))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        token_logprobs(logits, targets, temperature=0.0)


def _batch():
    return build_batch([[5, 6, 7, 8], [5, 6, 7, 8], [11, 12]], [[20, 21, 22], [23], [30, 31, 32, 33, 2]],
                       [0, 0, 1], [False, False, True], pad_token_id=0)


def _by_hand(model, batch, temperature: float) -> torch.Tensor:
    """[B, T] log_softmax(logits / T) of each token from a whole-sequence forward pass."""
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask.long()).logits
    lp, _ = _textbook(logits[:, :-1], batch.input_ids[:, 1:], temperature)
    lp = torch.cat([torch.zeros(lp.shape[0], 1, dtype=lp.dtype), lp], dim=1).float()
    return torch.where(batch.loss_mask, lp, 0.0)


def _cfg(tiny_model: str, *extra: str):
    return load_config(None, [f"model.path={tiny_model}", "model.autocast_bf16=false", "backend.device=cpu",
                              *extra])


@pytest.mark.parametrize("forward", [forward_logprobs, forward_logprobs_shared], ids=["plain", "shared"])
def test_forward_passes_score_logits_over_t(tiny_model, one_thread, forward):
    backend = SingleBackend(_cfg(tiny_model), total_optimizer_steps=1)
    batch = _batch()
    with torch.no_grad():
        lp, _ = forward(backend.model, batch, with_entropy=False, autocast=False, temperature=T)
    torch.testing.assert_close(lp, _by_hand(backend.model, batch, T), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("share", ["true", "false"])
def test_backend_policy_and_reference_use_the_rollout_temperature(tiny_model, one_thread, share):
    batch = _batch()
    cfg = _cfg(tiny_model, f"rollout.temperature={T}", "algo.kl_coef=0.1", f"train.share_prompt_prefix={share}")
    backend = SingleBackend(cfg, total_optimizer_steps=1)
    expected = _by_hand(backend.model, batch, T)
    assert (expected - _by_hand(backend.model, batch, 1.0)).abs().max() > 0.1
    torch.testing.assert_close(backend.logprobs(batch, micro_batch_size=2), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(backend.ref_logprobs(batch, micro_batch_size=2), expected, atol=1e-5, rtol=1e-5)
    # train_step's forward (the ratio's numerator) too
    seen = {}

    def loss_fn(logp, entropy, micro):
        seen["logp"] = logp.detach()
        return logp.sum() * 0.0, {}

    backend.train_step([batch], loss_fn)
    torch.testing.assert_close(seen["logp"], expected[:, : seen["logp"].shape[1]], atol=1e-5, rtol=1e-5)


def test_greedy_rollouts_score_softmax_of_the_logits(tiny_model, one_thread):
    """rollout.temperature = 0 (greedy): the engines report softmax(logits), and so does the
    trainer (no division by zero)."""
    batch = _batch()
    backend = SingleBackend(_cfg(tiny_model, "rollout.temperature=0"), total_optimizer_steps=1)
    lp = backend.logprobs(batch, micro_batch_size=4)
    torch.testing.assert_close(lp, _by_hand(backend.model, batch, 1.0), atol=1e-5, rtol=1e-5)


def test_critic_values_ignore_the_temperature(tiny_model, one_thread):
    from rlkit.critic import critic_config

    batch = _batch()
    values = []
    for t in (1.0, T):
        critic = SingleBackend(critic_config(_cfg(tiny_model, f"rollout.temperature={t}")), 1, role="critic")
        with torch.no_grad():
            torch.nn.init.constant_(critic.model.head.weight, 0.01)
        values.append(critic.logprobs(batch, micro_batch_size=4))
    assert values[0].abs().max() > 0
    torch.testing.assert_close(values[0], values[1], atol=0, rtol=0)


def test_implicit_prm_is_not_tempered(tiny_model, one_thread):
    """PRIME's implicit PRM scores softmax(logits) like its frozen reference, whatever the
    sampling temperature: at the start the two agree, q = 0 and the PRM's loss is log 2."""
    import math

    from conftest import REPO_ROOT, tiny_overrides
    from rewards.prime import ImplicitPRM
    from rlkit.reward_api import RewardContext

    label = "{fn: 'rlkit.testing_rewards:contains_char', name: digit, kwargs: {chars: '0123456789'}}"
    prm_spec = "{fn: 'rewards.prime:ImplicitPRM', name: prime, kwargs: {label_component: digit}}"
    cfg = load_config(str(REPO_ROOT / "configs" / "algo" / "prime.yaml"), tiny_overrides(tiny_model) + [
        f"rewards.functions=[{label}, {prm_spec}]", "rewards.accuracy_component=digit", f"rollout.temperature={T}"])
    prm = ImplicitPRM(lr=3e-3, label_component="digit", beta=0.5)
    prm.attach(RewardContext.for_run(cfg))
    try:
        batch = _batch()
        labels = torch.tensor([1.0, 0.0, 1.0])
        batch.scores, batch.reward_components = labels.clone(), {"digit": labels.clone()}
        batch.add_token_term("outcome", batch.outcome_token_rewards(labels))
        assert prm.update(batch)["loss"] == pytest.approx(math.log(2), abs=1e-4)
    finally:
        prm.close()
