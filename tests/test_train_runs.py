"""End-to-end runs of ``python -m rlkit.cli train`` on the tiny model (child processes).

(a) 3 steps with each rollout backend, (b) a learning test, (c) bad inputs give clear
errors, (d) importing rlkit stays light.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO_ROOT, subprocess_env, tiny_overrides
from rlkit.config import load_config

DIGITS_REWARD = "rewards.functions=[{fn: 'rlkit.testing_rewards:digit_fraction'}]"
TRAIN_KEYS = ("reward/mean", "reward/digit_fraction", "response_length", "tokens_per_s",
              "time/generate", "time/score", "time/train", "time/sync")


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def train_lines(run_dir: Path) -> list[dict]:
    return [m for m in read_metrics(run_dir) if m["kind"] == "train"]


# ---------------------------------------------------------------- (a) short runs per backend

@pytest.mark.parametrize("backend", ["hf", "vllm"])
def test_three_step_run(cli, tiny_model, tmp_path, backend):
    overrides = tiny_overrides(tiny_model, backend, train__steps=3) + [
        DIGITS_REWARD, "rewards.accuracy_component=digit_fraction"]
    # The vLLM run starts from the shipped config (the tiny model and small sizes override it).
    config = REPO_ROOT / "configs" / "grpo_arith.yaml" if backend == "vllm" else None
    res = cli(overrides, config=config, timeout=400)
    assert res.returncode == 0, res.describe()
    run = res.run_dir
    assert "done in" in res.stdout

    lines = train_lines(run)
    assert [m["step"] for m in lines] == [1, 2, 3]
    for m in lines:
        missing = [k for k in TRAIN_KEYS if k not in m]
        assert not missing, (missing, m)
        assert 0.0 <= m["reward/mean"] <= 1.0 and m["reward/mean"] == pytest.approx(m["reward/digit_fraction"])
        assert "accuracy" not in m  # a share of digits is no accuracy (not 0/1)
        assert 0 < m["response_length"] <= 8
        assert m["tokens_per_s"] > 0 and m["reward/failures"] == 0
        if m.get("trained_rows", 0) > 0:
            assert "entropy" in m and m["entropy"] > 0
    assert any(m.get("trained_rows", 0) > 0 for m in lines), "no step trained any row"
    monitors = [(m["step"], k, v) for m in lines for k, v in m.items() if k.startswith("monitor/")]
    assert all(-1 <= v <= 1 for _, _, v in monitors) and not any(s == 1 and k == "monitor/collapse"
                                                                 for s, k, _ in monitors), monitors
    evals = [m for m in read_metrics(run) if m["kind"] == "eval"]
    assert [m["step"] for m in evals] == [0, 3]
    assert all("eval/reward" in m for m in evals)

    # the saved config is the resolved one and loads back to the same Config
    saved = load_config(run / "config.yaml")
    assert saved == load_config(config, overrides + [f"train.output_dir={run}"])
    assert saved.rollout.backend == backend
    summary = json.loads((run / "summary.json").read_text())
    assert {"eval_before", "eval_after", "last_train"} <= set(summary)

    # the final checkpoint loads with transformers and differs from the starting weights
    from transformers import AutoModelForCausalLM, AutoTokenizer

    final = AutoModelForCausalLM.from_pretrained(run / "final")
    start = AutoModelForCausalLM.from_pretrained(tiny_model)
    tok = AutoTokenizer.from_pretrained(run / "final")
    assert tok.decode(tok("12 + 3")["input_ids"]) == "12 + 3"
    assert final.config.vocab_size == start.config.vocab_size
    assert any(not torch.equal(a, b) for a, b in zip(final.state_dict().values(), start.state_dict().values()))


# ---------------------------------------------------------------- (b) learning

LEARN_STEPS = 25


def test_policy_learns_an_easy_reward(cli, tiny_model):
    """GRPO on 'share of 7s in the completion': 0.01 at random, clearly higher after 25 steps.

    hf rollouts are faster than vllm here (no engine start; generation is tiny).
    Observed (seed 0): first three steps ~0.01, last three ~0.6-0.9.
    """
    overrides = tiny_overrides(
        tiny_model, "hf", train__steps=LEARN_STEPS, train__lr="3e-3", train__seed=0,
        train__prompts_per_step=4, rollout__num_samples=8, rollout__max_new_tokens=16,
        rollout__temperature="1.0", eval__before="false", eval__after="false",
        train__save_final="false") + [
        "rewards.functions=[{fn: 'rlkit.testing_rewards:char_fraction', kwargs: {chars: '7'}}]"]
    res = cli(overrides, timeout=400)
    assert res.returncode == 0, res.describe()
    curve = [m["reward/mean"] for m in train_lines(res.run_dir)]
    assert len(curve) == LEARN_STEPS
    first, last = sum(curve[:3]) / 3, sum(curve[-3:]) / 3
    print("reward curve:", " ".join(f"{r:.2f}" for r in curve))
    assert last >= 2 * first and last >= first + 0.1, curve


# ---------------------------------------------------------------- (c) bad inputs

def test_misspelled_key_exits_2_with_a_suggestion(cli, tiny_model):
    res = cli(tiny_overrides(tiny_model) + ["rollout.num_sample=4"], timeout=120)
    assert res.returncode == 2, res.describe()
    assert "did you mean" in res.stderr and "num_samples" in res.stderr
    assert "Traceback" not in res.stderr
    assert not res.run_dir.exists()          # nothing started


def test_misspelled_key_in_config_file_names_the_file(cli, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("include: ['%s']\ntrain:\n  stepz: 3\n" % (REPO_ROOT / "configs" / "algo" / "grpo.yaml"))
    res = cli([], config=path, timeout=120)
    assert res.returncode == 2, res.describe()
    assert str(path) in res.stderr and "did you mean" in res.stderr and "'train.steps'" in res.stderr


def test_missing_config_file_exits_2(cli, tmp_path):
    res = cli([], config=tmp_path / "nope.yaml", timeout=120)
    assert res.returncode == 2 and str(tmp_path / "nope.yaml") in res.stderr, res.describe()


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def jsonl_cfg(path: Path, **kw):
    from rlkit.config import DataConfig

    return DataConfig(task="jsonl", path=str(path), num_eval=kw.pop("num_eval", 2), **kw)


def test_missing_data_file_names_the_path(tmp_path):
    from rlkit.data import DataError, load_rows

    missing = tmp_path / "data" / "train.jsonl"
    with pytest.raises(DataError) as exc:
        load_rows(jsonl_cfg(missing), seed=0)
    assert str(missing) in str(exc.value) and "not found" in str(exc.value)


def test_missing_data_file_via_cli(cli, tiny_model, tmp_path):
    missing = tmp_path / "nowhere.jsonl"
    res = cli(tiny_overrides(tiny_model, data__task="jsonl", data__path=missing), timeout=200)
    assert res.returncode != 0
    assert "DataError" in res.stderr and str(missing) in res.stderr, res.describe()


def test_invalid_json_line_names_file_and_line(tmp_path):
    from rlkit.data import DataError, load_rows

    path = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "a"}, "", {"prompt": "b"}, '{"prompt": "c",'])
    with pytest.raises(DataError) as exc:
        load_rows(jsonl_cfg(path), seed=0)
    assert str(path) in str(exc.value) and "line 4" in str(exc.value) and "invalid JSON" in str(exc.value)


def test_row_missing_the_prompt_column_names_row_and_column(tmp_path):
    from rlkit.data import DataError, load_rows

    rows = [{"question": f"q{i}", "answer": "1"} for i in range(6)]
    path = write_jsonl(tmp_path / "q.jsonl", rows)
    # with the right column name it loads
    train, held = load_rows(jsonl_cfg(path, prompt_column="question"), seed=0)
    assert len(train) + len(held) == 6 and all(r["prompt"].startswith("q") for r in train + held)
    rows[3] = {"text": "no question here", "answer": "2"}
    write_jsonl(path, rows)
    with pytest.raises(DataError) as exc:
        load_rows(jsonl_cfg(path, prompt_column="question"), seed=0)
    msg = str(exc.value)
    assert str(path) in msg and "line 4" in msg and "'question'" in msg  # the 4th line of the file


def test_non_object_row_names_the_row(tmp_path):
    from rlkit.data import DataError, load_rows

    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a"}, [1, 2]])
    with pytest.raises(DataError, match="line 2"):
        load_rows(jsonl_cfg(path), seed=0)


def exploding_dataset(tmp_path: Path) -> Path:
    """30 prompts; every third row has ``explode: true`` (the reward raises there)."""
    rows = [{"prompt": f"Write digits, please ({i})", "answer": "7", "explode": i % 3 == 0} for i in range(30)]
    return write_jsonl(tmp_path / "explode.jsonl", rows)


def explode_overrides(tiny_model: str, data: Path, **extra) -> list[str]:
    return tiny_overrides(tiny_model, "hf", data__task="jsonl", data__path=data, train__steps=3,
                          train__prompts_per_step=4, **extra) + ["rewards.functions=[{fn: 'rlkit.testing_rewards:explode_on_column'}]",
                                      "rewards.accuracy_component=null"]


def test_reward_failures_are_isolated_and_counted(cli, tiny_model, tmp_path):
    res = cli(explode_overrides(tiny_model, exploding_dataset(tmp_path)), timeout=300)
    assert res.returncode == 0, res.describe()
    lines = train_lines(res.run_dir)
    assert len(lines) == 3
    assert sum(m["reward/failures"] for m in lines) > 0, lines
    assert all(m["reward/failures"] % 4 == 0 for m in lines)   # a whole group of 4 samples fails together
    assert "failed on row" in res.stderr                     # each failure is logged
    assert (res.run_dir / "final" / "config.json").exists()


def test_reward_failure_with_fail_fast_names_the_row(cli, tiny_model, tmp_path):
    from rlkit.data import PromptSampler, load_rows

    data = exploding_dataset(tmp_path)
    overrides = explode_overrides(tiny_model, data, eval__before="false", eval__after="false") + [
        "rewards.fail_fast=true"]
    cfg = load_config(None, overrides)
    # Which batch row fails first: replay the sampler (batch rows are grouped per prompt).
    train_rows, _ = load_rows(cfg.data, cfg.train.seed)
    sampler = PromptSampler(train_rows, cfg.train.seed)
    expected = None
    for _ in range(cfg.train.steps):
        rows = sampler.next(cfg.train.prompts_per_step)
        hits = [i for i, r in enumerate(rows) if r["explode"]]
        if hits:
            expected = hits[0] * cfg.rollout.num_samples
            break
    assert expected is not None, "the data set never puts an exploding row into the first steps"

    res = cli(overrides, timeout=300)
    assert res.returncode != 0, res.describe()
    assert f"failed on row {expected}:" in res.stderr, res.describe()
    assert "exploding row" in res.stderr and "RewardError" in res.stderr
    assert not (res.run_dir / "final").exists()


# ---------------------------------------------------------------- (d) light imports

@pytest.mark.parametrize("modules", ["rlkit, rewards",
                                     "rlkit.trainer, rlkit.cli, rlkit.scoring, rewards.math"])
def test_import_does_not_load_vllm_or_deepspeed(modules):
    code = ("import sys, json\n"
            f"import {modules}\n"
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & {'vllm', 'deepspeed'})))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=subprocess_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []
