"""token_logprobs: the block-wise log-prob / entropy function gives autograd's values and gradients."""
from __future__ import annotations

import pytest
import torch

from rlkit.algorithms.losses import entropy_from_logits
from rlkit.batch import build_batch
from rlkit.backends.prefix import forward_logprobs_shared
from rlkit.backends.single import forward_logprobs
from rlkit.backends.token_logprobs import token_logprobs
from rlkit.models import load_causal_lm
from rlkit.testing import make_tiny_model


def reference(logits: torch.Tensor, targets: torch.Tensor):
    """The textbook computation, differentiated by autograd."""
    z = logits.float() if logits.dtype != torch.float64 else logits
    logp = z.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - z.logsumexp(-1)
    return logp, entropy_from_logits(z)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("block_elements", [11, 25, 1 << 20])   # one position, a few, everything
def test_values_and_gradients_match_autograd(dtype, block_elements):
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(3, 7, 11, generator=g) * 3).to(dtype)
    targets = torch.randint(0, 11, (3, 7), generator=g)
    mine = logits.clone().requires_grad_(True)
    ref = logits.clone().requires_grad_(True)
    lp, ent = token_logprobs(mine, targets, with_entropy=True, entropy_grad=True, block_elements=block_elements)
    lp_ref, ent_ref = reference(ref, targets)
    w_lp = torch.randn(3, 7, generator=g, dtype=lp.dtype)
    w_ent = torch.randn(3, 7, generator=g, dtype=lp.dtype)
    ((lp * w_lp).sum() + (ent * w_ent).sum()).backward()
    ((lp_ref * w_lp).sum() + (ent_ref * w_ent).sum()).backward()
    tol = {"atol": 1e-6, "rtol": 1e-5} if dtype != torch.bfloat16 else {"atol": 1e-2, "rtol": 1e-2}
    assert lp.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    torch.testing.assert_close(lp, lp_ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ent, ent_ref, atol=1e-6, rtol=1e-5)
    assert mine.grad.dtype == dtype, "the gradient comes back in the logits' dtype"
    torch.testing.assert_close(mine.grad.float(), ref.grad.float(), **tol)


@pytest.mark.parametrize("with_entropy,entropy_grad", [(False, False), (True, False), (True, True)])
def test_gradcheck_float64(with_entropy, entropy_grad):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 5, 9, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 9, (2, 5), generator=g)

    def fn(z):
        lp, ent = token_logprobs(z, targets, with_entropy, entropy_grad, block_elements=20)
        return (lp, ent) if entropy_grad else lp

    assert torch.autograd.gradcheck(fn, (logits,))


def test_masked_vocabulary_contributes_nothing():
    """-inf logits (a masked vocabulary): probability 0, no NaN in values or gradients."""
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(4, 6, generator=g, dtype=torch.float64)
    logits[:, :3] = float("-inf")
    targets = torch.tensor([3, 4, 5, 3])
    full = logits.clone().requires_grad_(True)
    lp, ent = token_logprobs(full, targets, with_entropy=True, entropy_grad=True, block_elements=6)
    (lp.sum() + ent.sum()).backward()
    finite = logits[:, 3:].clone().requires_grad_(True)
    lp_ref, ent_ref = reference(finite, targets - 3)
    (lp_ref.sum() + ent_ref.sum()).backward()
    torch.testing.assert_close(lp, lp_ref)
    torch.testing.assert_close(ent, ent_ref)
    torch.testing.assert_close(full.grad[:, 3:], finite.grad)
    assert (full.grad[:, :3] == 0).all()


def test_entropy_is_a_detached_metric_unless_asked():
    logits = torch.randn(2, 3, 5, requires_grad=True)
    targets = torch.zeros(2, 3, dtype=torch.long)
    lp, ent = token_logprobs(logits, targets, with_entropy=True, entropy_grad=False)
    assert lp.requires_grad and not ent.requires_grad
    _, ent = token_logprobs(logits, targets, with_entropy=True, entropy_grad=True)
    assert ent.requires_grad
    assert token_logprobs(logits, targets)[1] is None
    with torch.no_grad():
        lp, ent = token_logprobs(logits, targets, with_entropy=True, entropy_grad=True)
    assert not lp.requires_grad and not ent.requires_grad


def test_strided_views_and_two_dimensional_logits():
    logits = torch.randn(5, 8, 13)
    targets = torch.randint(0, 13, (5, 7))
    lp, _ = token_logprobs(logits[:, :-1], targets, block_elements=30)      # a non-contiguous view
    torch.testing.assert_close(lp, reference(logits[:, :-1], targets)[0])
    lp2, ent2 = token_logprobs(logits[0], targets[0].new_tensor(list(range(8))), with_entropy=True)
    assert lp2.shape == (8,) and ent2.shape == (8,)


def test_mismatched_targets_are_an_error():
    with pytest.raises(ValueError, match="does not match logits"):
        token_logprobs(torch.randn(2, 3, 5), torch.zeros(2, 4, dtype=torch.long))


# --------------------------------------------------------------- through a model

@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_causal_lm(make_tiny_model(tmp_path_factory.mktemp("tiny_token_logprobs")))


def _textbook_forward(model, batch, autocast: bool):
    """Log-probs and entropies of a whole-sequence forward pass, the textbook way ([b, T])."""
    ids = batch.input_ids
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else torch.autocast("cpu", enabled=False)
    with ctx:
        logits = model(input_ids=ids, attention_mask=batch.attention_mask.long()).logits
    lp, ent = reference(logits[:, :-1], ids[:, 1:])
    zeros = torch.zeros(ids.shape[0], 1)
    lp, ent = torch.cat([zeros, lp], dim=1), torch.cat([zeros, ent], dim=1)
    return torch.where(batch.loss_mask, lp, 0.0), torch.where(batch.loss_mask, ent, 0.0)


def _parameter_grads(model, forward, batch, autocast: bool):
    model.zero_grad(set_to_none=True)
    if forward is None:
        lp, ent = _textbook_forward(model, batch, autocast)
    else:
        lp, ent = forward(model, batch, with_entropy=True, autocast=autocast, entropy_grad=True)
    weights = torch.linspace(-1.0, 1.0, lp.numel()).reshape(lp.shape)
    ((lp * weights).sum() + 0.3 * ent.sum()).backward()    # a policy term and an entropy bonus
    grads = [p.grad.detach().clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    return lp.detach(), ent.detach(), grads


@pytest.mark.parametrize("autocast", [False, True])
@pytest.mark.parametrize("forward", [forward_logprobs, forward_logprobs_shared], ids=["plain", "shared"])
def test_model_gradients_match_the_textbook_pass(model, forward, autocast):
    batch = build_batch([[5, 6, 7, 8], [5, 6, 7, 8], [11, 12]], [[20, 21, 22], [23], [30, 31, 32, 33, 2]],
                        [0, 0, 1], [False, False, True], pad_token_id=0)
    lp_ref, ent_ref, g_ref = _parameter_grads(model, None, batch, autocast)
    lp, ent, grads = _parameter_grads(model, forward, batch, autocast)
    tol = {"atol": 1e-5, "rtol": 1e-4} if not autocast else {"atol": 2e-2, "rtol": 2e-2}
    torch.testing.assert_close(lp, lp_ref, **tol)
    torch.testing.assert_close(ent, ent_ref, **tol)
    for mine, ref in zip(grads, g_ref):
        torch.testing.assert_close(mine, ref, **tol)
