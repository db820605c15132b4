"""A checkpoint save killed half-way, run as a child process by tests/test_checkpoint.py.

    python tests/helpers/crash_during_save.py MODEL_DIR RUN_DIR

Builds the real parts of a run on the tiny model (``SingleBackend``, ``PromptSampler``, the
stateful ``CountingReward``), changes their state, saves step 1 with ``save_checkpoint`` and
prints ``SAVED {json}`` (the state the test expects to get back). Then it saves step 2 with an
``extra`` payload: a large tensor plus an object whose pickling prints ``PAUSED`` and sleeps.
Nothing is patched; the payload only stretches the save, so that by ``PAUSED`` the temp folder
holds the weights, optimizer, RNG and reward files but no COMPLETE marker. The test SIGKILLs
the process there.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root


class SlowPayload:
    """Pickling it announces the pause on stdout and blocks (the test kills the process)."""

    def __reduce__(self):
        print("PAUSED", flush=True)
        time.sleep(300)
        return (dict, ())


def main(model_dir: str, run_dir: str) -> None:
    import torch

    from rlkit.checkpoint import save_checkpoint
    from rlkit.config import load_config
    from rlkit.data import PromptSampler, load_rows
    from rlkit.backends.single import SingleBackend
    from rlkit.scoring import build_reward

    cfg = load_config(None, [
        f"model.path={model_dir}", "model.autocast_bf16=false", "train.threads=1", "data.num_train=64",
        f"train.output_dir={run_dir}", "train.keep_checkpoints=2",
        "rewards.functions=[{fn: 'rlkit.testing_rewards:CountingReward', name: digits}]"])
    backend = SingleBackend(cfg, 10)
    rows, _ = load_rows(cfg.data, cfg.train.seed)
    sampler = PromptSampler(rows, cfg.train.seed)
    reward = build_reward(cfg.rewards)

    torch.manual_seed(7)
    with torch.no_grad():
        for p in backend.model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    sampler.next(5)
    reward.update(SimpleNamespace(size=6))
    save_checkpoint(run_dir, 1, backend, sampler, reward, cfg, extra={"note": "step one"})
    expected = {"sampler": sampler.state_dict(), "reward": reward.state_dict(),
                "weight_sum": float(sum(p.detach().double().sum() for p in backend.model.parameters())),
                "next_rand": float(torch.rand(()))}  # the first draw after the saved RNG state
    print("SAVED " + json.dumps(expected), flush=True)

    sampler.next(3)
    save_checkpoint(run_dir, 2, backend, sampler, reward, cfg,
                    extra={"payload": torch.zeros(4_000_000), "pause": SlowPayload()})
    print("NOT KILLED", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
