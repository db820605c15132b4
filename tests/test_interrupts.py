"""Stopping a run from outside (rlkit/interrupts.py): SIGTERM saves a checkpoint at the next step
boundary and exits 0, and the resumed run equals the uninterrupted one; Ctrl-C (SIGINT to the
whole process group, as a terminal sends it) ends with one line naming the last checkpoint and
the command that resumes it, no traceback."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO_ROOT, subprocess_env, tiny_overrides
from rlkit.backends.collectives import LocalCollectives
from rlkit.interrupts import Preemption, interrupted_message

COUNTING = ["rewards.functions=[{fn: 'rlkit.testing_rewards:CountingReward', name: digits}, "
            "{fn: 'rewards.math:correctness', name: correct, weight: 0.0, pool: true}]", "rewards.accuracy_component=digits"]
STEPS = 14


def test_sigterm_sets_the_flag_the_loop_reads_and_is_restored():
    before = signal.getsignal(signal.SIGTERM)
    with Preemption() as stop:
        assert not stop.agreed(LocalCollectives())
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        assert stop.agreed(LocalCollectives())
    assert signal.getsignal(signal.SIGTERM) is before


def test_the_interrupted_line_names_the_last_checkpoint_and_the_resume_command(tmp_path):
    assert "no checkpoint in" in interrupted_message(tmp_path, "c.yaml", ["train.steps=5"])
    for step in (2, 4):
        (tmp_path / "checkpoints" / f"step_{step}").mkdir(parents=True)
        (tmp_path / "checkpoints" / f"step_{step}" / "COMPLETE").write_text(f"{step}\n")
        (tmp_path / "checkpoints" / f"step_{step}" / "trainer_state.json").write_text(json.dumps({"step": step}))
    line = interrupted_message(tmp_path, "c.yaml", ["train.steps=5", "train.resume=never"])
    assert "step_4 (step 4)" in line
    assert line.endswith("resume with: rlkit train --config c.yaml train.steps=5 train.resume=auto")


def _command(tiny_model, run_dir, *extra):
    return [sys.executable, "-m", "rlkit.cli", "train",
            *tiny_overrides(tiny_model, "hf", train__lr="3e-3", train__steps=str(STEPS), train__save_every="0"),
            *COUNTING, "eval.before=false", "eval.after=false", "log.progress=false",
            f"train.output_dir={run_dir}", *extra]


def _start(tiny_model, run_dir, *extra):
    """The run in a session of its own, once it has logged its second step (handlers installed)."""
    proc = subprocess.Popen(_command(tiny_model, run_dir, *extra), cwd=REPO_ROOT, env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    metrics, deadline = run_dir / "metrics.jsonl", time.time() + 120
    while not (metrics.exists() and metrics.read_text().count('"kind": "train"') >= 2):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.02)
    return proc


@pytest.mark.slow
def test_sigterm_checkpoints_at_a_step_boundary_and_the_resumed_run_equals_the_uninterrupted_one(tiny_model,
                                                                                               tmp_path):
    from safetensors.torch import load_file

    straight = subprocess.run(_command(tiny_model, tmp_path / "a"), cwd=REPO_ROOT, env=subprocess_env(),
                              capture_output=True, text=True, timeout=300)
    assert straight.returncode == 0, straight.stderr[-3000:]
    proc = _start(tiny_model, tmp_path / "b")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    stopped = json.loads((tmp_path / "b" / "summary.json").read_text())["preempted_at"]
    assert 2 <= stopped < STEPS and f"stopped by SIGTERM after step {stopped}" in out
    assert (tmp_path / "b" / "checkpoints" / f"step_{stopped}").is_dir() and not (tmp_path / "b" / "final").exists()
    resumed = subprocess.run(_command(tiny_model, tmp_path / "b", "train.resume=auto"), cwd=REPO_ROOT,
                             env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = load_file(tmp_path / "a/final/model.safetensors"), load_file(tmp_path / "b/final/model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert "preempted_at" not in json.loads((tmp_path / "b" / "summary.json").read_text())


def test_ctrl_c_ends_with_one_line_naming_the_checkpoint_and_the_resume_command(tiny_model, tmp_path):
    # 400 steps of about 0.03 s: the run is still going when the signal comes (14 steps could end first)
    proc = _start(tiny_model, tmp_path / "run", "train.save_every=1", "train.steps=400")
    os.killpg(proc.pid, signal.SIGINT)  # the terminal's Ctrl-C: the trainer and its reward workers
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("rlkit: interrupted; last checkpoint ") and "/checkpoints/step_" in last
    assert last.endswith("train.resume=auto") and f"train.output_dir={tmp_path / 'run'}" in last
