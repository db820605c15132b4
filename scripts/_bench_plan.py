"""The plan of scripts/bench_vs_trl.py: its command line, the measured runs (``Job``) of the
selected sections in the order they run, and the printed time estimate (``--estimate``).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

from _bench_common import MODELS, TMP

SECTIONS = ("vs_trl", "floor", "scaling", "ranks")
COMBOS = (("rlkit", "hf"), ("trl", "hf"), ("rlkit", "vllm"), ("trl", "vllm"))  # alternating order
PHASES = ("generate", "score", "logprobs", "train", "sync")

# Rough seconds on an unloaded 2-core CPU, for the printed estimate only: process start-up per
# run, and one step of 32 completions x 64 tokens (scaled linearly with completion tokens).
# The tiny model's numbers were measured; the others are extrapolated from TRL's ~41 s per step
# with SmolLM2 and rlkit's README step times, by model FLOPs.  vLLM's first step adds ~3 s.
STARTUP_S = {("rlkit", "hf"): 8, ("rlkit", "vllm"): 20, ("trl", "hf"): 12, ("trl", "vllm"): 30,
             ("floor", "vllm"): 20, ("ranks", "vllm"): 75}
MODEL_LOAD_S = {"tiny": 0, "qwen2-50m": 8, "smollm2-135m": 15}
STEP_S = {
    "tiny": {("rlkit", "hf"): 0.3, ("trl", "hf"): 0.5, ("rlkit", "vllm"): 0.4, ("floor", "vllm"): 0.5},
    "qwen2-50m": {("rlkit", "hf"): 8, ("trl", "hf"): 14, ("rlkit", "vllm"): 5, ("floor", "vllm"): 5},
    "smollm2-135m": {("rlkit", "hf"): 15, ("trl", "hf"): 41, ("rlkit", "vllm"): 8, ("floor", "vllm"): 7},
}


@dataclass
class Job:
    """One measured run: which section, which model / library / backend, and its spec."""
    section: str
    model: str
    lib: str              # rlkit | trl | floor | ranks
    backend: str          # hf | vllm
    spec: dict
    timeout_s: float
    nproc: int = 1
    result: dict = field(default_factory=dict)

    @property
    def key(self) -> tuple:
        """Runs with the same key are repeats of one configuration."""
        return (self.section, self.model, self.lib, self.backend, self.spec["group"], self.spec["length"],
                self.nproc)

    def estimate_s(self) -> float:
        """Seconds this run should take on an unloaded 2-core CPU (see STEP_S)."""
        lib = "rlkit" if self.lib == "ranks" else self.lib
        per_step = STEP_S.get(self.model, STEP_S["smollm2-135m"]).get((lib, self.backend), 10)
        scale = self.spec["prompts"] * self.spec["group"] * self.spec["length"] / (32 * 64)
        steps = 1 if (self.lib, self.backend) == ("trl", "vllm") else self.spec["steps"]
        first_step = 3 if self.backend == "vllm" else 0
        return (STARTUP_S[(self.lib, self.backend)] + MODEL_LOAD_S.get(self.model, 15) * self.nproc + first_step
                + steps * per_step * scale * (1.3 if self.nproc > 1 else 1.0))



# ---------------------------------------------------------------- arguments

def parse_args(argv=None, doc: str = "") -> argparse.Namespace:
    """The command line of scripts/bench_vs_trl.py (``doc``, its docstring, is the help text),
    with the full-mode or quick-mode defaults filled in."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0] if doc else None,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=doc or None)
    parser.add_argument("--quick", action="store_true",
                        help="tiny model only, 2 steps, small scaling grid: an end-to-end check in minutes")
    parser.add_argument("--models", help=f"comma-separated, from {', '.join(MODELS)} (default: all; quick: tiny)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, from {', '.join(SECTIONS)}")
    parser.add_argument("--steps", type=int, help="steps per run, warm-up included (default 4; quick 2)")
    parser.add_argument("--warmup", type=int, default=1, help="first steps of each run left out of the medians")
    parser.add_argument("--repeats", type=int, help="runs per configuration, alternating libraries (default 2; quick 1)")
    parser.add_argument("--prompts", type=int, default=4, help="prompts per step")
    parser.add_argument("--group", type=int, default=8, help="completions per prompt (GRPO group size)")
    parser.add_argument("--length", type=int, default=64, help="maximum completion tokens")
    parser.add_argument("--lr", type=float, default=1e-6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch threads per run (default: torch's, every core)")
    parser.add_argument("--scaling-model", help="model of the scaling section (default qwen2-50m; quick tiny)")
    parser.add_argument("--scaling-lengths", help="completion lengths at --group (default 128,256,512,1024)")
    parser.add_argument("--scaling-groups", help="group sizes at the first length (default 4,8,16,32)")
    parser.add_argument("--scaling-prompts", type=int, default=2, help="prompts per step in the scaling runs")
    parser.add_argument("--scaling-steps", type=int, help="steps per scaling run (default 3; quick 2)")
    parser.add_argument("--ranks-model", help="model of the ranks section (default qwen2-50m; quick tiny)")
    parser.add_argument("--trl-vllm-timeout", type=float, default=600, help="seconds before a TRL vLLM run is stopped")
    parser.add_argument("--run-timeout", type=float, default=3600, help="seconds before any other run is stopped")
    parser.add_argument("--output-dir", default="bench/results")
    parser.add_argument("--estimate", action="store_true", help="print the plan and its time estimate, then exit")
    parser.add_argument("--remark", action="append", default=[],
                        help="a sentence for the report's Remarks section (repeatable)")
    parser.add_argument("--keep-runs", action="store_true", help="keep bench/tmp/runs (logs, metrics) afterwards")
    args = parser.parse_args(argv)
    fill_defaults(args)
    return args


def fill_defaults(args: argparse.Namespace) -> None:
    """Full-mode and quick-mode defaults for the options left unset."""
    quick = args.quick
    args.models = (args.models or ("tiny" if quick else ",".join(MODELS))).split(",")
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    for name in args.models + [args.scaling_model or "tiny", args.ranks_model or "tiny"]:
        if name not in MODELS:
            raise SystemExit(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    for name in args.sections:
        if name not in SECTIONS:
            raise SystemExit(f"unknown section {name!r}; known: {', '.join(SECTIONS)}")
    args.steps = args.steps or (2 if quick else 4)
    args.repeats = args.repeats or (1 if quick else 2)
    args.scaling_steps = args.scaling_steps or (2 if quick else 3)
    args.scaling_model = args.scaling_model or ("tiny" if quick else "qwen2-50m")
    args.ranks_model = args.ranks_model or ("tiny" if quick else "qwen2-50m")
    lengths = args.scaling_lengths or ("32,64" if quick else "128,256,512,1024")
    groups = args.scaling_groups or ("4,8" if quick else "4,8,16,32")
    args.scaling_lengths = [int(x) for x in lengths.split(",")]
    args.scaling_groups = [int(x) for x in groups.split(",")]
    if args.quick and args.trl_vllm_timeout == 600:
        args.trl_vllm_timeout = 300
    if args.steps <= args.warmup or args.scaling_steps <= args.warmup:
        raise SystemExit("--steps and --scaling-steps must be larger than --warmup")


# ---------------------------------------------------------------- the plan

def base_spec(args, model: str, lib: str, backend: str, run_dir: Path, **changes) -> dict:
    """What every run of one configuration shares (the model path is filled in later)."""
    spec = {"model_name": model, "model_path": None, "lib": lib, "backend": backend,
            "prompts": args.prompts, "group": args.group, "length": args.length, "steps": args.steps,
            "seed": args.seed, "lr": args.lr, "precision": None, "threads": args.threads,
            "micro_batch_size": None, "gpu_memory_utilization": 0.2, "max_model_len": None,
            "run_dir": str(run_dir)}
    spec.update(changes)
    spec["micro_batch_size"] = spec["micro_batch_size"] or spec["prompts"] * spec["group"]
    spec["max_model_len"] = spec["max_model_len"] or max(512, 256 * ((160 + spec["length"]) // 256 + 1))
    return spec


def build_plan(args, runs: Path) -> list[Job]:
    """Every run of the selected sections, in the order they will run."""
    jobs: list[Job] = []
    counter = iter(range(10_000))

    def job(section, model, lib, backend, nproc=1, **changes) -> Job:
        name = f"{next(counter):03d}-{section}-{model}-{lib}-{backend}" + (f"-np{nproc}" if nproc > 1 else "")
        spec = base_spec(args, model, lib, backend, runs / name, **changes)
        timeout = args.trl_vllm_timeout if (lib, backend) == ("trl", "vllm") else args.run_timeout
        return Job(section, model, lib, backend, spec, timeout, nproc)

    for model in args.models if "vs_trl" in args.sections else []:
        for _ in range(args.repeats):
            jobs += [job("vs_trl", model, lib, backend) for lib, backend in COMBOS]
    for model in args.models if "floor" in args.sections else []:
        for _ in range(args.repeats):
            jobs.append(job("floor", model, "floor", "vllm"))
            if "vs_trl" not in args.sections:  # otherwise the vs_trl runs give rlkit's vLLM step
                jobs.append(job("floor", model, "rlkit", "vllm"))
    if "scaling" in args.sections:
        points = [(args.group, n) for n in args.scaling_lengths]
        points += [(g, args.scaling_lengths[0]) for g in args.scaling_groups if (g, args.scaling_lengths[0]) not in points]
        for group, length in points:
            jobs.append(job("scaling", args.scaling_model, "rlkit", "vllm", group=group, length=length,
                            prompts=args.scaling_prompts, steps=args.scaling_steps,
                            micro_batch_size=min(4, args.scaling_prompts * group)))  # 1024 tokens x 49k vocab
    if "ranks" in args.sections:
        for _ in range(args.repeats):
            jobs += [job("ranks", args.ranks_model, "ranks", "vllm", nproc=n) for n in (1, 2)]
    return jobs


def print_plan(jobs: list[Job], args) -> None:
    """The runs per section and the estimated time (on a 2-core CPU); also the full-mode total."""
    by_section: dict[str, list[Job]] = {}
    for j in jobs:
        by_section.setdefault(j.section, []).append(j)
    total = sum(j.estimate_s() for j in jobs)
    print(f"plan: {len(jobs)} runs, about {total / 60:.0f} min on an unloaded 2-core CPU "
          f"(less with a GPU, more on a busy machine)")
    for section, items in by_section.items():
        print(f"  {section:<8} {len(items):3d} runs  ~{sum(j.estimate_s() for j in items) / 60:5.1f} min")
    if args.quick:
        full = build_plan(parse_args([]), TMP / "runs")
        print(f"  (full mode: {len(full)} runs, about {sum(j.estimate_s() for j in full) / 60:.0f} min)")
    sys.stdout.flush()
