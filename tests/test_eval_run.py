"""``rlkit eval`` end to end on the tiny random model: reports, model resolution (run folders,
checkpoints, LoRA checkpoints), ``evaluate_benchmarks`` for the trainer, and the vLLM backend."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO_ROOT, subprocess_env

from rlkit.eval_cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
GSM8K_ROWS = [
    {"question": "What is 2 + 3?", "answer": "2 + 3 = 5\n#### 5"},
    {"question": "What is 10 - 4?", "answer": "#### 6"},
    {"question": "Tom has 7 apples and eats 2. How many are left?", "answer": "7 - 2 = 5\n#### 5"},
]


def read_report(folder: Path, benchmark: str) -> tuple[list[dict], dict, str]:
    assert (folder / f"{benchmark}.png").read_bytes()[:8] == PNG_MAGIC
    predictions = json.loads((folder / "predictions.json").read_text())
    metrics = json.loads((folder / "metrics.json").read_text())
    return predictions, metrics, (folder / "summary.md").read_text()


def test_eval_arith_hf_end_to_end(tiny_model, tmp_path, capsys, one_thread):
    out = tmp_path / "arith"
    code = main(["--model", tiny_model, "--benchmark", "arith", "--limit", "6", "--levels", "1", "3",
                 "--max-new-tokens", "6", "--backend", "hf", "--output", str(out), "--threads", "1"])
    assert code == 0, capsys.readouterr().err
    predictions, metrics, summary = read_report(out, "arith")
    assert len(predictions) == 6
    for record in predictions:
        assert record["category"] in ("1", "3") and record["groups"]["level"] == record["category"]
        (sample,) = record["samples"]
        assert set(sample) >= {"completion", "extracted", "correct", "reason", "tokens"}
        assert isinstance(sample["correct"], bool) and 0 < sample["tokens"] <= 6
    assert metrics["settings"]["temperature"] == 0.0 and metrics["settings"]["samples"] == 1
    assert 0.0 <= metrics["metrics"]["accuracy"] <= 1.0 and metrics["metrics"]["n"] == 6
    assert "| accuracy |" in summary and "## Accuracy by level" in summary
    assert "arith: accuracy" in capsys.readouterr().out


def test_eval_gsm8k_file_with_samples_hf(tiny_model, tmp_path, capsys, one_thread):
    data = tmp_path / "gsm8k_tiny.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in GSM8K_ROWS))
    out = tmp_path / "gsm8k"
    code = main(["--model", tiny_model, "--benchmark", "gsm8k", "--data", str(data), "--samples", "2",
                 "--max-new-tokens", "5", "--backend", "hf", "--output", str(out), "--instruction", "",
                 "--threads", "1"])
    assert code == 0, capsys.readouterr().err
    predictions, metrics, summary = read_report(out, "gsm8k")
    assert [r["answer"] for r in predictions] == ["5", "6", "5"]
    assert all(len(r["samples"]) == 2 for r in predictions)
    assert metrics["settings"]["temperature"] == 1.0
    assert {"accuracy", "pass@1", "pass@2", "maj@2"} <= set(metrics["metrics"])
    assert "| pass@2 |" in summary and "| maj@2 |" in summary


def test_eval_bfcl_v4_files_and_spider_readings_hf(tiny_model, tmp_path, capsys, one_thread):
    # BFCL's published layout: the question file, its answers in possible_answer/<same name>
    question = {"id": "simple_python_1", "question": [[{"role": "user", "content": "Factorial of 5."}]],
                "function": [{"name": "math.factorial", "description": "Factorial.", "parameters": {
                    "type": "dict", "properties": {"number": {"type": "integer"}}, "required": ["number"]}}]}
    data = tmp_path / "BFCL_v4_simple_python.json"
    data.write_text(json.dumps(question) + "\n")
    (tmp_path / "possible_answer").mkdir()
    (tmp_path / "possible_answer" / data.name).write_text(
        json.dumps({"id": "simple_python_1", "ground_truth": [{"math.factorial": {"number": [5]}}]}) + "\n")
    out = tmp_path / "bfcl"
    code = main(["--model", tiny_model, "--benchmark", "toolcall", "--data", str(data), "--max-new-tokens", "4",
                 "--backend", "hf", "--output", str(out), "--threads", "1", "--underscore-to-dot"])
    assert code == 0, capsys.readouterr().err
    predictions, metrics, _ = read_report(out, "toolcall")
    assert predictions[0]["answer"] == [{"math.factorial": {"number": [5]}}]
    assert metrics["settings"]["underscore_to_dot"] is True and metrics["metrics"]["n"] == 1
    # Spider: the official reading is the accuracy, the strict one a second number and column
    from rlkit.tasks.sql_demo import build_sql_demo

    questions, tables, db_dir = build_sql_demo(tmp_path / "sql")
    out = tmp_path / "spider"
    code = main(["--model", tiny_model, "--benchmark", "spider", "--data", str(questions), "--tables", str(tables),
                 "--db-dir", str(db_dir), "--limit", "4", "--max-new-tokens", "4", "--backend", "hf",
                 "--output", str(out), "--threads", "1"])
    assert code == 0, capsys.readouterr().err
    predictions, metrics, summary = read_report(out, "spider")
    assert {"accuracy", "accuracy_strict"} <= set(metrics["metrics"])
    assert all(set(r["samples"][0]) >= {"correct", "correct_strict"} for r in predictions)
    assert "| accuracy_strict |" in summary and "spider: accuracy" in capsys.readouterr().out


def test_eval_errors_are_reported_not_raised(tiny_model, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q"}) + "\n")
    assert main(["--model", tiny_model, "--benchmark", "gsm8k", "--data", str(bad), "--backend", "hf",
                 "--output", str(tmp_path / "o")]) == 2
    assert "bad.jsonl, record 1: no answer" in capsys.readouterr().err
    assert main(["--model", str(tmp_path / "missing"), "--benchmark", "arith", "--backend", "hf"]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert main(["--model", str(tmp_path), "--benchmark", "arith", "--backend", "hf"]) == 2
    assert "no final/ model or complete checkpoint" in capsys.readouterr().err


def test_eval_subparser_for_the_rlkit_command(tmp_path, capsys):
    import argparse

    from rlkit.eval_cli import add_eval_parser, run_eval_command

    parser = argparse.ArgumentParser(prog="rlkit")
    sub = parser.add_subparsers(dest="command", required=True)
    add_eval_parser(sub)
    args = parser.parse_args(["eval", "--benchmark", "math", "--data", str(tmp_path / "none.jsonl"), "--samples", "4"])
    assert args.command == "eval" and args.samples == 4 and args.backend == "vllm" and args.temperature is None
    assert run_eval_command(args) == 2
    assert "data file not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(["eval", "--benchmark", "mmlu"])


# ---- which model -------------------------------------------------------------------------------

def fake_checkpoint(run: Path, step: int, base: str, weights: dict, lora: dict | None = None) -> Path:
    from rlkit.checkpoint import save_weights

    folder = run / "checkpoints" / f"step_{step}"
    folder.mkdir(parents=True)
    save_weights(folder / "model.safetensors", weights)
    model = {"path": base, **({"lora": lora} if lora else {})}
    (folder / "config.yaml").write_text(yaml.safe_dump({"model": model}))
    (folder / "trainer_state.json").write_text(json.dumps({"step": step}))
    (folder / "COMPLETE").write_text(f"{step}\n")
    return folder


def logits(path: str):
    import torch

    from rlkit.models import load_causal_lm

    model = load_causal_lm(path)
    with torch.no_grad():
        return model(torch.tensor([[1, 40, 41, 42, 43]])).logits


def test_resolve_run_and_checkpoint_folders(tiny_model, tmp_path, one_thread):
    import torch

    from rlkit.checkpoint import CheckpointError
    from rlkit.eval.runner import resolve_eval_model
    from rlkit.models import load_causal_lm

    assert resolve_eval_model(tiny_model, tmp_path) == (tiny_model, tiny_model)
    run = tmp_path / "run"
    model = load_causal_lm(tiny_model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    fake_checkpoint(run, 2, tiny_model, {k: torch.zeros_like(v) for k, v in weights.items()})
    fake_checkpoint(run, 5, tiny_model, weights)
    path, desc = resolve_eval_model(str(run), tmp_path / "scratch")
    assert desc.endswith("step_5") and (Path(path) / "config.json").is_file()
    assert (Path(path) / "tokenizer.json").is_file() and (Path(path) / "model.safetensors").is_symlink()
    with torch.no_grad():
        expected = model(torch.tensor([[1, 40, 41, 42, 43]])).logits
    assert torch.allclose(logits(path), expected, atol=1e-5)
    # final/ wins over checkpoints
    final = run / "final"
    final.mkdir()
    (final / "config.json").write_text("{}")
    assert resolve_eval_model(str(run), tmp_path / "scratch")[0] == str(final)
    # a checkpoint whose base model cannot be found
    orphan = fake_checkpoint(tmp_path / "orphan", 1, str(tmp_path / "gone"), weights)
    with pytest.raises(CheckpointError, match="is not a model folder with config.json"):
        resolve_eval_model(str(orphan), tmp_path / "scratch")


def test_resolve_lora_checkpoint_merges_the_adapters(tiny_model, tmp_path, one_thread):
    from types import SimpleNamespace

    import torch

    from rlkit.backends.lora import apply_lora
    from rlkit.eval.runner import resolve_eval_model
    from rlkit.models import load_causal_lm

    lora = {"r": 4, "alpha": 8.0, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"], "bias": "none"}
    model = apply_lora(load_causal_lm(tiny_model), SimpleNamespace(**lora))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
        expected = model(torch.tensor([[1, 40, 41, 42, 43]])).logits
    checkpoint = fake_checkpoint(tmp_path / "run", 3, tiny_model, dict(model.state_dict()), lora=lora)
    path, _ = resolve_eval_model(str(checkpoint), tmp_path / "scratch")
    merged = logits(path)
    assert torch.allclose(merged, expected, atol=1e-4)
    assert not torch.allclose(merged, logits(tiny_model), atol=1e-3)


# ---- during training ---------------------------------------------------------------------------

def _two_shares(rollout, tokenizer, specs):
    """evaluate_benchmarks as ranks 0 and 1 of two data-parallel engines (run one after the other
    here, with the gather answering what the other rank contributed); rank 0's metrics."""
    from rlkit.backends.sharding import RankShare
    from rlkit.eval.runner import evaluate_benchmarks

    contributed = {}

    def gather_as(rank):
        def gather(records):
            contributed[rank] = records
            return [contributed.get(0, []), contributed.get(1, [])]
        return gather

    evaluate_benchmarks(rollout, tokenizer, specs, step=7, share=RankShare(1, 2), gather=gather_as(1))
    assert {r["index"] for r in contributed[1]} == {1, 3}          # every other row
    metrics = evaluate_benchmarks(rollout, tokenizer, specs, step=7, share=RankShare(0, 2), gather=gather_as(0))
    assert {r["index"] for r in contributed[0]} == {0, 2}
    return metrics


