"""Train the same task with several algorithm presets and write a comparison page.

    python scripts/compare_algorithms.py [--presets grpo dapo ...] [--steps 30] [override ...]

Every preset in configs/algo/ runs on configs/grpo_arith.yaml (the built-in arithmetic task
with the embedded SmolLM2-135M-Instruct) with the same seed, prompts per step, group size and
number of steps; held-out greedy accuracy is measured every ``--eval-every`` steps.  Runs go to
``runs/compare/<preset>`` (a finished run is reused; delete it to rerun) and the page with a
plot to ``docs/results/algorithms.md`` and ``docs/results/algorithms.png``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _compare_common import (write_page, ROOT, eval_cells, eval_steps, last_mean, page_paths, plot_panels,  # noqa: E402
                             project_path, run_all)

DEFAULT_PRESETS = ["grpo", "dr_grpo", "dapo", "rloo", "reinforce_pp", "gspo", "tempo", "ppo"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=None)
    parser.add_argument("--base", default="configs/grpo_arith.yaml")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--runs", default="runs/compare")
    parser.add_argument("--doc", default="docs/results/algorithms.md")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    presets = args.presets or [p for p in DEFAULT_PRESETS if (ROOT / "configs" / "algo" / f"{p}.yaml").exists()]

    variants = {p: f"include:\n  - {ROOT / args.base}\n  - {ROOT / 'configs' / 'algo' / p}.yaml\n" for p in presets}
    results = run_all(variants, project_path(args.runs),
                      [f"train.steps={args.steps}", f"eval.every={args.eval_every}", *args.overrides])
    doc, image = page_paths(args.doc)
    plot_panels(results, [("eval/accuracy", "Held-out greedy accuracy (%)"),
                          ("accuracy", "Training accuracy of sampled completions (5-step mean)")], image)
    rows = []
    n_eval = 200
    header_steps = eval_steps(results)
    for preset, r in results.items():
        steps = sorted(r["evals"])
        last = r["evals"][steps[-1]] if steps else float("nan")
        error = 100 * (last * (1 - last) / n_eval) ** 0.5  # binomial standard error of the last accuracy
        length = last_mean(r, "response_length") or 0.0
        rows.append(f"| {preset} | {eval_cells(r, steps)} | {error:.1f} | {length:.1f} | "
                    f"{r['drawn'] or args.steps * 8} |")
    command = " ".join(["python scripts/compare_algorithms.py", *(["--presets", *presets] if args.presets else []),
                        f"--steps {args.steps}", f"--eval-every {args.eval_every}", *args.overrides])
    write_page(doc, "Algorithm comparison on the arithmetic task",
               f"Base config `{args.base}` (SmolLM2-135M-Instruct, 2-digit additions, 8 prompts x 8 samples, "
               f"48 new tokens, lr 1e-5 cosine), {args.steps} steps, seed 0 for every preset; held-out greedy "
               "accuracy on the same 200 problems.", command, image,
               "held-out accuracy and training accuracy per step",
               ["preset", *(f"acc@{s} (%)" for s in header_steps), "s.e. of last (points)", "length, last 5 steps",
                "prompts drawn"], rows,
               [f"With {n_eval} held-out problems the binomial standard error of one accuracy is 3-3.5 points "
                "near 60-70%, so two presets whose final accuracies differ by less than about 7 points are not "
                "told apart by this run; one seed per preset, no repeats. DAPO's training accuracy is measured on "
                "the groups dynamic sampling kept (mixed right and wrong), so it is not comparable with the others; "
                "it also drew more prompts (last column) for the same number of optimizer steps. The budget is "
                "the same number of rollout batches: `ppo` takes two optimizer steps per batch (`mini_batches: 2`) "
                "and trains a critic beside the policy, the others one step and no critic."])
    return 0


if __name__ == "__main__":
    sys.exit(main())
