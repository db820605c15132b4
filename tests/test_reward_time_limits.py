"""Every reward call has a time limit (rewards/core.py, rewards/pool.py CallThread): a hanging sync
or async in-process reward costs the rows of that call, not the run; a batch call that raises is
retried row by row."""

from __future__ import annotations

import asyncio
import logging
import math
import pickle
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from rewards import Component, RewardError, combine

ROOT = Path(__file__).resolve().parents[1]


class Blocker:
    """A reward that blocks (a hung verifier) on batches holding "hang" until released."""

    def __init__(self):
        self.release = threading.Event()
        self.calls = 0

    def __call__(self, completions, **columns):
        self.calls += 1
        if any("hang" in c for c in completions):
            self.release.wait(60)
        return [float(len(c)) for c in completions]


def length(completions, **columns):
    return [float(len(c)) for c in completions]


def _wait_idle(reward, name, limit_s=5.0):
    start = time.monotonic()
    while reward._threads[name].busy:
        assert time.monotonic() - start < limit_s, "the abandoned call did not end after its release"
        time.sleep(0.01)


def test_hanging_sync_reward_times_out_and_the_run_goes_on(caplog):
    blocker = Blocker()
    reward = combine(h=blocker, n=length, timeout_s=0.5, load_grace_s=0.0)
    try:
        start = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="rewards"):
            result = reward.score(["a", "hang", "bcd"])
        elapsed = time.monotonic() - start
        assert 1.4 < elapsed < 5.0, elapsed           # limit: 0.5 s x 3 rows
        assert all(math.isnan(v) for v in result.components["h"])  # the whole call is unscored
        assert result.components["n"] == [1.0, 4.0, 3.0] and result.scores == [1.0, 4.0, 3.0]
        assert [(f.component, f.row) for f in result.failures] == [("h", 0), ("h", 1), ("h", 2)]
        assert all("CallTimeout" in f.error and "timed out after 1.5 s" in f.error for f in result.failures)
        assert "'h'" in caplog.text and "rows 0-2" in caplog.text

        # the hung call still runs in its thread: the component is skipped at once, not called again
        start = time.monotonic()
        again = reward.score(["x", "yz"])
        assert time.monotonic() - start < 0.5
        assert all(math.isnan(v) for v in again.components["h"]) and again.components["n"] == [1.0, 2.0]
        assert all("CallBusy" in f.error and "still running" in f.error for f in again.failures)
        assert blocker.calls == 1

        blocker.release.set()  # the verifier answers at last: the component is used again
        _wait_idle(reward, "h")
        assert reward.score(["x", "yz"]).components["h"] == [1.0, 2.0]
        assert blocker.calls == 2
    finally:
        blocker.release.set()
        reward.close()


async def async_sleeps(completions, **columns):
    if any("hang" in c for c in completions):
        await asyncio.sleep(3600)
    return [float(len(c)) for c in completions]


def test_hanging_async_reward_is_cancelled_at_its_limit():
    reward = combine(a=async_sleeps, timeout_s=0.5, load_grace_s=0.0)
    try:
        start = time.monotonic()
        result = reward.score(["hang", "b"])
        assert time.monotonic() - start < 5.0
        assert all(math.isnan(v) for v in result.components["a"]) and len(result.failures) == 2
        assert result.num_unscored == 2
        _wait_idle(reward, "a", limit_s=2.0)  # cancelled, not abandoned: the thread is free at once
        assert reward.score(["ab", "c"]).components["a"] == [2.0, 1.0]

        async def inside_a_running_loop():
            return reward.score(["hang"])

        start = time.monotonic()
        assert math.isnan(asyncio.run(inside_a_running_loop()).components["a"][0])
        assert time.monotonic() - start < 5.0
    finally:
        reward.close()


def test_async_reward_that_blocks_its_loop_is_abandoned():
    release = threading.Event()

    async def blocks_the_loop(completions, **columns):
        release.wait(60)  # a sync call inside async def: cancellation cannot reach it
        return [1.0] * len(completions)

    reward = combine(b=blocks_the_loop, timeout_s=0.3, load_grace_s=0.0)
    try:
        start = time.monotonic()
        result = reward.score(["a"])
        assert time.monotonic() - start < 5.0 and math.isnan(result.components["b"][0])
        assert "CallBusy" in reward.score(["a"]).failures[0].error
    finally:
        release.set()
        reward.close()


def raises_on_boom_hangs_on_hang(completions, **columns):
    if len(completions) > 1 and any("boom" in c or "hang" in c for c in completions):
        raise ValueError("a row in the batch broke the verifier")
    if "boom" in completions[0]:
        raise ValueError("boom")
    if "hang" in completions[0]:
        time.sleep(3)
    return [float(len(c)) for c in completions]