def test_evaluate_benchmarks_for_the_trainer(tiny_model, tmp_path, one_thread):
    import torch

    from rlkit.eval.runner import BestCheckpoint, evaluate_benchmarks
    from rlkit.models import load_causal_lm, load_tokenizer
    from rlkit.rollout import make_rollout

    data = tmp_path / "gsm8k_tiny.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in GSM8K_ROWS))
    tokenizer = load_tokenizer(tiny_model)
    rollout = make_rollout("hf", load_causal_lm(tiny_model), tokenizer, tiny_model, None)
    specs = [{"name": "arith1", "benchmark": "arith", "limit": 4, "levels": [1, 2], "max_new_tokens": 4},
             {"benchmark": "gsm8k", "data": str(data), "max_new_tokens": 4, "samples": 2,
              "instruction": "", "max_prompt_tokens": 40}]
    state = torch.random.get_rng_state()
    metrics = evaluate_benchmarks(rollout, tokenizer, specs, step=7, output_dir=tmp_path / "bench", max_model_len=512)
    assert torch.equal(torch.random.get_rng_state(), state)  # sampling left the trainer's RNG alone
    assert {"bench/arith1/accuracy", "bench/arith1/n", "bench/arith1/accuracy_by_level/1",
            "bench/gsm8k/accuracy", "bench/gsm8k/pass@2", "bench/gsm8k/maj@2"} <= set(metrics)
    assert all(isinstance(v, float) for v in metrics.values())
    assert metrics["bench/arith1/n"] == 4.0 and metrics["bench/gsm8k/n"] == 3.0
    assert (tmp_path / "bench" / "gsm8k" / "step_7" / "predictions.json").is_file()
    assert (tmp_path / "bench" / "arith1" / "step_7" / "summary.md").is_file()
    settings = json.loads((tmp_path / "bench" / "gsm8k" / "step_7" / "metrics.json").read_text())["settings"]
    assert settings["step"] == 7 and settings["samples"] == 2
    gsm8k = json.loads((tmp_path / "bench" / "gsm8k" / "step_7" / "predictions.json").read_text())
    texts = {s["completion"] for r in gsm8k for s in r["samples"]}
    assert len(texts) > 1  # sampled (temperature 1.0 by default with samples > 1), not greedy copies
    with pytest.raises(ValueError, match="unknown keys \\['dataset'\\]"):
        evaluate_benchmarks(rollout, tokenizer, [{"benchmark": "gsm8k", "dataset": "x"}], step=1)
    with pytest.raises(ValueError, match="used twice"):
        evaluate_benchmarks(rollout, tokenizer, [{"benchmark": "arith"}, {"benchmark": "arith"}], step=1)

    sharded = _two_shares(rollout, tokenizer, specs[:1])
    alone = evaluate_benchmarks(rollout, tokenizer, specs[:1], step=7)
    assert sharded == alone                    # greedy: the shares' records add up to the whole run

    best = BestCheckpoint("bench/gsm8k/accuracy")
    assert best.update({"bench/gsm8k/accuracy": 0.2}, 1) is True
    assert best.update({"bench/gsm8k/accuracy": 0.1}, 2) is False
    assert best.update({"other": 1.0}, 3) is False
    assert best.update({"bench/gsm8k/accuracy": 0.3}, 4) is True and best.step == 4
    again = BestCheckpoint("bench/gsm8k/accuracy")
    again.load_state_dict(best.state_dict())
    assert again.update({"bench/gsm8k/accuracy": 0.25}, 5) is False


# ---- vLLM --------------------------------------------------------------------------------------

def test_eval_vllm_backend_matches_hf(tiny_model, tmp_path):
    pytest.importorskip("vllm")
    hf_out, vllm_out = tmp_path / "hf", tmp_path / "vllm"
    common = ["--model", tiny_model, "--benchmark", "arith", "--limit", "4", "--max-new-tokens", "6",
              "--dtype", "float32", "--threads", "1"]
    assert main(common + ["--backend", "hf", "--output", str(hf_out)]) == 0
    proc = subprocess.run([sys.executable, "-m", "rlkit.eval_cli", *common, "--backend", "vllm",
                           "--gpu-memory-utilization", "0.05", "--output", str(vllm_out)],
                          cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=600,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    predictions, metrics, _ = read_report(vllm_out, "arith")
    assert metrics["settings"]["backend"] == "vllm" and len(predictions) == 4
    hf_predictions = json.loads((hf_out / "predictions.json").read_text())
    # greedy decoding of the same float32 weights: the same completions
    assert [r["samples"][0]["completion"] for r in predictions] == \
        [r["samples"][0]["completion"] for r in hf_predictions]
