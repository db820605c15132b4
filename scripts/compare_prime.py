"""PRIME against outcome-only GRPO on the arithmetic task, same number of steps and batch size.

    python scripts/compare_prime.py [--steps 30] [override ...]

Runs configs/grpo_arith.yaml and configs/prime_arith.yaml (a finished run in ``--runs`` is
reused) and writes ``docs/results/prime.md`` and ``.png``: held-out accuracy, training
accuracy, the PRM's accuracy at predicting the outcome, and the cost (prompts drawn, seconds).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _compare_common import (write_page, ROOT, eval_cells, eval_steps, last_mean, page_paths, plot_panels,  # noqa: E402
                             project_path, run_all)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--runs", default="runs/prime")
    parser.add_argument("--doc", default="docs/results/prime.md")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    variants = {"grpo": f"include:\n  - {ROOT / 'configs' / 'grpo_arith.yaml'}\n",
                "prime": f"include:\n  - {ROOT / 'configs' / 'prime_arith.yaml'}\n"}
    results = run_all(variants, project_path(args.runs),
                      [f"train.steps={args.steps}", f"eval.every={args.eval_every}", *args.overrides])
    doc, image = page_paths(args.doc)
    plot_panels(results, [("eval/accuracy", "Held-out greedy accuracy (%)"),
                          ("accuracy", "Training accuracy of sampled completions (5-step mean)"),
                          ("prime/accuracy", "PRIME's PRM: outcome predicted right (5-step mean)")], image)
    steps_at = eval_steps(results)
    rows = []
    for name, r in results.items():
        seconds = sum(m.get("time/step", 0.0) for m in r["train"])
        drawn = r["drawn"] or args.steps * 8
        prm_acc = last_mean(r, "prime/accuracy")
        rows.append(f"| {name} | {eval_cells(r, steps_at)} | {drawn} | {seconds / 60:.1f} | "
                    + (f"{100 * prm_acc:.0f}" if prm_acc is not None else "n/a") + " |")
    command = " ".join(["python scripts/compare_prime.py", f"--steps {args.steps}",
                        f"--eval-every {args.eval_every}", *args.overrides])
    write_page(doc, "PRIME against outcome-only GRPO on the arithmetic task",
               "`configs/grpo_arith.yaml` against `configs/prime_arith.yaml`: SmolLM2-135M-Instruct, 2-digit "
               f"additions, 8 prompts x 8 samples per step, 48 new tokens, lr 1e-5 cosine, {args.steps} steps, "
               "seed 0; held-out greedy accuracy on the same 200 problems. PRIME adds the implicit PRM "
               "(beta 0.05, lr 1e-6, updated before scoring), the `prime` estimator and the [0.2, 0.8] "
               "accuracy filter.", command, image, "held-out accuracy, training accuracy, PRM accuracy",
               ["run", *(f"acc@{s} (%)" for s in steps_at), "prompts drawn", "training minutes (without evals)",
                "PRM outcome accuracy, last 5 steps (%)"], rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
