"""Evaluation of multi-turn episodes: ``evaluate(..., runner=...)``, ``rlkit eval --env`` and
benchmark specs with ``env`` (``eval.benchmarks``).

The bookkeeping is driven by the scripted policy (tests/helpers/agent_kit.py) on the tiny
model's character tokenizer, with real tool workers running the real calculator; the CLI test
runs the tiny model through transformers' generate.
"""
from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys

import pytest
import torch

from conftest import REPO_ROOT, run_cli, subprocess_env, tiny_overrides
from helpers.agent_kit import ScriptedPolicy
from rlkit.agents import build_runner
from rlkit.config import AgentConfig, ConfigError, load_config
from rlkit.config_checks import environment_problem
from rlkit.eval.runner import evaluate, evaluate_benchmarks
from rlkit.eval.specs import check_specs
from rlkit.eval_cli import main as eval_main

PATIENT = "helpers.agent_kit:PatientCalcEnv"
CALC = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "2+3"}}\n</tool_call>'
CALC_AND_BAD = ('<tool_call>\n{"name": "calculator", "arguments": {"expression": "5*1"}}\n'
                '{"name": "abacus", "arguments": {}}\n</tool_call>')
ANSWER = "#### 5"
SCRIPT = [CALC, CALC_AND_BAD, ANSWER + "<eos>"]
# patience: the environment ends the episode after that many turns (PatientCalcEnv)
ROWS = [{"id": 0, "prompt": "What is 2 + 3?", "answer": "5"},
        {"id": 1, "prompt": "What is 2 + 4?", "answer": "6"},
        {"id": 2, "prompt": "What is 1 + 4?", "answer": "5", "patience": 1},
        {"id": 3, "prompt": "What is 0 + 5?", "answer": "5", "patience": 2}]


@pytest.fixture(scope="module")
def tok(tiny_model):
    from rlkit.models import load_tokenizer

    return load_tokenizer(tiny_model)


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def _evaluate(tok, policy, max_turns, max_model_len=None, **kw):
    runner = build_runner(AgentConfig(env=PATIENT, max_turns=max_turns, max_episode_tokens=2000), policy, tok,
                          max_model_len=max_model_len)
    try:
        return evaluate(policy, tok, ROWS, "arith", max_new_tokens=200, runner=runner, **kw)
    finally:
        runner.executor.close()


def test_evaluate_runs_episodes_and_counts_turns_tools_and_errors(tok):
    """Turn 1 calls the calculator, turn 2 calls it and an unknown tool (one tool error), turn 3
    answers "#### 5".  Rows 0 and 1 run all three turns (row 0 right, row 1 wrong), row 2 ends
    after turn 1 and row 3 after turn 2 with no answer in their last turn.  Per episode: turns
    3, 3, 1, 2 (mean 2.25), tool calls 3, 3, 1, 3 (2.5), tool errors 1, 1, 0, 1 (0.75);
    accuracy 1/4 with both samples of a row alike."""
    metrics, records = _evaluate(tok, ScriptedPolicy(tok, SCRIPT), max_turns=3, samples=2)
    assert metrics["accuracy"] == pytest.approx(0.25)
    assert metrics["pass@2"] == pytest.approx(0.25) and metrics["maj@2"] == pytest.approx(0.25)
    assert metrics["turns_mean"] == pytest.approx(2.25)
    assert metrics["tool_calls_per_episode"] == pytest.approx(2.5)
    assert metrics["tool_errors_per_episode"] == pytest.approx(0.75)
    assert metrics["truncated_frac"] == 0.0
    assert [len(r["samples"]) for r in records] == [2, 2, 2, 2]
    first = records[0]["samples"][0]
    assert (first["completion"], first["extracted"], first["correct"]) == (ANSWER, "5", True)
    assert [(s["turns"], s["tool_calls"], s["tool_errors"]) for r in records for s in r["samples"][:1]] == [
        (3, 3, 1), (3, 3, 1), (1, 1, 0), (2, 3, 1)]
    assert [s["correct"] for r in records for s in r["samples"]] == [True, True] + [False] * 6
    # tokens: the model's only (every character one token, EOS one more), not the tool messages
    model_tokens = len(_ids(tok, CALC)) + len(_ids(tok, CALC_AND_BAD)) + len(_ids(tok, ANSWER)) + 1
    assert first["tokens"] == model_tokens and metrics["response_tokens"] == pytest.approx(
        (2 * model_tokens + len(_ids(tok, CALC)) + len(_ids(tok, CALC)) + len(_ids(tok, CALC_AND_BAD))) / 4)
    tool_messages = [m["content"] for m in first["transcript"] if m["role"] == "tool"]
    assert tool_messages == ["5", "5", "Error: unknown tool 'abacus'; available: calculator"]


