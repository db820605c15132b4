"""Run named variants of one config over several seeds and write a page with held-out accuracy,
its standard errors and the training minutes of each run (the recipe tuning and ablation pages).

    python scripts/compare_variants.py --base configs/grpo_arith.yaml --seeds 0 1 \
        --variant "lr3e-5=train.lr=3.0e-5" --variant "base=" --doc docs/results/grpo_arith.md \
        --title "..." [--notes conclusions.md]

A variant is ``name[@seed:seed...]=override,override,...`` (dotted config overrides, as on the ``rlkit train``
command line; empty for the config as it is); a first item ending in ``.yaml`` replaces ``--base``
for that variant (an ablation config that includes the base); ``@0:1`` gives the variant its own
seeds instead of ``--seeds``.  Runs go to ``runs/tune/<name>_s<seed>`` (a
finished run is reused; delete it to rerun); held-out greedy accuracy (the config's accuracy
component on its held-out rows) is measured every ``--eval-every`` steps.  Training minutes are the sum of the runs'
``time/step`` (generation, scoring, training and weight sync; not evaluation or start-up).
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _compare_common import ROOT, page_paths, project_path, read_run, run_variant, smooth  # noqa: E402

def parse_variant(text: str) -> tuple[str, list[str], list[int] | None]:
    """``name[@seed:seed...]=override,...`` -> (name, overrides, the variant's own seeds or None)."""
    head, _, overrides = text.partition("=")
    name, _, seeds = head.partition("@")
    if not name:
        raise SystemExit(f"--variant {text!r}: expected name[@seed:seed]=override,override,...")
    try:
        own = [int(s) for s in seeds.split(":")] if seeds else None
    except ValueError:
        raise SystemExit(f"--variant {text!r}: seeds after @ are integers separated by ':'") from None
    return name, [o for o in overrides.split(",") if o], own


def summarise(run: dict, run_dir: Path) -> dict:
    steps = sorted(run["evals"])
    first = run_dir / f"eval_step{steps[0]}.jsonl" if steps else None
    n_eval = sum(1 for line in first.read_text().splitlines() if line.strip()) if first and first.exists() else 0
    minutes = sum(m.get("time/step", 0.0) for m in run["train"]) / 60
    final = run["evals"][steps[-1]] if steps else float("nan")
    return {"evals": run["evals"], "final": final, "minutes": minutes, "train": run["train"], "n_eval": n_eval}


def seed_stats(finals: list[float], n_eval: int) -> tuple[float, float, float]:
    """(mean, standard error from the binomial errors of ``n_eval`` held-out rows, seed-to-seed
    standard deviation)."""
    mean = statistics.mean(finals)
    binomial = sum(p * (1 - p) / max(n_eval, 1) for p in finals) ** 0.5 / len(finals)
    spread = statistics.stdev(finals) if len(finals) > 1 else float("nan")
    return mean, binomial, spread


def monitor_table(results: dict[str, list[dict]], last: int = 5) -> list[str]:
    """The hacking monitors (``monitor/...``) and response length over each variant's last
    ``last`` steps, averaged over the steps that logged them and over seeds."""
    keys = sorted({k for runs in results.values() for r in runs for m in r["train"] for k in m
                   if k.startswith("monitor/")})
    if not keys:
        return []
    lines = [f"Hacking monitors and response length, mean of the last {last} training steps (rlkit/monitors.py):", "",
             "| variant | " + " | ".join(keys) + " | response_length |", "|" + "---|" * (len(keys) + 2)]
    for name, runs in results.items():
        cells = []
        for key in [*keys, "response_length"]:
            values = [m[key] for r in runs for m in r["train"][-last:] if m.get(key) is not None]
            cells.append(f"{statistics.mean(values):.2f}" if values else "")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def plot(results: dict[str, list[dict]], path: Path, target: float | None, minutes_limit: float | None,
         extra: list[str] = ()) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2 + len(extra), figsize=(5.5 * (2 + len(extra)), 4))
    for i, (name, runs) in enumerate(results.items()):
        color = f"C{i % 10}"
        for k, r in enumerate(runs):
            steps = sorted(r["evals"])
            minutes = []
            by_step = {m["step"]: m.get("time/step", 0.0) for m in r["train"]}
            for s in steps:
                minutes.append(sum(v for st, v in by_step.items() if st <= s) / 60)
            axes[0].plot(minutes, [100 * r["evals"][s] for s in steps], marker="o", color=color,
                         label=name if k == 0 else None, alpha=0.85)
            acc = [m.get("accuracy", float("nan")) for m in r["train"]]
            axes[1].plot(range(1, len(acc) + 1), [100 * a for a in smooth(acc)], color=color, alpha=0.6,
                         label=name if k == 0 else None)
            for ax, key in zip(axes[2:], extra):
                values = [m.get(key, float("nan")) for m in r["train"]]
                ax.plot(range(1, len(values) + 1), smooth(values), color=color, alpha=0.6)
    if target is not None:
        axes[0].axhline(target, color="grey", ls=":", lw=1)
    if minutes_limit is not None:
        axes[0].axvline(minutes_limit, color="grey", ls=":", lw=1)
    axes[0].set(xlabel="training minutes", ylabel="%", title="Held-out greedy accuracy (every seed)")
    axes[1].set(xlabel="training step", ylabel="%", title="Training accuracy (5-step mean)")
    for ax, key in zip(axes[2:], extra):
        ax.set(xlabel="training step", title=f"{key} (5-step mean)")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", action="append", required=True)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--base", default="configs/grpo_arith.yaml")
    parser.add_argument("--eval-every", type=int, default=20)
    parser.add_argument("--runs", default="runs/tune")
    parser.add_argument("--doc", required=True)
    parser.add_argument("--title", required=True)
    parser.add_argument("--intro", default="", help="a sentence on the task and the model, put before the table")
    parser.add_argument("--target", type=float, default=None, help="a dotted line at this accuracy (%%)")
    parser.add_argument("--minutes", type=float, default=None, help="a dotted line at this many training minutes")
    parser.add_argument("--panel", action="append", default=[], help="another training metric to plot (repeatable)")
    parser.add_argument("--notes", default=None, help="a markdown file appended to the page (conclusions)")
    args = parser.parse_args()
    parsed = [parse_variant(v) for v in args.variant]
    variants = {name: overrides for name, overrides, _ in parsed}
    seeds_of = {name: own or args.seeds for name, _, own in parsed}
    runs_dir = project_path(args.runs)
    results: dict[str, list[dict]] = {}
    for name, overrides in variants.items():
        own = bool(overrides) and overrides[0].endswith(".yaml")
        base, overrides = (overrides[0], overrides[1:]) if own else (args.base, overrides)
        config_text = f"include:\n  - {ROOT / base}\n"
        for seed in seeds_of[name]:
            run_dir = run_variant(f"{name}_s{seed}", config_text, runs_dir,
                                  [f"train.seed={seed}", f"eval.every={args.eval_every}", *overrides])
            if (run_dir / "metrics.jsonl").exists():
                results.setdefault(name, []).append(summarise(read_run(run_dir), run_dir))
    doc, image = page_paths(args.doc)
    plot(results, image, args.target, args.minutes, args.panel)
    eval_steps = sorted({s for runs in results.values() for r in runs for s in r["evals"]})
    rows = []
    for name, runs in results.items():
        mean, binomial, spread = seed_stats([r["final"] for r in runs], runs[0]["n_eval"])
        by_step = " | ".join(f"{100 * statistics.mean(r['evals'][s] for r in runs):.1f}"
                             if all(s in r["evals"] for r in runs) else "" for s in eval_steps)
        finals = ", ".join(f"{100 * r['final']:.1f}" for r in runs)
        minutes = ", ".join(f"{r['minutes']:.1f}" for r in runs)
        seeds = ", ".join(map(str, seeds_of[name][:len(runs)]))
        rows.append(f"| {name} | `{' '.join(variants[name]) or '(as configured)'}` | {seeds} | {by_step} | {finals} | "
                    f"{100 * mean:.1f} ± {100 * binomial:.1f} | {'-' if spread != spread else f'{100 * spread:.1f}'} | "
                    f"{minutes} |")
    n_eval = next(iter(results.values()))[0]["n_eval"] if results else 0
    command = " ".join(["python scripts/compare_variants.py", f"--base {args.base}", "--seeds", *map(str, args.seeds),
                        f"--eval-every {args.eval_every}", f"--runs {args.runs}", f"--doc {args.doc}",
                        f'--title "{args.title}"', *([f'--intro "{args.intro}"'] if args.intro else []),
                        *(f'--variant "{v}"' for v in args.variant),
                        *([f"--target {args.target:g}"] if args.target is not None else []),
                        *([f"--minutes {args.minutes:g}"] if args.minutes is not None else []),
                        *(f"--panel {key}" for key in args.panel),
                        *([f"--notes {args.notes}"] if args.notes else [])])
    lines = [f"# {args.title}", "",
             f"Base config `{args.base}`. {args.intro} Held-out greedy accuracy on {n_eval} held-out rows; "
             "the seeds of each run are in the table. Regenerate with:", "",
             f"    {command}", "", f"![held-out accuracy per training minute]({image.name})", "",
             "| variant | overrides | seeds | " + " | ".join(f"mean acc@{s} (%)" for s in eval_steps)
             + " | final, per seed (%) | final mean ± s.e. (points) | seed s.d. (points) | training minutes, per seed |",
             "|" + "---|" * (7 + len(eval_steps)), *rows, "",
             f"The s.e. of a mean is the binomial error of the {n_eval}-row evaluations, "
             f"sqrt(sum p(1-p)/{n_eval})/seeds; the seed s.d. shows the run-to-run spread on top of it. "
             "Training minutes sum `time/step` (rollout, scoring, update, weight sync), not evaluation or start-up.", ""]
    lines += monitor_table(results)
    if args.notes:
        lines += [project_path(args.notes).read_text().strip(), ""]
    doc.write_text("\n".join(lines))
    print(f"wrote {doc} and {image}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
