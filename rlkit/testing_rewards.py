"""Reward functions for tests: easy targets a tiny random character model learns in seconds.

Plain rewards in the contract of ``rewards.core`` (``fn(completions, **columns) -> list``) and
one stateful reward class (``CountingReward``, for checkpoint tests),
referenced from configs as ``rlkit.testing_rewards:<name>``, e.g.

    rewards.functions=[{fn: 'rlkit.testing_rewards:char_fraction', kwargs: {chars: '7'}}]
"""
from __future__ import annotations

from rewards import RewardModule

DIGITS = "0123456789"


def char_fraction(completions: list[str], chars: str = "7", **columns) -> list[float]:
    """Share of the completion's characters that are in ``chars`` (0.0 for an empty completion).

    A random character-level model emits any one character about 1% of the time, so the
    reward has a small, graded signal from the first step and rises quickly under RL.
    """
    wanted = set(chars)
    return [sum(c in wanted for c in text) / len(text) if text else 0.0 for text in completions]


def digit_fraction(completions: list[str], **columns) -> list[float]:
    """Share of digits in each completion: about 10% for a random character model, so almost
    every group of samples has a non-zero spread (rows get trained from the first step)."""
    return char_fraction(completions, chars=DIGITS)


def vowel_fraction(completions: list[str], **columns) -> list[float]:
    """Share of the letters a, e, i, o, u in each completion: it varies from row to row on any text
    (a random model's word pieces as much as a trained model's answers), so every group of samples
    has a non-zero spread.  The benchmarks' reward (scripts/bench_vs_trl.py)."""
    return char_fraction(completions, chars="aeiouAEIOU")


def explode_on_column(completions: list[str], explode: list | None = None, chars: str = DIGITS,
                      **columns) -> list[float]:
    """``char_fraction``, but raises ``ValueError`` on rows whose ``explode`` column is true.

    Used to check that a failing reward row is isolated (``reward/failures``) and that
    ``rewards.fail_fast`` stops the run with an error naming the row.
    """
    flags = explode if explode is not None else [False] * len(completions)
    for flag, text in zip(flags, completions):
        if flag:
            raise ValueError(f"exploding row (completion {text[:20]!r})")
    return char_fraction(completions, chars=chars)


class CountingReward(RewardModule):
    """A stateful reward for checkpoint tests (a ``RewardModule``): ``char_fraction`` plus counters
    that only ``update()`` changes, saved and restored through ``state_dict()`` / ``load_state_dict()``.

    Referenced as a class (``fn: 'rlkit.testing_rewards:CountingReward'``), so each run builds
    its own instance; ``update`` reports the counters as ``<name>/updates`` and ``<name>/rows``.
    """

    def __init__(self, chars: str = DIGITS):
        self.chars = chars
        self.updates = 0
        self.rows = 0

    def __call__(self, completions: list[str], **columns) -> list[float]:
        return char_fraction(completions, chars=self.chars)

    def update(self, batch) -> dict[str, float]:
        self.updates += 1
        self.rows += batch.size
        return {"updates": float(self.updates), "rows": float(self.rows)}

    def state_dict(self) -> dict[str, int]:
        return {"updates": self.updates, "rows": self.rows}

    def load_state_dict(self, state: dict) -> None:
        self.updates, self.rows = int(state["updates"]), int(state["rows"])


def contains_char(completions: list[str], chars: str = "7", **columns) -> list[float]:
    """1.0 where the completion holds any character of ``chars``, else 0.0: a 0/1 outcome label
    that a random character model gets right part of the time (PRIME tests)."""
    return [float(any(c in text for c in chars)) for text in completions]