def test_max_turns_truncates_episodes_in_the_metrics(tok):
    """With two turns, rows 0 and 1 still want a third turn (truncated, nothing answered);
    row 2 ended after one turn and row 3 after two: truncated_frac 2/4."""
    metrics, records = _evaluate(tok, ScriptedPolicy(tok, SCRIPT), max_turns=2)
    assert metrics["truncated_frac"] == pytest.approx(0.5)
    assert metrics["turns_mean"] == pytest.approx((2 + 2 + 1 + 2) / 4)
    assert metrics["accuracy"] == 0.0
    assert [r["samples"][0]["finished"] for r in records] == [False, False, True, True]


def test_prompts_that_fill_the_context_are_truncated_episodes_and_logged(tok, caplog):
    with caplog.at_level("WARNING", logger="rlkit.eval"):
        metrics, _ = _evaluate(tok, ScriptedPolicy(tok, SCRIPT), max_turns=3, max_model_len=20)
    assert (metrics["turns_mean"], metrics["truncated_frac"], metrics["accuracy"]) == (0.0, 1.0, 0.0)
    assert "4 of 4 episodes had no room for a turn" in caplog.text


class DrawingPolicy(ScriptedPolicy):
    """The scripted policy that also draws a torch random number per generation call."""

    def generate(self, prompt_ids, sampling):
        self.draws = getattr(self, "draws", []) + [torch.rand(1).item()]
        return super().generate(prompt_ids, sampling)


def test_sampled_episodes_are_seeded_and_leave_the_callers_rng_alone(tok):
    state = torch.random.get_rng_state()
    runs = []
    for _ in range(2):
        policy = DrawingPolicy(tok, SCRIPT)
        _evaluate(tok, policy, max_turns=3, temperature=1.0, seed=7)
        runs.append(policy.draws)
    assert runs[0] == runs[1] and len(runs[0]) == 3
    assert torch.equal(torch.random.get_rng_state(), state)


def test_benchmark_specs_with_env_run_episodes_during_training(tok, tmp_path):
    """``evaluate_benchmarks`` builds a runner for the spec on the trainer's engine (here the
    scripted policy): arith rows never stop early, so 3 turns, 3 calls and 1 error each; no tool
    worker is left running, and the report shows the episode metrics."""
    spec = {"name": "calc", "benchmark": "arith", "limit": 2, "env": PATIENT, "max_turns": 3,
            "max_new_tokens": 200, "max_episode_tokens": 2000}
    out = evaluate_benchmarks(ScriptedPolicy(tok, SCRIPT), tok, [spec], step=5, output_dir=tmp_path)
    assert out["bench/calc/n"] == 2.0
    assert out["bench/calc/turns_mean"] == 3.0 and out["bench/calc/tool_calls_per_episode"] == 3.0
    assert out["bench/calc/tool_errors_per_episode"] == 1.0 and out["bench/calc/truncated_frac"] == 0.0
    assert not [p for p in multiprocessing.active_children() if p.name == "rewards-pool"]
    summary = (tmp_path / "calc" / "step_5" / "summary.md").read_text()
    assert "| turns per episode | 3.00 |" in summary and "| tool errors per episode | 1.00 |" in summary


def test_a_training_run_logs_benchmarks_run_as_episodes(tiny_model, tmp_path):
    """``eval.benchmarks`` with ``env`` on the trainer's own engine (hf): the episode metrics
    are logged at every evaluation and the reports written."""
    spec = ("{name: calc, benchmark: arith, limit: 3, max_new_tokens: 8, env: calculator, env_kwargs: {examples: 0}, "
            "max_turns: 2, max_episode_tokens: 24}")
    overrides = tiny_overrides(tiny_model, "hf", train__steps=1, eval__every=1, rollout__max_model_len=2048)
    res = run_cli(overrides + [f"eval.benchmarks=[{spec}]"], tmp_path / "run")
    assert res.returncode == 0, res.describe()
    lines = [json.loads(s) for s in (res.run_dir / "metrics.jsonl").read_text().splitlines() if s.strip()]
    evals = {m["step"]: m for m in lines if m["kind"] == "eval"}
    assert sorted(evals) == [0, 1]
    for m in evals.values():
        assert m["bench/calc/n"] == 3.0 and 1.0 <= m["bench/calc/turns_mean"] <= 2.0
        assert {"bench/calc/tool_calls_per_episode", "bench/calc/tool_errors_per_episode",
                "bench/calc/truncated_frac"} <= set(m)
    predictions = json.loads((res.run_dir / "bench" / "calc" / "step_1" / "predictions.json").read_text())
    assert all(1 <= s["tokens"] <= 24 for r in predictions for s in r["samples"])


