"""Data options: ``data.eval_path``, ``save_to_disk`` folders, CSV files, ``data.chat_template`` as a
file or template text, ``data.system_prompt_column``, and the settings refused at config load."""
from __future__ import annotations

import json

import pytest

from rlkit.config import AgentConfig, Config, ConfigError, DataConfig, load_config
from rlkit.data import DataError, load_rows, prompt_token_ids, read_records, use_chat_template
from rlkit.data_checks import check_data
from rlkit.testing import char_vocab, make_char_tokenizer

# Brackets instead of the char tokenizer's own "<s>role: ...</s>" layout; every character is one token.
TEMPLATE = ("{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}[assistant]{% endif %}")


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _char_ids(text: str) -> list[int]:
    vocab = char_vocab()
    return [vocab[c] for c in text]


def _check(**data) -> None:
    """check_data on a config with these data fields (agent: an AgentConfig for ``agent``)."""
    agent = data.pop("agent", AgentConfig())

    def error(key: str, message: str) -> None:
        raise ConfigError(f"{key}: {message}")

    check_data(Config(data=DataConfig(**data), agent=agent), error)


# ---------------------------------------------------------------- files and folders

def test_save_to_disk_folders_dataset_and_dataset_dict_splits(tmp_path):
    import datasets

    rows = [{"question": f"q{i}", "answer": str(i), "level": i % 3} for i in range(6)]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "plain"))
    assert read_records(str(tmp_path / "plain")) == rows  # every column kept
    test = [{"question": "t0", "answer": "0", "level": 9}, {"question": "t1", "answer": "1", "level": 9}]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows),
                          "test": datasets.Dataset.from_list(test)}).save_to_disk(str(tmp_path / "dict"))
    folder = str(tmp_path / "dict")
    train, held = load_rows(DataConfig(task="jsonl", path=folder, eval_path=folder, prompt_column="question"), 0)
    assert [r["prompt"] for r in train] == [f"q{i}" for i in range(6)]
    assert held == [{"question": "t0", "answer": "0", "level": 9, "prompt": "t0"},
                    {"question": "t1", "answer": "1", "level": 9, "prompt": "t1"}]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows),
                          "validation": datasets.Dataset.from_list(test[1:])}).save_to_disk(str(tmp_path / "val"))
    assert read_records(str(tmp_path / "val"), ("test", "validation", "train")) == test[1:]
    datasets.DatasetDict({"test": datasets.Dataset.from_list(test)}).save_to_disk(str(tmp_path / "no_train"))
    with pytest.raises(DataError, match=r"no split 'train' \(splits: test\)"):
        read_records(str(tmp_path / "no_train"))
    (tmp_path / "other").mkdir()
    with pytest.raises(DataError, match="not one written by datasets' save_to_disk"):
        read_records(str(tmp_path / "other"))


def test_csv_quoted_commas_and_newlines_stay_text(tmp_path):
    path = tmp_path / "d.csv"
    # as a spreadsheet writes it: a byte order mark, CRLF line ends (one inside a quoted value), a blank line
    path.write_bytes(b'\xef\xbb\xbfprompt,answer,note\r\n"Add 1, 2 and 3",6,plain\r\n'
                     b'Two?,2,"line one\r\nline two"\r\n\r\nx,07,\r\n')
    assert read_records(str(path)) == [{"prompt": "Add 1, 2 and 3", "answer": "6", "note": "plain"},
                                       {"prompt": "Two?", "answer": "2", "note": "line one\r\nline two"},
                                       {"prompt": "x", "answer": "07", "note": ""}]
    path.write_text("prompt,answer\nAdd 1, 2,3\n")
    with pytest.raises(DataError, match=r"d\.csv, line 2: 3 fields where the header has 2"):
        read_records(str(path))
    with pytest.raises(DataError, match="data file not found"):
        read_records(str(tmp_path / "missing.csv"))


# ---------------------------------------------------------------- data.eval_path

