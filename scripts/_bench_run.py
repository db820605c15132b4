"""Running and summarizing scripts/bench_vs_trl.py's plan: each ``Job`` in a fresh process
(``_bench_worker.py``, or the DeepSpeed launcher for the ranks section), then medians per
configuration, the ratios between libraries, the scaling fits and the issue's targets.
"""
from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

from _bench_common import error_line, fit_line, median, prepare_model, rlkit_config, run_child, run_worker
from _bench_plan import Job

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
