"""Prompt data: file formats, clear errors, held-out split, chat templates, resumable sampling."""
from __future__ import annotations

import json

import pytest

from rlkit.config import DataConfig
from rlkit.data import DataError, PromptSampler, load_rows, prompt_token_ids, read_records


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_jsonl_json_and_parquet_give_the_same_records(tmp_path):
    rows = [{"prompt": f"q{i}", "answer": str(i)} for i in range(5)]
    _jsonl(tmp_path / "d.jsonl", rows)
    (tmp_path / "d.json").write_text(json.dumps(rows))
    import pandas

    pandas.DataFrame(rows).to_parquet(tmp_path / "d.parquet")
    for name in ("d.jsonl", "d.json", "d.parquet"):
        assert read_records(str(tmp_path / name)) == rows


def test_unsupported_format_and_bad_json_name_the_file(tmp_path):
    (tmp_path / "d.xml").write_text("prompt\nx\n")
    with pytest.raises(DataError, match="d.xml"):
        read_records(str(tmp_path / "d.xml"))
    (tmp_path / "bad.json").write_text("{\"prompt\": 1}")
    with pytest.raises(DataError, match="expected a JSON list"):
        read_records(str(tmp_path / "bad.json"))


def test_jsonl_task_holds_out_a_fixed_split_and_maps_columns(tmp_path):
    rows = [{"question": f"q{i}", "solution": str(i), "extra": i} for i in range(50)]
    path = _jsonl(tmp_path / "d.jsonl", rows)
    cfg = DataConfig(task="jsonl", path=str(path), prompt_column="question", answer_column="solution", num_eval=5)
    train_a, held_a = load_rows(cfg, seed=0)
    train_b, held_b = load_rows(cfg, seed=7)
    assert held_a == held_b and len(held_a) == 5 and len(train_a) == 45
    assert {r["prompt"] for r in train_a}.isdisjoint({r["prompt"] for r in held_a})
    assert all(r["answer"] == r["solution"] and "extra" in r for r in train_a)


def test_prompt_token_ids_use_the_chat_template(tiny_model):
    from rlkit.models import load_tokenizer

    tok = load_tokenizer(tiny_model)
    rows = [{"prompt": "What is 1 + 2?"}, {"prompt": [{"role": "user", "content": "hi"}]}]
    ids = prompt_token_ids(rows, tok, DataConfig(system_prompt="Be brief."))
    text = tok.decode(ids[0])
    assert "What is 1 + 2?" in text and "Be brief." in text and text.rstrip().endswith("assistant:")
    plain = prompt_token_ids(rows[:1], tok, DataConfig(chat_template=False))
    assert tok.decode(plain[0]) == "What is 1 + 2?"
    with pytest.raises(DataError, match="row 1"):
        prompt_token_ids(rows, tok, DataConfig(chat_template=False))


def test_prompt_sampler_is_seeded_and_resumes_exactly():
    rows = [{"prompt": str(i)} for i in range(7)]
    a = PromptSampler(rows, seed=3)
    first = a.next(5)
    state = a.state_dict()
    rest = a.next(12)  # crosses an epoch boundary
    b = PromptSampler(rows, seed=3)
    b.load_state_dict(state)
    assert b.next(12) == rest
    assert PromptSampler(rows, seed=3).next(5) == first
    assert PromptSampler(rows, seed=4).next(7) != PromptSampler(rows, seed=3).next(7)
