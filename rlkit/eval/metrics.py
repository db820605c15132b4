"""Benchmark metrics as pure functions: pass@k, maj@k, accuracy and per-category breakdowns.

- ``pass_at_k``: the unbiased estimator of Chen et al. (2021), "Evaluating Large Language Models
  Trained on Code" (arXiv 2107.03374, section 2.1): with n samples of which c are correct,
  pass@k = 1 - C(n - c, k) / C(n, k), computed as the product 1 - prod_{i=n-c+1}^{n} (1 - k / i)
  so that no large binomial coefficient is ever formed.
- ``majority_vote`` / maj@k: self-consistency (Wang et al. 2023, "Self-Consistency Improves Chain of
  Thought Reasoning in Language Models", arXiv 2203.11171): the most frequent extracted answer of
  the k samples wins, ties go to the answer seen first, samples without an answer do not vote.
- ``summarize``: the metrics of one benchmark run from per-row records (see ``summarize``).
- ``episode_summary``: turns, tool calls, tool errors and the truncated share of multi-turn
  episodes (``rlkit eval --env``, rlkit/agents).
"""
from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Hashable, Sequence
from typing import Any

from rlkit.eval.spider_hardness import LEVELS as SPIDER_LEVELS


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k estimate for one problem with ``n`` samples, ``c`` of them correct.

    1 - C(n-c, k) / C(n, k) (Chen et al. 2021, arXiv 2107.03374), evaluated as a product.
    ``pass_at_k(5, 2, 1) == 0.4``, ``pass_at_k(5, 2, 2) == 0.7``. ValueError when ``k > n``,
    ``k < 1`` or ``c`` is outside ``0..n``.
    """
    if k < 1:
        raise ValueError(f"pass@k needs k >= 1, got k={k}")
    if k > n:
        raise ValueError(f"pass@k needs k <= n (samples per problem), got k={k}, n={n}")
    if not 0 <= c <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n, got c={c}, n={n}")
    if n - c < k:  # every k-subset holds a correct sample
        return 1.0
    fail = 1.0
    for i in range(n - c + 1, n + 1):
        fail *= 1.0 - k / i
    return 1.0 - fail


def mean_pass_at_k(counts: Sequence[tuple[int, int]], k: int) -> float:
    """The mean of ``pass_at_k(n, c, k)`` over problems given as ``(n, c)`` pairs (0.0 when empty)."""
    if not counts:
        return 0.0
    return sum(pass_at_k(n, c, k) for n, c in counts) / len(counts)


def majority_vote(answers: Sequence[Hashable | None],
                  equal: Callable[[Any, Any], bool] | None = None) -> int | None:
    """Index of the sample whose answer wins the vote, or None when no sample has an answer.

    Answers that are None do not vote. Without ``equal`` answers vote by plain equality (they
    must be hashable); with ``equal(a, b)`` each answer joins the first earlier group whose first
    answer it equals (e.g. ``rewards.math.is_equivalent``). The largest group wins; on a tie the
    group that appeared first wins. The returned index is the first member of that group.
    """
    groups: list[list[int]] = []  # member indices, in order of first appearance
    by_key: dict[Hashable, int] = {}
    for i, answer in enumerate(answers):
        if answer is None:
            continue
        if equal is None:
            g = by_key.get(answer)
            if g is None:
                by_key[answer] = len(groups)
                groups.append([i])
            else:
                groups[g].append(i)
            continue
        for group in groups:
            if equal(answer, answers[group[0]]):
                group.append(i)
                break
        else:
            groups.append([i])
    if not groups:
        return None
    best = max(range(len(groups)), key=lambda g: (len(groups[g]), -g))
    return groups[best][0]


def maj_at_k(answers: Sequence[Hashable | None], correct: Sequence[bool],
             equal: Callable[[Any, Any], bool] | None = None) -> bool:
    """Whether the majority answer of the samples is correct (False when no sample has an answer)."""
    if len(answers) != len(correct):
        raise ValueError(f"maj@k: {len(answers)} answers but {len(correct)} verdicts")
    winner = majority_vote(answers, equal)
    return winner is not None and bool(correct[winner])


def ks_for(n: int) -> list[int]:
    """The k reported for n samples per problem: 1, 2, 4, ... below n, and n itself."""
    ks, k = [], 1
    while k < n:
        ks.append(k)
        k *= 2
    return ks + [n]


def accuracy(values: Sequence[float | bool | None]) -> float | None:
    """Mean of the verdicts that are not None; None when there are none."""
    scored = [float(v) for v in values if v is not None]
    return sum(scored) / len(scored) if scored else None


# Breakdown values with a natural order, listed in it (others follow, numbers first, then by name).
FIELD_ORDER = {"hardness": SPIDER_LEVELS}  # Spider: easy, medium, hard, extra


def breakdown(records: Sequence[dict], field: str, key: str = "accuracy") -> dict[str, tuple[int, float]]:
    """``{value: (rows, mean of record[key])}`` over the scored records grouped by
    ``record["groups"][field]``; records without that group or without a verdict are left out.
    Values come in ``FIELD_ORDER[field]`` when the field has one (Spider hardness: easy, medium,
    hard, extra), otherwise numbers first in numeric order, then the rest alphabetically."""
    grouped: dict[str, list[float]] = defaultdict(list)
    for record in records:
        value = (record.get("groups") or {}).get(field)
        if value is None or record.get(key) is None:
            continue
        grouped[str(value)].append(float(record[key]))
    known = FIELD_ORDER.get(field, ())
    return {value: (len(v), sum(v) / len(v))
            for value, v in sorted(grouped.items(), key=lambda kv: _sort_key(kv[0], known))}


def _sort_key(value: str, known: Sequence[str] = ()) -> tuple:
    if value in known:
        return (0, float(known.index(value)), "")
    return (1, float(value), "") if is_number(value) else (2, 0.0, value)


def is_number(text: str) -> bool:
    """True when ``text`` parses as a float."""
    try:
        float(text)
    except ValueError:
        return False
    return True


def metric_slug(text: str) -> str:
    """A category value as it appears in a metric name: lower case, runs of other characters than
    letters, digits and ``.`` as one ``_`` (``"Counting & Probability"`` -> ``counting_probability``)."""
    return re.sub(r"[^a-z0-9.]+", "_", str(text).strip().lower()).strip("_") or "none"


def summarize(records: Sequence[dict], vote_equal: Callable[[Any, Any], bool] | None = None) -> dict[str, float]:
    """Metrics of one benchmark run.

    Each record is one problem: ``samples`` (a list of ``{"correct": bool | None, "vote": hashable
    or None, "tokens": int}``, optionally ``"correct_strict"``), ``groups`` (``{field: value}``
    breakdowns) and, filled in by this function, ``accuracy`` (mean correctness over its scored
    samples), ``majority`` (maj@n verdict) and, when samples carry ``correct_strict``,
    ``accuracy_strict``. A sample whose ``correct`` is None (it cannot be judged) is left out of
    its problem's numbers and does not vote; a record whose samples are all None (e.g. a failing
    gold query) is not scored. Returned keys:

    - ``accuracy``: mean per-problem sample accuracy (greedy accuracy when n = 1; pass@1 else);
    - ``accuracy_strict``: the same of ``correct_strict`` (Spider's strict reading), when present;
    - ``pass@k`` for ``k`` in ``ks_for(n)`` and ``maj@n`` when n > 1 (n = the smallest number
      of scored samples of a problem);
    - ``n``: problems scored, ``skipped``: problems not scored, ``response_tokens``: mean tokens;
    - ``accuracy_by_<field>/<value>`` for every breakdown field with more than one value;
    - when the samples were multi-turn episodes, the keys of ``episode_summary``.

    ``vote_equal(a, b)`` replaces plain equality of the ``vote`` values in the maj@n vote.
    """
    scored, skipped = [], 0
    for record in records:
        judged = [s for s in record["samples"] if s.get("correct") is not None]
        if not judged:
            record["accuracy"] = None
            record["majority"] = None
            skipped += 1
            continue
        flags = [bool(s["correct"]) for s in judged]
        record["accuracy"] = sum(flags) / len(flags)
        record["majority"] = maj_at_k([s.get("vote") for s in judged], flags, vote_equal)
        strict = [bool(s["correct_strict"]) for s in judged if s.get("correct_strict") is not None]
        if strict:
            record["accuracy_strict"] = sum(strict) / len(strict)
        scored.append(record)
    metrics: dict[str, float] = {"n": float(len(scored)), "skipped": float(skipped)}
    if not scored:
        return {**metrics, **episode_summary(records)}
    metrics["accuracy"] = sum(r["accuracy"] for r in scored) / len(scored)
    strict_records = [r for r in scored if r.get("accuracy_strict") is not None]
    if strict_records:
        metrics["accuracy_strict"] = sum(r["accuracy_strict"] for r in strict_records) / len(strict_records)
    tokens = [s.get("tokens", 0) for r in records for s in r["samples"]]
    metrics["response_tokens"] = sum(tokens) / len(tokens) if tokens else 0.0
    judged_of = {id(r): [s for s in r["samples"] if s.get("correct") is not None] for r in scored}
    n = min(len(judged_of[id(r)]) for r in scored)
    if n > 1:
        counts = [(n, sum(bool(s.get("correct")) for s in judged_of[id(r)][:n])) for r in scored]
        for k in ks_for(n):
            metrics[f"pass@{k}"] = mean_pass_at_k(counts, k)
        metrics[f"maj@{n}"] = sum(bool(r["majority"]) for r in scored) / len(scored)
    fields = sorted({f for r in scored for f in (r.get("groups") or {})})
    for field in fields:
        parts = breakdown(scored, field)
        if len(parts) > 1:
            for value, (_, acc) in parts.items():
                metrics[f"accuracy_by_{metric_slug(field)}/{metric_slug(value)}"] = acc
    metrics.update(episode_summary(records))
    return metrics


# sample key -> metric: means over every sample that ran as an episode
EPISODE_METRICS = {"turns": "turns_mean", "tool_calls": "tool_calls_per_episode",
                   "tool_errors": "tool_errors_per_episode", "truncated": "truncated_frac"}


def episode_summary(records: Sequence[dict]) -> dict[str, float]:
    """Means over the samples that are multi-turn episodes (they carry ``turns``, ``tool_calls``,
    ``tool_errors`` and ``truncated``), scored or not: ``turns_mean``, ``tool_calls_per_episode``,
    ``tool_errors_per_episode`` and ``truncated_frac``; empty when no sample is an episode."""
    episodes = [s for r in records for s in r["samples"] if "turns" in s]
    if not episodes:
        return {}
    return {name: sum(float(s[key]) for s in episodes) / len(episodes) for key, name in EPISODE_METRICS.items()}
