"""``model.gradient_checkpointing``: the decoder layers run again in the backward pass, and the
step equals the one without it (same log-probs, gradients and updated weights: dropout stays
off although transformers checkpoints only layers in training mode).

The tiny model gets ``attention_dropout: 0.5``, so a policy put in training mode as a whole
would change its log-probs.  One micro-batch per step: layer calls before the loss are the
forward pass, calls after it are the recomputation in the backward pass.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import tiny_overrides
from rlkit.batch import build_batch
from rlkit.config import load_config
from rlkit.backends.single import SingleBackend
from rlkit.testing import make_tiny_model

LAYERS = 2  # make_tiny_model's default


@pytest.fixture(scope="module")
def dropout_model(tmp_path_factory) -> str:
    path = make_tiny_model(tmp_path_factory.mktemp("gc_model"), layers=LAYERS)
    config = Path(path, "config.json")
    config.write_text(json.dumps({**json.loads(config.read_text()), "attention_dropout": 0.5}))
    return path


def fixed_batch():
    g = torch.Generator().manual_seed(0)
    prompts, completions, groups = [], [], []
    for gi, prompt in enumerate([[5, 6, 7, 8, 9], [11, 12, 13], [20, 21, 22, 23]]):
        for _ in range(3):  # shared prompts: the prefix-sharing pass has something to share
            prompts.append(prompt)
            completions.append(torch.randint(4, 90, (int(torch.randint(1, 8, (1,), generator=g)),),
                                             generator=g).tolist())
            groups.append(gi)
    return build_batch(prompts, completions, groups, [True] * len(prompts), pad_token_id=0)


def one_step(model: str, role: str, gc: bool, *extra: str) -> dict:
    """One ``train_step`` on the fixed batch: the per-token outputs (log-probs or values) of the
    training pass and of the no-grad pass before it, the layer calls before and after the loss,
    the gradient norm and the updated weights."""
    cfg = load_config(None, tiny_overrides(model) + [
        "train.lr=1e-2", "train.grad_clip=1e9", f"model.gradient_checkpointing={str(gc).lower()}", *extra])
    torch.manual_seed(0)
    backend = SingleBackend(cfg, 10, role)
    if role == "critic":  # the value head starts at zero: values that depend on the backbone
        with torch.no_grad():
            backend.model.head.weight.normal_(0, 1, generator=torch.Generator().manual_seed(1))
    layers = [m for m in backend.model.modules() if type(m).__name__ == "LlamaDecoderLayer"]
    assert len(layers) == LAYERS
    calls = [0]
    for layer in layers:  # a pre-hook: a recomputation stops once it has what backward needs
        layer.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    batch = fixed_batch()
    seen = {"eval_out": backend.logprobs(batch, 16)}  # no-grad pass, eval mode: no dropout
    calls[0] = 0

    def loss_fn(out, _entropy, micro):
        seen["out"], seen["forward_calls"] = out.detach().clone(), calls[0]
        weights = torch.linspace(0.5, 1.5, int(micro.loss_mask.sum()))
        return (out[micro.loss_mask] * weights).sum(), {}

    metrics = backend.train_step([batch], loss_fn)
    return {**seen, "recomputed_calls": calls[0] - seen["forward_calls"], "grad_norm": metrics["grad_norm"],
            "weights": {n: p.detach().clone() for n, p in backend.model.named_parameters()}}


CASES = {  # id: (backend role, overrides)
    "policy": ("policy", ["train.share_prompt_prefix=false"]),
    "policy-shared-prefix": ("policy", ["train.share_prompt_prefix=true"]),
    "policy-lora": ("policy", ["train.share_prompt_prefix=false", "model.lora.r=4", "model.lora.dropout=0.5"]),
    "critic": ("critic", []),
}


@pytest.mark.parametrize("case", list(CASES))
def test_activations_are_recomputed_and_the_step_is_unchanged(case, dropout_model, one_thread):
    role, extra = CASES[case]
    plain = one_step(dropout_model, role, False, *extra)
    ckpt = one_step(dropout_model, role, True, *extra)
    assert plain["recomputed_calls"] == 0
    assert ckpt["recomputed_calls"] == LAYERS  # every layer ran again, once, in the backward pass
    assert ckpt["forward_calls"] == LAYERS     # (the shared-prefix pass trains as the plain pass)
    exact = case != "policy-shared-prefix"     # the plain and the shared pass differ by rounding
    tol = dict(rtol=0, atol=0) if exact else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ckpt["out"], plain["out"], **tol)
    torch.testing.assert_close(ckpt["out"], ckpt["eval_out"], rtol=1e-5, atol=1e-5)  # dropout stayed off
    assert ckpt["grad_norm"] == pytest.approx(plain["grad_norm"], rel=1e-6 if exact else 1e-4)
    assert ckpt["grad_norm"] > 1e-3
    for name, weight in plain["weights"].items():
        torch.testing.assert_close(ckpt["weights"][name], weight, **(tol if exact else dict(rtol=1e-4, atol=1e-6)))


def test_no_grad_passes_run_without_recomputation(dropout_model, one_thread):
    """After a training step, ``logprobs`` (old and reference log-probs) is back in eval mode
    with its KV cache: the shared-prefix pass there equals the plain one."""
    cfg = load_config(None, tiny_overrides(dropout_model) + ["model.gradient_checkpointing=true"])
    backend = SingleBackend(cfg, 10)
    batch = fixed_batch()
    backend.train_step([batch], lambda logp, _entropy, micro: (logp[micro.loss_mask].sum(), {}))
    shared = backend.logprobs(batch, 16)
    backend.forward = backend.train_forward  # the plain pass
    torch.testing.assert_close(backend.logprobs(batch, 16), shared, rtol=1e-5, atol=1e-5)
    assert not any(m.training for m in backend.model.modules())
