"""LoRA policies: merged weights equal PEFT's own merge, the sync sends the changed layers (with
their fused siblings), and after a real run vLLM's greedy output equals the merged export's."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from conftest import assert_engine_matches_export, run_cli, tiny_overrides
from rlkit.config import load_config

pytest.importorskip("peft")
TARGETS = "model.lora.target_modules=[q_proj,v_proj]"
COUNTING = "rewards.functions=[{fn: 'rlkit.testing_rewards:CountingReward', name: digits}]"


def lora_backend(tiny_model, *extra):
    from rlkit.backends.single import SingleBackend

    cfg = load_config(None, tiny_overrides(tiny_model, model__lora__r=4, model__lora__alpha=8) + [TARGETS, *extra])
    backend = SingleBackend(cfg, 10)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # fresh adapters have B = 0; give them a real delta
        for name, param in backend.model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=g) * 0.1)
    return backend


def test_only_adapters_train(tiny_model, one_thread):
    backend = lora_backend(tiny_model)
    trainable = [n for n, p in backend.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert sum(len(g["params"]) for g in backend.optimizer.param_groups) == len(trainable)


def test_merged_weights_equal_peft_merge(tiny_model, one_thread):
    backend = lora_backend(tiny_model)
    merged = dict(backend.named_parameters())
    expected = copy.deepcopy(backend.model).merge_and_unload().state_dict()
    assert set(merged) <= set(expected) and set(expected) - set(merged) <= {"lm_head.weight"}  # tied
    for name, tensor in merged.items():
        torch.testing.assert_close(tensor, expected[name], rtol=1e-6, atol=1e-6, msg=name)
    q = "model.layers.0.self_attn.q_proj.weight"
    base = backend.model.get_base_model().model.layers[0].self_attn.q_proj.base_layer.weight
    assert not torch.equal(merged[q], base), "the adapter delta is merged in"


def test_sync_sends_changed_layers_and_fused_siblings(tiny_model, one_thread):
    backend = lora_backend(tiny_model)
    names = {n for n, _ in backend.sync_weights()}
    layers = len(backend.model.get_base_model().model.layers)
    expected = {f"model.layers.{i}.self_attn.{p}_proj.weight" for i in range(layers) for p in "qkvo"}
    assert names == expected  # q and v hold adapters; k rides along (vLLM fuses qkv), o shares the parent


def test_lora_bias_training_syncs_everything(tiny_model, one_thread):
    backend = lora_backend(tiny_model, "model.lora.bias=all")
    assert {n for n, _ in backend.sync_weights()} == {n for n, _ in backend.named_parameters()}


def test_kl_reference_is_the_base_model(tiny_model, one_thread):
    from rlkit.batch import build_batch

    backend = lora_backend(tiny_model, "algo.kl_coef=0.1")
    batch = build_batch([[5, 6, 7]], [[8, 9, 10]], [0], [True], pad_token_id=0)
    ref = backend.ref_logprobs(batch, 4)
    with backend.model.disable_adapter():
        plain = backend._logprobs(backend.model, batch, 4)
    assert torch.equal(ref, plain) and not torch.equal(ref, backend.logprobs(batch, 4))


def test_lora_run_vllm_matches_merged_export(tiny_model, tmp_path):
    """Train with LoRA and vLLM rollouts; the engine's greedy held-out answers after the last
    sync equal transformers' on the exported merged model, and the adapter folder reloads."""
    from peft import PeftModel

    from rlkit.models import load_causal_lm

    overrides = tiny_overrides(tiny_model, "vllm", train__lr="5e-2", model__lora__r=4, train__steps=3,
                               rollout__gpu_memory_utilization="0.05", rewards__accuracy_component="digits"
                               ) + [TARGETS, COUNTING]
    res = run_cli(overrides, tmp_path / "run")
    assert res.returncode == 0, res.describe()
    train = [json.loads(s) for s in (res.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any(m.get("grad_norm", 0) > 0 for m in train if m["kind"] == "train")
    final = res.run_dir / "final"
    merged = load_causal_lm(str(final), "float32", "cpu")
    start = load_causal_lm(tiny_model, "float32", "cpu")
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged.state_dict()[q], start.state_dict()[q]), "LoRA training changed nothing"
    up = "model.layers.0.mlp.up_proj.weight"
    assert torch.equal(merged.state_dict()[up], start.state_dict()[up]), "an untargeted layer moved"
    assert_engine_matches_export(res.run_dir, step=3)
    with_adapter = PeftModel.from_pretrained(start, str(final / "adapter"))
    ids = torch.tensor([[5, 6, 7, 8]])
    torch.testing.assert_close(with_adapter(ids).logits, merged(ids).logits, rtol=1e-4, atol=1e-4)
