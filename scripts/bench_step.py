"""Time per phase of an rlkit training step (median over steps after a warm-up).

    python scripts/bench_step.py [--config configs/grpo_arith.yaml] [--steps 6] [override ...]

Runs a short training job (no evaluation, no final save) and prints the median wall time of
each phase (generate, score, logprobs, train, sync) with its share of the step, plus tokens/s.
Writes the same numbers as JSON next to the run's metrics.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/grpo_arith.yaml")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=1, help="steps left out of the medians")
    parser.add_argument("--output", default="runs/bench_step")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    from rlkit.config import load_config
    from rlkit.trainer import train

    overrides = [f"train.steps={args.steps}", f"train.output_dir={args.output}", "eval.before=false",
                 "eval.after=false", "train.save_final=false", "log.progress=false", *args.overrides]
    cfg = load_config(args.config, overrides)
    metrics_path = Path(args.output) / "metrics.jsonl"
    started = time.perf_counter()
    train(cfg)
    wall = time.perf_counter() - started
    steps = [json.loads(line) for line in metrics_path.read_text().splitlines()]
    steps = [s for s in steps if s["kind"] == "train"][args.warmup:]
    if not steps:
        print("no steps left after warm-up; raise --steps", file=sys.stderr)
        return 1
    phases = sorted({k for s in steps for k in s if k.startswith("time/") and k != "time/step"})
    step_median = statistics.median(s["time/step"] for s in steps)
    report = {
        "config": args.config, "overrides": args.overrides, "machine": platform.platform(),
        "processor": platform.processor(), "steps_measured": len(steps), "wall_s": round(wall, 2),
        "step_s_median": round(step_median, 3),
        "tokens_per_s_median": round(statistics.median(s["tokens_per_s"] for s in steps), 1),
        "phases_s_median": {p[5:]: round(statistics.median(s.get(p, 0.0) for s in steps), 3) for p in phases},
    }
    print(f"step (median of {len(steps)}): {step_median:.2f} s, "
          f"{report['tokens_per_s_median']} completion tokens/s")
    for name, seconds in report["phases_s_median"].items():
        print(f"  {name:<10} {seconds:8.3f} s  {100 * seconds / step_median:5.1f} %")
    (Path(args.output) / "bench_step.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":  # vLLM on CPU needs the entry point guarded
    sys.exit(main())
