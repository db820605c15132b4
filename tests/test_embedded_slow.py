"""End-to-end runs on the embedded SmolLM2-135M-Instruct (minutes; `make test-slow`)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


def test_prepare_model_writes_a_plain_checkpoint(tmp_path):
    from rlkit.models import prepare_embedded_model

    target = prepare_embedded_model("smollm2-135m-instruct", tmp_path / "smollm2")
    config = json.loads((target / "config.json").read_text())
    assert "quantization_config" not in config
    assert (target / "model.safetensors").exists() and (target / "tokenizer.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary folder left behind"

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(target)
    model = AutoModelForCausalLM.from_pretrained(target)
    text = tok.apply_chat_template([{"role": "user", "content": "What is 2 + 3?"}], tokenize=False,
                                   add_generation_prompt=True)
    ids = tok(text, return_tensors="pt", add_special_tokens=False)
    out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert "5" in tok.decode(out[0, ids["input_ids"].shape[1]:])


def test_grpo_arith_config_runs_end_to_end_with_vllm(tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "rlkit.cli", "train", "--config", str(ROOT / "configs/grpo_arith.yaml"),
           "train.steps=2", "data.num_eval=24", f"train.output_dir={run}", "log.progress=false"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "held-out accuracy" in proc.stdout
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [m for m in lines if m["kind"] == "train"]
    evals = [m for m in lines if m["kind"] == "eval"]
    assert len(train) == 2 and len(evals) == 2
    for key in ("reward/mean", "accuracy", "response_length", "tokens_per_s", "time/generate", "time/sync"):
        assert key in train[-1]
    assert 0.0 <= evals[0]["eval/accuracy"] <= 1.0
    assert (run / "final" / "model.safetensors").exists()
