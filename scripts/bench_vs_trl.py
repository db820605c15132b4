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
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench_common import (MODELS, ROOT, TMP, count_parameters, error_line, fit_line, fmt,  # noqa: E402
                           machine_info, machine_tag, median, prepare_model, rlkit_config, run_child,
                           run_worker)

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

def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
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


# ---------------------------------------------------------------- running

def run_jobs(jobs: list[Job], machine: dict) -> None:
    """Run the plan in order; a TRL vLLM configuration that failed once is not tried again."""
    failed_once: dict[tuple, str] = {}
    paths: dict[str, str] = {}
    started = time.perf_counter()
    for index, j in enumerate(jobs, 1):
        if j.model not in paths:
            print(f"preparing model {j.model} ...", flush=True)
            paths[j.model] = prepare_model(j.model)
        j.spec["model_path"] = paths[j.model]
        j.spec["precision"] = machine["precision"]
        label = f"[{index}/{len(jobs)}] {j.section} {j.model} {j.lib}/{j.backend}" + \
                (f" x{j.nproc} ranks" if j.lib == "ranks" else "") + f" K={j.spec['group']} L={j.spec['length']}"
        if j.key in failed_once:
            j.result = {"ok": False, "skipped": True, "error": failed_once[j.key]}
            print(f"{label}: skipped (failed before)", flush=True)
            continue
        print(f"{label} ...", end=" ", flush=True)
        j.result = run_ranks(j, len(machine["gpus"])) if j.lib == "ranks" else run_worker(j.lib, j.spec, j.timeout_s)
        if not j.result.get("ok") and (j.lib, j.backend) == ("trl", "vllm"):
            failed_once[j.key] = j.result.get("error", "failed")
        print(describe_result(j.result), f"(elapsed {(time.perf_counter() - started) / 60:.1f} min)", flush=True)


def describe_result(result: dict) -> str:
    if not result.get("ok"):
        return f"FAILED: {result.get('error', '?')[:300]}"
    steps = [s["step_s"] for s in result["steps"]]
    return f"steps {', '.join(f'{s:.2f}' for s in steps)} s, peak RSS {result.get('peak_rss_mb', 0):.0f} MiB"


