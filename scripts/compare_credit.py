"""Process rewards on the arithmetic word problems: credit assignment modes against
outcome-only GRPO, with a PRM trained here (PURE's central claim at small scale).

    python scripts/compare_credit.py [--steps 40] [--prm-prompts 512] [override ...]

1. ``rlkit label-arith-steps`` samples the embedded SmolLM2 on ``--levels`` (the runs' prompts) and labels each
   step by checking its arithmetic; ``rlkit train-prm`` trains a token-classification PRM on it
   (both skipped when their outputs exist in ``--runs``).
2. One run per variant of configs/grpo_prm_arith.yaml, same seed and budget: outcome-only GRPO
   (no PRM), and process_rloo with the PRM under credit sum, min_form (softmin), clip, delta
   and clip_delta.
3. ``docs/results/process_rewards.md`` and ``.png``: held-out accuracy, mean number of steps
   and response length per training step.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # rlkit from this checkout
from _compare_common import (write_page, ROOT, eval_cells, eval_steps, last_mean, page_paths, plot_panels,  # noqa: E402
                             project_path, run_all)
from rlkit.config import load_config  # noqa: E402

CREDITS = ["sum", "min_form", "clip", "delta", "clip_delta"]


def variant_config(base: Path, credit: str | None, prm: Path) -> str:
    if credit is None:  # outcome-only GRPO: the correctness reward alone
        return (f"include:\n  - {base}\nalgo:\n  advantage: grpo\n  loss_agg: seq_mean_token_mean\n"
                "rewards:\n  functions:\n    - fn: rewards.math:correctness\n      weight: 1.0\n")
    return (f"include:\n  - {base}\nrewards:\n  functions:\n    - fn: rewards.math:correctness\n      weight: 1.0\n"
            "    - fn: rewards.prm:ProcessReward\n      name: prm\n      weight: 1.0\n"
            f"      kwargs: {{kind: token_classification, model: '{prm}', credit: {credit}, autocast_bf16: true}}\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="configs/grpo_prm_arith.yaml")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--prm-prompts", type=int, default=512)
    parser.add_argument("--prm-epochs", type=int, default=2)
    parser.add_argument("--prm-lr", type=float, default=2e-5)
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 2],
                        help="arithmetic levels for the PRM's data and for training (default 1 2)")
    parser.add_argument("--runs", default="runs/credit")
    parser.add_argument("--doc", default="docs/results/process_rewards.md")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    runs = project_path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    steps_file, prm = runs / "prm_steps.jsonl", runs / "prm"
    cli = [sys.executable, "-m", "rlkit.cli"]
    base_cfg = load_config(str(ROOT / args.base), args.overrides)  # the PRM's data: the runs' prompts
    if not steps_file.exists():
        subprocess.check_call(cli + ["label-arith-steps", "--output", str(steps_file), "--num-prompts",
                                     str(args.prm_prompts), "--levels", *map(str, args.levels),
                                     "--max-new-tokens", str(base_cfg.rollout.max_new_tokens),
                                     "--instruction", base_cfg.data.instruction], cwd=ROOT)
    if not (prm / "config.json").exists():
        subprocess.check_call(cli + ["train-prm", "--data", str(steps_file), "--output", str(prm), "--bf16",
                                     "--epochs", str(args.prm_epochs), "--lr", str(args.prm_lr)], cwd=ROOT)
    prm_metrics = json.loads((prm / "prm_metrics.json").read_text())

    variants = {"outcome_grpo" if credit is None else f"prm_{credit}": variant_config(ROOT / args.base, credit, prm)
                for credit in [None, *CREDITS]}
    levels = f"data.levels=[{','.join(map(str, args.levels))}]"
    results = run_all(variants, runs, [f"train.steps={args.steps}", f"eval.every={args.eval_every}", levels,
                                       *args.overrides])
    doc, image = page_paths(args.doc)
    plot_panels(results, [("eval/accuracy", "Held-out greedy accuracy (%)"),
                          ("prm/steps_mean", "Steps per completion (5-step mean)"),
                          ("response_length", "Response length, tokens (5-step mean)")], image)
    steps_at = eval_steps(results)
    rows = []
    for name, r in results.items():
        steps = last_mean(r, "prm/steps_mean")
        rows.append(f"| {name} | {eval_cells(r, steps_at)} | {last_mean(r, 'response_length') or 0:.0f} | "
                    + (f"{steps:.2f}" if steps is not None else "n/a") + " |")
    command = " ".join(["python scripts/compare_credit.py", f"--steps {args.steps}", f"--eval-every {args.eval_every}",
                        f"--prm-prompts {args.prm_prompts}", f"--prm-epochs {args.prm_epochs}",
                        f"--prm-lr {args.prm_lr}", "--levels", *map(str, args.levels), *args.overrides])
    write_page(doc, "Process rewards: credit assignment on the arithmetic task",
               f"Base config `{args.base}` (SmolLM2-135M-Instruct) on arithmetic levels {args.levels}, "
               f"{args.steps} steps, seed 0 for every variant. The PRM was trained here on "
               f"{prm_metrics['rows_train']} step-labelled samples (held-out step accuracy "
               f"{100 * prm_metrics['eval_step_accuracy_before']:.1f}% before, "
               f"{100 * prm_metrics['eval_step_accuracy_after']:.1f}% after; "
               f"{100 * prm_metrics['share_good_steps']:.0f}% of steps labelled good).", command, image,
               "held-out accuracy, steps and length per step",
               ["variant", *(f"acc@{s} (%)" for s in steps_at), "length (last 5 steps)", "steps (last 5)"], rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
