"""examples/grpo_minimal.py, the one-file reference, trains: two steps on the tiny model with
HF generation, in a child process as a user would run it."""
from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

from conftest import REPO_ROOT, subprocess_env

STEP_LINE = re.compile(r"^step\s+(\d+)\s+reward (\S+)\s+loss (\S+)\s+(\S+) s$", re.MULTILINE)


def load_weights(folder) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_minimal_example_trains_two_steps(tiny_model, tmp_path):
    out = tmp_path / "trained"
    # The character model never answers right, so the score is the share of vowels (varied
    # scores, hence non-zero advantages and a real gradient); weight decay is off in the
    # example, so the weights move only if the gradient reaches them through the optimizer.
    cmd = [sys.executable, str(REPO_ROOT / "examples" / "grpo_minimal.py"), "--model", tiny_model,
           "--backend", "hf", "--steps", "2", "--prompts", "2", "--group", "4", "--max-new-tokens", "8",
           "--eval", "4", "--lr", "1e-3", "--reward", "rlkit.testing_rewards:vowel_fraction", "--save", str(out)]
    env = dict(subprocess_env(), OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"

    steps = STEP_LINE.findall(proc.stdout)
    assert [int(s[0]) for s in steps] == [1, 2], proc.stdout
    for _, reward, loss, seconds in steps:
        assert 0.0 <= float(reward) <= 1.0 and math.isfinite(float(loss)) and float(seconds) >= 0.0
    assert re.search(r"^after training: greedy accuracy \d\.\d\d on 4 held-out problems$", proc.stdout,
                     re.MULTILINE), proc.stdout

    before, after = load_weights(Path(tiny_model)), load_weights(out)
    assert before.keys() == after.keys()
    changed = [name for name in before if not before[name].equal(after[name])]
    assert changed, "no weight changed in two optimizer steps"
