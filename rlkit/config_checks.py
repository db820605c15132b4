"""Load-time checks that need more than the config's types: the functions a config names.

``check_callables(cfg)`` imports every reward ``fn`` and the advantage estimator and checks the
keyword arguments the config gives them (``rewards.functions[i].kwargs``,
``algo.advantage_kwargs``) against their signatures, so a typo or a missing module fails when the
config loads (exit code 2, the key named) rather than at step 1 after the engines started.
It also imports ``monitor.answer_fn`` and checks ``monitor.format_component`` (``check_monitor``).
"""
from __future__ import annotations

import inspect
from typing import Any, Callable

# The columns every reward call receives (rlkit/scoring.py); binding one of them in kwargs
# would be overridden by the call, so it is refused.
_REWARD_CALL_ARGS = ("completions", "prompts", "completion_ids", "completion_offsets")
# What the trainer passes every estimator positionally (rlkit/algorithms/advantages.py).
_ESTIMATOR_ARGS = ("scores", "group_ids", "loss_mask")


def accepted_keywords(fn: Callable, skip: tuple[str, ...] = (), reward: bool = False) -> tuple[list[str], bool]:
    """(the keyword arguments ``fn`` names, whether it accepts any other keyword); for a class,
    those of its ``__init__``.  Parameters in ``skip`` are left out of the names.  A reward
    *function* takes ``**columns`` by contract (dataset columns it does not use), so with
    ``reward`` its ``**`` parameter does not make it accept anything: a keyword bound there would
    be swallowed silently."""
    target = fn.__init__ if inspect.isclass(fn) else fn
    try:
        params = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: nothing can be checked
        return [], True
    names = [p.name for p in params
             if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in skip and p.name != "self"]
    var_keyword = any(p.kind == p.VAR_KEYWORD for p in params)
    return names, var_keyword and (inspect.isclass(fn) or not reward)


def unknown_keywords(fn: Callable, kwargs: dict, skip: tuple[str, ...] = (),
                     reward: bool = False) -> tuple[list[str], list[str]]:
    """(the keys of ``kwargs`` that ``fn`` does not accept, the names it does); see
    ``accepted_keywords``."""
    names, open_ended = accepted_keywords(fn, skip, reward)
    if open_ended:
        return [], names
    return [k for k in kwargs if k not in names or k in skip], names


def check_callables(cfg: Any, error: Callable[[str, str], None]) -> None:
    """Import the reward functions and the estimator named in ``cfg`` and check their kwargs, and
    the ``monitor`` settings (``check_monitor``); ``error(key, message)`` raises."""
    from rewards.pool import load_callable
    from rlkit.algorithms.advantages import get_advantage
    from rlkit.algorithms.credit import CREDIT_MODES, credit_step_rewards

    names: list[str] = []
    for i, spec in enumerate(cfg.rewards.functions):
        key = f"rewards.functions[{i}]"
        try:
            fn = load_callable(spec.fn)
        except Exception as exc:  # noqa: BLE001 - any import failure is the config's error
            error(f"{key}.fn", f"cannot import {spec.fn!r}: {type(exc).__name__}: {exc}")
        skip = () if inspect.isclass(fn) else _REWARD_CALL_ARGS
        bad, known = unknown_keywords(fn, spec.kwargs, skip, reward=True)
        if bad:
            error(f"{key}.kwargs", f"{spec.fn} takes no argument {', '.join(map(repr, bad))}; "
                  f"it accepts: {', '.join(known) or 'none'}")
        if spec.step_credit not in CREDIT_MODES:
            error(f"{key}.step_credit", f"unknown credit {spec.step_credit!r}; choose {', '.join(CREDIT_MODES)}")
        bad, known = unknown_keywords(credit_step_rewards, spec.step_credit_kwargs, ("step_rewards", "mode"))
        if bad:
            error(f"{key}.step_credit_kwargs", f"no argument {', '.join(map(repr, bad))}; accepted: {', '.join(known)}")
        name = spec.name or spec.fn.rsplit(":", 1)[-1]
        if name in names:
            error(f"{key}.name", f"two reward components are named {name!r}; set `name:` on one")
        names.append(name)
    component = cfg.rewards.accuracy_component
    # The default ("correctness") may name nothing: then no accuracy is reported.  A name the
    # user chose must exist, or a typo would silently report none.
    default = type(cfg.rewards)().accuracy_component
    if component not in (None, default) and component not in names:
        error("rewards.accuracy_component", f"{component!r} is not a reward component "
              f"(components: {', '.join(names)}); name one of them, or null")
    check_monitor(cfg, error, names)
    try:
        estimator = get_advantage(cfg.algo.advantage)
    except ValueError as exc:
        error("algo.advantage", str(exc))
    skip = _ESTIMATOR_ARGS + tuple(getattr(estimator, "inputs", ()))
    bad, known = unknown_keywords(estimator, cfg.algo.advantage_kwargs, skip)
    if bad:
        error("algo.advantage_kwargs", f"estimator {cfg.algo.advantage!r} takes no argument "
              f"{', '.join(map(repr, bad))}; it accepts: {', '.join(known) or 'none'}")