def test_eval_path_replaces_the_held_out_slice(tmp_path):
    train_file = _jsonl(tmp_path / "train.jsonl", [{"prompt": f"t{i}", "answer": str(i)} for i in range(10)])
    eval_file = tmp_path / "eval.csv"
    eval_file.write_text("prompt,answer\ne0,0\ne1,1\ne2,2\ne3,3\n")
    train, held = load_rows(DataConfig(task="jsonl", path=train_file, num_eval=3), 0)
    assert (len(train), len(held)) == (8, 2)  # the slice: min(3, 10 // 5) rows held out of data.path
    train, held = load_rows(DataConfig(task="jsonl", path=train_file, eval_path=str(eval_file), num_eval=3), 0)
    assert [r["prompt"] for r in train] == [f"t{i}" for i in range(10)]  # nothing of data.path held out
    assert held == [{"prompt": "e0", "answer": "0"}, {"prompt": "e1", "answer": "1"}, {"prompt": "e2", "answer": "2"}]


def test_eval_path_of_a_spider_task_reads_the_same_tables(tmp_path):
    from rlkit.tasks.sql_demo import build_sql_demo

    questions, tables, db_dir = build_sql_demo(tmp_path / "demo")
    records = json.loads(questions.read_text())
    (tmp_path / "eval.json").write_text(json.dumps(records[5:8]))
    cfg = DataConfig(task="spider", path=str(questions), tables=str(tables), db_dir=str(db_dir),
                     eval_path=str(tmp_path / "eval.json"), num_eval=2)
    train, held = load_rows(cfg, 0)
    assert len(train) == len(records)
    assert [(r["question"], r["gold_sql"]) for r in held] == [(r["question"], r["query"]) for r in records[5:7]]


# ---------------------------------------------------------------- data.chat_template

def test_template_file_and_text_replace_the_tokenizers_template(tmp_path):
    tok = make_char_tokenizer()
    rows = [{"prompt": "What is 1 + 2?"}]
    messages = [{"role": "user", "content": "What is 1 + 2?"}]
    expected = _char_ids("[user]What is 1 + 2?\n[assistant]")
    assert expected == tok(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                                   chat_template=TEMPLATE), add_special_tokens=False)["input_ids"]
    own = prompt_token_ids(rows, tok, DataConfig())
    assert own[0] != expected and own[0][0] == char_vocab()["<s>"]
    assert prompt_token_ids(rows, tok, DataConfig(chat_template=TEMPLATE)) == [expected]
    (tmp_path / "chat.jinja").write_text(TEMPLATE)
    cfg = DataConfig(chat_template=str(tmp_path / "chat.jinja"))
    assert prompt_token_ids(rows, tok, cfg) == [expected]
    assert prompt_token_ids(rows, tok, DataConfig()) == own  # the tokenizer itself is left alone ...
    use_chat_template(tok, cfg)  # ... until the run puts the template on it for every other renderer
    assert tok.chat_template == TEMPLATE and prompt_token_ids(rows, tok, DataConfig()) == [expected]


def test_a_template_that_fails_to_render_is_one_line_naming_the_key():
    tok = make_char_tokenizer()
    broken = "{% for m in messages %}{{ m['content'] }}"  # no endfor
    with pytest.raises(DataError, match=r"^data\.chat_template: the template fails to render row 0 "
                                        r"\(TemplateSyntaxError: [^\n]*\)$"):
        prompt_token_ids([{"prompt": "x"}], tok, DataConfig(chat_template=broken))
    refuses = "{{ raise_exception('no system messages') }}"
    with pytest.raises(DataError, match=r"row 0 \(TemplateError: no system messages\)"):
        prompt_token_ids([{"prompt": "x"}], tok, DataConfig(chat_template=refuses))


# ---------------------------------------------------------------- data.system_prompt_column

