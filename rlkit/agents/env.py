"""The environment interface of a multi-turn episode.

An environment is a small class: ``tools`` (plain functions, rlkit/agents/tools.py), ``reset``
(a dataset row -> the first chat messages) and ``step`` (the model's turn, with its tool calls
already executed -> the next observation, an optional turn reward, and whether the episode is
done).  The defaults make the common case a two-line class::

    class Calculator(Environment):
        tools = (calculator,)

``reset`` then sends the row's ``prompt`` as a user message, and ``step`` answers a turn that
called tools with their results (``role: tool`` messages) and ends the episode on a turn that
called none.  One instance serves one episode; ``__init__`` takes ``agent.env_kwargs``.

The outcome reward (``rewards.functions``) scores ``final_text`` of the episode (the last model
turn without its tool-call blocks); the whole conversation travels to the rewards as the column
``transcript``.  A turn reward lands on that turn's last sampled token and goes through the
run's credit assignment (``agent.turn_credit``), as the component ``turn``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rlkit.agents.tools import CALL_START, TOOL_CALL_BLOCK, ToolCall, ToolResult


class EnvTypeError(TypeError):
    """An environment returned something of the wrong type (a bug in the environment)."""


@dataclass
class Turn:
    """What the model did in one turn."""

    index: int                          # 0 for the first turn
    text: str                           # decoded from the sampled tokens, special tokens skipped
    stop: str                           # "eos" | "tool_call" | "length"
    tool_calls: list[ToolCall] = field(default_factory=list)
    tool_results: list[ToolResult] = field(default_factory=list)  # one per call, in order


@dataclass
class Step:
    """An environment's answer to a turn."""

    messages: list[dict] = field(default_factory=list)  # the next observation (tool results, a user message)
    reward: float | None = None         # turn reward on this turn's last token (None: none)
    done: bool = False


class Environment:
    """Base class: override ``tools``, ``reset`` and ``step`` as needed (see the module docstring)."""

    tools: tuple = ()

    def reset(self, row: dict[str, Any]) -> list[dict]:
        prompt = row["prompt"]
        return [dict(m) for m in prompt] if isinstance(prompt, list) else [{"role": "user", "content": str(prompt)}]

    def tool_kwargs(self) -> dict[str, Any]:
        """Values of the tools' keyword-only parameters for this episode (hidden from the model)."""
        return {}

    def step(self, turn: Turn) -> Step:
        if turn.tool_calls:
            return Step(messages=[{"role": "tool", "content": r.content} for r in turn.tool_results])
        return Step(done=True)


def final_text(turn_texts: list[str]) -> str:
    """The text the outcome reward scores: the last turn without its tool-call blocks."""
    if not turn_texts:
        return ""
    return TOOL_CALL_BLOCK.sub("", turn_texts[-1]).split(CALL_START)[0].strip()


def check_messages(messages: Any, where: str) -> list[dict]:
    if not isinstance(messages, list) or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages):
        raise EnvTypeError(f"{where} must return a list of {{'role': str, 'content': str}} messages, "
                                f"got {_describe(messages)}")
    return messages


def check_step(step: Any, where: str) -> Step:
    if not isinstance(step, Step):
        raise EnvTypeError(f"{where} must return rlkit.agents.Step, got {_describe(step)}")
    check_messages(step.messages, f"{where} (Step.messages)")
    if step.reward is not None and not isinstance(step.reward, (int, float)):
        raise EnvTypeError(f"{where}: Step.reward must be a number or None, got {_describe(step.reward)}")
    if not step.done and not step.messages:
        raise EnvTypeError(f"{where}: a Step that is not done needs messages (the next observation)")
    return step


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:60]}{'...' if len(text) > 60 else ''}"


# name -> "module:Class", imported on use; agent.env also takes a user's "module:Class".  (A plain
# dict rather than rlkit's LazyRegistry: this module is imported by tool worker processes, which
# must not load torch.)
ENVIRONMENTS = {
    "calculator": "rlkit.agents.calc:CalculatorEnv",
    "sql": "rlkit.agents.sql:SQLEnv",
    "plain": "rlkit.agents.env:Environment",
}
