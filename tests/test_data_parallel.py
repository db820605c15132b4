"""The training loop on 2 DeepSpeed ranks (CPU, gloo, the real launcher): data-parallel rollouts,
metrics over all ranks, ZeRO checkpoints and exact resume, vLLM engines per rank under ZeRO-3.
"""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import assert_engine_matches_export, run_deepspeed_cli, tiny_overrides

pytest.importorskip("deepspeed")
COUNTING = "rewards.functions=[{fn: 'rlkit.testing_rewards:CountingReward', name: digits}]"
BENCH = "eval.benchmarks=[{name: sums, benchmark: arith, limit: 5, max_new_tokens: 8, levels: [1]}]"
COMPARED = ("reward/mean", "loss/policy", "grad_norm", "entropy", "response_length", "lr", "trained_rows")


def lines(run_dir: Path, kind: str = "train") -> dict[int, dict]:
    found = [json.loads(s) for s in (run_dir / "metrics.jsonl").read_text().splitlines() if s.strip()]
    return {m["step"]: m for m in found if m["kind"] == kind}


@pytest.fixture(scope="module")
def zero2_runs(tiny_model, tmp_path_factory):
    """ZeRO-2 with hf rollouts (deterministic): A runs 4 steps, B runs 2 and is resumed to 4."""
    root = tmp_path_factory.mktemp("dp")
    base = tiny_overrides(tiny_model, "hf", train__lr="3e-3", train__save_every=2, train__prompts_per_step=4,
                          backend__zero_stage=2) + [COUNTING, "rewards.accuracy_component=digits"]
    a = run_deepspeed_cli(base + ["train.steps=4", BENCH], root / "A")  # a benchmark after the last step
    b1 = run_deepspeed_cli(base + ["train.steps=2"], root / "B")
    b2 = run_deepspeed_cli(base + ["train.steps=4", "train.resume=auto"], root / "B")
    for res in (a, b1, b2):
        assert res.returncode == 0, res.describe()
    return SimpleNamespace(a=a.run_dir, b=b2.run_dir, base=base, root=root)


def test_both_ranks_generate_and_train(zero2_runs):
    a = lines(zero2_runs.a)
    # 4 prompts x 4 samples a step, 2 prompts per rank: the logged metrics cover all 16 rows
    assert a[1]["digits/rows"] == 8, "each rank's reward saw its own 8 rows"
    assert all(0 < a[s]["trained_rows"] <= 16 for s in a if a[s].get("trained_rows"))
    assert any(a[s]["grad_norm"] > 0 for s in a)
    records = [json.loads(s) for s in (zero2_runs.a / "eval_step4.jsonl").read_text().splitlines()]
    assert len(records) == 4, "the held-out rows of both ranks are gathered"
    assert lines(zero2_runs.a, "eval")[4]["bench/sums/n"] == 5, "each rank generated its share of the benchmark"
    bench = json.loads((zero2_runs.a / "bench" / "sums" / "step_4" / "predictions.json").read_text())
    assert [r["index"] for r in bench] == [0, 1, 2, 3, 4]
    ckpt = zero2_runs.a / "checkpoints" / "step_4"
    assert {"rng.pt", "rng_rank1.pt", "deepspeed", "model.safetensors", "COMPLETE"} <= {p.name for p in ckpt.iterdir()}
    assert json.loads((ckpt / "trainer_state.json").read_text())["world_size"] == 2


def test_resumed_run_equals_uninterrupted_run(zero2_runs):
    a, b = lines(zero2_runs.a), lines(zero2_runs.b)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    for step in (3, 4):
        for key in COMPARED:
            assert b[step].get(key) == pytest.approx(a[step].get(key), abs=1e-6), (step, key)
    assert lines(zero2_runs.b, "resume")[2]["checkpoint"].endswith("step_2")
    from safetensors.torch import load_file

    fa, fb = load_file(zero2_runs.a / "final" / "model.safetensors"), load_file(zero2_runs.b / "final" / "model.safetensors")
    assert fa.keys() == fb.keys() and all(torch.equal(fa[k], fb[k]) for k in fa)


def test_resume_on_another_number_of_ranks_is_refused(zero2_runs, tmp_path):
    from conftest import run_cli

    res = run_cli(zero2_runs.base + ["train.steps=6", f"train.resume={zero2_runs.a}"], tmp_path / "one")
    assert res.returncode == 2, res.describe()
    assert "2 DeepSpeed ranks" in res.stderr and "step_4" in res.stderr


@pytest.mark.parametrize("lora", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["full", "lora"])
def test_zero3_with_vllm_engines_per_rank(tiny_model, tmp_path, lora):
    """Each rank's vLLM engine gets the gathered ZeRO-3 weights (with LoRA: merged, changed layers
    only): its greedy held-out answers after training equal the exported model's under transformers."""
    from rlkit.models import load_causal_lm

    overrides = tiny_overrides(tiny_model, "vllm", train__lr="3e-3", train__prompts_per_step=4,
                               rollout__gpu_memory_utilization="0.05", backend__zero_stage=3) + [
        COUNTING, "rewards.accuracy_component=digits", "train.steps=3"]
    if lora:
        overrides += ["model.lora.r=4", "model.lora.target_modules=[q_proj,v_proj]", "train.lr=5e-2"]
    config = tmp_path / "zero3.yaml"
    config.write_text("backend:\n  zero_stage: 3\nrollout:\n  backend: vllm\n")
    res = run_deepspeed_cli(overrides, tmp_path / "run", config=config)  # via scripts/train_cpu.sh
    assert res.returncode == 0, res.describe()
    train = lines(res.run_dir)
    assert all(train[s]["time/sync"] > 0 for s in train)
    assert any(train[s]["grad_norm"] > 0 for s in train)
    model = load_causal_lm(str(res.run_dir / "final"), "float32", "cpu")
    start = load_causal_lm(tiny_model, "float32", "cpu")
    assert any(not torch.equal(a, b) for a, b in zip(model.state_dict().values(), start.state_dict().values()))
    assert_engine_matches_export(res.run_dir, step=3)
    assert (res.run_dir / "final" / "adapter" / "adapter_config.json").is_file() == lora
