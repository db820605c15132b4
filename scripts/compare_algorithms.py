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
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PRESETS = ["grpo", "dr_grpo", "dapo", "rloo", "reinforce_pp", "gspo", "tempo", "ppo"]


def run_preset(preset: str, args, overrides: list[str]) -> Path:
    run_dir = Path(args.runs) / preset
    if (run_dir / "summary.json").exists():
        return run_dir
    config = Path(args.runs) / f"{preset}.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(f"include:\n  - {ROOT / args.base}\n  - {ROOT / 'configs' / 'algo' / preset}.yaml\n")
    cmd = [sys.executable, "-m", "rlkit.cli", "train", "--config", str(config), f"train.steps={args.steps}",
           f"eval.every={args.eval_every}", f"train.output_dir={run_dir}", "log.progress=false",
           "train.save_final=false", *overrides]
    started = time.perf_counter()
    with open(Path(args.runs) / f"{preset}.log", "w") as log:
        code = subprocess.call(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    print(f"{preset}: exit {code} after {(time.perf_counter() - started) / 60:.1f} min", flush=True)
    return run_dir


def read(run_dir: Path) -> dict:
    lines = [json.loads(s) for s in (run_dir / "metrics.jsonl").read_text().splitlines() if s.strip()]
    evals = {m["step"]: m["eval/accuracy"] for m in lines if m["kind"] == "eval"}
    train = [m for m in lines if m["kind"] == "train"]
    return {"evals": evals, "reward": [m["reward/mean"] for m in train],
            "length": [m["response_length"] for m in train],
            "drawn": sum(m.get("sampling/prompts_drawn", 0) for m in train)}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for preset, r in results.items():
        steps = sorted(r["evals"])
        left.plot(steps, [100 * r["evals"][s] for s in steps], marker="o", label=preset)
        window = 5
        smooth = [statistics.mean(r["reward"][max(0, i - window + 1):i + 1]) for i in range(len(r["reward"]))]
        right.plot(range(1, len(smooth) + 1), smooth, label=preset)
    left.set(xlabel="training step", ylabel="held-out greedy accuracy (%)", title="Held-out accuracy")
    right.set(xlabel="training step", ylabel="mean reward (5-step moving average)", title="Training reward")
    left.legend(fontsize=8)
    left.grid(alpha=0.3)
    right.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


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

    results = {}
    for preset in presets:
        run_dir = run_preset(preset, args, args.overrides)
        if (run_dir / "metrics.jsonl").exists():
            results[preset] = read(run_dir)
    doc = ROOT / args.doc
    doc.parent.mkdir(parents=True, exist_ok=True)
    image = doc.with_suffix(".png")
    plot(results, image)
    rows = []
    for preset, r in results.items():
        steps = sorted(r["evals"])
        cells = " | ".join(f"{100 * r['evals'][s]:.1f}" for s in steps)
        rows.append(f"| {preset} | {cells} | {r['drawn'] or args.steps * 8} |")
    header_steps = sorted(next(iter(results.values()))["evals"]) if results else []
    command = " ".join(["python scripts/compare_algorithms.py", f"--steps {args.steps}",
                        f"--eval-every {args.eval_every}", *args.overrides])
    doc.write_text("\n".join([
        "# Algorithm comparison on the arithmetic task",
        "",
        f"Base config `{args.base}` (SmolLM2-135M-Instruct, 2-digit additions, 8 prompts x 8 samples, "
        f"48 new tokens, lr 1e-5 cosine), {args.steps} steps, seed 0 for every preset; held-out greedy "
        "accuracy on the same 200 problems. Regenerate with:",
        "",
        f"    {command}",
        "",
        f"![held-out accuracy and training reward per step]({image.name})",
        "",
        "| preset | " + " | ".join(f"acc@{s} (%)" for s in header_steps) + " | prompts drawn |",
        "|---|" + "---|" * (len(header_steps) + 1),
        *rows,
        "",
    ]) + "\n")
    print(f"wrote {doc} and {image}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
