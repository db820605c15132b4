"""The small process between a trainer and the vLLM server it started (``rollout.server_url=auto``).

``python -m rlkit.rollout.server_guard GRACE_S -- ARGV...`` starts ``ARGV`` (the server) in a
process group of its own and waits.  When the guard gets SIGTERM, or its parent dies (the
trainer sets the kernel's parent-death signal on the guard, so a trainer killed with SIGKILL
sends the guard SIGTERM), the guard sends SIGTERM to the server's whole group, waits up to
``GRACE_S`` seconds for the server to exit and then sends SIGKILL to whatever is left of the
group (an API server stuck in its graceful shutdown, an engine process whose server exited).
When the server exits on its own, the guard kills its group's leftovers and exits with the
server's code.  The server itself therefore never outlives the guard's cleanup, which a signal
to the server alone cannot promise: a vLLM API server whose parent died can hang in shutdown.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time


def _kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _stop(server: subprocess.Popen, grace_s: float) -> None:
    _kill_group(server.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while server.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    _kill_group(server.pid, signal.SIGKILL)  # the group: the server and its engine processes
    try:
        server.wait(10.0)
    except subprocess.TimeoutExpired:
        pass


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -m rlkit.rollout.server_guard GRACE_S -- COMMAND...", file=sys.stderr)
        return 2
    grace_s = float(argv[0])
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the trainer decides when the server stops
    server = subprocess.Popen(argv[2:], start_new_session=True)
    while not stopping:
        if server.poll() is not None:
            _kill_group(server.pid, signal.SIGKILL)
            return server.returncode
        time.sleep(0.2)
    _stop(server, grace_s)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
