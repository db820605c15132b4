"""Tests for the reward contract: combine(), failure isolation, async, RewardOutput, the pool."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time

import pytest

from rewards import (Component, RewardError, RewardModule, RewardOutput, RewardResult, RowFailure, combine,
                     load_callable)


# Module-level (picklable) rewards used by the tests -------------------------------------------

def length(completions, **columns):
    return [float(len(c)) for c in completions]


def has_x(completions, **columns):
    return [1.0 if "x" in c else 0.0 for c in completions]


def only_with_answer(completions, answer, **columns):
    return [None if a is None else float(c == a) for c, a in zip(completions, answer)]


def flaky(completions, **columns):
    if any("boom" in c for c in completions):
        raise ValueError("boom in the batch")
    return [1.0] * len(completions)


def too_short(completions, **columns):
    return [1.0]


async def async_length(completions, **columns):
    await asyncio.sleep(0)
    return [float(len(c)) for c in completions]


def hangs_on_request(completions, **columns):
    if completions[0] == "hang":
        time.sleep(10_000)
    return [float(len(completions[0]))]


def dense(completions, completion_ids, **columns):
    return [RewardOutput(score=1.0, token_rewards=[0.5] * len(ids), steps=[(0, len(ids), 2.0)])
            for ids in completion_ids]


class Counter(RewardModule):
    """A stateful reward: its score is the number of updates seen."""

    def __init__(self):
        self.n = 0

    def __call__(self, completions, **columns):
        return [float(self.n)] * len(completions)

    def update(self, batch):
        self.n += 1
        return {"n": self.n}

    def state_dict(self):
        return {"n": self.n}

    def load_state_dict(self, state):
        self.n = state["n"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# Tests ---------------------------------------------------------------------------------------

def test_weights_and_components():
    reward = combine(length=length, x=(has_x, 10.0), c=Component(has_x, weight=-1.0))
    result = reward.score(["ab", "xyz"])
    assert isinstance(result, RewardResult)
    assert result.components == {"length": [2.0, 3.0], "x": [0.0, 1.0], "c": [0.0, 1.0]}
    assert result.scores == [2.0, 3.0 + 10.0 - 1.0]
    assert reward(["ab", "xyz"]) == result.scores
    assert result.failures == [] and result.num_unscored == 0
    assert result.token_rewards == [None, None] and result.step_rewards == {}


def test_none_is_nan_and_excluded_from_total():
    reward = combine(match=(only_with_answer, 2.0))
    result = reward.score(["a", "b", "c"], answer=["a", None, "x"])
    raw = result.components["match"]
    assert raw[0] == 1.0 and math.isnan(raw[1]) and raw[2] == 0.0
    assert result.scores == [2.0, 0.0, 0.0]
    assert result.num_unscored == 1  # row 1: no component applies


def test_async_reward_with_and_without_running_loop():
    reward = combine(a=async_length, b=length)
    assert reward(["abc"]) == [6.0]

    async def inside_loop():
        return reward(["abcd"])

    assert asyncio.run(inside_loop()) == [8.0]


def test_reward_output_tokens_and_steps():
    reward = combine(dense=(dense, 2.0), plain=length)
    result = reward.score(["ab", "c"], completion_ids=[[1, 2, 3], [4]])
    assert result.scores == [2.0 + 2.0, 2.0 + 1.0]
    assert result.token_rewards == [[1.0, 1.0, 1.0], [1.0]]
    assert result.step_rewards == {"dense": [[(0, 3, 2.0)], [(0, 1, 2.0)]]}


def test_bad_token_rewards_length_is_a_row_failure():
    def bad(completions, **columns):
        return [RewardOutput(1.0, token_rewards=[0.0] * 5)] * len(completions)

    result = combine(bad=bad).score(["a"], completion_ids=[[1, 2]])
    assert math.isnan(result.components["bad"][0])
    assert "token_rewards" in result.failures[0].error


def test_one_failing_row_is_isolated(caplog):
    reward = combine(flaky=flaky, length=length)
    with caplog.at_level(logging.WARNING, logger="rewards"):
        result = reward.score(["ok", "boom here", "fine"])
    assert result.components["flaky"][0] == 1.0 and result.components["flaky"][2] == 1.0
    assert math.isnan(result.components["flaky"][1])
    assert result.scores == [3.0, 9.0, 5.0]
    assert len(result.failures) == 1
    failure = result.failures[0]
    assert isinstance(failure, RowFailure)
    assert (failure.component, failure.row) == ("flaky", 1)
    assert "boom" in failure.error and failure.preview.startswith("boom here")
    assert "'flaky'" in caplog.text and "row 1" in caplog.text


def test_fail_fast_names_component_and_row():
    reward = combine(flaky=flaky, fail_fast=True)
    with pytest.raises(RewardError, match=r"'flaky'.*row 2"):
        reward.score(["ok", "ok", "boom"])


def test_wrong_length_is_an_error_naming_the_component():
    with pytest.raises(RewardError, match="'short'.*1 values for 2"):
        combine(short=too_short).score(["a", "b"])


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="'answer'"):
        combine(length=length).score(["a", "b"], answer=["a"])
    with pytest.raises(TypeError, match="not callable"):
        combine(bad=42)
    with pytest.raises(TypeError, match="picklable"):
        combine(lam=Component(lambda c, **k: [0.0] * len(c), pool=True))


def test_nested_combined_reward():
    inner = combine(length=length, x=(has_x, 2.0))
    outer = combine(inner=(inner, 0.5), x=has_x)
    result = outer.score(["x", "ab"])
    assert result.components["inner"] == [3.0, 2.0]
    assert result.scores == [0.5 * 3.0 + 1.0, 0.5 * 2.0]


def test_update_and_state_dict_forwarding():
    counter = Counter()
    inner = combine(count=counter)
    reward = combine(inner=inner, length=length)
    assert reward.update(batch=None) == {"inner/count/n": 1}
    assert reward(["ab"]) == [1.0 + 2.0]
    state = reward.state_dict()
    assert state == {"inner": {"count": {"n": 1}}}
    counter.n = 7
    reward.load_state_dict(state)
    assert counter.n == 1
    with pytest.raises(KeyError, match="nope"):
        reward.load_state_dict({"nope": {}})


def test_load_callable():
    assert load_callable("rewards.core:combine") is combine
    assert load_callable("rewards.core:RewardOutput.__name__") == "RewardOutput"
    assert load_callable("rewards.math:correctness").__name__ == "correctness"
    with pytest.raises(ImportError, match="rewards.nope:x"):
        load_callable("rewards.nope:x")
    with pytest.raises(AttributeError, match="rewards.math:nope"):
        load_callable("rewards.math:nope")
    reward = combine(fmt="rewards.math:format_reward")
    assert reward(["#### 3", "no"]) == [1.0, 0.0]


def test_pool_kills_a_hung_row_and_keeps_working():
    timeout = 1.0
    with combine(h=Component(hangs_on_request, pool=True), num_workers=2,
                 timeout_s=timeout) as reward:
        start = time.monotonic()
        result = reward.score(["a", "hang", "bcd", "ef"])
        elapsed = time.monotonic() - start
        assert elapsed < timeout + 2.0, elapsed
        assert result.components["h"][0] == 1.0 and result.components["h"][2:] == [3.0, 2.0]
        assert math.isnan(result.components["h"][1])
        assert [(f.component, f.row) for f in result.failures] == [("h", 1)]
        assert "timed out" in result.failures[0].error

        pids = reward._pool.pids
        start = time.monotonic()
        again = reward.score(["x", "hang", "yz"])
        assert time.monotonic() - start < timeout + 1.5
        assert again.components["h"][0] == 1.0 and again.components["h"][2] == 2.0
        killed = [pid for pid in pids if pid not in reward._pool.pids]
        assert len(killed) == 1 and not _alive(killed[0])  # reaped, not a zombie
        assert reward(["abcd"]) == [4.0]
        workers = reward._pool.pids
    assert not any(_alive(pid) for pid in workers)


def test_pool_isolates_errors():
    with combine(flaky=Component(flaky, pool=True)) as reward:
        result = reward.score(["boom", "ok"])
    assert math.isnan(result.components["flaky"][0]) and result.components["flaky"][1] == 1.0
    assert result.failures[0].row == 0 and "ValueError" in result.failures[0].error


def _one_row_unscorable(completions, **columns):
    return [1.0, ValueError("row 1 could not be scored"), 0.5]


def test_an_exception_returned_for_a_row_fails_that_row_only():
    result = combine(a=(_one_row_unscorable, 2.0)).score(["x", "y", "z"])
    assert [(f.component, f.row) for f in result.failures] == [("a", 1)]
    assert "ValueError: row 1 could not be scored" in result.failures[0].error
    assert result.scores[0] == 2.0 and result.scores[2] == 1.0 and math.isnan(result.components["a"][1])