def run_ranks(j: Job, num_gpus: int) -> dict:
    """rlkit under the DeepSpeed launcher with ``j.nproc`` ranks: scripts/train_cpu.sh on CPU
    (threads split between ranks), scripts/train.sh with that many GPUs on CUDA."""
    import yaml

    from _bench_worker import read_rlkit_steps

    cuda = num_gpus > 0
    if cuda and num_gpus < j.nproc:
        return {"ok": False, "error": f"skipped: {j.nproc} ranks need {j.nproc} GPUs on a CUDA machine "
                                      f"(the CUDA vLLM build cannot run CPU ranks)"}
    run_dir = Path(j.spec["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    spec = dict(j.spec, backend="vllm")
    config = run_dir / "bench_config.yaml"
    config.write_text(yaml.safe_dump(rlkit_config(spec), sort_keys=False))
    (run_dir / "spec.json").write_text(json.dumps(spec, indent=2))
    port = str(29600 + int(run_dir.name[:3]) % 300)
    if cuda:
        cmd, env = ["bash", "scripts/train.sh", str(config)], {"NUM_GPUS": str(j.nproc), "MASTER_PORT": port}
    else:
        cmd, env = ["bash", "scripts/train_cpu.sh", str(config)], {"NPROC": str(j.nproc), "MASTER_PORT": port}
        if spec.get("threads"):
            env["THREADS"] = str(spec["threads"])
    child = run_child(cmd, run_dir / "log.txt", j.timeout_s, env)
    metrics = run_dir / "metrics.jsonl"
    steps = read_rlkit_steps(metrics, spec["prompts"] * spec["group"]) if metrics.exists() else []
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    result = {"ok": child["returncode"] == 0 and bool(steps), "steps": steps,
              "peak_rss_mb": child["tree_peak_rss_mb"], **child}
    if not result["ok"]:
        result["error"] = f"exit code {child['returncode']}: {error_line(run_dir / 'log.txt')}"
    return result


# ---------------------------------------------------------------- summaries

def summarize(runs: list[Job], warmup: int) -> dict | None:
    """Medians over the measured steps of every successful run of one configuration."""
    ok = [j for j in runs if j.result.get("ok")]
    if not ok:
        return None
    steps = [s for j in ok for s in j.result["steps"][warmup:]]
    if not steps:
        return None
    phases = sorted({p for s in steps for p in s.get("phases", {})})
    tokens = median(s.get("completion_tokens") for s in steps)
    return {
        "runs": len(ok), "steps": len(steps),
        "step_s": median(s["step_s"] for s in steps),
        "step_s_all": [round(s["step_s"], 3) for s in steps],
        "completion_tokens": tokens,
        "tokens_per_s": median(s["completion_tokens"] / s["step_s"] for s in steps if s.get("completion_tokens")),
        "peak_rss_mb": max(j.result.get("peak_rss_mb", 0) for j in ok),
        "peak_gpu_mb": max((j.result.get("peak_gpu_mb") or 0 for j in ok), default=0) or None,
        "phases": {p: median(s["phases"].get(p) for s in steps) for p in phases},
        "trained_rows": median(s.get("trained_rows") for s in steps),
        "setup_s": median(j.result.get("setup_s") for j in ok),
        "same_prompts_as_rlkit": all(j.result["same_prompts_as_rlkit"] for j in ok)
        if all("same_prompts_as_rlkit" in j.result for j in ok) else None,
    }


def group_jobs(jobs: list[Job], section: str) -> dict[tuple, list[Job]]:
    groups: dict[tuple, list[Job]] = {}
    for j in jobs:
        if j.section == section:
            groups.setdefault(j.key, []).append(j)
    return groups


def first_error(runs: list[Job]) -> str | None:
    return next((j.result.get("error") for j in runs if not j.result.get("ok")), None)


def summarize_vs_trl(jobs: list[Job], warmup: int, params: dict) -> dict:
    """Per model: each (library, backend) summary, the ratios rlkit/TRL, rlkit's phases."""
    out: dict = {}
    for key, runs in group_jobs(jobs, "vs_trl").items():
        _, model, lib, backend, *_ = key
        entry = out.setdefault(model, {"params": params.get(model), "configs": {}})
        entry["configs"][f"{lib}/{backend}"] = summarize(runs, warmup) or {"error": first_error(runs)}
    for model, entry in out.items():
        c = entry["configs"]
        for backend in ("hf", "vllm"):
            entry[f"ratio_{backend}"] = ratio(c.get(f"rlkit/{backend}"), c.get(f"trl/{backend}"))
        entry["ratio_rlkit_vllm_over_trl_hf"] = ratio(c.get("rlkit/vllm"), c.get("trl/hf"))
    return out


def ratio(a: dict | None, b: dict | None, key: str = "step_s") -> float | None:
    if not a or not b or a.get(key) is None or not b.get(key):
        return None
    return a[key] / b[key]


def summarize_floor(jobs: list[Job], warmup: int, vs_trl: dict) -> dict:
    """Per model: floor (vLLM generation + one forward/backward) against rlkit's vLLM step."""
    out: dict = {}
    for key, runs in group_jobs(jobs, "floor").items():
        _, model, lib, *_ = key
        out.setdefault(model, {})["floor" if lib == "floor" else "rlkit"] = summarize(runs, warmup) or {
            "error": first_error(runs)}
    for model, entry in out.items():
        if "rlkit" not in entry:
            entry["rlkit"] = vs_trl.get(model, {}).get("configs", {}).get("rlkit/vllm")
        floor, rl = entry.get("floor"), entry.get("rlkit")
        entry["ratio"] = ratio(rl, floor)
        if entry["ratio"] and rl.get("completion_tokens") and floor.get("completion_tokens"):
            # seconds per completion token: the same tokens, whatever the samples' lengths were
            entry["ratio_per_token"] = entry["ratio"] * floor["completion_tokens"] / rl["completion_tokens"]
    return out


def summarize_scaling(jobs: list[Job], warmup: int, args) -> dict:
    """Step time per (group, length) point and a fitted line along each sweep."""
    points = []
    for key, runs in group_jobs(jobs, "scaling").items():
        s = summarize(runs, warmup) or {"error": first_error(runs)}
        points.append({"group": key[4], "length": key[5], **s})
    points.sort(key=lambda p: (p["group"], p["length"]))
    sweeps = {"length": [p for p in points if p["group"] == args.group],
              "group": [p for p in points if p["length"] == args.scaling_lengths[0]]}
    fits = {}
    for name, pts in sweeps.items():
        pts = [p for p in pts if p.get("step_s")]
        fits[name] = fit_line([p[name] for p in pts], [p["step_s"] for p in pts])
        loglog = fit_line([math.log(p[name]) for p in pts], [math.log(p["step_s"]) for p in pts])
        if fits[name] is not None:
            fits[name]["exponent"] = loglog["slope"] if loglog else None
    micro = max((j.spec["micro_batch_size"] for j in jobs if j.section == "scaling"), default=None)
    return {"model": args.scaling_model, "prompts": args.scaling_prompts, "micro_batch_size": micro, "points": points,
            "sweeps": {k: [(p["group"], p["length"]) for p in v] for k, v in sweeps.items()}, "fits": fits}


def summarize_ranks(jobs: list[Job], warmup: int) -> dict:
    out = {}
    for key, runs in group_jobs(jobs, "ranks").items():
        out[key[6]] = summarize(runs, warmup) or {"error": first_error(runs)}
    one, two = out.get(1), out.get(2)
    return {"model": next((j.model for j in jobs if j.section == "ranks"), None), "by_ranks": out,
            "speedup": ratio(one, two)}


# ---------------------------------------------------------------- targets

def targets(vs_trl: dict, floor: dict) -> list[dict]:
    """The issue's targets, each with met yes/no/not measured and the numbers behind it."""
    out = []
    for model, e in vs_trl.items():
        for backend in ("hf", "vllm"):
            r = e.get(f"ratio_{backend}")
            trl = e["configs"].get(f"trl/{backend}", {})
            numbers = (f"{r:.2f}x" if r is not None else
                       f"TRL {backend} failed: {trl.get('error', 'not run')[:160]}")
            out.append({"target": f"{model}: rlkit step <= 0.8x TRL's, both with {backend} generation",
                        "met": None if r is None else r <= 0.8, "numbers": numbers})
        if (e.get("params") or 0) >= 45e6:
            r = e.get("ratio_rlkit_vllm_over_trl_hf")
            out.append({"target": f"{model}: rlkit with vLLM faster than TRL with HF generation",
                        "met": None if r is None else r < 1.0,
                        "numbers": f"{r:.2f}x" if r is not None else "not measured"})
        sync = (e["configs"].get("rlkit/vllm") or {})
        if sync.get("step_s") and sync.get("phases", {}).get("sync") is not None:
            share = sync["phases"]["sync"] / sync["step_s"]
            out.append({"target": f"{model}: weight sync < 5% of an rlkit vLLM step", "met": share < 0.05,
                        "numbers": f"{100 * share:.1f}% ({sync['phases']['sync']:.3f} s of {sync['step_s']:.2f} s)"})
    for model, e in floor.items():
        r = e.get("ratio_per_token")
        out.append({"target": f"{model}: rlkit vLLM step <= 1.15x the floor (per completion token)",
                    "met": None if r is None else r <= 1.15,
                    "numbers": f"{r:.2f}x (plain step ratio {e['ratio']:.2f}x)" if r is not None else "not measured"})
    return out


# ---------------------------------------------------------------- report

def command_line(argv: list[str]) -> str:
    """The command as run, with each ``--remark`` text shown as ``...`` (the Remarks section has it)."""
    shown, skip = [], False
    for arg in argv:
        shown.append("..." if skip else arg.split("=", 1)[0] + "=..." if arg.startswith("--remark=") else arg)
        skip = arg == "--remark"
    return " ".join(["python", "scripts/bench_vs_trl.py", *shown])


def write_report(path_base: Path, data: dict) -> None:
    """``<base>.json`` (everything) and ``<base>.md`` (tables)."""
    path_base.parent.mkdir(parents=True, exist_ok=True)
    path_base.with_suffix(".json").write_text(json.dumps(data, indent=2, default=str))
    path_base.with_suffix(".md").write_text("\n".join(markdown(data)) + "\n")


def markdown(d: dict) -> list[str]:
    m, s = d["machine"], d["settings"]
    gpu = ", ".join(f"{g['name']} ({g['memory_gb']} GB)" for g in m["gpus"]) or "none"
    lines = [f"# rlkit vs TRL: GRPO step benchmark ({d['date']}, {d['machine_tag']})", "",
             f"Command: `{d['command']}`{' (quick mode: a check of the script, not a benchmark)' if s['quick'] else ''}", "",
             "## Machine", "",
             f"- CPU: {m['cpu']}, {m['cores']} cores; RAM {m['ram_gb']} GB; GPU: {gpu}",
             f"- Precision: {m['precision']} ({precision_note(m)})",
             f"- Versions: {', '.join(f'{k} {v}' for k, v in m['versions'].items())}",
             f"- Load average at start {m['load_average_at_start']}, at end {d['load_average_at_end']}"
             f"{' -- the machine was busy: other processes shared its cores' if busy(d) else ''}",
             f"- Total time: {d['total_min']:.1f} min", "",
             "## Setup", "",
             f"- Prompts: the built-in arithmetic task (level 1, `'####'` instruction), rlkit's PromptSampler with "
             f"seed {s['seed']}, fed to TRL in the same order (TRL `shuffle_dataset=False`); chat template in both.",
             f"- Each step: {s['prompts']} prompts x group {s['group']} = {s['prompts'] * s['group']} completions of at "
             f"most {s['length']} tokens, temperature 1.0, top-p 1, no top-k.",
             "- Reward: `rlkit.testing_rewards.vowel_fraction` (share of vowels in the completion) in both; rlkit "
             "trains every row (`train.skip_zero_advantage=false`), as TRL does.",
             f"- Loss: GRPO advantages (group mean/std), PPO clip 0.2, per-sequence token mean (TRL "
             f"`loss_type=\"grpo\"`), beta/KL 0, one pass, one AdamW step per batch (lr {s['lr']}, betas 0.9/0.999, "
             f"weight decay 0, grad clip 1.0, constant LR), the whole batch in one micro-batch, no gradient "
             "checkpointing.",
             f"- Runs: {s['steps']} steps each, the first {s['warmup']} dropped; {s['repeats']} run(s) per "
             "configuration, alternating rlkit and TRL, each in a fresh process. Medians over all measured steps.",
             f"- Torch threads per process: {s['threads'] or 'torch default (every core)'}.",
             "- Peak memory: the run's peak resident set size, the in-process vLLM engine included (on CPU vLLM "
             "takes `gpu_memory_utilization` = 0.2 of RAM for its KV cache, so vLLM runs show GBs even for the "
             "tiny model); on CUDA also torch's peak reserved GPU memory.", ""]
    lines += target_lines(d["targets"])
    if any(k[1:] == ("trl", "vllm") for k in run_keys(d)):
        lines += ["TRL's vLLM mode: " + (f"failed on this machine: `{d['trl_vllm_error']}`" if d["trl_vllm_error"]
                                         else "ran (see the tables)"), ""]
    if d["sections"].get("vs_trl"):
        lines += vs_trl_lines(d["sections"]["vs_trl"])
    if d["sections"].get("floor"):
        lines += floor_lines(d["sections"]["floor"])
    if d["sections"].get("scaling"):
        lines += scaling_lines(d["sections"]["scaling"], s)
    if d["sections"].get("ranks"):
        lines += ranks_lines(d["sections"]["ranks"], bool(m["gpus"]))
    lines += ["## What is not the same in both", ""] + [f"- {n}" for n in DIFFERENCES]
    if s.get("remark"):
        lines += ["", "## Remarks", ""] + [f"- {r}" for r in s["remark"]]
    return lines


def busy(d: dict) -> bool:
    """Was the CPU shared with other work when the benchmark started (1-minute load average)?"""
    return d["machine"]["load_average_at_start"][0] > 0.5 * (d["machine"]["cores"] or 1)


def run_keys(d: dict) -> set[tuple]:
    return {(r["model"], r["lib"], r["backend"]) for r in d["runs"]}


def precision_note(m: dict) -> str:
    if m["precision"] == "bf16":
        return ("float32 weights, bf16 autocast for forward/backward in both trainers; rlkit's vLLM holds bf16 "
                "weights")
    return "float32 everywhere (this CPU has no fast bf16)"


def target_lines(items: list[dict]) -> list[str]:
    lines = ["## Targets", "", "| target | met | numbers |", "|---|---|---|"]
    for t in items:
        met = {True: "yes", False: "**no**", None: "not measured"}[t["met"]]
        lines.append(f"| {t['target']} | {met} | {t['numbers']} |")
    return lines + [""]


def vs_trl_lines(sec: dict) -> list[str]:
    lines = ["## 1. rlkit vs TRL", "",
             "| model | params | library / generation | runs x measured steps | median step s | rlkit/TRL "
             "| completion tokens/step | tokens/s | peak RSS MiB |", "|---|---|---|---|---|---|---|---|---|"]
    failures = []
    for model, e in sec.items():
        params = f"{e['params'] / 1e6:.1f} M" if e.get("params") else "-"
        for name in (f"{lib}/{b}" for lib, b in COMBOS):
            c = e["configs"].get(name)
            if c is None:
                continue
            if "error" in c:
                failures.append((model, name, c["error"]))
                lines.append(f"| {model} | {params} | {name} | failed | - | - | - | - | - |")
                continue
            r = e.get(f"ratio_{name.split('/')[1]}") if name.startswith("rlkit") else None
            lines.append(f"| {model} | {params} | {name} | {c['runs']} x {c['steps'] // c['runs']} | "
                         f"{fmt(c['step_s'])} | {fmt(r)} | {fmt(c['completion_tokens'], 0)} | "
                         f"{fmt(c['tokens_per_s'], 0)} | {memory(c)} |")
        x = e.get("ratio_rlkit_vllm_over_trl_hf")
        if x is not None:
            lines.append(f"| {model} | {params} | rlkit/vllm vs trl/hf | | | {fmt(x)} | | | |")
    lines += ["", "Time per phase (median s; for TRL, `train` is the rest of the step: loss, backward, "
              "optimizer):", "",
              "| model | library / generation | step | " + " | ".join(PHASES) + " | sync share | rows trained |",
              "|---|---|---|" + "---|" * len(PHASES) + "---|---|"]
    for model, e in sec.items():
        for name in (f"{lib}/{b}" for lib, b in COMBOS):
            c = e["configs"].get(name)
            if not c or "error" in c:
                continue
            ph = c["phases"]
            share = ph.get("sync", 0) / c["step_s"] if c["step_s"] else None
            lines.append(f"| {model} | {name} | {fmt(c['step_s'])} | " +
                         " | ".join(fmt(ph.get(p), 3) for p in PHASES) + f" | {fmt(100 * share, 1, '%')} | "
                         f"{fmt(c.get('trained_rows'), 0)} |")
    checks = [f"{model}: {'yes' if c['same_prompts_as_rlkit'] else '**no**'}" for model, e in sec.items()
              for c in [e["configs"].get("trl/hf") or {}] if c.get("same_prompts_as_rlkit") is not None]
    if checks:
        lines += ["", "TRL generated for exactly rlkit's prompts, step by step (checked in its reward function): "
                  + ", ".join(checks)]
    if failures:
        lines += ["", "Failed configurations:", ""]
        lines += [f"- {model} {name}: `{err}`" for model, name, err in failures]
    return lines + [""]


def memory(c: dict) -> str:
    """Peak RSS, and the peak CUDA memory where there was one."""
    gpu = f" ({fmt(c['peak_gpu_mb'], 0)} on the GPU)" if c.get("peak_gpu_mb") else ""
    return fmt(c.get("peak_rss_mb"), 0) + gpu


def floor_lines(sec: dict) -> list[str]:
    lines = ["## 2. The floor: vLLM generation alone + one forward/backward pass alone", "",
             "| model | generate s | forward/backward s | floor s | floor tokens/step | rlkit vLLM step s "
             "| rlkit tokens/step | rlkit/floor | per completion token |", "|---|---|---|---|---|---|---|---|---|"]
    for model, e in sec.items():
        f, r = e.get("floor") or {}, e.get("rlkit") or {}
        if "error" in f or not f:
            lines.append(f"| {model} | failed: {str(f.get('error'))[:120]} | | | | | | | |")
            continue
        lines.append(f"| {model} | {fmt(f['phases'].get('generate'))} | {fmt(f['phases'].get('forward_backward'))} | "
                     f"{fmt(f['step_s'])} | {fmt(f['completion_tokens'], 0)} | {fmt(r.get('step_s'))} | "
                     f"{fmt(r.get('completion_tokens'), 0)} | {fmt(e.get('ratio'))} | {fmt(e.get('ratio_per_token'))} |")
    return lines + ["", "The floor leaves out the optimizer step, scoring and the weight sync, which a training step "
                        "needs; rlkit's step runs each distinct prompt once (shared prompt prefix), which the plain "
                        "forward/backward here does not. Both run the LM head on completion positions only and take "
                        "log-probs from rlkit's block-wise `token_logprobs`.", ""]


def scaling_lines(sec: dict, settings: dict) -> list[str]:
    lines = [f"## 3. Scaling (rlkit, vLLM generation, {sec['model']}, {sec['prompts']} prompts per step, "
             f"micro-batches of {sec['micro_batch_size']} rows)", "",
             "| group | max length | step s | completion tokens/step | tokens/s | " + " | ".join(PHASES) + " |",
             "|---|---|---|---|---|" + "---|" * len(PHASES)]
    for p in sec["points"]:
        if "error" in p:
            lines.append(f"| {p['group']} | {p['length']} | failed: {str(p['error'])[:100]} |" + " |" * (3 + len(PHASES)))
            continue
        lines.append(f"| {p['group']} | {p['length']} | {fmt(p['step_s'])} | {fmt(p['completion_tokens'], 0)} | "
                     f"{fmt(p['tokens_per_s'], 0)} | " + " | ".join(fmt(p['phases'].get(x), 3) for x in PHASES) + " |")
    lines.append("")
    units = {"length": "s per token of completion length", "group": "s per extra completion per prompt"}
    for name, fit in sec["fits"].items():
        if fit:
            lines.append(f"- {name} sweep: step s = {fit['intercept']:.3f} + {fit['slope']:.5f} x {name} "
                         f"({units[name]}; R^2 {fit['r2']:.3f}; log-log exponent {fmt(fit.get('exponent'))})")
        else:
            lines.append(f"- {name} sweep: fewer than two points, no fit")
    return lines + [""]


def ranks_lines(sec: dict, cuda: bool) -> list[str]:
    how = "scripts/train.sh, one GPU per rank" if cuda else "scripts/train_cpu.sh, DS_ACCELERATOR=cpu, cores split"
    lines = [f"## 4. DeepSpeed ranks ({sec['model']}, ZeRO-2, vLLM per rank, {how}; same global batch)", "",
             "| ranks | median step s | completion tokens/step | tokens/s | largest process peak RSS MiB |",
             "|---|---|---|---|---|"]
    for n, c in sorted(sec["by_ranks"].items()):
        if "error" in c:
            lines.append(f"| {n} | failed: {str(c['error'])[:160]} | | | |")
            continue
        lines.append(f"| {n} | {fmt(c['step_s'])} | {fmt(c['completion_tokens'], 0)} | {fmt(c['tokens_per_s'], 0)} | "
                     f"{memory(c)} |")
    return lines + ["", f"Speedup 1 -> 2 ranks: {fmt(sec.get('speedup'))}x", ""]


DIFFERENCES = [
    "Completion lengths: each library samples its own completions, so a model that stops early (SmolLM2, the tiny "
    "character model) gives different token counts per step; compare tokens/s and completion tokens/step. The "
    "random Qwen2-shaped model almost never samples its end token (49k vocabulary), so its completions are "
    "full length in both. rlkit has no `min_tokens` option, so full length cannot be forced the same way in both.",
    "HF generation precision: TRL's accelerate wraps the model's forward in bf16 autocast, so its `generate` runs "
    "under autocast too; rlkit's `hf` rollout calls `generate` on the float32 policy without autocast. Training "
    "forward/backward is bf16 autocast in both (float32 on CPUs without bf16).",
    "rlkit runs each distinct prompt once per micro-batch (`train.share_prompt_prefix`, a default, the same "
    "gradients). Its other default, skipping the forward/backward of rows whose advantages are all zero, is off "
    "here so that both trainers do the same work; the 'rows trained' column shows the rows rlkit trained per step. "
    "(A first run with the digit-share reward gave the random 50M model all-zero rewards, so rlkit skipped its "
    "whole training phase while TRL did not; that run was discarded.)",
    "Advantage epsilon: TRL divides by std + 1e-4, rlkit by std + 1e-6.",
    "TRL computes token entropies for its logs in every step; rlkit computes them too (entropy metric, in the "
    "same block-wise pass as the log-probs).",
    "TRL's vLLM colocate mode builds its own engine (no enforce_eager, max_num_batched_tokens 4096) and syncs "
    "weights through `model.load_weights`; rlkit's engine uses enforce_eager and `reload_weights`.",
]


# ---------------------------------------------------------------- main

def main(argv=None) -> int:
    args = parse_args(argv)
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
