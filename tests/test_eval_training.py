"""Benchmarks during training (``eval.benchmarks``) and the best checkpoint (``eval.best_metric``)."""
from __future__ import annotations

import json

import pytest

from conftest import run_cli, tiny_overrides

BENCH = "eval.benchmarks=[{name: sums, benchmark: arith, limit: 4, max_new_tokens: 8, levels: [1]}]"


def test_benchmarks_logged_and_best_checkpoint_kept(tiny_model, tmp_path):
    overrides = tiny_overrides(tiny_model, "hf", train__steps=2, eval__every=1, train__save_every=1) + [
        BENCH, "eval.best_metric=eval/reward"]
    res = run_cli(overrides, tmp_path / "run")
    assert res.returncode == 0, res.describe()
    lines = [json.loads(s) for s in (res.run_dir / "metrics.jsonl").read_text().splitlines() if s.strip()]
    evals = {m["step"]: m for m in lines if m["kind"] == "eval"}
    assert sorted(evals) == [0, 1, 2]
    for m in evals.values():
        assert 0.0 <= m["bench/sums/accuracy"] <= 1.0 and m["bench/sums/n"] == 4
    assert (res.run_dir / "bench" / "sums" / "step_2").is_dir()
    best = json.loads((res.run_dir / "best" / "best.json").read_text())
    assert best["metric"] == "eval/reward" and best["step"] in (1, 2)
    assert best["best"] == pytest.approx(max(evals[s]["eval/reward"] for s in (1, 2)))
    assert (res.run_dir / "best" / "model.safetensors").is_file()
    summary = json.loads((res.run_dir / "summary.json").read_text())
    assert summary["best"] == best


def test_bad_benchmark_spec_is_a_config_error(tiny_model):
    from rlkit.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="eval.benchmarks"):
        load_config(None, tiny_overrides(tiny_model) + ["eval.benchmarks=[{benchmark: nope}]"])
    with pytest.raises(ConfigError, match="eval.best_mode"):
        load_config(None, tiny_overrides(tiny_model) + ["eval.best_mode=up"])
