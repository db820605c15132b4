"""Command line: ``rlkit train | sft | eval | reward-check | plot | config show | serve | train-rm | train-prm |
label-arith-steps | prepare-model``."""
from __future__ import annotations

import argparse
import os
import sys
import time


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # The deepspeed launcher adds --local_rank=N in front of our arguments; LOCAL_RANK says the same.
    argv = [a for a in argv if not a.startswith("--local_rank")]
    parser = argparse.ArgumentParser(prog="rlkit", description="RL fine-tuning of language models "
                                     "(GRPO, PPO, DAPO, PRIME, ...) with vLLM rollouts and DeepSpeed training.",
                                     epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, example: str):
        return sub.add_parser(name, help=help, description=help, epilog=f"example:\n  {example}",
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    tr = command("train", "run RL training from a YAML config",
                 "rlkit train --config configs/grpo_arith.yaml train.steps=100 algo.advantage=rloo")
    tr.add_argument("--config", "-c", help="YAML config (see configs/)")
    tr.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.steps=50 algo.advantage=rloo")
    sf = command("sft", "supervised warm start on a config's training rows (their reference answers) before RL",
                 "rlkit sft --config configs/grpo_sql.yaml --output runs/sft_sql --max-rows 32   # then model.path=runs/sft_sql")
    from rlkit.sft import add_arguments as add_sft_arguments

    add_sft_arguments(sf)
    cs = command("config", "print a config resolved: every key, its value, its comment, (default) where unchanged",
                 "rlkit config show configs/grpo_arith.yaml rollout.num_samples=16")
    cs.add_argument("action", choices=["show"])
    cs.add_argument("config", nargs="?", help="YAML config (none: the defaults)")
    cs.add_argument("overrides", nargs="*", help="dotted overrides")
    cs.add_argument("--key", help="print only this key's value (e.g. train.output_dir)")
    pl = command("plot", "draw the training curves of one or more runs into a PNG (runs overlaid)",
                 "rlkit plot runs/grpo_arith runs/async_arith --output curves.png")
    from rlkit.plot import add_arguments as add_plot_arguments

    add_plot_arguments(pl)
    rm = command("train-rm", "train an outcome reward model (sequence classification) on preference pairs",
                 "rlkit train-rm --data pairs.jsonl --output runs/rm   # then rewards.rm:RewardModel path=runs/rm")
    from rlkit.rm_training import add_arguments as add_rm_arguments

    add_rm_arguments(rm)
    pm = command("prepare-model", "convert the embedded default model into a local checkpoint",
                 "rlkit prepare-model --output models/smollm2")
    pm.add_argument("--name", default="smollm2-135m-instruct")
    pm.add_argument("--output", default=None, help="target folder (default: the rlkit cache)")
    sv = command("serve", "start a vLLM server that training can push weights to "
                 "(rollout.backend=vllm_server); extra arguments go to vLLM's API server",
                 "rlkit serve /path/to/model --port 8000 --tensor-parallel-size 2")
    sv.add_argument("model", help="model folder or name (default: the embedded model)", nargs="?")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--dtype", default="auto")
    sv.add_argument("--gpu-memory-utilization", type=float, default=None)
    sv.add_argument("--max-model-len", type=int, default=2048)
    tp = command("train-prm", "train a token-classification process reward model on step-labelled JSONL",
                 "rlkit train-prm --data steps.jsonl --output runs/prm")
    tp.add_argument("--data", required=True, help='JSONL rows {"prompt", "steps": [...], "labels": [0/1, ...]}')
    tp.add_argument("--output", required=True, help="folder for the PRM (written atomically)")
    tp.add_argument("--model", default="embedded:smollm2-135m-instruct", help="causal-LM checkpoint to start from")
    tp.add_argument("--epochs", type=int, default=2)
    tp.add_argument("--lr", type=float, default=2e-5)
    tp.add_argument("--batch-size", type=int, default=8)
    tp.add_argument("--max-length", type=int, default=1024)
    tp.add_argument("--seed", type=int, default=0)
    tp.add_argument("--bf16", action="store_true", help="bfloat16 autocast (CPU with AVX512-BF16, or CUDA)")
    tp.add_argument("--device", default="cpu")
    from rlkit.rollout import local_backends

    la = command("label-arith-steps", "sample the policy on arithmetic word problems and label each step by "
                 "checking its arithmetic (data for train-prm)", "rlkit label-arith-steps --output steps.jsonl")
    la.add_argument("--output", required=True)
    la.add_argument("--model", default="embedded:smollm2-135m-instruct")
    la.add_argument("--num-prompts", type=int, default=256)
    la.add_argument("--samples", type=int, default=4)
    la.add_argument("--levels", type=int, nargs="+", default=[4, 5])
    la.add_argument("--max-new-tokens", type=int, default=160)
    la.add_argument("--backend", choices=local_backends(), default="vllm")
    la.add_argument("--seed", type=int, default=0)
    la.add_argument("--instruction", default=None, help="appended to every question (as data.instruction)")
    from rlkit.eval_cli import add_eval_parser

    add_eval_parser(sub)
    from rlkit.reward_check import add_parser as add_reward_check_parser

    add_reward_check_parser(sub)
    args, extra = parser.parse_known_args(argv)
    if args.command == "sft":  # overrides after an option (--output DIR a.b=c) end up in extra
        args.overrides += [e for e in extra if "=" in e and not e.startswith("-")]
        extra = [e for e in extra if not ("=" in e and not e.startswith("-"))]
    if extra and args.command != "serve":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")

    if args.command == "config":
        from rlkit.config_show import main as config_show

        return config_show(args)
    if args.command == "plot":
        from rlkit.plot import main as plot

        return plot(args)
    if args.command == "sft":
        from rlkit.sft import main as sft

        return sft(args)
    if args.command == "train-rm":
        from rlkit.rm_training import main as train_rm

        return train_rm(args)
    if args.command == "reward-check":
        from rlkit.reward_check import main as reward_check

        return reward_check(args)
    if args.command == "eval":
        from rlkit.eval_cli import run_eval_command

        return run_eval_command(args)
    if args.command == "serve":
        from rlkit.models import resolve_model_path
        from rlkit.rollout.vllm_server import serve_command

        model = resolve_model_path(args.model or "embedded:smollm2-135m-instruct")
        try:
            command, env = serve_command(model, args.host, args.port, args.dtype, args.gpu_memory_utilization,
                                         args.max_model_len, extra)
        except ValueError as exc:
            print(f"rlkit: {exc}", file=sys.stderr)
            return 2
        print(" ".join(command), flush=True)
        os.execve(command[0], command, env)
    if args.command == "train-prm":
        from rlkit.prm_training import PRMDataError, train_prm

        try:
            train_prm(args.data, args.output, args.model, args.epochs, args.lr, args.batch_size, args.max_length,
                      args.seed, device=args.device, autocast_bf16=args.bf16, log=lambda line: print(line, file=sys.stderr, flush=True))
        except PRMDataError as exc:
            print(f"rlkit: {exc}", file=sys.stderr)
            return 2
        return 0
    if args.command == "label-arith-steps":
        from rlkit.prm_training import label_arith_steps

        counts = label_arith_steps(args.output, args.model, args.num_prompts, args.samples, tuple(args.levels),
                                   args.max_new_tokens, seed=args.seed, backend=args.backend,
                                   instruction=args.instruction)
        print(f"wrote {args.output}: {counts['rows']} rows, {counts['steps']} steps, {counts['good_steps']} good")
        return 0
    if args.command == "prepare-model":
        from rlkit.models import cache_dir, prepare_embedded_model

        target = prepare_embedded_model(args.name, args.output or cache_dir() / args.name)
        print(target)
        return 0
    from rlkit.config import ConfigError, load_config

    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        print(f"rlkit: config error: {exc}", file=sys.stderr)
        return 2
    from rewards import RewardError
    from rlkit.checkpoint import CheckpointError
    from rlkit.data import DataError
    from rlkit.trainer import train

    started = time.perf_counter()
    try:
        summary = train(cfg)
    except (ConfigError, DataError, RewardError, CheckpointError) as exc:
        print(f"rlkit: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: the run closed its engines and workers on the way out
        from rlkit.interrupts import interrupted_message

        if os.environ.get("RANK", "0") == "0":
            print(interrupted_message(cfg.train.output_dir, args.config, args.overrides), file=sys.stderr)
        return _leave_distributed(130)
    if os.environ.get("RANK", "0") != "0":
        return _leave_distributed(0)
    minutes = (time.perf_counter() - started) / 60
    if "preempted_at" in summary:  # SIGTERM: a checkpoint at a step boundary, exit 0
        print(f"stopped by SIGTERM after step {summary['preempted_at']} ({minutes:.1f} min); resume with "
              f"train.resume=auto in {cfg.train.output_dir}")
        return _leave_distributed(0)
    print(f"done in {minutes:.1f} min; run folder {cfg.train.output_dir}" + heldout_summary(summary))
    return _leave_distributed(0)


EXAMPLES = """examples:
  rlkit train --config configs/grpo_arith.yaml                 # what `make train` runs
  rlkit train --config configs/grpo_arith.yaml train.resume=auto
  rlkit config show configs/grpo_sql.yaml                      # every key, value and comment
  rlkit eval --model runs/grpo_arith --benchmark arith --limit 200
  rlkit reward-check rewards.math:correctness --data train.jsonl
  rlkit plot runs/grpo_arith

`rlkit COMMAND --help` describes each command; docs: README.md."""


def heldout_summary(summary: dict) -> str:
    """The held-out change for the closing line: accuracy where the accuracy component is 0/1,
    else the mean reward on its own scale (a judge's 0-10 is no percentage)."""
    before, after = summary.get("eval_before", {}), summary.get("eval_after", {})
    if "eval/accuracy" in before and "eval/accuracy" in after:
        b, a = before["eval/accuracy"], after["eval/accuracy"]
        return f"; held-out accuracy {b:.1%} -> {a:.1%} ({(a - b) * 100:+.1f} points)"
    if "eval/reward" in before and "eval/reward" in after:
        b, a = before["eval/reward"], after["eval/reward"]
        return f"; held-out reward {b:.3g} -> {a:.3g} ({a - b:+.3g}, on the reward's own scale)"
    return ""


def _leave_distributed(code: int) -> int:
    """Under a launcher, end the process without C++ static destructors: after a finished run
    (files written and closed, process group left) threads of gloo / DeepSpeed's CPU comm can
    still abort the interpreter's exit ("terminate called without an active exception"), which
    the launcher reports as a failed run.  Single-process runs return normally."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return code
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":  # vLLM on CPU needs the entry point guarded
    sys.exit(main())
