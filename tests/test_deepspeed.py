"""DeepSpeed ZeRO-2 and ZeRO-3 on 2 CPU ranks (the real launcher) give the single backend's step.

The batch is split by prompt group over the ranks, unevenly (3 groups and 2), so the ranks
hold different numbers of micro-batches; loss, gradient norm and the updated weights must
match one process training on the whole batch.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("deepspeed")
ROOT = Path(__file__).resolve().parent.parent
HELPER = ROOT / "tests" / "helpers" / "ds_equivalence.py"


def _env():
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(ROOT),
            "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}


def _run(args, out: Path, timeout: int = 420) -> dict:
    try:
        proc = subprocess.run(args + ["--out", str(out)], cwd=ROOT, env=_env(), capture_output=True, text=True,
                              timeout=timeout)
    finally:  # ranks that died early leave DeepSpeed's CPU all-reduce buffers in /dev/shm
        if "--master_port" in args:
            port = args[args.index("--master_port") + 1]
            for leftover in Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_{os.getuid()}_*_{port}_*"):
                leftover.unlink(missing_ok=True)
    errors = [line for line in proc.stderr.splitlines() if "Error" in line or "terminate" in line]
    assert proc.returncode == 0 and out.exists(), (proc.stdout[-2000:], errors[:20], proc.stderr[-3000:])
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def single_result(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("ds") / "single.json"
    return _run([sys.executable, str(HELPER), "--model", tiny_model, "--single"], out)


@pytest.mark.parametrize("advantage", ["reinforce_pp", "process_rloo"])
def test_batch_whitening_over_two_ranks_matches_one_process(advantage, tiny_model, tmp_path):
    """Each rank whitens its own rows with statistics summed over both ranks: the loss and the
    update equal one process whitening the whole batch."""
    from conftest import free_port

    single = _run([sys.executable, str(HELPER), "--model", tiny_model, "--single", "--advantage", advantage],
                  tmp_path / "single.json")
    launcher = str(Path(sys.executable).parent / "deepspeed")
    result = _run([launcher, "--num_gpus", "2", "--master_port", str(free_port()), str(HELPER), "--model",
                   tiny_model, "--stage", "2", "--advantage", advantage], tmp_path / "zero2.json")
    assert single["grad_norm"] > 1e-3  # (the loss itself is ~0: whitened advantages average to 0)
    assert result["loss"] == pytest.approx(single["loss"], abs=1e-6)
    assert result["grad_norm"] == pytest.approx(single["grad_norm"], rel=1e-5)
    assert result["checksum"] == pytest.approx(single["checksum"], rel=1e-6)


@pytest.mark.parametrize("stage,idle", [(2, False), (3, False), (3, True)], ids=["zero2", "zero3", "zero3-idle-rank"])
def test_two_ranks_match_the_single_backend(stage, idle, tiny_model, single_result, tmp_path):
    """``idle``: rank 1 has no rows (all its prompts had zero advantages) and runs zero-weighted
    filler passes so that ZeRO-3's collective forward/backward calls still match rank 0's."""
    launcher = str(Path(sys.executable).parent / "deepspeed")
    from conftest import free_port

    result = _run([launcher, "--num_gpus", "2", "--master_port", str(free_port()), str(HELPER), "--model", tiny_model, "--stage", str(stage)]
                  + (["--idle-rank"] if idle else []),
                  tmp_path / f"zero{stage}.json")
    assert result["world"] == 2 and single_result["world"] == 1
    assert abs(single_result["loss"]) > 1e-3, "the check needs a non-trivial loss"
    assert result["loss"] == pytest.approx(single_result["loss"], rel=1e-5)
    assert result["grad_norm"] == pytest.approx(single_result["grad_norm"], rel=1e-5)
    assert result["checksum"] == pytest.approx(single_result["checksum"], rel=1e-6)