def check_monitor(cfg: Any, error: Callable[[str, str], None], names: list[str]) -> None:
    """``monitor``: ``answer_fn`` imports and takes one argument; ``format_component`` names a
    reward component other than the accuracy one, which must exist (rlkit/monitors.py)."""
    from rewards.pool import load_callable

    spec = cfg.monitor.answer_fn
    try:
        fn = load_callable(spec)
    except Exception as exc:  # noqa: BLE001 - any import failure is the config's error
        error("monitor.answer_fn", " ".join(f"cannot import {spec!r}: {type(exc).__name__}: {exc}".split()))
    try:
        inspect.signature(fn).bind("completion")
    except TypeError:
        error("monitor.answer_fn", f"{spec} must be callable with one argument (a completion's text)")
    except ValueError:  # a builtin without a signature: nothing can be checked
        pass
    name = cfg.monitor.format_component
    if name is None:
        return
    if name not in names:
        error("monitor.format_component", f"{name!r} is not a reward component (components: {', '.join(names)})")
    accuracy = cfg.rewards.accuracy_component
    if accuracy not in names or accuracy == name:
        error("monitor.format_component", f"format-only means format without accuracy: it needs "
              f"rewards.accuracy_component naming another component (now {accuracy!r})")


def check_algo(algo: Any, error: Callable[[str, str], None]) -> None:
    """Registered names are checked here so a typo fails at load time, not mid-run."""
    import difflib

    from rlkit.algorithms.advantages import ADVANTAGE_ESTIMATORS
    from rlkit.algorithms.losses import AGGREGATION_MODES, CORRECTION_MODES, KL_ESTIMATORS, POLICY_LOSSES

    for key, value, known in (("algo.advantage", algo.advantage, ADVANTAGE_ESTIMATORS),
                              ("algo.loss", algo.loss, POLICY_LOSSES),
                              ("algo.loss_agg", algo.loss_agg, AGGREGATION_MODES),
                              ("algo.kl_estimator", algo.kl_estimator, KL_ESTIMATORS),
                              ("algo.kl_mode", algo.kl_mode, ("loss", "reward")),
                              ("algo.rollout_correction", algo.rollout_correction, CORRECTION_MODES)):
        if ":" in value and key in ("algo.advantage", "algo.loss"):
            continue  # a user's "module:function", imported when the run starts
        if value not in known:
            close = difflib.get_close_matches(value, list(known), n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            error(key, f"unknown value {value!r}{hint} (known: {', '.join(sorted(known))})")
    low, high = algo.rollout_mask_band
    if algo.rollout_is_cap <= 0 or not 0 <= low < high:
        error("algo.rollout_is_cap", "must be > 0 and algo.rollout_mask_band [low, high] with 0 <= low < high")


ROLLOUT_MODES = ("sync", "one_step_off", "async")   # rlkit/async_rollout.py
WEIGHT_UPDATES = ("finish", "pause")


def check_rollout(cfg: Any, error: Callable[[str, str], None]) -> None:
    """``rollout``: the server settings and the modes that generate ahead (rlkit/async_rollout.py)."""
    r = cfg.rollout
    if r.backend == "vllm_server":
        if r.server_url != "auto" and not r.server_url.startswith(("http://", "https://")):
            error("rollout.server_url", f"{r.server_url!r} is not an http(s) URL (or auto: the run starts one)")
        if r.tensor_parallel_size > 1:
            error("rollout.tensor_parallel_size", "with vllm_server, set tensor parallelism on the server "
                  "(rlkit serve ... --tensor-parallel-size N) and rollout.server_workers to match")
        if r.weight_transfer not in ("auto", "nccl", "gloo"):
            error("rollout.weight_transfer", f"unknown transport {r.weight_transfer!r}; choose auto, nccl or gloo")
        if r.server_workers < 1 or r.weight_bucket_mb <= 0 or r.server_timeout_s <= 0:
            error("rollout.server_workers", "server_workers must be >= 1, weight_bucket_mb and server_timeout_s > 0")
    if r.server_cpus and not (r.backend == "vllm_server" and r.server_url == "auto"):
        error("rollout.server_cpus", "pins the server a run starts itself: needs rollout.backend=vllm_server "
              "and rollout.server_url=auto")
    if not all(isinstance(c, int) and c >= 0 for c in r.server_cpus):
        error("rollout.server_cpus", f"must be a list of CPU ids, got {r.server_cpus!r}")
    if r.mode not in ROLLOUT_MODES:
        error("rollout.mode", f"unknown mode {r.mode!r}; choose {', '.join(ROLLOUT_MODES)}")
    if r.weight_update not in WEIGHT_UPDATES:
        error("rollout.weight_update", f"unknown value {r.weight_update!r}; choose {', '.join(WEIGHT_UPDATES)}")
    if r.max_staleness < 1:
        error("rollout.max_staleness", "must be >= 1 (policy versions a sample may lag)")
    if r.mode == "sync":
        for key, value, default in (("max_staleness", r.max_staleness, 1), ("weight_update", r.weight_update, "finish")):
            if value != default:
                error(f"rollout.{key}", "only applies with rollout.mode one_step_off or async (the mode is sync)")
        return
    if r.mode == "one_step_off" and r.max_staleness != 1:
        error("rollout.max_staleness", "one_step_off is async with max_staleness 1; use rollout.mode=async")
    if r.backend == "hf":
        error("rollout.mode", f"{r.mode} generates while the trainer trains, so it needs an engine of its own: "
              "rollout.backend=vllm_server (or vllm); hf generates with the policy being trained")
    if r.weight_update == "pause" and r.backend != "vllm_server":
        error("rollout.weight_update", "pause freezes a server's requests during the update: needs "
              "rollout.backend=vllm_server (the in-process engine finishes its batch: finish)")
    if r.sleep:
        error("rollout.sleep", f"the engine keeps generating while the trainer trains in mode {r.mode}")
    if cfg.algo.rollout_correction == "none":
        error("algo.rollout_correction", f"rollout.mode={r.mode} trains on samples of older policies: set token_tis "
              "(decoupled PPO, the engine's log-probs as behaviour), seq_tis or seq_mask")


def check_launch(cfg: Any, error: Callable[[str, str], None], environ: dict) -> None:
    """What the launch decides (``WORLD_SIZE`` is set by the launcher before the config loads)
    and the hardware: refused here rather than when the engines start."""
    world = int(environ.get("WORLD_SIZE", "1"))
    tp = 1 if cfg.rollout.backend == "vllm_server" else cfg.rollout.tensor_parallel_size
    if world % tp:
        error("rollout.tensor_parallel_size", f"{tp} must divide the number of ranks ({world})")
    if world == 1 and tp > 1 and cfg.rollout.backend == "vllm":
        error("rollout.tensor_parallel_size", "> 1 needs a launcher with that many ranks per engine "
              "(scripts/train.sh); one process drives a single-device engine")
    if cfg.train.prompts_per_step < world:
        error("train.prompts_per_step", f"{cfg.train.prompts_per_step} is smaller than the number of ranks "
              f"({world}); every rank needs at least one prompt a step")
    if world > 1 and cfg.backend.name != "deepspeed":
        error("backend.name", f"{world} ranks (WORLD_SIZE) need backend.name=deepspeed")
    if cfg.rollout.sleep and cfg.rollout.backend == "vllm":
        import torch

        if not torch.cuda.is_available():
            error("rollout.sleep", "frees GPU memory between steps; it needs CUDA")


def check_agent(cfg: Any, error: Callable[[str, str], None]) -> None:
    """``agent``: the environment resolves, its kwargs fit its ``__init__``, its tools have
    schemas and can be imported by a worker process, and the limits are sane."""
    agent = cfg.agent
    if agent.env is None:
        defaults = type(agent)()
        changed = [f"agent.{k}" for k in vars(defaults) if getattr(agent, k) != getattr(defaults, k)]
        if changed:
            error(changed[0], "has no effect without agent.env (the episodes are single-turn)")
        return
    from rlkit.algorithms.credit import CREDIT_MODES, credit_step_rewards

    problem = environment_problem(agent.env, agent.env_kwargs)
    if problem:
        error(f"agent.{problem[0]}", problem[1])
    if agent.max_turns < 1:
        error("agent.max_turns", f"must be >= 1, got {agent.max_turns}")
    if agent.max_episode_tokens < 1 or agent.tool_workers < 1 or agent.max_observation_chars < 1:
        error("agent", "max_episode_tokens, tool_workers and max_observation_chars must be >= 1")
    if not 0 < agent.tool_timeout_s < float("inf"):
        error("agent.tool_timeout_s", f"must be a positive number of seconds, got {agent.tool_timeout_s}")
    if agent.turn_credit not in CREDIT_MODES:
        error("agent.turn_credit", f"unknown credit {agent.turn_credit!r}; choose {', '.join(CREDIT_MODES)}")
    bad, known = unknown_keywords(credit_step_rewards, agent.turn_credit_kwargs, ("step_rewards", "mode"))
    if bad:
        error("agent.turn_credit_kwargs", f"no argument {', '.join(map(repr, bad))}; accepted: {', '.join(known)}")
    if cfg.algo.overlong_buffer:
        error("algo.overlong_buffer", "DAPO's overlong shaping is per single completion; with agent.env use "
              "agent.max_episode_tokens (truncated episodes show in agent/truncated_frac)")
    if cfg.data.chat_template is False:
        error("data.chat_template", "multi-turn episodes are rendered with the chat template; it cannot be off")
    from rewards.pool import load_callable

    for i, spec in enumerate(cfg.rewards.functions):  # imported already by check_callables
        if getattr(load_callable(spec.fn), "wants_completion_offsets", False):
            error(f"rewards.functions[{i}].fn", f"{spec.fn} cuts the completion into steps at token offsets; with "
                  "agent.env the completion is the last turn while the tokens are every turn's, so the steps "
                  "would not line up (give turn rewards through the environment's Step.reward instead)")
    if any((spec.name or spec.fn.rsplit(":", 1)[-1]) == "turn" for spec in cfg.rewards.functions):
        error("rewards.functions", "the name 'turn' is the component of the environment's turn rewards "
              "(added with agent.env); name yours differently")


def environment_problem(env: str, env_kwargs: dict) -> tuple[str, str] | None:
    """``("env" | "env_kwargs", what is wrong)`` when ``env`` (a registered name or
    ``"module:Class"``) does not load as an environment whose tools have schemas and whose
    ``__init__`` takes ``env_kwargs``; None when it does.  For ``eval.benchmarks`` specs
    (``rlkit.eval.specs.check_specs``) and ``rlkit eval --env``."""
    from rlkit.agents import load_environment
    from rlkit.agents.tools import ToolError, make_tools

    try:
        env_cls = load_environment(env)
    except Exception as exc:  # noqa: BLE001 - any import failure is the option's error
        return "env", " ".join(f"cannot load environment {env!r}: {type(exc).__name__}: {exc}".split())
    bad, known = unknown_keywords(env_cls, env_kwargs)
    if bad:
        return "env_kwargs", (f"{env} takes no argument {', '.join(map(repr, bad))}; "
                              f"it accepts: {', '.join(known) or 'none'}")
    try:
        make_tools(getattr(env_cls, "tools", ()))
    except ToolError as exc:
        return "env", " ".join(str(exc).split())
    try:  # values the environment refuses fail now, not in the first episode
        env_cls(**env_kwargs)
    except Exception as exc:  # noqa: BLE001 - the environment's own check
        return "env_kwargs", " ".join(f"{env}({', '.join(f'{k}={v!r}' for k, v in env_kwargs.items())}) "
                                      f"failed: {type(exc).__name__}: {exc}".split())
    return None
