"""Shared fixtures: one tiny random model per session and a helper that runs the CLI.

Everything here is self-contained (no ../shared, no downloads): the tiny model is written
into a pytest temporary folder, and runs that need vLLM happen in child processes
(vLLM on CPU needs a guarded ``__main__`` and ``VLLM_ENABLE_V1_MULTIPROCESSING=0``).
"""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
HELPERS = Path(__file__).resolve().parent / "helpers"
if str(REPO_ROOT) not in sys.path:  # rlkit importable however pytest was started
    sys.path.insert(0, str(REPO_ROOT))


def subprocess_env() -> dict[str, str]:
    """Environment for child processes: the repository importable, vLLM colocated and quiet."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    env.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


@dataclass
class CLIResult:
    returncode: int
    stdout: str
    stderr: str
    run_dir: Path

    def __iter__(self):  # unpacks as (returncode, stdout, stderr, run_dir)
        return iter((self.returncode, self.stdout, self.stderr, self.run_dir))

    def describe(self) -> str:
        """The tail of the output, for assertion messages."""
        return f"exit {self.returncode}\n--- stdout ---\n{self.stdout[-3000:]}\n--- stderr ---\n{self.stderr[-6000:]}"


def run_cli(overrides: list[str], run_dir: str | Path, config: str | Path | None = None,
            timeout: float = 300) -> CLIResult:
    """``python -m rlkit.cli train [--config C] OVERRIDES train.output_dir=RUN_DIR`` in a child process."""
    cmd = [sys.executable, "-m", "rlkit.cli", "train"]
    if config is not None:
        cmd += ["--config", str(config)]
    cmd += list(overrides) + [f"train.output_dir={run_dir}"]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True,
                          timeout=timeout)
    return CLIResult(proc.returncode, proc.stdout, proc.stderr, Path(run_dir))


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_deepspeed_cli(overrides: list[str], run_dir: str | Path, ranks: int = 2, timeout: float = 420,
                      config: str | Path | None = None) -> CLIResult:
    """``deepspeed --num_gpus RANKS --module rlkit.cli train ...`` on CPU (gloo); with ``config``
    through the user-facing ``scripts/train_cpu.sh CONFIG ...`` instead."""
    env = subprocess_env()
    env.update(DS_ACCELERATOR="cpu", PATH=str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", ""))
    tail = [*overrides, "backend.name=deepspeed", f"train.output_dir={run_dir}"]
    port = free_port()
    if config is not None:
        env.update(NPROC=str(ranks), MASTER_PORT=str(port))
        cmd = ["bash", str(REPO_ROOT / "scripts" / "train_cpu.sh"), str(config), *tail]
    else:
        launcher = str(Path(sys.executable).parent / "deepspeed")
        cmd = [launcher, "--num_gpus", str(ranks), "--master_port", str(port), "--module", "rlkit.cli",
               "train", *tail]
    try:
        proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    finally:  # a rank that died early leaves DeepSpeed's CPU all-reduce buffer in /dev/shm
        for leftover in Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_{os.getuid()}_*_{port}_*"):
            leftover.unlink(missing_ok=True)
    return CLIResult(proc.returncode, proc.stdout, proc.stderr, Path(run_dir))


def process_group(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``, read from /proc."""
    pids = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(entry))
    return pids


def child_pids(pid: int) -> list[int]:
    """The child processes of ``pid`` (its main thread's, from /proc)."""
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(child) for child in f.read().split()]


def tiny_overrides(model_dir: str, backend: str = "hf", **extra) -> list[str]:
    """Overrides for a fast run on the tiny model; ``extra`` keys use ``__`` for dots."""
    base = {
        "model.path": model_dir,
        "model.autocast_bf16": "false",
        "rollout.backend": backend,
        "rollout.dtype": "float32",
        "rollout.gpu_memory_utilization": "0.2",
        "rollout.num_samples": "4",
        "rollout.max_new_tokens": "8",
        "train.prompts_per_step": "2",
        "train.threads": "1",        # a busy 2-core machine slows multi-threaded torch ops a lot
        "data.num_train": "64",
        "data.num_eval": "4",
        "eval.max_new_tokens": "8",
        "log.progress": "false",
    }
    base.update({k.replace("__", "."): str(v) for k, v in extra.items()})
    return [f"{k}={v}" for k, v in base.items()]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """A tiny random Llama + character tokenizer (loads in transformers and vLLM), built once."""
    from rlkit.testing import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny_model") / "model", seed=0)


@pytest.fixture
def one_thread():
    """Run torch single-threaded in this test (tiny models; a busy CPU punishes thread spinning)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def cli(tmp_path):
    """``cli(overrides, run_dir=None, config=None, timeout=300) -> CLIResult`` (default run dir in tmp_path)."""
    def _run(overrides: list[str], run_dir: str | Path | None = None, config: str | Path | None = None,
             timeout: float = 300) -> CLIResult:
        return run_cli(overrides, run_dir or tmp_path / "run", config=config, timeout=timeout)

    return _run


def assert_engine_matches_export(run_dir: Path, step: int) -> None:
    """The held-out completions the rollout engine wrote at ``step`` equal transformers' greedy
    output on the exported model in ``run_dir/final`` (so the last weight sync was right)."""
    import json

    import torch

    from rlkit.config import load_config
    from rlkit.data import prompt_token_ids
    from rlkit.models import load_causal_lm, load_tokenizer

    cfg = load_config(run_dir / "config.yaml")
    tokenizer = load_tokenizer(str(run_dir / "final"))
    model = load_causal_lm(str(run_dir / "final"), "float32", "cpu")
    records = [json.loads(s) for s in (run_dir / f"eval_step{step}.jsonl").read_text().splitlines()]
    assert records
    for record in records:
        ids = prompt_token_ids([{"prompt": record["prompt"]}], tokenizer, cfg.data)[0]
        out = model.generate(torch.tensor([ids]), max_new_tokens=cfg.eval.max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
        assert tokenizer.decode(out[0, len(ids):], skip_special_tokens=True) == record["completion"]
