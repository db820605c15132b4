"""Rollouts generated ahead of training: ``rollout.mode`` one_step_off | async.

``sync`` (the default) generates each step's rollouts when the step starts, with the weights the
previous step pushed.  In the other modes ``AheadProducer`` runs ``RolloutProducer.make_round``
(draw prompts, generate, score: no collectives) in a thread of its own while the trainer trains:

- at most ``capacity`` rounds are generated but not yet taken (``one_step_off``: 1;
  ``async``: ``rollout.max_staleness``); the thread waits for the trainer beyond that
  (``time/wait_for_trainer``), and the trainer waits for a round that is not ready
  (``time/wait_for_samples``);
- every round is stamped with the *policy version* the engine held when its generation started
  (the number of weight updates pushed so far).  When the trainer takes it, its staleness is the
  trainer's version minus the stamp; with one round per step it is at most ``capacity``.  A round
  staler than ``rollout.max_staleness`` (possible when the filters of dynamic sampling take
  several rounds in one step) is dropped and counted (``staleness/dropped``, in samples): every
  rank drops the same rounds, decided on the largest staleness over the ranks;
- weight updates meet generation in flight as ``rollout.weight_update`` says: ``finish`` (the
  update waits for the engine's current ``generate`` call, which ends on the old weights) or
  ``pause`` (``vllm_server``: the server freezes its requests, takes the new weights and
  resumes them, so one completion may span two versions; its stamp is the older one);
- the loss corrects for the lag with the engine's log-probs as the behaviour policy and the
  trainer's own (before the update) as the proximal one: ``algo.rollout_correction``, which these
  modes require (decoupled PPO; rlkit/objective.py).

**Exact resume.**  Prompts are drawn in order and rounds are taken in order, so the prompts the
trainer consumed are a prefix of the draws.  A checkpoint saves the sampler's state *before* the
oldest round drawn but not taken (``state_dict``), so a resumed run draws the prompts that were
in flight again: none is lost and none is trained twice.  ``ledger.jsonl`` in the run folder
records, per step, the draw indices consumed (trained or dropped by a filter) and dropped stale.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from rlkit.logging import PhaseTimer
from rlkit.producer import Produced


@dataclass
class Round:
    """One round made ahead: its draws, the sampler before them, the version it started on."""

    version: int
    sampler_state: dict
    draw_ids: list[int]
    produced: Produced = None  # type: ignore[assignment]  # batch, failures, metrics of the round
    seconds: dict = field(default_factory=dict)


class Serialized:
    """``target`` with the calls of ``methods`` made under ``lock`` (other attributes pass
    through): the engine and the reward are used by two threads, one call at a time."""

    def __init__(self, target: Any, lock, methods: tuple[str, ...]):
        self._target, self._lock, self._methods = target, lock, methods

    def __getattr__(self, name: str):
        attr = getattr(self._target, name)
        if name not in self._methods or not callable(attr):
            return attr

        def locked(*args, **kwargs):
            with self._lock:
                return attr(*args, **kwargs)
        return locked


class AheadProducer:
    """The producer thread and its queue (see the module docstring).

    ``make_round(drawn, timer, produced)`` is ``RolloutProducer.make_round``; ``collectives``
    the training backend (``all_reduce``, ``is_main``); ``sampler`` the ``PromptSampler``."""

    def __init__(self, make_round, sampler, collectives, prompts_per_step: int, capacity: int, max_staleness: int):
        self.make_round, self.sampler, self.collectives = make_round, sampler, collectives
        self.prompts_per_step, self.capacity, self.max_staleness = prompts_per_step, capacity, max_staleness
        self.version = 0                 # weight updates pushed to the engine
        self._cond = threading.Condition()
        self._ready: deque[Round] = deque()
        self._making: Round | None = None
        self._error: BaseException | None = None
        self._stop = False
        self._thread: threading.Thread | None = None
        self._waited_for_trainer = 0.0
        self.step_record: dict = self._empty_record()

    @staticmethod
    def _empty_record() -> dict:
        return {"staleness": [], "dropped_samples": 0, "generate": 0.0, "score": 0.0}

    # ------------------------------------------------------------ the producer thread

    def start(self) -> None:
        if self._thread is None:
            import torch

            # OpenMP's thread count is per thread: the engine's kernels expect the trainer's (vLLM's
            # CPU worker turns torch.set_num_threads into a no-op after binding its threads, so the
            # thread sets it with torch's own setter).
            threads = torch.get_num_threads()
            self._thread = threading.Thread(target=self._loop, args=(threads,), name="rlkit-rollout-producer",
                                            daemon=True)
            self._thread.start()

    def _loop(self, threads: int) -> None:
        import torch

        try:
            torch._C.set_num_threads(threads)
            while True:
                with self._cond:
                    started = time.perf_counter()
                    while not self._stop and len(self._ready) >= self.capacity:
                        self._cond.wait()
                    self._waited_for_trainer += time.perf_counter() - started
                    if self._stop:
                        return
                    state = self.sampler.state_dict()
                    drawn = self.sampler.next_with_ids(self.prompts_per_step)
                    item = Round(self.version, state, [i for i, _ in drawn])
                    self._making = item
                timer = PhaseTimer()
                item.produced = Produced(batch=None)  # type: ignore[arg-type]
                item.produced.batch = self.make_round(drawn, timer, item.produced)
                item.seconds = dict(timer.seconds)
                with self._cond:
                    self._making = None
                    self._ready.append(item)
                    self._cond.notify_all()
        except BaseException as exc:  # noqa: BLE001 - handed to the trainer's thread by take()
            with self._cond:
                self._error, self._making = exc, None
                self._cond.notify_all()

    # ------------------------------------------------------------ the trainer's side

    def take(self, timer, out: Produced):
        """The next round that is fresh enough, its counts merged into ``out``: the batch."""
        self.start()
        while True:
            with timer("wait_for_samples"), self._cond:
                while not self._ready and self._error is None:
                    self._cond.wait()
                if self._error is not None:  # the same exception (RolloutServerError, ...) as in sync mode
                    raise self._error
                item = self._ready.popleft()
                self._cond.notify_all()
            lag = self.version - item.version
            worst = int(self.collectives.all_reduce([lag], op="max")[0])  # every rank drops the same rounds
            if worst > self.max_staleness:
                out.dropped_stale.extend(item.draw_ids)
                self.step_record["dropped_samples"] += item.produced.batch.size
                continue
            record = self.step_record
            out.draws.extend(item.draw_ids)
            record["staleness"].extend([lag] * item.produced.batch.size)
            record["generate"] += item.seconds.get("generate", 0.0)
            record["score"] += item.seconds.get("score", 0.0)
            out.failures += item.produced.failures
            out.truncated += item.produced.truncated
            for name, values in item.produced.metrics.items():
                out.metrics.setdefault(name, []).extend(values if isinstance(values, list) else [values])
            return item.produced.batch

    def step_metrics(self) -> dict:
        """``staleness/...`` of the step just produced (in samples), the time the producer thread
        waited for the trainer and spent generating and scoring the rounds taken (then reset).
        The trainer's own wait is its timer's ``time/wait_for_samples``."""
        record, self.step_record = self.step_record, self._empty_record()
        with self._cond:
            waited, self._waited_for_trainer = self._waited_for_trainer, 0.0
        lags = record["staleness"] or [0]
        return {"staleness/mean": sum(lags) / len(lags), "staleness/max": float(max(lags)),
                "staleness/dropped": float(record["dropped_samples"]), "time/wait_for_trainer": waited,
                "rollout/generate_s": record["generate"], "rollout/score_s": record["score"]}

    def weights_pushed(self) -> None:
        """The trainer pushed an update into the engine: later rounds carry the new version."""
        with self._cond:
            self.version += 1

    def _pending(self) -> list[Round]:
        """Rounds drawn but not taken, oldest first (ready ones, then the one being made); under ``_cond``."""
        return list(self._ready) + ([self._making] if self._making is not None else [])

    def state_dict(self) -> dict:
        """The sampler's state before the oldest round not yet taken (the resume point)."""
        with self._cond:
            pending = self._pending()
            return dict(pending[0].sampler_state) if pending else self.sampler.state_dict()

    def in_flight(self) -> list[int]:
        """Draw indices drawn but not taken (the ledger's in-flight prompts at a checkpoint)."""
        with self._cond:
            return [i for r in self._pending() for i in r.draw_ids]

    def close(self, timeout_s: float) -> None:
        """Stop drawing; wait for a generation in flight to end (it is discarded)."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s)
