"""Secrets stay secret: a kwarg named like a key, token, secret or password reaches its reward but is
redacted wherever the config is saved or printed (config.yaml, checkpoints, the resume line of
metrics.jsonl, `rlkit config show`, the trackers)."""
from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO_ROOT, run_cli, subprocess_env, tiny_overrides
from helpers.keyed_reward import SECRET
from rlkit.config import REDACTED, redacted

KEYED = [f"rewards.functions=[{{fn: 'helpers.keyed_reward:keyed', name: keyed, kwargs: {{api_key: {SECRET}}}}}]"]


def test_secret_named_keys_are_redacted_and_nothing_else():
    tree = {"rewards": {"functions": [{"kwargs": {"api_key": "a", "api_key_env": "OPENAI_API_KEY", "hf_token": "b",
                                                  "client_secret": "c", "password": "d", "key": "e",
                                                  "max_new_tokens": 9, "tokenizer": "t", "token_budget": 3,
                                                  "secret": None, "token": ""}}]}}
    kwargs = redacted(tree)["rewards"]["functions"][0]["kwargs"]
    assert kwargs == {"api_key": REDACTED, "api_key_env": "OPENAI_API_KEY", "hf_token": REDACTED,
                      "client_secret": REDACTED, "password": REDACTED, "key": REDACTED, "max_new_tokens": 9,
                      "tokenizer": "t", "token_budget": 3, "secret": None, "token": ""}
    assert tree["rewards"]["functions"][0]["kwargs"]["api_key"] == "a"  # the live config keeps it


def test_a_run_uses_the_key_but_never_writes_or_prints_it(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT / "tests"))  # the run imports helpers.keyed_reward
    base = tiny_overrides(tiny_model, "hf", train__save_every="1", eval__before="false") + KEYED + [
        "log.report_to=[tensorboard]"]
    first = run_cli(base + ["train.steps=1"], tmp_path / "run")
    assert first.returncode == 0, first.describe()
    resumed = run_cli(base + ["train.steps=2", "train.resume=auto"], tmp_path / "run")
    assert resumed.returncode == 0, resumed.describe()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["reward/failures"] == 0 for r in rows if r["kind"] == "train")  # the reward got its key
    shown = subprocess.run([sys.executable, "-m", "rlkit.cli", "config", "show", *base], cwd=REPO_ROOT,
                           env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0 and "api_key: <redacted>" in shown.stdout, shown.stderr
    everything = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert any(p.name == "config.yaml" and "checkpoints" in p.parts for p in everything)
    assert any("tensorboard" in p.parts for p in everything)
    leaks = [str(p) for p in everything if SECRET.encode() in p.read_bytes()]
    texts = first.stdout + first.stderr + resumed.stdout + resumed.stderr + shown.stdout
    assert not leaks and SECRET not in texts, leaks
