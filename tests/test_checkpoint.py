"""Checkpoints and exact resume (rlkit/checkpoint.py) on the tiny model.

(a) a run stopped after 2 steps and resumed to 4 equals the uninterrupted 4-step run,
(b) a save killed half-way leaves the previous checkpoint usable, (c) pruning, resume=auto /
never / a path, incomplete folders, (d) a stateful reward's state survives the resume.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import HELPERS, REPO_ROOT, run_cli, subprocess_env, tiny_overrides
from rlkit.checkpoint import (MARKER, CheckpointError, checkpoint_step, latest_checkpoint,
                              list_checkpoints, load_checkpoint, load_weights, read_extra,
                              save_checkpoint, save_weights, start_point)
from rlkit.config import ConfigError, load_config
from rlkit.rng import rng_state, set_rng_state

COUNTING = "rewards.functions=[{fn: 'rlkit.testing_rewards:CountingReward', name: digits}]"
COMPARED = ("reward/mean", "loss/policy", "grad_norm", "entropy", "response_length", "lr",
            "digits/updates", "digits/rows")


def train_lines(run_dir: Path) -> dict[int, dict]:
    lines = [json.loads(s) for s in (run_dir / "metrics.jsonl").read_text().splitlines() if s.strip()]
    return {m["step"]: m for m in lines if m["kind"] == "train"}


def records(run_dir: Path) -> list[tuple[str, int]]:
    lines = [json.loads(s) for s in (run_dir / "metrics.jsonl").read_text().splitlines() if s.strip()]
    return [(m["kind"], m["step"]) for m in lines]


@pytest.fixture(scope="module")
def runs(tiny_model, tmp_path_factory):
    """A: 4 steps straight (resume=auto in an empty folder). B: 2 steps, then resumed to 4."""
    root = tmp_path_factory.mktemp("resume")
    base = tiny_overrides(tiny_model, "hf", train__lr="3e-3", train__save_every=2) + [
        COUNTING, "rewards.accuracy_component=digits"]
    a = run_cli(base + ["train.steps=4", "train.resume=auto"], root / "A")
    b1 = run_cli(base + ["train.steps=2"], root / "B")
    b2 = run_cli(base + ["train.steps=4", "train.resume=auto"], root / "B")
    for res in (a, b1, b2):
        assert res.returncode == 0, res.describe()
    return SimpleNamespace(a=a.run_dir, b=b2.run_dir, b2_stdout=b2.stdout, b2_stderr=b2.stderr)


@pytest.fixture
def keep_rng():
    """Loading a checkpoint sets the global RNGs; give the test process its own back."""
    state = rng_state()
    yield
    set_rng_state(state)


def build_parts(tiny_model: str, run_dir: Path, *extra: str):
    """(cfg, backend, sampler, reward) of a run on the tiny model, built in this process."""
    from rlkit.data import PromptSampler, load_rows
    from rlkit.backends.single import SingleBackend
    from rlkit.scoring import build_reward

    cfg = load_config(None, tiny_overrides(tiny_model, train__output_dir=run_dir) + [COUNTING, *extra])
    rows, _ = load_rows(cfg.data, cfg.train.seed)
    return cfg, SingleBackend(cfg, 10), PromptSampler(rows, cfg.train.seed), build_reward(cfg.rewards)


# ---------------------------------------------------------------- (a) stop / resume equality

def test_resumed_run_equals_uninterrupted_run(runs):
    a, b = train_lines(runs.a), train_lines(runs.b)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    for step in (3, 4):
        for key in COMPARED:
            assert b[step][key] == pytest.approx(a[step][key], abs=1e-6), (step, key, a[step], b[step])
    assert a[4]["trained_rows"] > 0 and a[4]["grad_norm"] > 0

    from safetensors.torch import load_file

    final_a, final_b = load_file(runs.a / "final" / "model.safetensors"), load_file(runs.b / "final" / "model.safetensors")
    start = load_file(Path(load_config(runs.a / "config.yaml").model.path) / "model.safetensors")
    assert final_a.keys() == final_b.keys()
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)
    assert any(not torch.equal(final_a[k], start[k]) for k in final_a), "training did not change the weights"


def test_resume_appends_metrics_and_keeps_the_summary(runs):
    assert records(runs.b) == [("eval", 0), ("train", 1), ("train", 2), ("eval", 2), ("resume", 2),
                               ("train", 3), ("train", 4), ("eval", 4)]
    resume_line = [json.loads(s) for s in (runs.b / "metrics.jsonl").read_text().splitlines()][4]
    assert resume_line["checkpoint"].endswith("step_2") and resume_line["config_changes"] == ["train.steps: 2 -> 4"]
    assert not list(runs.b.glob("metrics.*.jsonl"))          # nothing rotated away
    summary = json.loads((runs.b / "summary.json").read_text())
    assert {"eval_before", "eval_after", "last_train"} <= set(summary)  # eval_before came from the checkpoint
    # the accuracy component counts digits (not 0/1): the closing line gives the held-out reward
    assert "held-out reward" in runs.b2_stdout and "[resume 2]" in runs.b2_stderr
    assert [s for s, _ in list_checkpoints(runs.b)] == [2, 4]


def test_auto_without_checkpoint_starts_fresh(runs):
    assert records(runs.a)[:2] == [("eval", 0), ("train", 1)]
    assert "resume" not in {kind for kind, _ in records(runs.a)}
    assert latest_checkpoint(runs.a) == runs.a / "checkpoints" / "step_4"
    assert checkpoint_step(latest_checkpoint(runs.a)) == 4


# ---------------------------------------------------------------- (d) stateful reward

def test_reward_state_is_restored_on_resume(runs):
    b = train_lines(runs.b)
    assert [b[s]["digits/updates"] for s in (1, 2, 3, 4)] == [1.0, 2.0, 3.0, 4.0]
    assert b[3]["digits/rows"] == 3 * 2 * 4                 # prompts_per_step x num_samples per step
    saved = torch.load(runs.b / "checkpoints" / "step_4" / "reward.pt", weights_only=True)
    assert saved == {"digits": {"updates": 4, "rows": 32}}


def test_reward_state_round_trip_in_process(tiny_model, tmp_path, one_thread, keep_rng):
    cfg, backend, sampler, reward = build_parts(tiny_model, tmp_path / "run")
    reward.update(SimpleNamespace(size=5))
    reward.update(SimpleNamespace(size=7))
    path = save_checkpoint(tmp_path / "run", 3, backend, sampler, reward, cfg)
    _, backend2, sampler2, fresh = build_parts(tiny_model, tmp_path / "run")
    assert fresh.state_dict() == {"digits": {"updates": 0, "rows": 0}}
    assert load_checkpoint(path, backend2, sampler2, fresh) == 3
    assert fresh.state_dict() == {"digits": {"updates": 2, "rows": 12}}


# ---------------------------------------------------------------- (b) a save killed half-way

def test_killed_save_keeps_the_previous_checkpoint(tiny_model, tmp_path, one_thread, keep_rng):
    run_dir = tmp_path / "run"
    err = tmp_path / "helper.stderr"
    with err.open("w") as err_fh:  # a file, not a pipe: a full stderr pipe would block the child
        proc = subprocess.Popen([sys.executable, str(HELPERS / "crash_during_save.py"), tiny_model, str(run_dir)],
                                cwd=REPO_ROOT, env=subprocess_env(), stdout=subprocess.PIPE, stderr=err_fh,
                                text=True)
    expected, lines = None, []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("SAVED "):
                expected = json.loads(line[len("SAVED "):])
            if line.strip() == "PAUSED":
                os.kill(proc.pid, signal.SIGKILL)
                break
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=60)
    assert expected is not None and "PAUSED\n" in lines, ("".join(lines), err.read_text()[-3000:])
    assert proc.returncode == -signal.SIGKILL

    root = run_dir / "checkpoints"
    leftovers = [p for p in root.iterdir() if p.name.startswith(".tmp-step_2")]
    assert len(leftovers) == 1 and not (leftovers[0] / MARKER).exists()
    assert (leftovers[0] / "model.safetensors").exists()      # killed in the middle of the save
    assert not (root / "step_2").exists()
    assert latest_checkpoint(run_dir) == root / "step_1"

    cfg, backend, sampler, reward = build_parts(tiny_model, run_dir, "train.keep_checkpoints=2")
    assert load_checkpoint(root / "step_1", backend, sampler, reward) == 1
    assert sampler.state_dict() == expected["sampler"] and reward.state_dict() == expected["reward"]
    weight_sum = float(sum(p.detach().double().sum() for p in backend.model.parameters()))
    assert weight_sum == pytest.approx(expected["weight_sum"], rel=0, abs=1e-9)
    assert float(torch.rand(())) == expected["next_rand"]     # RNG state restored
    assert read_extra(root / "step_1") == {"note": "step one"}

    save_checkpoint(run_dir, 2, backend, sampler, reward, cfg)
    assert sorted(p.name for p in root.iterdir()) == ["step_1", "step_2"]   # the leftover is gone


# ---------------------------------------------------------------- (c) pruning, finding, errors

def test_keep_checkpoints_prunes_the_oldest(tiny_model, tmp_path, one_thread):
    run_dir = tmp_path / "run"
    cfg, backend, sampler, reward = build_parts(tiny_model, run_dir, "train.keep_checkpoints=2")
    for step in range(1, 5):
        save_checkpoint(run_dir, step, backend, sampler, reward, cfg)
    assert [s for s, _ in list_checkpoints(run_dir)] == [3, 4]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step_3", "step_4"]
    keep_all = load_config(None, tiny_overrides(tiny_model, train__keep_checkpoints=0))
    for step in range(5, 8):
        save_checkpoint(run_dir, step, backend, sampler, reward, keep_all)
    assert [s for s, _ in list_checkpoints(run_dir)] == [3, 4, 5, 6, 7]


def test_latest_ignores_incomplete_and_foreign_folders(tiny_model, tmp_path, one_thread):
    run_dir = tmp_path / "run"
    assert latest_checkpoint(run_dir) is None
    cfg, backend, sampler, reward = build_parts(tiny_model, run_dir)
    save_checkpoint(run_dir, 2, backend, sampler, reward, cfg)
    root = run_dir / "checkpoints"
    half = root / "step_9"
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"truncated")
    (root / "step_x").mkdir()
    (root / ".tmp-step_5-abcd").mkdir()
    assert latest_checkpoint(run_dir) == root / "step_2"
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        load_checkpoint(half, backend, sampler, reward)


def test_resume_from_a_missing_path_names_it(cli, tiny_model, tmp_path):
    missing = tmp_path / "nowhere" / "step_3"
    res = cli(tiny_overrides(tiny_model, train__steps=2, train__resume=missing), timeout=200)
    assert res.returncode == 2, res.describe()
    assert str(missing) in res.stderr and "checkpoint not found" in res.stderr and "train.resume" in res.stderr
    assert "Traceback" not in res.stderr
    assert not res.run_dir.exists()                           # nothing written


def test_start_point_rules(tiny_model, tmp_path, one_thread):
    run_dir = tmp_path / "run"
    cfg, backend, sampler, reward = build_parts(tiny_model, run_dir, "train.steps=4")
    for step in (2, 4):
        save_checkpoint(run_dir, step, backend, sampler, reward, cfg)

    def cfg_with(*extra):
        return load_config(None, tiny_overrides(tiny_model, train__output_dir=run_dir) + list(extra))

    root = run_dir / "checkpoints"
    assert start_point(cfg_with("train.steps=6", "train.resume=auto")) == (root / "step_4", 4)
    assert start_point(cfg_with("train.steps=6", f"train.resume={run_dir}")) == (root / "step_4", 4)
    with pytest.raises(CheckpointError, match="past train.steps=3"):
        start_point(cfg_with("train.steps=3", "train.resume=auto"))
    with pytest.raises(CheckpointError, match="later checkpoints.*step_4"):
        start_point(cfg_with("train.steps=6", f"train.resume={root / 'step_2'}"))
    # a fresh run moves the old checkpoints aside, so `auto` never picks up another run's state
    assert start_point(cfg_with("train.resume=never")) == (None, 0)
    assert latest_checkpoint(run_dir) is None
    [aside] = run_dir.glob("checkpoints.*")
    assert sorted(p.name for p in aside.iterdir()) == ["step_2", "step_4"]


def test_checkpoint_config_is_validated(tiny_model):
    for bad, key in (("train.resume=''", "train.resume"), ("train.resume=Auto", "train.resume"),
                     ("train.save_every=-1", "save_every"), ("train.keep_checkpoints=-2", "keep_checkpoints")):
        with pytest.raises(ConfigError, match=key):
            load_config(None, [bad])
    cfg = load_config(None, [])
    assert (cfg.train.save_every, cfg.train.keep_checkpoints, cfg.train.resume) == (0, 2, "never")


def test_tied_weights_are_stored_once(tmp_path):
    shared = torch.randn(5, 3)
    tensors = {"embed.weight": shared, "lm_head.weight": shared, "norm.weight": torch.ones(3)}
    save_weights(tmp_path / "w.safetensors", tensors)
    back = load_weights(tmp_path / "w.safetensors")
    assert back.keys() == tensors.keys() and all(torch.equal(back[k], tensors[k]) for k in tensors)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "w.safetensors"), framework="pt") as fh:
        assert sorted(fh.keys()) == ["embed.weight", "norm.weight"]


def test_rng_states_round_trip_through_torch_load(tmp_path, keep_rng):
    import random

    import numpy as np

    torch.save(rng_state(), tmp_path / "rng.pt")
    first = (random.random(), float(torch.rand(())), float(np.random.rand()), float(np.random.randn()))
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), float(torch.rand(())), float(np.random.rand()), float(np.random.randn())) == first


def test_lr_schedule_follows_the_config_on_resume(tiny_model, tmp_path, one_thread):
    """Raising train.steps of a cosine run continues on the new schedule, not the saved one."""
    from rlkit.backends.single import SingleBackend, lr_lambda

    lr = 1e-3
    short = load_config(None, tiny_overrides(tiny_model, train__lr=lr, train__lr_schedule="cosine"))
    backend = SingleBackend(short, total_optimizer_steps=2)
    for _ in range(2):
        backend.optimizer.step()
        backend.scheduler.step()
    assert backend.scheduler.get_last_lr()[0] == pytest.approx(0.0, abs=1e-12)   # end of the short schedule
    state = backend.state_dict()
    longer = SingleBackend(short, total_optimizer_steps=4)
    longer.load_state_dict(state)
    expected = lr * lr_lambda("cosine", 0, 4)(2)
    assert longer.scheduler.get_last_lr()[0] == pytest.approx(expected)
    assert longer.optimizer.param_groups[0]["lr"] == pytest.approx(expected)
    assert longer.scheduler.last_epoch == 2