def test_a_rows_system_prompt_reaches_its_own_prompt_only(tmp_path):
    tok = make_char_tokenizer()
    rows = [{"prompt": "a", "sys": "Be terse."}, {"prompt": "b", "sys": ""}, {"prompt": "c"}]
    cfg = DataConfig(chat_template=TEMPLATE, system_prompt="Default.", system_prompt_column="sys")
    assert prompt_token_ids(rows, tok, cfg) == [_char_ids("[system]Be terse.\n[user]a\n[assistant]"),
                                                _char_ids("[system]Default.\n[user]b\n[assistant]"),
                                                _char_ids("[system]Default.\n[user]c\n[assistant]")]
    cfg = DataConfig(chat_template=TEMPLATE, system_prompt_column="sys")
    assert prompt_token_ids(rows[1:2], tok, cfg) == [_char_ids("[user]b\n[assistant]")]
    with pytest.raises(DataError, match="row 0: the system prompt column 'sys' holds a int"):
        prompt_token_ids([{"prompt": "a", "sys": 3}], tok, cfg)
    # the held-out rows keep the column, so the eval prompts get theirs too
    train_file = _jsonl(tmp_path / "train.jsonl", [{"prompt": "t"}] * 3)
    eval_file = _jsonl(tmp_path / "eval.jsonl", [{"prompt": "e", "sys": "Eval only."}])
    _, held = load_rows(DataConfig(task="jsonl", path=train_file, eval_path=eval_file, system_prompt_column="sys"), 0)
    assert prompt_token_ids(held, tok, cfg) == [_char_ids("[system]Eval only.\n[user]e\n[assistant]")]
    with pytest.raises(DataError, match=r"no row has the column 'sytem' named by data\.system_prompt_column"):
        load_rows(DataConfig(task="jsonl", path=eval_file, eval_path=eval_file, system_prompt_column="sytem"), 0)


# ---------------------------------------------------------------- refused at config load

@pytest.mark.parametrize("data, message", [
    ({"eval_path": "e.jsonl"}, r"data\.eval_path: task 'arith' makes its own held-out rows"),
    ({"task": "sql_demo", "eval_path": "e.jsonl"}, r"data\.eval_path: task 'sql_demo'"),
    ({"task": "jsonl", "path": "t.jsonl", "eval_path": "missing.jsonl"}, r"data\.eval_path: file not found"),
    ({"task": "jsonl", "path": "t.jsonl", "eval_path": "org/set:test", "num_eval": 0}, r"data\.num_eval: must be >= 1"),
    ({"chat_template": "templates/missing.jinja"}, r"data\.chat_template: template file not found"),
    ({"chat_template": "chatml"}, r"data\.chat_template: 'chatml' is neither an existing file nor Jinja"),
    ({"task": "toolcall", "path": "t.jsonl", "system_prompt_column": "sys"},
     r"data\.system_prompt_column: rows of task"),
    ({"task": "jsonl", "path": "t.jsonl", "system_prompt_column": "sys", "chat_template": False},
     r"data\.system_prompt_column: a system message needs a chat template"),
    ({"task": "jsonl", "path": "t.jsonl", "system_prompt_column": "sys", "agent": AgentConfig(env="calculator")},
     r"data\.system_prompt_column: multi-turn episodes"),
    ({"system_prompt": "Be brief.", "chat_template": False}, r"data\.system_prompt: raw-text prompts"),
])
def test_settings_that_cannot_apply_are_refused(data, message):
    with pytest.raises(ConfigError, match=message):
        _check(**data)


def test_settings_that_apply_pass(tmp_path):
    (tmp_path / "chat.j2").write_text(TEMPLATE)
    _check(chat_template=str(tmp_path / "chat.j2"))
    _check(chat_template=TEMPLATE, system_prompt="x")
    _check(task="jsonl", path="t.jsonl", eval_path="org/set:test", system_prompt_column="sys")


def test_load_config_refuses_an_eval_path_it_cannot_use():
    with pytest.raises(ConfigError, match=r"data\.eval_path: task 'arith'"):
        load_config(None, ["data.eval_path=held.jsonl"])