def test_rlkit_eval_env_runs_the_tiny_model_multi_turn(tiny_model, tmp_path):
    """The tiny model's character tokenizer makes the calculator prompt (tool schemas in the
    system message) over 800 tokens, past its 512 positions, hence --max-model-len (transformers'
    Llama computes its rotary positions on the fly)."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "rlkit.eval_cli", "--model", tiny_model, "--backend", "hf", "--benchmark", "arith",
           "--limit", "4", "--env", "calculator", "--env-kwargs", '{"examples": 0}', "--max-turns", "2",
           "--max-new-tokens", "16", "--max-episode-tokens", "64", "--max-model-len", "2048", "--threads", "1",
           "--output", str(out)]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "metrics.json").read_text())
    metrics, settings = report["metrics"], report["settings"]
    assert metrics["n"] == 4.0 and 0.0 <= metrics["accuracy"] <= 1.0
    samples = [s for r in json.loads((out / "predictions.json").read_text()) for s in r["samples"]]
    assert len(samples) == 4 and all(1 <= s["turns"] <= 2 and 1 <= s["tokens"] <= 64 for s in samples)
    for key, name in (("turns", "turns_mean"), ("tool_calls", "tool_calls_per_episode"),
                      ("tool_errors", "tool_errors_per_episode"), ("truncated", "truncated_frac")):
        assert metrics[name] == pytest.approx(sum(float(s[key]) for s in samples) / 4), name
    assert (settings["env"], settings["env_kwargs"], settings["max_turns"], settings["max_episode_tokens"]) == (
        "calculator", {"examples": 0}, 2, 64)
    assert "turns" in proc.stdout and "tool calls" in proc.stdout


@pytest.mark.parametrize("args,message", [
    (["--env", "calculator", "--max-turns", "0"], "--max-turns: must be an integer >= 1, got 0"),
    (["--env", "calculator", "--max-episode-tokens", "-1"], "--max-episode-tokens: must be an integer >= 1, got -1"),
    (["--env", "nowhere:X"], "--env: cannot load environment 'nowhere:X': "),
    (["--env", "abacus"], "--env: cannot load environment 'abacus': ValueError: unknown environment 'abacus'"),
    (["--env", "helpers.agent_kit:UndescribedToolEnv"],
     "--env: tool helpers.agent_kit.no_docstring has no schema-able signature"),
    (["--env", "helpers.agent_kit:TalkEnv", "--env-kwargs", '{"turn": 2}'],
     "--env-kwargs: helpers.agent_kit:TalkEnv takes no argument 'turn'; it accepts: turns"),
    (["--env", "calculator", "--env-kwargs", "{turn"], "--env-kwargs: not JSON"),
    (["--max-turns", "2"], "--max-turns has no effect without --env"),
])
def test_bad_env_options_exit_2_with_one_line(args, message, capsys):
    assert eval_main(["--benchmark", "arith", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_rlkit_eval_unknown_env_module_exits_2():
    proc = subprocess.run([sys.executable, "-m", "rlkit.cli", "eval", "--benchmark", "arith", "--env", "nowhere:X"],
                          cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("rlkit eval: ValueError: --env: cannot load environment 'nowhere:X': ") and (
        "No module named 'nowhere'" in line), line


def test_specs_with_env_are_checked():
    (spec,) = check_specs([{"benchmark": "arith", "env": "calculator", "max_turns": 2, "max_episode_tokens": 128,
                            "env_kwargs": {"examples": 1}}], check_env=environment_problem)
    assert spec["name"] == "arith" and spec["env"] == "calculator"
    bad = [({"env": "calculator", "max_turns": 0}, r"benchmark spec 0 \(arith\): max_turns: must be an integer >= 1, "
                                                   r"got 0"),
           ({"env": "nowhere:X"}, r"benchmark spec 0 \(arith\): env: cannot load environment 'nowhere:X'"),
           ({"env": "calculator", "max_turn": 2}, r"benchmark spec 0 \(arith\): unknown keys \['max_turn'\]"),
           ({"env": "helpers.agent_kit:TalkEnv", "env_kwargs": {"x": 1}},
            r"env_kwargs: helpers.agent_kit:TalkEnv takes no argument 'x'; it accepts: turns"),
           ({"env": "helpers.agent_kit:UndescribedToolEnv"}, r"env: tool helpers.agent_kit.no_docstring has no"),
           ({"env": "calculator", "chat_template": False}, r"env needs the chat template"),
           ({"max_turns": 2}, r"benchmark spec 0 \(arith\): max_turns has no effect without env")]
    for extra, message in bad:
        with pytest.raises(ValueError, match=message):
            check_specs([{"benchmark": "arith", **extra}], check_env=environment_problem)
    # without check_env the environment is not loaded (rlkit.eval.specs imports no rlkit module but the table)
    assert check_specs([{"benchmark": "arith", "env": "nowhere:X"}])[0]["env"] == "nowhere:X"

    def load(spec):
        return load_config("configs/grpo_arith.yaml", [f"eval.benchmarks=[{spec}]"])

    assert load("{benchmark: arith, env: calculator, max_turns: 2}").eval.benchmarks[0]["max_turns"] == 2
    with pytest.raises(ConfigError, match=r"eval.benchmarks: benchmark spec 0 \(arith\): max_turns: must be"):
        load("{benchmark: arith, env: calculator, max_turns: 0}")
    with pytest.raises(ConfigError, match=r"eval.benchmarks: benchmark spec 0 \(arith\): env: cannot load "
                                          r"environment 'nowhere:X'"):
        load("{benchmark: arith, env: 'nowhere:X'}")
