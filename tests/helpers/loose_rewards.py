"""Deliberately loose or broken rewards (and a custom perturber) for tests/test_reward_check.py.

Each reward here has a hole that ``rlkit reward-check`` must name; they are test fixtures, never
meant for training.
"""
from __future__ import annotations

from rewards.math import extract_answer


def _gold(answer: str) -> str:
    return extract_answer(str(answer)) or str(answer)


def contains_gold(completions, answer, **columns):
    """1.0 when the gold number appears anywhere in the completion (the classic loose checker)."""
    return [float(_gold(gold) in text) for text, gold in zip(completions, answer)]


def near_gold(completions, answer, **columns):
    """1.0 when the completion's final number is within 1 of the gold one (|pred - gold| <= 1)."""
    out = []
    for text, gold in zip(completions, answer):
        pred = extract_answer(text)
        try:
            out.append(float(abs(float(pred) - float(_gold(gold))) <= 1))
        except (TypeError, ValueError):
            out.append(0.0)
    return out


def always_one(completions, **columns):
    """1.0 for everything: no output is worse than another."""
    return [1.0] * len(completions)


def longer_is_better(completions, answer, **columns):
    """Right answers score 1 plus a bonus per character: padding pays."""
    out = []
    for text, gold in zip(completions, answer):
        right = extract_answer(text) == _gold(gold)
        out.append(float(right) + (len(text) / 1e5 if right else 0.0))
    return out


def fragile(completions, answer, **columns):
    """Exact final answers, but raises on an empty completion and gives None on long ones."""
    out = []
    for text, gold in zip(completions, answer):
        if not text:
            raise ValueError("empty completion")
        out.append(None if len(text) > 5000 else float(extract_answer(text) == _gold(gold)))
    return out


def exact_word(completions, answer, **columns):
    """1.0 when the completion is the answer word, ignoring case (a hole the word perturber finds)."""
    return [float(text.strip().lower() == str(gold).lower()) for text, gold in zip(completions, answer)]


class WordPerturber:
    """A user's own perturber for one-word answers (``--perturber helpers.loose_rewards:WordPerturber``)."""

    ties_ok = frozenset()

    def reference(self, row):
        return str(row["answer"])

    def perturb(self, row, reference):
        return [("upper_case", reference.upper()), ("other_word", reference + "s")]

    def degenerate(self, row, reference):
        return [("empty", "")]
