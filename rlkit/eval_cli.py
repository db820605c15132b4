"""``rlkit eval``: score a model on a math, SQL or tool-calling benchmark.

    rlkit eval --model runs/grpo_arith --benchmark arith --limit 200
    rlkit eval --model embedded:smollm2-135m-instruct --benchmark gsm8k --data gsm8k_test.jsonl \\
        --samples 8 --temperature 0.8 --output runs/eval/gsm8k
    rlkit eval --model MODEL --benchmark spider --data dev.json --tables tables.json --db-dir database/
    rlkit eval --model MODEL --benchmark toolcall --data BFCL_v4_simple_python.json --backend hf
    rlkit eval --model runs/agent_calc --benchmark arith --levels 2 3 4 5 --env calculator --max-turns 3

Spider reports the official execution accuracy (DISTINCT stripped, columns in any order) as
``accuracy`` and the strict reading as ``accuracy_strict``; BFCL question files find their answers
in ``possible_answer/<same file name>`` beside them.

``--env NAME`` (a registered environment: calculator, sql, plain, or ``module:Class``;
rlkit/agents) runs every problem as a multi-turn episode whose tool calls are executed: up to
``--max-turns`` model turns of ``--max-new-tokens`` each, at most ``--max-episode-tokens`` after
the prompt; the final turn is judged, and ``turns_mean``, ``tool_calls_per_episode``,
``tool_errors_per_episode`` and ``truncated_frac`` are reported too.

``--model`` is a model folder, ``embedded:NAME``, a run folder (its ``final/`` or latest
checkpoint) or a checkpoint folder. Greedy decoding by default (``--samples 1``, temperature 0);
with ``--samples k`` the temperature defaults to 1.0 and pass@k / maj@k are reported. The output
folder gets ``predictions.json``, ``metrics.json``, ``summary.md`` and ``<benchmark>.png``
(rlkit/eval/report.py). ``add_eval_parser(subparsers)`` adds the subcommand to ``rlkit``'s parser and
``run_eval_command(args)`` runs it; ``python -m rlkit.eval_cli ARGS`` runs it alone.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from rlkit.eval.benchmarks import BENCHMARKS, DEFAULT_MAX_NEW_TOKENS
from rlkit.rollout import local_backends

DESCRIPTION = "evaluate a model on a benchmark (gsm8k, math, amc, aime, arith, spider, toolcall)"


def add_eval_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--model", default="embedded:smollm2-135m-instruct",
                        help="model folder, embedded:NAME, run folder (final/ or latest checkpoint) "
                             "or checkpoint folder")
    parser.add_argument("--benchmark", required=True, choices=BENCHMARKS)
    parser.add_argument("--data", help="records file (.jsonl / .json / .parquet; Spider questions JSON); "
                                       "not needed for arith")
    parser.add_argument("--samples", type=int, default=1, help="completions per problem (k of pass@k / maj@k)")
    parser.add_argument("--temperature", type=float, default=None,
                        help="sampling temperature (default: 0 = greedy with --samples 1, else 1.0)")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="tokens per completion (default per benchmark: "
                             + ", ".join(f"{k} {v}" for k, v in DEFAULT_MAX_NEW_TOKENS.items()) + ")")
    parser.add_argument("--limit", type=int, default=None, help="only the first N problems (arith: N problems, "
                                                                "default 200)")
    parser.add_argument("--output", default=None, help="report folder (default: runs/eval/<benchmark>)")
    parser.add_argument("--backend", choices=local_backends(), default="vllm",
                        help="rollout backend that generates in this process (rlkit.rollout.ROLLOUT_BACKENDS): "
                             "vllm (default) or transformers' generate (hf)")
    parser.add_argument("--tables", help="spider: tables.json")
    parser.add_argument("--db-dir", help="spider: folder of <db_id>/<db_id>.sqlite databases")
    parser.add_argument("--levels", type=int, nargs="+", default=None, help="arith: levels (default 1 2 3 4 5)")
    parser.add_argument("--underscore-to-dot", action="store_true",
                        help="toolcall: score as BFCL does for function-calling models whose API refuses dots in "
                             "names (tools shown and expected with '.' written as '_'; off by default)")
    parser.add_argument("--instruction", default=None,
                        help="text after each problem, replacing the benchmark's default ('' for none)")
    parser.add_argument("--system-prompt", default=None, help="a system message before each prompt")
    parser.add_argument("--no-chat-template", action="store_true", help="tokenize prompts as plain text")
    parser.add_argument("--max-prompt-tokens", type=int, default=None,
                        help="keep only the last N prompt tokens (default: what the context leaves)")
    parser.add_argument("--env", default=None,
                        help="multi-turn episodes with executed tools in this environment: calculator, sql, plain "
                             "or module:Class (rlkit/agents)")
    parser.add_argument("--max-turns", type=int, default=None, help="--env: model turns per episode (default 4)")
    parser.add_argument("--max-episode-tokens", type=int, default=None,
                        help="--env: model + environment tokens after the prompt (default 256)")
    parser.add_argument("--env-kwargs", default=None,
                        help='--env: keyword arguments of the environment as JSON, e.g. \'{"instruction": ""}\'')
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default="auto", help="weights dtype: auto, float32 or bfloat16")
    parser.add_argument("--device", default="auto", help="hf backend: cpu, cuda or auto")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.3, help="vllm: memory share for the engine")
    parser.add_argument("--max-model-len", type=int, default=None,
                        help="vllm: context length (default: the longest prompt plus --max-new-tokens)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return parser


def add_eval_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``eval`` subcommand to ``rlkit``'s subparsers (``args.command == "eval"``)."""
    parser = subparsers.add_parser("eval", help=DESCRIPTION, description=DESCRIPTION,
                                   formatter_class=argparse.RawDescriptionHelpFormatter,
                                   epilog="example:\n  rlkit eval --model runs/grpo_arith --benchmark arith --limit 200")
    return add_eval_arguments(parser)


