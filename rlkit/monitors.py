"""Reward-hacking monitors, logged every training step as ``monitor/...`` (config ``monitor:``).

All three are computed over every rank's rows of the step (the trainer merges the ranks'
``rollout_stats`` first, rlkit/trainer.py); a monitor with nothing to measure logs nothing
rather than a made-up 0.

``monitor/length_corr``
    The within-group correlation of reward and response length: the Pearson correlation of
    ``score - mean score of its group`` with ``length - mean length of its group``, pooled over
    all groups: ``sum(ds * dl) / sqrt(sum(ds^2) * sum(dl^2))`` over the rows of the groups in
    which both the scores and the lengths vary.  A group whose scores are all equal, or whose
    lengths are all equal (a single row included), contributes nothing; when no group is left,
    nothing is logged.  ``score`` is the total score (as in ``reward/mean``); length is the
    number of sampled tokens; unscored rows (every component NaN) are left out.  Near +1:
    longer completions earn more within a prompt (length hacking); prompts do not mix.
``monitor/collapse``
    The share of this step's rewarded completions whose final answer equals the previous step's
    most common final answer among its rewarded completions.  Rewarded: the value of
    ``rewards.accuracy_component`` is > 0 when that component exists in the step, else the total
    score is > 0.  The final answer is ``monitor.answer_fn(completion)`` (default
    ``final_answer`` below); None never matches.  The most common answer breaks ties by the
    smallest string.  Nothing is logged at a run's first step, after a step without rewarded
    completions, or in a step without any.  The previous answer is saved in checkpoints, so a
    resumed run logs collapse at its first step (a checkpoint written before the monitors
    existed has none: that step logs nothing).
``monitor/format_only``
    The share of completions whose format component scored > 0 while the accuracy component
    (``rewards.accuracy_component``) scored <= 0 (its minimum, 0, for a 0/1 correctness), over the
    completions both components scored (not NaN).  The format component is
    ``monitor.format_component``; unset, a component literally named ``format`` is used if
    there is one, else nothing is logged (no guessing).
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Any, Callable

from rewards.math import extract_answer

PREFIX = "monitor/"


def final_answer(text: Any) -> str | None:
    """The default ``monitor.answer_fn``: a completion's final answer, for any task.

    After a ``####`` or with a ``\\boxed{...}`` it is rewards.math's ``extract_answer`` (GSM8K's
    number after the last ``####``, thousands commas dropped; else the last ``\\boxed{}``);
    otherwise the last non-empty line.  Whitespace runs become one space, the ends are stripped;
    None for an empty completion.  For math completions that end in prose, set
    ``monitor.answer_fn: rewards.math:extract_answer`` (the last number)."""
    if not isinstance(text, str) or not text.strip():
        return None
    found = None
    if "####" in text or "\\boxed" in text or "\\fbox" in text:
        found = extract_answer(text)
    if found is None:
        found = [line for line in text.splitlines() if line.strip()][-1]
    return " ".join(found.split()) or None


def length_corr(scores: list[float], lengths: list[float], group_ids: list[int]) -> float | None:
    """Pearson correlation of within-group score and length deviations, pooled over the groups
    in which both vary (module docstring); None when no such group exists."""
    groups: dict[Any, list[int]] = {}
    for i, g in enumerate(group_ids):
        groups.setdefault(g, []).append(i)
    cross = var_s = var_l = 0.0
    for rows in groups.values():
        s = [float(scores[i]) for i in rows]
        n = [float(lengths[i]) for i in rows]
        if max(s) == min(s) or max(n) == min(n):  # exact test: a mean of equal floats may be off by an ulp
            continue
        mean_s, mean_l = sum(s) / len(s), sum(n) / len(n)
        for a, b in zip(s, n):
            cross += (a - mean_s) * (b - mean_l)
            var_s += (a - mean_s) ** 2
            var_l += (b - mean_l) ** 2
    if var_s == 0.0 or var_l == 0.0:
        return None
    return cross / math.sqrt(var_s * var_l)


def most_common(answers: list[str | None]) -> str | None:
    """The most frequent answer that is not None (ties: the smallest string); None if none."""
    counts = Counter(a for a in answers if a is not None)
    return min(counts, key=lambda a: (-counts[a], a)) if counts else None


def collapse_share(answers: list[str | None], rewarded: list[bool], previous: str | None) -> float | None:
    """Share of the rewarded rows whose answer is ``previous`` (the previous step's most common
    rewarded answer); None without a previous answer or without a rewarded row."""
    mine = [a for a, r in zip(answers, rewarded) if r]
    if previous is None or not mine:
        return None
    return sum(a == previous for a in mine) / len(mine)


def format_only_share(format_values: list[float], accuracy_values: list[float]) -> float | None:
    """Share of the rows both components scored where format > 0 and accuracy <= 0; None when
    no row has both."""
    both = [(f, a) for f, a in zip(format_values, accuracy_values) if not (math.isnan(f) or math.isnan(a))]
    if not both:
        return None
    return sum(f > 0 and a <= 0 for f, a in both) / len(both)


def format_component(monitor_cfg, names: list[str]) -> str | None:
    """The component the format-only share reads: ``monitor.format_component``, else one named
    ``format`` among ``names``, else None."""
    if monitor_cfg.format_component is not None:
        return monitor_cfg.format_component
    return "format" if "format" in names else None


def rewarded_rows(stats: dict, accuracy: str | None) -> list[bool]:
    """Which rows count as rewarded: the accuracy component > 0 when the step has it, else the
    total score > 0 (a NaN accuracy is not rewarded)."""
    values = stats["components"].get(accuracy) if accuracy else None
    return [v > 0 for v in (values if values is not None else stats["scores"])]


class Monitor:
    """The monitors of a run: ``answers`` per rank (texts stay on their rank), ``update`` on the
    merged stats; holds the previous step's most common rewarded answer (``state_dict``)."""

    def __init__(self, answer_fn: Callable[[str], Any] = final_answer, accuracy: str | None = None,
                 format_name: str | None = None):
        self.answer_fn, self.accuracy, self.format_name = answer_fn, accuracy, format_name
        self.previous: str | None = None

    @classmethod
    def from_config(cls, cfg) -> "Monitor":
        from rewards.pool import load_callable

        names = [spec.name or spec.fn.rsplit(":", 1)[-1] for spec in cfg.rewards.functions]
        return cls(load_callable(cfg.monitor.answer_fn), cfg.rewards.accuracy_component,
                   format_component(cfg.monitor, names))

    def answers(self, completions: list[str]) -> list[str | None]:
        """``answer_fn`` of every completion, as text (None stays None; a completion the function
        raises on has no answer: a monitor never stops a run)."""
        out = []
        for text in completions:
            try:
                answer = self.answer_fn(text)
            except Exception:  # noqa: BLE001 - a user's extractor failing on one odd completion
                answer = None
            out.append(None if answer is None else str(answer))
        return out

    def update(self, stats: dict) -> dict:
        """The ``monitor/...`` metrics of a step from ``merge_stats`` output (``scores``,
        ``lengths``, ``group_ids``, ``components``, ``answers``); remembers this step's most
        common rewarded answer for the next."""
        components = stats["components"]
        scored = [True] * len(stats["scores"])
        if components:
            scored = [any(not math.isnan(values[i]) for values in components.values()) for i in range(len(scored))]
        keep = [i for i, ok in enumerate(scored) if ok]
        metrics: dict[str, float] = {}
        corr = length_corr([stats["scores"][i] for i in keep], [stats["lengths"][i] for i in keep],
                           [stats["group_ids"][i] for i in keep])
        if corr is not None:
            metrics[PREFIX + "length_corr"] = corr
        rewarded = rewarded_rows(stats, self.accuracy)
        answers = stats.get("answers") or [None] * len(rewarded)
        share = collapse_share(answers, rewarded, self.previous)
        if share is not None:
            metrics[PREFIX + "collapse"] = share
        self.previous = most_common([a for a, r in zip(answers, rewarded) if r])
        if self.format_name in components and self.accuracy in components:
            share = format_only_share(components[self.format_name], components[self.accuracy])
            if share is not None:
                metrics[PREFIX + "format_only"] = share
        return metrics

    def state_dict(self) -> dict:
        return {"previous": self.previous}

    def load_state_dict(self, state: dict) -> None:
        self.previous = state.get("previous")
