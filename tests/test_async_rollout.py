"""Generation ahead of training (rlkit/async_rollout.py): the producer thread's bound on rounds
ahead, version stamps and staleness, the drop of stale rounds, the resume point, errors; the
config refusals; and real runs with the in-process vLLM engine (ledger, staleness metrics,
exact resume).  The server mode, the run-started server and the SIGKILL test are in
tests/test_async_server.py."""
from __future__ import annotations

import json
import threading

import pytest

from rlkit.async_rollout import AheadProducer
from rlkit.backends.collectives import LocalCollectives
from rlkit.batch import build_batch
from rlkit.config import ConfigError, load_config
from rlkit.data import PromptSampler
from rlkit.logging import PhaseTimer
from rlkit.producer import Produced


class Rounds:
    """``make_round`` with real batches (one row per prompt); each call waits for ``release``
    when ``gated``, so a test decides when a generation ends."""

    def __init__(self, gated: bool = False, fail_at: int | None = None):
        self.calls, self.gated, self.fail_at = 0, gated, fail_at
        self.release = threading.Semaphore(0)
        self.started = threading.Semaphore(0)

    def __call__(self, drawn, timer, out: Produced):
        self.calls += 1
        self.started.release()
        if self.gated:
            self.release.acquire()
        if self.fail_at is not None and self.calls == self.fail_at:
            raise ValueError("engine died")
        ids = [i for i, _ in drawn]
        out.failures += 1
        return build_batch([[1, 2]] * len(ids), [[3]] * len(ids), ids, [True] * len(ids), pad_token_id=0)


def _ahead(rounds, capacity=1, max_staleness=1, rows=10):
    sampler = PromptSampler([{"prompt": str(i)} for i in range(rows)], seed=0)
    return AheadProducer(rounds, sampler, LocalCollectives(), prompts_per_step=2, capacity=capacity,
                         max_staleness=max_staleness), sampler


def _take(ahead):
    out = Produced(batch=None)
    out.batch = ahead.take(PhaseTimer(), out)
    return out


def test_the_thread_makes_at_most_capacity_rounds_ahead_and_stamps_versions():
    rounds = Rounds()
    ahead, _ = _ahead(rounds, capacity=2, max_staleness=2)
    try:
        first = _take(ahead)          # starts the thread; round 1 stamped version 0
        assert first.draws == [0, 1] and first.failures == 1
        for _ in range(3):            # rounds 1-3 drawn (2 ahead of the trainer), all at version 0
            rounds.started.acquire()
        ahead.weights_pushed()        # version 1
        second = _take(ahead)         # made while version 0 was in the engine
        ahead.weights_pushed()        # version 2
        third = _take(ahead)
        metrics = ahead.step_metrics()
        assert [second.draws, third.draws] == [[2, 3], [4, 5]]
        # rounds 2 and 3 were drawn before any push: staleness 0, 0 (round 1), 1, 1, 2, 2
        assert metrics["staleness/mean"] == 1.0 and metrics["staleness/max"] == 2.0
        assert metrics["staleness/dropped"] == 0.0
        for _ in range(2):
            rounds.started.acquire()
        assert ahead.in_flight() == [6, 7, 8, 9]   # two rounds ahead (capacity 2), nothing more
        assert rounds.calls == 5
    finally:
        ahead.close(5)


def test_a_round_staler_than_the_bound_is_dropped_and_counted():
    rounds = Rounds()
    ahead, _ = _ahead(rounds, capacity=2, max_staleness=1)
    try:
        _take(ahead)
        for _ in range(3):
            rounds.started.acquire()
        for _ in range(3):            # three pushes while rounds 2 and 3 wait (stamped 0)
            ahead.weights_pushed()
        out = _take(ahead)            # rounds 2 and 3 have staleness 3 > 1: dropped; round 4 is fresh
        metrics = ahead.step_metrics()
        assert out.dropped_stale == [2, 3, 4, 5]
        assert metrics["staleness/dropped"] == 4.0   # samples (2 rounds x 2 rows)
        assert out.draws == [6, 7] and metrics["staleness/max"] <= 1
    finally:
        ahead.close(5)


def test_the_checkpointed_position_is_the_oldest_round_not_taken():
    rounds = Rounds(gated=True)
    ahead, sampler = _ahead(rounds, capacity=1)
    try:
        rounds.release.release()
        _take(ahead)                  # round 1 taken; round 2 (draws 2, 3) is being generated
        rounds.started.acquire()
        rounds.started.acquire()
        assert sampler.state_dict() == {"epoch": 0, "position": 4}
        assert ahead.state_dict() == {"epoch": 0, "position": 2}   # draws 2 and 3 are drawn again
        assert ahead.in_flight() == [2, 3]
        resumed = PromptSampler(sampler.rows, seed=0)
        resumed.load_state_dict(ahead.state_dict())
        assert [i for i, _ in resumed.next_with_ids(2)] == [2, 3]
    finally:
        rounds.release.release()
        ahead.close(5)


