"""Stopping a run from outside: SIGTERM (a cluster preempting the job) and Ctrl-C.

``Preemption`` turns SIGTERM into a request to stop at the next step boundary: the step in
progress finishes, a checkpoint is saved (unless that step saved one anyway), and ``train()``
returns with ``summary["preempted_at"]``; the command exits 0 and the same command with
``train.resume=auto`` continues exactly (tests/test_interrupts.py).  Under a launcher the ranks
agree on the step (the largest flag over ranks), so a signal that reaches one rank first stops all
of them at the same boundary.

Ctrl-C (SIGINT) stops at once: ``KeyboardInterrupt`` unwinds through ``Run.close`` (engines,
servers and workers shut down) and the command prints one line naming the last checkpoint and
the command that resumes from it (``interrupted_message``).
"""
from __future__ import annotations

import signal
import threading
from pathlib import Path


class Preemption:
    """``with Preemption() as stop: ... if stop.agreed(collectives): ...``"""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def _handler(self, signum, frame) -> None:
        self.requested = True

    def install(self) -> "Preemption":
        if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
            self._previous = signal.signal(signal.SIGTERM, self._handler)
        return self

    def restore(self) -> None:
        """The SIGTERM handler from before ``install``."""
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    __enter__ = install

    def __exit__(self, *exc) -> None:
        self.restore()

    def agreed(self, collectives) -> bool:
        """Whether any rank was asked to stop (one small collective per step)."""
        return bool(collectives.all_reduce([1.0 if self.requested else 0.0], op="max")[0])


def interrupted_message(output_dir: str | Path, config_path: str | None, overrides: list[str]) -> str:
    """The line Ctrl-C leaves: the last checkpoint and the command that resumes from it."""
    from rlkit.checkpoint import checkpoint_step, latest_checkpoint

    latest = latest_checkpoint(output_dir)
    kept = [o for o in overrides if not o.startswith("train.resume=")]
    command = " ".join(["rlkit train", *([f"--config {config_path}"] if config_path else []), *kept,
                        "train.resume=auto"])
    if latest is None:
        return f"rlkit: interrupted; no checkpoint in {output_dir} yet (train.save_every sets how often); " \
               f"start again with: {command}"
    return f"rlkit: interrupted; last checkpoint {latest} (step {checkpoint_step(latest)}); resume with: {command}"
