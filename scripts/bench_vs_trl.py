"""rlkit against TRL's GRPOTrainer: the same GRPO step, timed on this machine (`make bench`).

    python scripts/bench_vs_trl.py --quick        # tiny model, 2 steps: checks the script end to end
    python scripts/bench_vs_trl.py                # full mode: three models, every section
    python scripts/bench_vs_trl.py --models qwen2-50m --sections vs_trl,floor --steps 5
    python scripts/bench_vs_trl.py --estimate     # print the plan and how long it should take

Sections (``--sections``):

- ``vs_trl``: one GRPO step in TRL's GRPOTrainer and in rlkit on the same model, prompts
  (rlkit's arithmetic rows in rlkit's order), group size, completion length, loss (GRPO, PPO
  clip 0.2, per-sequence token mean, no KL), optimizer (AdamW, same LR, betas, grad clip, one
  step per batch) and precision.  Generation with HF ``generate`` in both, and vLLM (in rlkit,
  and in TRL where its colocated vLLM mode runs here; its error is recorded otherwise).
  Configurations alternate (rlkit, TRL, rlkit, TRL, ...), each run in a fresh process with its
  warm-up steps dropped.
- ``floor``: the same prompts through vLLM generation alone plus one forward/backward pass
  alone; rlkit's vLLM step time over that floor.
- ``scaling``: rlkit's step time against completion length and group size, with fitted lines.
- ``ranks``: 1 against 2 DeepSpeed ranks (``scripts/train_cpu.sh`` on CPU, ``scripts/train.sh``
  on a machine with 2 GPUs).

Writes ``<output-dir>/<YYYY-MM-DD>-<machine>.md`` and ``.json`` (``-quick`` appended in quick
mode); run folders and generated models go to ``bench/tmp/``.

The parts: ``_bench_plan.py`` (command line, runs, estimate), ``_bench_run.py`` (running each
run in a fresh process, medians, ratios, targets), ``_bench_report.py`` (Markdown and JSON),
``_bench_common.py`` (machine, models, specs, child processes) and ``_bench_worker.py`` (one run).
"""
from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench_common import MODELS, ROOT, TMP, count_parameters, machine_info, machine_tag  # noqa: E402
from _bench_plan import build_plan, parse_args, print_plan  # noqa: E402
from _bench_report import command_line, write_report  # noqa: E402
from _bench_run import (run_jobs, summarize_floor, summarize_ranks, summarize_scaling,  # noqa: E402
                        summarize_vs_trl, targets)


# ---------------------------------------------------------------- main

def main(argv=None) -> int:
    args = parse_args(argv, __doc__)
    started = time.perf_counter()
    machine = machine_info()
    tag = machine_tag(machine)
    runs = TMP / "runs" / time.strftime("%Y%m%d-%H%M%S")
    jobs = build_plan(args, runs)
    print(f"machine: {tag} ({machine['cpu']}, {machine['cores']} cores, {machine['ram_gb']} GB, "
          f"gpus {[g['name'] for g in machine['gpus']] or 'none'}, precision {machine['precision']}, "
          f"load {machine['load_average_at_start']})")
    print_plan(jobs, args)
    load = machine["load_average_at_start"][0]
    if not machine["gpus"] and load > 0.5 * (machine["cores"] or 1):
        print(f"warning: the machine is busy (load {load} on {machine['cores']} cores); timings will be noisy, and "
              "torch's OpenMP threads stall when other processes hold the cores (--threads 1 suffers less)")
    if args.estimate:
        return 0
    run_jobs(jobs, machine)
    params = {j.model: count_parameters(j.spec["model_path"]) for j in jobs if j.spec.get("model_path")}
    vs_trl = summarize_vs_trl(jobs, args.warmup, params) if "vs_trl" in args.sections else {}
    floor = summarize_floor(jobs, args.warmup, vs_trl) if "floor" in args.sections else {}
    data = {
        "date": time.strftime("%Y-%m-%d"), "machine_tag": tag, "machine": machine,
        "command": command_line(argv or sys.argv[1:]),
        "settings": {k: v for k, v in vars(args).items()}, "model_params": params,
        "models": {k: MODELS[k] for k in params},
        "sections": {"vs_trl": vs_trl, "floor": floor,
                     "scaling": summarize_scaling(jobs, args.warmup, args) if "scaling" in args.sections else {},
                     "ranks": summarize_ranks(jobs, args.warmup) if "ranks" in args.sections else {}},
        "trl_vllm_error": next((j.result.get("error") for j in jobs
                                if (j.lib, j.backend) == ("trl", "vllm") and not j.result.get("ok")), None),
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "total_min": (time.perf_counter() - started) / 60,
        "runs": [{"section": j.section, "model": j.model, "lib": j.lib, "backend": j.backend, "nproc": j.nproc,
                  "spec": j.spec, "result": j.result} for j in jobs],
    }
    data["targets"] = targets(vs_trl, floor)
    base = ROOT / args.output_dir / f"{data['date']}-{tag}{'-quick' if args.quick else ''}"
    write_report(base, data)
    if not args.keep_runs:
        shutil.rmtree(runs, ignore_errors=True)
    print(f"report: {base.with_suffix('.md')} and .json ({data['total_min']:.1f} min)")
    for t in data["targets"]:
        print(f"  {'yes' if t['met'] else 'no ' if t['met'] is False else ' - '}  {t['target']}: {t['numbers']}")
    return 0


if __name__ == "__main__":  # vLLM on CPU needs the entry point guarded
    sys.exit(main())
