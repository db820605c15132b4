"""Time per phase of an rlkit training step (median over steps after a warm-up).

    python scripts/bench_step.py [--config configs/grpo_arith.yaml] [--steps 6] [override ...]

Runs a short training job (no evaluation, no final save) and prints the median wall time of
each phase (generate, score, logprobs, train, sync) with its share of the step, plus tokens/s.
Then the memory of ``model.gradient_checkpointing``: the peak memory of one training forward/
backward pass (a micro-batch of ``--memory-tokens`` prompt + completion tokens per row, on the
config's model, dtype and autocast; prompt sharing off) with checkpointing off and on, each in a
fresh process: on CPU the growth of the peak resident set (VmHWM, reset after loading) over
the loaded model, on CUDA ``torch.cuda.max_memory_allocated`` over what was allocated before.
Writes the same numbers as JSON next to the run's metrics (``--memory-only``: only those).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
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
    parser.add_argument("--memory-rows", type=int, default=-1,
                        help="rows of the measured pass (default: the config's train.micro_batch_size; 0: skip it)")
    parser.add_argument("--memory-tokens", type=int, nargs=2, default=(52, 48), metavar=("PROMPT", "COMPLETION"))
    parser.add_argument("--memory-only", action="store_true", help="only the gradient-checkpointing memory")
    parser.add_argument("--memory-child", choices=["off", "on"], help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    if args.memory_child:
        print(json.dumps(memory_child(args)))
        return 0
    if args.memory_only:
        memory = memory_report(args)
        Path(args.output).mkdir(parents=True, exist_ok=True)
        (Path(args.output) / "bench_step_memory.json").write_text(json.dumps(memory, indent=2))
        return 0

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
    if args.memory_rows:
        report["gradient_checkpointing_memory"] = memory_report(args)
    (Path(args.output) / "bench_step.json").write_text(json.dumps(report, indent=2))
    return 0


def memory_report(args) -> dict:
    """Peak memory and time of one forward/backward pass, gradient checkpointing off and on."""
    out = {}
    for setting in ("off", "on"):
        cmd = [sys.executable, __file__, "--config", args.config, "--memory-child", setting, "--memory-rows",
               str(args.memory_rows), "--memory-tokens", *map(str, args.memory_tokens), *args.overrides]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode:
            raise RuntimeError(f"memory measurement ({setting}) failed:\n{proc.stderr[-3000:]}")
        out[setting] = json.loads(proc.stdout.strip().splitlines()[-1])
    off, on = out["off"], out["on"]
    print(f"gradient checkpointing, one forward/backward of {off['rows']} x ({off['prompt_tokens']} + "
          f"{off['completion_tokens']}) tokens, {off['model']} on {off['device']}, peak memory over the loaded model:")
    for setting in ("off", "on"):
        r = out[setting]
        print(f"  {setting:<3} {r['peak_mb']:8.1f} MB  {r['seconds']:6.2f} s  ({r['layer_calls']} decoder-layer calls)")
    if off["peak_mb"] > 0:
        print(f"  checkpointing saves {100 * (1 - on['peak_mb'] / off['peak_mb']):.0f} % of it")
    return out


def _rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def memory_child(args) -> dict:
    """One measured pass in this (fresh) process: the backend's own training forward pass."""
    import torch

    from rlkit.batch import build_batch
    from rlkit.config import load_config
    from rlkit.backends.single import SingleBackend
    from rlkit.models import recompute_activations

    cfg = load_config(args.config, [*args.overrides, "backend.name=single", "train.share_prompt_prefix=false",
                                    f"model.gradient_checkpointing={'true' if args.memory_child == 'on' else 'false'}"])
    backend = SingleBackend(cfg, 1)
    prompt, completion = args.memory_tokens
    args.memory_rows = cfg.train.micro_batch_size if args.memory_rows < 0 else args.memory_rows
    g = torch.Generator().manual_seed(0)
    vocab = backend.model.config.vocab_size
    rows = [torch.randint(10, vocab, (prompt + completion,), generator=g).tolist() for _ in range(args.memory_rows)]
    batch = build_batch([r[:prompt] for r in rows], [r[prompt:] for r in rows], list(range(len(rows))),
                        [True] * len(rows), pad_token_id=0).to(backend.device)
    from transformers.modeling_layers import GradientCheckpointingLayer

    calls = [0]  # decoder-layer calls: twice the layers with checkpointing (the backward pass recomputes)
    for layer in [m for m in backend.model.modules() if isinstance(m, GradientCheckpointingLayer)]:
        layer.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    cuda = backend.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := the current resident set (Linux)
        before = _rss_mb("VmRSS")
    started = time.perf_counter()
    with recompute_activations(backend.model):
        logp, _ = backend.train_forward(backend.model, batch, with_entropy=False, autocast=backend.autocast)
        logp[batch.loss_mask].sum().backward()
    if cuda:
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - before) / 2**20
    else:
        peak = _rss_mb("VmHWM") - before
    return {"model": Path(backend.model_path).name, "device": str(backend.device), "rows": len(rows),
            "prompt_tokens": prompt, "completion_tokens": completion, "peak_mb": round(peak, 1),
            "seconds": round(time.perf_counter() - started, 2), "layer_calls": calls[0]}


if __name__ == "__main__":  # vLLM on CPU needs the entry point guarded
    sys.exit(main())
