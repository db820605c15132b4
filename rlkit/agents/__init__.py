"""Agents: multi-turn episodes with executed tools (``agent.env`` in the config).

    from rlkit.agents import Environment, Step

    def lookup(word: str) -> str:
        \"\"\"Look a word up.

        Args:
            word: The word.
        \"\"\"
        return DICTIONARY.get(word, "not found")

    class Dictionary(Environment):
        tools = (lookup,)

``env.py`` has the interface, ``tools.py`` schemas, parsing and contained execution,
``render.py`` the chat-template token arithmetic, ``runner.py`` the turn-by-turn rollout, and
``calc.py`` / ``sql.py`` the built-in environments.  ``RolloutProducer`` (rlkit/producer.py)
turns episodes into a ``RolloutBatch`` whose ``loss_mask`` is False on environment tokens.
"""
from __future__ import annotations

import functools

from rlkit.agents.env import ENVIRONMENTS, Environment, EnvTypeError, Step, Turn
from rlkit.agents.runner import Episode, EpisodeRunner
from rlkit.agents.tools import Tool, ToolCall, ToolError, ToolResult, make_tool, parse_tool_calls

__all__ = ["ENVIRONMENTS", "Environment", "EnvTypeError", "Episode", "EpisodeRunner", "Step", "Tool", "ToolCall",
           "ToolError", "ToolResult", "Turn", "build_runner", "episode_metrics", "episode_rows", "load_environment",
           "make_tool", "parse_tool_calls"]


def load_environment(name: str) -> type:
    """The environment class for ``agent.env``: a registered name or ``"module:Class"``."""
    from rewards.pool import load_callable

    if name not in ENVIRONMENTS and ":" not in name:
        raise ValueError(f"unknown environment {name!r}; choose {', '.join(sorted(ENVIRONMENTS))} "
                         "or give 'module:Class'")
    env = load_callable(ENVIRONMENTS.get(name, name))
    if not (isinstance(env, type) and issubclass(env, Environment)):
        raise TypeError(f"{name!r} is {env!r}, not a subclass of rlkit.agents.Environment")
    return env


def build_runner(agent_cfg, backend, tokenizer, system_prompt: str | None = None,
                 max_model_len: int | None = None, max_prompt_tokens: int | None = None) -> EpisodeRunner:
    """An ``EpisodeRunner`` for ``agent_cfg`` (an AgentConfig with ``env`` set) on ``backend``."""
    from rewards.pool import check_picklable
    from rlkit.agents.render import ChatRenderer
    from rlkit.agents.tools import ToolExecutor, make_tools

    env_cls = load_environment(agent_cfg.env)
    tools = make_tools(getattr(env_cls, "tools", ()))
    for tool in tools.values():
        check_picklable(tool.fn, f"tool {tool.name}")
    executor = ToolExecutor(tools, timeout_s=agent_cfg.tool_timeout_s, num_workers=agent_cfg.tool_workers,
                            max_chars=agent_cfg.max_observation_chars)
    executor.start()
    return EpisodeRunner(backend, functools.partial(env_cls, **agent_cfg.env_kwargs),
                         ChatRenderer(tokenizer, system_prompt), executor, tokenizer,
                         max_turns=agent_cfg.max_turns, max_episode_tokens=agent_cfg.max_episode_tokens,
                         max_model_len=max_model_len, max_prompt_tokens=max_prompt_tokens)


def episode_metrics(episodes: list[Episode]) -> dict[str, float]:
    """``agent/*`` of a step: turns, tool calls and tool errors (failed or malformed calls) per
    episode, the shares of truncated episodes and of episodes whose environment failed, and
    the share of the episodes' tokens after the prompt that the model sampled (the trained ones)."""
    n = max(len(episodes), 1)
    tokens = sum(len(e.token_ids) for e in episodes)
    model = sum(sum(e.model_mask) for e in episodes)
    return {
        "agent/turns_mean": sum(len(e.turns) for e in episodes) / n,
        "agent/tool_calls_per_episode": sum(e.tool_calls for e in episodes) / n,
        "agent/tool_errors": sum(e.tool_errors for e in episodes) / n,
        "agent/truncated_frac": sum(e.truncated for e in episodes) / n,
        "agent/env_errors": sum(e.env_error is not None for e in episodes) / n,
        "agent/model_token_frac": model / tokens if tokens else 1.0,
    }


def episode_rows(episodes: list[Episode], rows: list[dict]) -> list[dict]:
    """Per episode the row the rewards see: the dataset columns, ``completion`` (the final text),
    ``transcript`` (the conversation), ``turn_steps`` (turn rewards over model tokens), counts,
    and ``env_error`` (None, or why the environment ended the episode: it is then unscored)."""
    return [{**rows[e.prompt_index], "completion": e.text, "transcript": e.messages,
             "turn_steps": e.turn_steps(), "turns": len(e.turns), "tool_calls": e.tool_calls,
             "tool_errors": e.tool_errors, "truncated": e.truncated, "env_error": e.env_error} for e in episodes]
