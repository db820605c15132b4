"""Checking benchmark specs (``eval.benchmarks`` in a config, or ``rlkit eval`` options).

Apart from the stdlib this imports ``rlkit.eval.benchmarks`` only (for the benchmark names),
so ``rlkit.config`` can check specs when it loads a config without importing the runner, the
checkpoint code or the models.  A spec with ``env`` (multi-turn episodes, rlkit/agents) has its
options checked here (``agent_options_problem``, shared with ``rlkit eval --env``); its
environment is loaded by the ``check_env`` the caller passes (``rlkit.config_checks``).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from rlkit.eval.benchmarks import check_benchmark

SPEC_KEYS = ("name", "benchmark", "data", "limit", "max_new_tokens", "samples", "temperature", "top_p", "tables",
             "db_dir", "instruction", "levels", "chat_template", "system_prompt", "max_prompt_tokens",
             "underscore_to_dot", "env", "max_turns", "max_episode_tokens", "env_kwargs")
AGENT_KEYS = ("max_turns", "max_episode_tokens", "env_kwargs")  # with env: multi-turn episodes (rlkit/agents)


def check_specs(specs: Sequence[dict],
                check_env: Callable[[str, dict], tuple[str, str] | None] | None = None) -> list[dict]:
    """Validated copies of benchmark specs: ``benchmark`` known, no unknown keys, unique names
    (``name`` defaults to the benchmark); with ``env`` sane ``max_turns`` / ``max_episode_tokens``
    / ``env_kwargs`` (``agent_options_problem``), without it none of those three. ValueError
    naming the spec otherwise.  ``check_env(env, env_kwargs)`` -> ``(key, problem)`` or None
    also loads the environment (``rlkit.config_checks.environment_problem``; this module imports
    no rlkit module but the benchmark table, so the caller passes it)."""
    out, names = [], set()
    for i, spec in enumerate(specs):
        if not isinstance(spec, dict) or "benchmark" not in spec:
            raise ValueError(f"benchmark spec {i}: expected a mapping with a 'benchmark' key, got {spec!r:.120}")
        where = f"benchmark spec {i} ({spec.get('name', spec['benchmark'])})"
        unknown = sorted(set(spec) - set(SPEC_KEYS))
        if unknown:
            raise ValueError(f"{where}: unknown keys {unknown}; known: {', '.join(SPEC_KEYS)}")
        check_benchmark(spec["benchmark"])
        if spec.get("underscore_to_dot") not in (None, False, True):
            raise ValueError(f"{where}: underscore_to_dot must be true or false, got {spec['underscore_to_dot']!r}")
        if spec.get("underscore_to_dot") and spec["benchmark"] != "toolcall":
            raise ValueError(f"{where}: underscore_to_dot applies to the toolcall benchmark only")
        _check_agent_spec(spec, where, check_env)
        spec = {**spec, "name": str(spec.get("name") or spec["benchmark"])}
        if spec["name"] in names:
            raise ValueError(f"benchmark spec {i}: name {spec['name']!r} is used twice")
        names.add(spec["name"])
        out.append(spec)
    return out


def _check_agent_spec(spec: dict, where: str, check_env) -> None:
    if spec.get("env") is None:
        given = [k for k in AGENT_KEYS if spec.get(k) is not None]
        if given:
            raise ValueError(f"{where}: {given[0]} has no effect without env (the completions are single-turn)")
        return
    problem = agent_options_problem(spec["env"], spec.get("env_kwargs"), spec.get("max_turns"),
                                    spec.get("max_episode_tokens"), check_env)
    if problem:
        raise ValueError(f"{where}: {problem[0]}: {problem[1]}")
    if spec.get("chat_template") is False:
        raise ValueError(f"{where}: env needs the chat template (chat_template: false given)")
    if spec.get("max_prompt_tokens") is not None:
        raise ValueError(f"{where}: max_prompt_tokens does not apply with env (an episode keeps its whole prompt)")


def agent_options_problem(env: Any, env_kwargs: Any = None, max_turns: Any = None, max_episode_tokens: Any = None,
                          check_env: Callable[[str, dict], tuple[str, str] | None] | None = None
                          ) -> tuple[str, str] | None:
    """``(option, what is wrong)`` for the options of multi-turn episodes (a spec's keys,
    ``rlkit eval --env`` and its options), None when they are fine: ``max_turns`` and
    ``max_episode_tokens`` integers >= 1 (None: the defaults), ``env_kwargs`` a mapping, ``env``
    a name (calculator, sql, plain or ``"module:Class"``), then ``check_env(env, env_kwargs)``
    when given (it loads the environment)."""
    for key, value in (("max_turns", max_turns), ("max_episode_tokens", max_episode_tokens)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            return key, f"must be an integer >= 1, got {value!r}"
    if env_kwargs is not None and not isinstance(env_kwargs, dict):
        return "env_kwargs", f"must be a mapping of the environment's keyword arguments, got {env_kwargs!r:.80}"
    if not isinstance(env, str) or not env.strip():
        return "env", f"must be an environment name (calculator, sql, plain or 'module:Class'), got {env!r:.80}"
    return check_env(env, env_kwargs or {}) if check_env is not None else None
