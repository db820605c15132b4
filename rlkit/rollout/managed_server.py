"""The vLLM server a run starts for itself: ``rollout.backend=vllm_server`` with
``rollout.server_url=auto``.

The main rank runs ``rlkit serve``'s command line (``serve_command``) for the policy's weights on
a free port, under a small guard process (rlkit/rollout/server_guard.py) in a session of its own
(a Ctrl-C in the terminal reaches the trainer, which stops the server).  The guard has the
kernel's parent-death signal set: if the trainer dies without stopping the server (SIGKILL, a
crash past ``finally``), the guard gets SIGTERM, sends SIGTERM to the server's process group and
SIGKILL to what is left of it after a grace period, so no process is left behind.
``rollout.server_cpus`` pins the server (and vLLM's CPU threads) to those CPUs and leaves the
others to the trainer: on a small CPU machine the two then overlap instead of competing
(``rollout.mode`` one_step_off / async).
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from rlkit.rollout.vllm_server import RolloutServerError, _free_port, serve_command

_PR_SET_PDEATHSIG = 1
_GRACE_S = 20.0  # how long the guard waits for the server's own shutdown before SIGKILL


def _child_setup(cpus: list[int]):
    def setup() -> None:  # runs in the child between fork and exec
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        except OSError:
            pass  # not Linux: the trainer's close() is then the only way the server stops
        if cpus:
            os.sched_setaffinity(0, cpus)
    return setup


class ManagedServer:
    """A running ``rlkit serve`` process under its guard; ``stop()`` ends it and its engine process."""

    def __init__(self, process: subprocess.Popen, url: str, log_path: Path):
        self.process, self.url, self.log_path = process, url, log_path

    @classmethod
    def start(cls, model_path: str, rollout_cfg, log_path: Path, ready_timeout_s: float = 600.0) -> "ManagedServer":
        """Start the server and wait until its ``/health`` answers (``RolloutServerError`` naming
        the log when it exits or does not come up within ``ready_timeout_s``)."""
        import torch

        port = _free_port()
        extra = ["--enforce-eager"] if rollout_cfg.enforce_eager else []
        argv, env = serve_command(model_path, "127.0.0.1", port, rollout_cfg.dtype,
                                  rollout_cfg.gpu_memory_utilization, rollout_cfg.max_model_len, extra)
        env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)  # the server runs vLLM's usual engine process
        cpus = list(rollout_cfg.server_cpus)
        if cpus and not torch.cuda.is_available():
            env["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(str(c) for c in cpus)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "w") as log:
            guarded = [sys.executable, "-m", "rlkit.rollout.server_guard", str(_GRACE_S), "--", *argv]
            process = subprocess.Popen(guarded, env=env, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True, preexec_fn=_child_setup(cpus))
        server = cls(process, f"http://127.0.0.1:{port}", log_path)
        if cpus:
            server._leave_cpus_to_trainer(cpus)
        deadline = time.monotonic() + ready_timeout_s
        while not server.healthy():
            if process.poll() is not None or time.monotonic() > deadline:
                why = (f"exited with code {process.returncode}" if process.poll() is not None
                       else f"did not answer within {ready_timeout_s:g} s")
                server.stop()
                raise RolloutServerError(f"the vLLM server the run started (rollout.server_url=auto) {why}; "
                                         f"its log: {log_path}")
            time.sleep(0.5)
        print(f"rlkit: started a vLLM server for the run (guard pid {process.pid}) at {server.url}; log: {log_path}",
              flush=True)
        return server

    @staticmethod
    def _leave_cpus_to_trainer(cpus: list[int]) -> None:
        import torch

        others = sorted(set(os.sched_getaffinity(0)) - set(cpus))
        if others:
            os.sched_setaffinity(0, others)
            torch.set_num_threads(len(others))

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        """SIGTERM to the guard, which stops the server's process group (SIGTERM, then SIGKILL after
        its grace period) and exits; SIGKILL to the guard if it has not exited by then."""
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(_GRACE_S + 15.0)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.process.wait(10.0)
        except subprocess.TimeoutExpired:
            pass
