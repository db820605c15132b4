"""The shared-prompt forward pass gives the plain pass's log-probs, entropies and gradients."""
from __future__ import annotations

import pytest
import torch

from rlkit.batch import build_batch
from rlkit.backends.prefix import forward_logprobs_shared
from rlkit.backends.single import forward_logprobs
from rlkit.models import load_causal_lm
from rlkit.testing import make_tiny_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_causal_lm(make_tiny_model(tmp_path_factory.mktemp("tiny_prefix")))


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    prompts = [[5, 6, 7, 8, 9], [11, 12, 13], [20, 21, 22, 23], [5, 6, 7]]
    P, C, G = [], [], []
    for gi, p in enumerate(prompts):
        for _ in range(3 if gi < 3 else 1):
            n = int(torch.randint(1, 8, (1,), generator=g))
            P.append(p)
            C.append(torch.randint(4, 90, (n,), generator=g).tolist())
            G.append(gi)
    return build_batch(P, C, G, [True] * len(P), pad_token_id=0)


def _grads(model, fn, batch):
    model.zero_grad(set_to_none=True)
    logp, entropy = fn(model, batch, with_entropy=True, autocast=False)
    (logp[batch.loss_mask] * torch.linspace(0.5, 1.5, int(batch.loss_mask.sum()))).sum().backward()
    grads = [p.grad.detach().clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    return logp.detach(), entropy, grads


def test_shared_prefix_matches_plain_forward(model):
    batch = _batch()
    lp_plain, ent_plain, g_plain = _grads(model, forward_logprobs, batch)
    lp_shared, ent_shared, g_shared = _grads(model, forward_logprobs_shared, batch)
    mask = batch.loss_mask
    assert lp_plain[mask].abs().min() > 0, "log-probs should be non-trivial"
    torch.testing.assert_close(lp_shared, lp_plain, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent_shared, ent_plain, atol=1e-5, rtol=1e-5)
    assert (lp_shared[~mask] == 0).all()
    for a, b in zip(g_plain, g_shared):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-4)


def test_shared_prefix_handles_one_token_completions_and_one_row(model):
    batch = build_batch([[3, 4, 5]], [[9]], [0], [True], pad_token_id=0)
    lp_plain, _ = forward_logprobs(model, batch, with_entropy=False, autocast=False)
    lp_shared, _ = forward_logprobs_shared(model, batch, with_entropy=False, autocast=False)
    torch.testing.assert_close(lp_shared, lp_plain, atol=1e-5, rtol=1e-5)