def _context_length(model_path: str) -> int | None:
    try:
        config = json.loads((Path(model_path) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        if isinstance(config.get(key), int):
            return config[key]
    return None


def _hf_dtype(name: str, device: str) -> str:
    if name == "auto":
        return "bfloat16" if device.startswith("cuda") else "float32"
    if name not in ("float32", "bfloat16"):
        raise ValueError(f"--dtype {name}: the hf backend takes auto, float32 or bfloat16")
    return name


def _build_rollout(args, model_path: str, tokenizer, max_model_len: int):
    from rlkit.config import RolloutConfig
    from rlkit.rollout import make_rollout

    model = None
    if args.backend == "hf":  # generates with a transformers model loaded here
        import torch

        from rlkit.models import load_causal_lm

        device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        model = load_causal_lm(model_path, _hf_dtype(args.dtype, device), device)
    cfg = RolloutConfig(backend=args.backend, dtype=args.dtype, gpu_memory_utilization=args.gpu_memory_utilization,
                        max_model_len=max_model_len)
    return make_rollout(args.backend, model, tokenizer, model_path, cfg, seed=args.seed)


def _agent_config(args):
    """The AgentConfig of ``--env`` and its options (None without ``--env``); ValueError naming
    the option on bad input."""
    from rlkit.config_checks import environment_problem
    from rlkit.eval.runner import agent_config
    from rlkit.eval.specs import agent_options_problem

    flags = {"env": "--env", "env_kwargs": "--env-kwargs", "max_turns": "--max-turns",
             "max_episode_tokens": "--max-episode-tokens"}
    if args.env is None:
        given = [flags[k] for k in ("max_turns", "max_episode_tokens", "env_kwargs") if getattr(args, k) is not None]
        if given:
            raise ValueError(f"{given[0]} has no effect without --env")
        return None
    env_kwargs = None
    if args.env_kwargs is not None:
        try:
            env_kwargs = json.loads(args.env_kwargs)
        except ValueError as exc:
            raise ValueError(f"--env-kwargs: not JSON ({exc})") from None
    if args.no_chat_template:
        raise ValueError("--env needs the chat template (--no-chat-template given)")
    if args.max_prompt_tokens is not None:
        raise ValueError("--max-prompt-tokens does not apply with --env (an episode keeps its whole prompt)")
    problem = agent_options_problem(args.env, env_kwargs, args.max_turns, args.max_episode_tokens,
                                    check_env=environment_problem)
    if problem:
        raise ValueError(f"{flags[problem[0]]}: {problem[1]}")
    return agent_config(args.env, env_kwargs, args.max_turns, args.max_episode_tokens)


def _log(message: str) -> None:
    print(f"rlkit eval: {message}", file=sys.stderr, flush=True)


def run_eval_command(args: argparse.Namespace) -> int:
    """Run ``rlkit eval`` for parsed arguments; 0 on success, 2 on bad input (message on stderr)."""
    from rlkit.checkpoint import CheckpointError
    from rlkit.data import DataError

    scratch = Path(tempfile.mkdtemp(prefix="rlkit-eval-"))
    try:
        return _run(args, scratch)
    except (DataError, CheckpointError, FileNotFoundError, ValueError) as exc:
        _log(f"{type(exc).__name__}: {exc}")
        return 2
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _run(args: argparse.Namespace, scratch: Path) -> int:
    from rlkit.eval.benchmarks import load_benchmark
    from rlkit.eval.runner import resolve_eval_model
    from rlkit.models import load_tokenizer

    if args.samples < 1:
        raise ValueError(f"--samples must be >= 1, got {args.samples}")
    agent = _agent_config(args)
    temperature = args.temperature if args.temperature is not None else (0.0 if args.samples == 1 else 1.0)
    if args.samples > 1 and temperature <= 0:
        _log(f"--samples {args.samples} with temperature 0 gives {args.samples} identical greedy completions")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    rows = load_benchmark(args.benchmark, args.data, limit=args.limit, tables=args.tables, db_dir=args.db_dir,
                          instruction=args.instruction, levels=args.levels,
                          underscore_to_dot=getattr(args, "underscore_to_dot", False))
    if not rows:
        raise ValueError(f"{args.data or args.benchmark}: no problems to evaluate")
    model_path, model_desc = resolve_eval_model(args.model, scratch)
    tokenizer = load_tokenizer(model_path)
    chat_template = not args.no_chat_template
    if agent is not None and not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"{model_desc}: the tokenizer has no chat template, which --env needs")
    if chat_template and not getattr(tokenizer, "chat_template", None):
        if any(not isinstance(r["prompt"], str) for r in rows):
            raise ValueError(f"{model_desc}: the tokenizer has no chat template, and {args.benchmark} prompts are "
                             f"chat messages")
        _log(f"{model_desc}: the tokenizer has no chat template; prompts are used as plain text")
        chat_template = False
    max_new = args.max_new_tokens or DEFAULT_MAX_NEW_TOKENS[args.benchmark]
    context = args.max_model_len or _context_length(model_path)
    if agent is not None:
        metrics, records = _run_episodes(args, agent, rows, model_path, tokenizer, context, max_new, temperature)
    else:
        metrics, records = _run_single_turn(args, rows, model_path, tokenizer, context, max_new, temperature,
                                            chat_template)
    output = Path(args.output or Path("runs") / "eval" / args.benchmark)
    return _report(args, rows, model_desc, metrics, records, temperature, max_new, chat_template, agent, started,
                   output)


def _run_single_turn(args, rows, model_path: str, tokenizer, context: int | None, max_new: int, temperature: float,
                     chat_template: bool):
    from rlkit.eval.runner import evaluate, prompt_ids

    limit = args.max_prompt_tokens
    if limit is None and context is not None:
        limit = context - max_new
        if limit < 1:
            raise ValueError(f"--max-new-tokens {max_new} leaves no room for the prompt in the model's context "
                             f"of {context} tokens")
    ids = prompt_ids(rows, tokenizer, chat_template, args.system_prompt, limit)
    cut = sum(len(i) == limit for i in ids) if limit else 0
    if cut:
        _log(f"{cut} prompt(s) reached {limit} tokens and may have been cut (their start is dropped)")
    needed = max(len(i) for i in ids) + max_new
    rollout = _build_rollout(args, model_path, tokenizer, min(needed, context) if context else needed)
    try:
        return evaluate(rollout, tokenizer, rows, args.benchmark, samples=args.samples, temperature=temperature,
                        top_p=args.top_p, max_new_tokens=max_new, ids=ids, seed=args.seed)
    finally:
        rollout.close()


def _run_episodes(args, agent, rows, model_path: str, tokenizer, context: int | None, max_new: int,
                  temperature: float):
    """Multi-turn episodes (``--env``): the engine's context holds the longest prompt (with the
    tool schemas, as the runner renders it) plus ``--max-episode-tokens``, or the model's context."""
    from rlkit.agents import EnvTypeError, build_runner
    from rlkit.eval.runner import episode_prompt_ids, evaluate

    probe = build_runner(agent, None, tokenizer, args.system_prompt)  # its tool workers start on use only
    try:
        longest = max(len(i) for i in episode_prompt_ids(probe, rows))
    except EnvTypeError as exc:
        raise ValueError(f"--env {args.env}: {exc}") from None
    finally:
        probe.executor.close()
    if context is not None and longest >= context:
        raise ValueError(f"--env {args.env}: the longest prompt with the tool schemas has {longest} tokens; the "
                         f"model's context is {context} (--max-model-len)")
    needed = longest + agent.max_episode_tokens
    if context is not None and needed > context:
        _log(f"the longest prompt ({longest} tokens) and --max-episode-tokens {agent.max_episode_tokens} pass the "
             f"context of {context} tokens; such episodes stop at the context (truncated)")
    engine_len = min(needed, context) if context is not None else needed
    rollout = _build_rollout(args, model_path, tokenizer, engine_len)
    try:
        runner = build_runner(agent, rollout, tokenizer, args.system_prompt, max_model_len=engine_len)
        try:
            return evaluate(rollout, tokenizer, rows, args.benchmark, samples=args.samples, temperature=temperature,
                            top_p=args.top_p, max_new_tokens=max_new, seed=args.seed, runner=runner)
        finally:
            runner.executor.close()
    finally:
        rollout.close()


def _report(args, rows, model_desc: str, metrics, records, temperature: float, max_new: int, chat_template: bool,
            agent, started: float, output: Path) -> int:
    from rlkit.eval.report import headline_metrics, write_report

    settings = {"model": model_desc, "benchmark": args.benchmark, "data": args.data, "problems": len(rows),
                "samples": args.samples, "temperature": temperature, "top_p": args.top_p,
                "max_new_tokens": max_new, "backend": args.backend, "chat_template": chat_template,
                "seed": args.seed}
    if getattr(args, "underscore_to_dot", False):
        settings["underscore_to_dot"] = True
    if agent is not None:
        settings.update(env=agent.env, env_kwargs=agent.env_kwargs, max_turns=agent.max_turns,
                        max_episode_tokens=agent.max_episode_tokens)
    settings["seconds"] = round(time.perf_counter() - started, 1)
    paths = write_report(output, args.benchmark, metrics, records, settings)
    line = ", ".join(f"{k} {100 * v:.1f}%" for k, v in headline_metrics(metrics).items())
    if "turns_mean" in metrics:
        line += (f"; {metrics['turns_mean']:.2f} turns, {metrics['tool_calls_per_episode']:.2f} tool calls and "
                 f"{metrics['tool_errors_per_episode']:.2f} tool errors per episode")
    print(f"{args.benchmark}: {line} on {int(metrics.get('n', 0))} problems "
          f"({int(metrics.get('skipped', 0))} not scored); report in {output}")
    for path in paths.values():
        print(f"  {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = add_eval_arguments(argparse.ArgumentParser(prog="rlkit eval", description=DESCRIPTION))
    return run_eval_command(parser.parse_args(argv))


if __name__ == "__main__":  # vLLM on CPU needs the entry point guarded
    sys.exit(main())