def test_a_failing_generation_reaches_the_trainer():
    ahead, _ = _ahead(Rounds(fail_at=2), capacity=1)
    try:
        _take(ahead)
        with pytest.raises(ValueError, match="engine died"):
            _take(ahead)
    finally:
        ahead.close(5)


@pytest.mark.parametrize("overrides, key", [
    (["rollout.mode=async", "algo.rollout_correction=token_tis"], "rollout.mode"),   # hf generates with the policy
    (["rollout.backend=vllm", "rollout.mode=async"], "algo.rollout_correction"),
    (["rollout.backend=vllm", "rollout.mode=async", "algo.rollout_correction=token_tis",
      "rollout.weight_update=pause"], "rollout.weight_update"),
    (["rollout.backend=vllm", "rollout.mode=one_step_off", "algo.rollout_correction=token_tis",
      "rollout.max_staleness=2"], "rollout.max_staleness"),
    (["rollout.backend=vllm", "rollout.max_staleness=3"], "rollout.max_staleness"),
    (["rollout.backend=vllm", "rollout.mode=ahead"], "rollout.mode"),
    (["rollout.backend=vllm", "rollout.server_cpus=[0]"], "rollout.server_cpus"),
    (["rollout.backend=vllm_server", "rollout.server_url=localhost:8000"], "rollout.server_url"),
])
def test_settings_that_cannot_work_are_refused_at_load(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, ["rollout.backend=hf", *overrides])


def test_the_shipped_async_config_loads():
    cfg = load_config("configs/async_arith.yaml")
    assert (cfg.rollout.mode, cfg.rollout.server_url, cfg.rollout.weight_update) == ("async", "auto", "pause")


def _ledger(run_dir):
    """The draw indices consumed per step, superseded lines after a resume marker dropped."""
    steps: dict[int, list[int]] = {}
    for line in (run_dir / "ledger.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "resume" in record:
            steps = {s: d for s, d in steps.items() if s <= record["resume"]}
        else:
            steps[record["step"]] = record["consumed"] + record["dropped_stale"]
    return steps


def _train(run_dir, tiny_model, cli, *extra):
    from conftest import tiny_overrides

    overrides = tiny_overrides(tiny_model, "vllm", rollout__mode="async", rollout__max_staleness="2",
                               algo__rollout_correction="token_tis") + [
        "rewards.functions=[{fn: 'rlkit.testing_rewards:CountingReward', name: digits}]",
        "rewards.accuracy_component=digits", "eval.every=0", "eval.before=false", *extra]
    res = cli(overrides, run_dir=run_dir)
    assert res.returncode == 0, res.describe()
    return res


def test_an_async_run_with_the_engine_in_process_logs_staleness_and_resumes_exactly(tiny_model, cli, tmp_path):
    """4 steps, 2 rounds ahead at most: staleness 0, 1, 2, 2 (the thread starts at step 1 and
    then stays 2 rounds ahead); the ledger holds every draw once.  Resumed from the step-2
    checkpoint, the run trains the prompts that were in flight there, in order."""
    run = tmp_path / "run"
    _train(run, tiny_model, cli, "train.steps=4", "train.save_every=2", "train.keep_checkpoints=0")
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [m for m in metrics if m["kind"] == "train"]
    # round 2 is drawn before step 1's push; later stamps depend on the threads' timing
    staleness = [m["staleness/max"] for m in train]
    assert staleness[:2] == [0.0, 1.0] and max(staleness) <= 2.0
    assert all(m["rollout/is_weight"] > 0 and "time/wait_for_samples" in m for m in train)
    assert _ledger(run) == {1: [0, 1], 2: [2, 3], 3: [4, 5], 4: [6, 7]}
    extra = __import__("torch").load(run / "checkpoints/step_2/extra.pt", weights_only=False)
    assert extra["in_flight"] in ([4, 5], [4, 5, 6, 7])   # one or two rounds made ahead at step 2
    resumed = tmp_path / "resumed"
    _train(resumed, tiny_model, cli, "train.steps=5", f"train.resume={run / 'checkpoints/step_2'}")
    assert _ledger(resumed) == {3: [4, 5], 4: [6, 7], 5: [8, 9]}