def test_batch_that_raises_is_retried_row_by_row(caplog):
    reward = combine(v=raises_on_boom_hangs_on_hang, timeout_s=0.5, load_grace_s=0.0)
    try:
        with caplog.at_level(logging.WARNING, logger="rewards"):
            result = reward.score(["ok", "boom", "fine!"])
        assert result.components["v"][0] == 2.0 and result.components["v"][2] == 5.0  # scored one by one
        assert math.isnan(result.components["v"][1])
        assert [(f.component, f.row) for f in result.failures] == [("v", 1)]
        assert "raised on its batch of 3 rows" in caplog.text and "one by one" in caplog.text
        assert "'v' failed on row 1" in caplog.text

        # a row that hangs during the retry costs its row; the rows after it are skipped while it runs
        start = time.monotonic()
        result = reward.score(["ok", "boom", "hang", "abc"])
        assert time.monotonic() - start < 5.0
        assert result.components["v"][0] == 2.0 and all(math.isnan(v) for v in result.components["v"][1:])
        errors = {f.row: f.error for f in result.failures}
        assert sorted(errors) == [1, 2, 3]
        assert "ValueError: boom" in errors[1] and "CallTimeout" in errors[2] and "CallBusy" in errors[3]
    finally:
        reward.close()


def test_limit_is_per_row_with_a_first_call_grace():
    def slow(completions, **columns):
        time.sleep(0.3)
        return [1.0] * len(completions)

    reward = combine(s=slow, timeout_s=0.1, load_grace_s=3.0)
    try:
        assert reward.score(["a"]).components["s"] == [1.0]            # first call: 0.1 + 3.0 s
        _wait_idle(reward, "s")
        assert math.isnan(reward.score(["a"]).components["s"][0])      # 0.1 s for one row
        _wait_idle(reward, "s")
        assert reward.score(["a"] * 12).components["s"] == [1.0] * 12  # 1.2 s for twelve rows
    finally:
        reward.close()


def test_component_timeout_overrides_combine_and_fail_fast_raises():
    blocker, strict_blocker = Blocker(), Blocker()
    try:
        reward = combine(h=Component(blocker, timeout_s=0.2), timeout_s=1000.0, load_grace_s=0.0)
        start = time.monotonic()
        assert math.isnan(reward.score(["hang"]).components["h"][0])
        assert time.monotonic() - start < 5.0
        strict = combine(h=strict_blocker, fail_fast=True, timeout_s=0.2, load_grace_s=0.0)
        with pytest.raises(RewardError, match=r"'h' failed on row 0: CallTimeout: timed out"):
            strict.score(["hang"])
    finally:
        blocker.release.set()
        strict_blocker.release.set()


@pytest.mark.parametrize("kwargs, message", [
    ({"timeout_s": 0}, "timeout_s"), ({"timeout_s": -1.0}, "timeout_s"),
    ({"timeout_s": math.inf}, "timeout_s"), ({"load_grace_s": -1}, "load_grace_s"),
])
def test_bad_time_limits_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        combine(n=length, **kwargs)


def test_bad_component_time_limit_names_the_component():
    with pytest.raises(ValueError, match=r"'n': timeout_s"):
        combine(n=Component(length, timeout_s=0.0))


def test_thread_sees_the_callers_torch_grad_mode():
    torch = pytest.importorskip("torch")
    seen = []

    def records(completions, **columns):
        seen.append((torch.is_grad_enabled(), torch.is_inference_mode_enabled()))
        return [1.0] * len(completions)

    reward = combine(r=records)
    reward.score(["a"])
    with torch.no_grad():
        reward.score(["a"])
    with torch.inference_mode():
        reward.score(["a"])
    assert seen == [(True, False), (False, False), (False, True)]
    reward.close()


def test_a_used_combined_reward_still_pickles():
    reward = combine(n=length)
    assert reward(["ab"]) == [2.0]
    copy = pickle.loads(pickle.dumps(reward))
    assert copy(["abc"]) == [3.0] and reward(["a"]) == [1.0]
    reward.close()


def test_a_hung_call_does_not_block_the_interpreter_exit():
    code = ("import threading, time\n"
            "from rewards import combine\n"
            "def hang(completions, **columns):\n"
            "    threading.Event().wait()\n"
            "reward = combine(h=hang, timeout_s=0.2, load_grace_s=0.0)\n"
            "print(reward(['a']))\n")
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[0.0]"
    assert time.monotonic() - start < 30.0


def test_config_time_limit_is_checked_when_it_loads():
    from rlkit.config import ConfigError, load_config

    config = ROOT / "configs" / "grpo_arith.yaml"
    with pytest.raises(ConfigError, match=r"rewards\.timeout_s"):
        load_config(config, ["rewards.timeout_s=0"])
    assert load_config(config, ["rewards.timeout_s=2.5"]).rewards.timeout_s == 2.5
