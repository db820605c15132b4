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


@pytest.mark.parametrize("advantage", ["reinforce_pp", pytest.param("process_rloo", marks=pytest.mark.slow)])
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


# zero3 runs in the slow suite (keeps `make test` under 10 minutes); zero3-idle-rank covers ZeRO-3 here
@pytest.mark.parametrize("stage,extra", [(2, []), pytest.param(3, [], marks=pytest.mark.slow), (3, ["--idle-rank"]),
                                         pytest.param(3, ["--gc"], marks=pytest.mark.slow)],
                         ids=["zero2", "zero3", "zero3-idle-rank", "zero3-gradient-checkpointing"])
def test_two_ranks_match_the_single_backend(stage, extra, tiny_model, single_result, tmp_path):
    """``--idle-rank``: rank 1 has no rows (all its prompts had zero advantages) and runs
    zero-weighted filler passes so that ZeRO-3's collective forward/backward calls still match
    rank 0's.  ``--gc``: with gradient checkpointing (activations recomputed in the backward
    pass, which gathers ZeRO-3's parameters again) the step equals the one without it."""
    launcher = str(Path(sys.executable).parent / "deepspeed")
    from conftest import free_port

    result = _run([launcher, "--num_gpus", "2", "--master_port", str(free_port()), str(HELPER), "--model", tiny_model,
                   "--stage", str(stage), *extra], tmp_path / f"zero{stage}.json")
    assert result["world"] == 2 and single_result["world"] == 1
    # rank 0's 3 micro-batches (9 rows of 4) x 2 layers ran again in the backward pass, with --gc only
    assert result["recomputed_layer_calls"] == (3 * 2 if "--gc" in extra else 0)
    assert abs(single_result["loss"]) > 1e-3, "the check needs a non-trivial loss"
    assert result["loss"] == pytest.approx(single_result["loss"], rel=1e-5)
    assert result["grad_norm"] == pytest.approx(single_result["grad_norm"], rel=1e-5)
    assert result["checksum"] == pytest.approx(single_result["checksum"], rel=1e-6)


@pytest.fixture(scope="module")
def reference_model(tmp_path_factory):
    """The tiny model's architecture and tokenizer with other weights: a KL reference that
    differs from the starting policy from the first step on."""
    from rlkit.testing import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("reference"), seed=1)


KL_CASES = {  # id: (ZeRO stage, helper arguments); 2 steps, so that a policy-initialised reference differs
    "zero2-loss-starting-policy": (2, ["--kl-mode", "loss"]),
    "zero3-reward-model.reference": (3, ["--kl-mode", "reward", "--reference", "REFERENCE"]),
    "zero3-loss-lora-adapters-off": (3, ["--kl-mode", "loss", "--lora", "4"]),
}


@pytest.mark.parametrize("case", [c if c.startswith("zero2") else pytest.param(c, marks=pytest.mark.slow)
                                  for c in KL_CASES])  # ZeRO-3 cases: the slow suite
def test_kl_reference_over_two_ranks_matches_one_process(case, tiny_model, reference_model, tmp_path):
    """``algo.kl_coef > 0`` under DeepSpeed: each rank's reference log-probs (a frozen copy under
    ZeRO-2, a partitioned inference engine under ZeRO-3, the adapters switched off with LoRA)
    give the KL and the two updates one process computes.  The ZeRO-2 case also writes a
    checkpoint: every file in it, DeepSpeed's own shards included, was fsynced."""
    from conftest import free_port

    stage, extra = KL_CASES[case]
    extra = [reference_model if a == "REFERENCE" else a for a in extra] + ["--steps", "2"]
    single = _run([sys.executable, str(HELPER), "--model", tiny_model, "--single", *extra], tmp_path / "single.json")
    save = ["--save", str(tmp_path / "run")] if stage == 2 else []
    launcher = str(Path(sys.executable).parent / "deepspeed")
    result = _run([launcher, "--num_gpus", "2", "--master_port", str(free_port()), str(HELPER), "--model", tiny_model,
                   "--stage", str(stage), *extra, *save], tmp_path / "ds.json")
    assert single["kls"][-1] > 1e-3, "the check needs a reference that differs from the policy"
    assert result["kls"] == pytest.approx(single["kls"], rel=1e-5, abs=1e-7)
    assert result["losses"] == pytest.approx(single["losses"], rel=1e-5, abs=1e-7)
    assert result["grad_norms"] == pytest.approx(single["grad_norms"], rel=1e-5)
    assert result["checksum"] == pytest.approx(single["checksum"], rel=1e-6)
    if save:
        assert result["unsynced"] == [], "checkpoint files written without fsync"


@pytest.mark.slow  # keeps `make test` under 10 minutes; CI runs the slow suite too
def test_multi_turn_episodes_over_two_ranks_match_one_process(tiny_model, tmp_path):
    """Two-turn episodes from rlkit's EpisodeRunner (environment tokens masked out, turn rewards
    as the ``process`` term, process_rloo whitened over both ranks) under ZeRO-3: the same loss,
    gradient norm and update as one process."""
    from conftest import free_port

    args = ["--model", tiny_model, "--multi-turn", "--advantage", "process_rloo"]
    single = _run([sys.executable, str(HELPER), *args, "--single"], tmp_path / "single.json")
    launcher = str(Path(sys.executable).parent / "deepspeed")
    result = _run([launcher, "--num_gpus", "2", "--master_port", str(free_port()), str(HELPER), *args,
                   "--stage", "3"], tmp_path / "zero3.json")
    assert single["grad_norm"] > 1e-3
    assert result["loss"] == pytest.approx(single["loss"], abs=1e-6)
    assert result["grad_norm"] == pytest.approx(single["grad_norm"], rel=1e-5)
    assert result["checksum"] == pytest.approx(single["checksum"], rel=1e-6)
