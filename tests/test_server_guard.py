"""The guard between a trainer and its vLLM server (rlkit/rollout/server_guard.py), with a stand-in
server that ignores SIGTERM (a vLLM API server hung in its graceful shutdown does the same): the
guard's grace period ends in SIGKILL to the server's whole process group, whether the guard is
told to stop or its parent dies."""
from __future__ import annotations

import signal
import subprocess
import sys
import time

from conftest import REPO_ROOT, child_pids, process_group, subprocess_env

# a "server" that ignores SIGTERM and has a child in its group (vLLM's engine process)
STUBBORN = ["sh", "-c", "trap '' TERM; sleep 300 & sleep 300 & wait"]


def _server_of(guard_pid: int) -> int:
    deadline = time.time() + 20
    while time.time() < deadline:
        children = child_pids(guard_pid)
        if children and len(process_group(children[0])) == 3:  # sh and its two sleeps
            return children[0]
        time.sleep(0.05)
    raise AssertionError("the guard did not start the stand-in server")


def _gone(pgid: int, timeout: float) -> bool:
    deadline = time.time() + timeout
    while process_group(pgid) and time.time() < deadline:
        time.sleep(0.05)
    return not process_group(pgid)


def _guard(grace_s: float) -> list[str]:
    return [sys.executable, "-m", "rlkit.rollout.server_guard", str(grace_s), "--", *STUBBORN]


def test_sigterm_to_the_guard_ends_a_server_that_ignores_sigterm_after_the_grace_period():
    guard = subprocess.Popen(_guard(1.0), cwd=REPO_ROOT, env=subprocess_env())
    server = _server_of(guard.pid)
    guard.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert len(process_group(server)) == 3  # still inside the grace period: SIGTERM alone did not end it
    assert guard.wait(15) == 0
    assert _gone(server, 5), f"left behind: {process_group(server)}"


def test_a_parent_killed_with_sigkill_takes_the_guarded_server_down():
    parent_code = (
        "import subprocess, sys, time\n"
        "from rlkit.rollout.managed_server import _child_setup\n"
        f"guard = subprocess.Popen({_guard(1.0)!r}, start_new_session=True, preexec_fn=_child_setup([]))\n"
        "print(guard.pid, flush=True)\n"
        "time.sleep(300)\n")
    parent = subprocess.Popen([sys.executable, "-c", parent_code], cwd=REPO_ROOT, env=subprocess_env(),
                              stdout=subprocess.PIPE, text=True)
    guard_pid = int(parent.stdout.readline())
    server = _server_of(guard_pid)
    parent.kill()
    parent.wait(10)
    assert _gone(server, 15), f"orphaned: {process_group(server)}"
    assert _gone(guard_pid, 5)


def test_the_guard_exits_with_the_server_code_and_clears_itsprocess_group():
    done = subprocess.run([sys.executable, "-m", "rlkit.rollout.server_guard", "5", "--", "sh", "-c",
                           "echo $$; sleep 300 & exit 3"], cwd=REPO_ROOT, env=subprocess_env(),
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 3
    assert _gone(int(done.stdout.split()[0]), 5)  # the server's leftover child (an engine process) is killed
