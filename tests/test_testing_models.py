"""Tests for rlkit.testing: tiny random Llama models with a character-level tokenizer."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlkit.testing import BOS_ID, EOS_ID, PAD_ID, UNK_ID, make_tiny_model


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> str:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


def test_files_written(tiny_dir):
    names = {p.name for p in Path(tiny_dir).iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
            "tokenizer_config.json"} <= names
    config = json.loads((Path(tiny_dir) / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["head_dim"] in (32, 64) and config["max_position_embeddings"] == 512
    assert config["tie_word_embeddings"] is False
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (
        BOS_ID, EOS_ID, PAD_ID)
    generation = json.loads((Path(tiny_dir) / "generation_config.json").read_text())
    assert generation["eos_token_id"] == EOS_ID


def test_model_loads_and_runs(tiny_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    assert model.dtype == torch.float32
    assert model.config.vocab_size == len(tokenizer)
    assert sum(p.numel() for p in model.parameters()) < 1_000_000
    ids = torch.tensor([tokenizer("What is 1 + 1?")["input_ids"]])
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], len(tokenizer))
    out = model.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert out.shape == (1, ids.shape[1] + 4)


def test_tokenizer_round_trips_text(tiny_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    text = "What is 12 + 3?\n#### 15"
    ids = tokenizer(text)["input_ids"]
    assert len(ids) == len(text)                        # one token per character, no BOS
    assert tokenizer.decode(ids) == text
    weird = "  a\tb ~{}\n\n"
    assert tokenizer.decode(tokenizer(weird)["input_ids"]) == weird
    assert tokenizer("é")["input_ids"] == [UNK_ID]
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id,
            tokenizer.unk_token_id) == (BOS_ID, EOS_ID, PAD_ID, UNK_ID)


def test_chat_template(tiny_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    messages = [{"role": "user", "content": "What is 2 + 3?"}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt == "<s>user: What is 2 + 3?</s>\n<s>assistant: "
    ids = tokenizer(prompt)["input_ids"]
    assert ids[0] == BOS_ID and ids.count(EOS_ID) == 1 and tokenizer.decode(ids) == prompt
    assert tokenizer.decode(ids, skip_special_tokens=True) == "user: What is 2 + 3?\nassistant: "
    full = tokenizer.apply_chat_template(
        messages + [{"role": "assistant", "content": "5"}], tokenize=False)
    assert full.endswith("<s>assistant: 5</s>\n")


def test_same_seed_same_weights(tmp_path):
    a = AutoModelForCausalLM.from_pretrained(make_tiny_model(tmp_path / "a", seed=3))
    b = AutoModelForCausalLM.from_pretrained(make_tiny_model(tmp_path / "b", seed=3))
    c = AutoModelForCausalLM.from_pretrained(make_tiny_model(tmp_path / "c", seed=4))
    for (name, pa), pb, pc in zip(a.named_parameters(), b.parameters(), c.parameters()):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.lm_head.weight, c.lm_head.weight)


def test_bad_head_dim_rejected(tmp_path):
    with pytest.raises(ValueError, match="head_dim"):
        make_tiny_model(tmp_path / "bad", hidden_size=48, heads=2)
