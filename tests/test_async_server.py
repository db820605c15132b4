"""Asynchronous rollouts through a vLLM server the run starts itself (``rollout.server_url=auto``,
``rollout.weight_update=pause``, pinned by ``rollout.server_cpus``): a trainer killed with SIGKILL mid-run takes its server with it
(no orphaned processes), and the run resumed from its last checkpoint neither loses nor repeats a
prompt (the ledger).  Slow: the server takes a while to start on a CPU."""
from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO_ROOT, child_pids, process_group, subprocess_env, tiny_overrides
from test_async_rollout import _ledger

pytest.importorskip("vllm")
pytestmark = pytest.mark.slow

STEPS, PROMPTS = 40, 2


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


def _cpus(pid: int) -> str:
    """The CPUs process ``pid`` may run on, as /proc writes them ("0", "1-3")."""
    with open(f"/proc/{pid}/status") as f:
        return next(line.split(":")[1].strip() for line in f if line.startswith("Cpus_allowed_list"))


def _command(tiny_model, run_dir, *extra):
    overrides = tiny_overrides(tiny_model, "vllm_server", rollout__server_url="auto", rollout__mode="async",
                               rollout__max_staleness="2", rollout__weight_update="pause",
                               rollout__gpu_memory_utilization="0.05", algo__rollout_correction="token_tis",
                               train__prompts_per_step=str(PROMPTS), train__steps=str(STEPS),
                               train__save_every="3", train__keep_checkpoints="0", rollout__server_cpus="[0]")
    return [sys.executable, "-m", "rlkit.cli", "train", *overrides,
            "rewards.functions=[{fn: 'rlkit.testing_rewards:CountingReward', name: digits}]",
            "rewards.accuracy_component=digits", "eval.every=0", "eval.before=false", "log.progress=false",
            f"train.output_dir={run_dir}", *extra]


def test_sigkill_mid_run_leaves_no_server_and_the_resumed_run_consumes_every_prompt_once(tiny_model, tmp_path):
    run_dir = tmp_path / "run"
    out = tmp_path / "first.log"
    with open(out, "w") as f:
        trainer = subprocess.Popen(_command(tiny_model, run_dir), cwd=REPO_ROOT, env=subprocess_env(),
                                   stdout=f, stderr=subprocess.STDOUT)
    try:  # a failed check must not leave the trainer (and its server) running
        ledger = run_dir / "ledger.jsonl"
        deadline = time.time() + 300
        while not (ledger.exists() and len(ledger.read_text().splitlines()) >= 7):  # past the step-6 checkpoint
            assert trainer.poll() is None, out.read_text()[-3000:]
            assert time.time() < deadline, "the run made no progress in 300 s:\n" + out.read_text()[-3000:]
            time.sleep(0.05)
        guard_pid = int(re.search(r"started a vLLM server for the run \(guard pid (\d+)\)", out.read_text()).group(1))
        [server_pid] = child_pids(guard_pid)  # the server runs in a process group of its own under the guard
        assert process_group(server_pid)  # the server and its engine process
        # rollout.server_cpus=[0]: the guard, the server and its engine process on CPU 0, the trainer on the others
        assert {_cpus(pid) for pid in [guard_pid, *process_group(server_pid)]} == {"0"}
        assert "0" not in _cpus(trainer.pid).replace("-", ",").split(",")
        trainer.send_signal(signal.SIGKILL)
        trainer.wait(30)
        assert trainer.returncode == -signal.SIGKILL
        deadline = time.time() + 60  # the parent-death signal reaches the guard, which stops the server's group
        while (process_group(server_pid) or _alive(guard_pid)) and time.time() < deadline:
            time.sleep(0.5)
        assert not process_group(server_pid), f"orphaned server processes: {process_group(server_pid)}"
        assert not _alive(guard_pid)
    finally:
        if trainer.poll() is None:
            trainer.kill()
            trainer.wait(30)
    killed_at = max(json.loads(line)["step"] for line in ledger.read_text().splitlines())
    assert killed_at < STEPS
    resumed = subprocess.run(_command(tiny_model, run_dir, "train.resume=auto"), cwd=REPO_ROOT,
                             env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    steps = _ledger(run_dir)
    assert sorted(steps) == list(range(1, STEPS + 1))
    draws = [i for step in sorted(steps) for i in steps[step]]
    assert sorted(draws) == list(range(STEPS * PROMPTS)), "a prompt was lost or trained twice"
    assert draws == sorted(draws)  # consumed in the order drawn, across the resume
    second_guard = int(re.search(r"\(guard pid (\d+)\)", resumed.stdout).group(1))
    assert second_guard != guard_pid and not _alive(second_guard) and not process_group(second_guard)
