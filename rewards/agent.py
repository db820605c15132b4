"""The turn rewards of multi-turn episodes as a reward component (``turn``, added by rlkit when
``agent.env`` is set).

An environment's ``Step.reward`` for a turn becomes a step ``(start, end, value)`` over that
turn's sampled tokens (the column ``turn_steps``, rlkit/agents/runner.py); ``combine()`` then
credits the steps with the component's ``step_credit`` (``agent.turn_credit``: sum, min_form,
clip, delta, clip_delta) and puts each credited value on its turn's last token.  A row without
turn rewards gets None (not applicable).
"""
from __future__ import annotations

from typing import Any

from rewards.core import RewardOutput


def turn_rewards(completions: list[str], turn_steps: list[Any] | None = None, **columns: Any) -> list:
    """Per row: ``RewardOutput(steps=...)`` from ``turn_steps``, or None where there are none."""
    if turn_steps is None:
        return [None] * len(completions)
    return [RewardOutput(score=None, steps=[tuple(s) for s in steps]) if steps else None for steps in turn_steps]
