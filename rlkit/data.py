"""Prompt datasets: the built-in arithmetic task, JSONL / JSON / Parquet / CSV files, ``datasets``
folders and hub ids, tool-calling records (ToolRL, BFCL: rlkit/tasks/toolcall.py), Spider-format
Text-to-SQL (rlkit/tasks/spider.py) and a built-in Text-to-SQL demo (rlkit/tasks/sql_demo.py).

Every row is a dict with at least ``prompt`` (text, or a list of chat messages) and usually
``answer``; all other columns travel with the row to the reward functions.  The held-out rows are a
fixed slice of the data, or the first ``num_eval`` rows of ``data.eval_path``.  Prompts are
tokenized through the tokenizer's chat template or ``data.chat_template`` (a file or template text),
with ``data.system_prompt`` or a row's ``data.system_prompt_column`` as the system message.
"""
from __future__ import annotations

import functools
import random
from pathlib import Path
from typing import Any

from rlkit.records import (EVAL_SPLITS, TRAIN_SPLITS, DataError, json_lines, json_lines_numbered, located_records,
                           read_records)

__all__ = ["DataError", "EVAL_PATH_TASKS", "PromptSampler", "chat_template_text", "json_lines", "json_lines_numbered",
           "load_rows", "located_records", "prompt_token_ids", "read_records", "tokenize_prompts",
           "use_chat_template"]

EVAL_PATH_TASKS = ("jsonl", "toolcall", "spider")  # tasks read from files, so a held-out file can replace the slice
TEMPLATE_SUFFIXES = (".jinja", ".j2", ".txt")      # a data.chat_template ending so names a file


def load_rows(cfg, seed: int) -> tuple[list[dict], list[dict]]:
    """(train rows, held-out eval rows) for ``cfg`` (a DataConfig).  With ``cfg.eval_path`` every
    row of ``cfg.path`` trains and the eval rows are the first ``cfg.num_eval`` of that file."""
    if cfg.task == "arith":
        from rlkit.tasks.arith import arith_split

        eval_levels = cfg.eval_levels or cfg.levels
        train = arith_split("train", cfg.num_train, levels=cfg.levels, seed=seed, instruction=cfg.instruction)
        held = arith_split("eval", cfg.num_eval, levels=eval_levels, instruction=cfg.instruction)
        return train, held
    rows = _task_rows(cfg, cfg.path, TRAIN_SPLITS)
    if cfg.eval_path:
        train, held = rows, _task_rows(cfg, cfg.eval_path, EVAL_SPLITS)[:cfg.num_eval]
        if not held:
            raise DataError(f"{cfg.eval_path}: no rows to evaluate on (data.eval_path, data.num_eval={cfg.num_eval})")
        if not train:
            raise DataError(f"{cfg.path}: no training rows")
    else:  # hold out a fixed slice (independent of the training seed) for evaluation
        order = list(range(len(rows)))
        random.Random(1234).shuffle(order)
        n_eval = min(cfg.num_eval, len(rows) // 5)
        held = [rows[i] for i in order[:n_eval]]
        train = [rows[i] for i in order[n_eval:]]
        if not train:
            raise DataError(f"{cfg.path}: no training rows left after holding out {n_eval} for evaluation")
    column = getattr(cfg, "system_prompt_column", None)
    if column and not any(column in row for row in rows + held):  # a misspelt name; a sparse column is fine
        raise DataError(f"{cfg.path}: no row has the column {column!r} named by data.system_prompt_column "
                        f"(columns: {', '.join(map(str, rows[0]))})")
    return train, held


def _task_rows(cfg, path: str, splits: tuple[str, ...]) -> list[dict]:
    """The rows of ``path`` as ``cfg.task`` reads them (``splits``: which split of a saved DatasetDict)."""
    if cfg.task == "toolcall":
        from rlkit.tasks.toolcall import load_tool_rows

        return load_tool_rows(path)
    if cfg.task in ("spider", "sql_demo"):
        from rlkit.tasks.spider import load_spider

        kwargs = {"instruction": cfg.instruction} if cfg.instruction else {}
        questions, tables, db_dir = path, cfg.tables, cfg.db_dir
        if cfg.task == "sql_demo":  # built once into the cache (or data.path, a folder)
            from rlkit.tasks.sql_demo import build_sql_demo, default_demo_folder

            questions, tables, db_dir = build_sql_demo(path or default_demo_folder())
        return load_spider(questions, tables, db_dir=db_dir, sample_rows=cfg.sample_rows, **kwargs)
    return [_normalise(r, cfg, path, where) for where, r in located_records(path, splits)]


def _normalise(row: Any, cfg, path: str, where: str) -> dict:
    if not isinstance(row, dict):
        raise DataError(f"{path}, {where}: expected an object, got {type(row).__name__}")
    if cfg.prompt_column not in row:
        raise DataError(f"{path}, {where}: missing prompt column {cfg.prompt_column!r} "
                        f"(columns: {', '.join(map(str, row))})")
    out = dict(row)
    out["prompt"] = row[cfg.prompt_column]
    if cfg.answer_column in row:
        out["answer"] = row[cfg.answer_column]
    return out


def prompt_token_ids(rows: list[dict], tokenizer, cfg) -> list[list[int]]:
    """Tokenize prompts, through the chat template when ``cfg.chat_template`` is set; a prompt
    over ``cfg.max_prompt_tokens`` is handled by ``cfg.truncation`` (see ``tokenize_prompts``)."""
    return tokenize_prompts(rows, tokenizer, cfg)[0]


@functools.lru_cache(maxsize=8)
def chat_template_text(setting: bool | str) -> str | None:
    """The Jinja text ``data.chat_template`` gives: None for True / False (the tokenizer's own, or
    raw text), an existing file's contents, else the string itself as template text.  Read once per
    process, so a run keeps one template even if the file is edited meanwhile."""
    if isinstance(setting, bool):
        return None
    markup = "{{" in setting or "{%" in setting
    try:
        is_file = not markup and Path(setting).is_file()
    except (OSError, ValueError):  # too long for a file name, or a NUL byte: template text
        is_file = False
    if is_file:
        try:
            text = Path(setting).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"data.chat_template: cannot read {setting} ({exc})") from exc
        if "{{" not in text and "{%" not in text:
            raise DataError(f"data.chat_template: {setting} holds no Jinja template ({{{{ ... }}}} or {{% ... %}})")
        return text
    if not markup and Path(setting).suffix in TEMPLATE_SUFFIXES:
        raise DataError(f"data.chat_template: template file not found: {setting}")
    if not markup:
        raise DataError(f"data.chat_template: {setting!r} is neither an existing file nor Jinja template text "
                        "(true: the tokenizer's template, false: raw text)")
    return setting


def use_chat_template(tokenizer, cfg) -> None:
    """Put ``cfg.chat_template``'s template (a file or text) on ``tokenizer``, so that everything
    rendering chats with it (multi-turn episodes, benchmarks, the exported model) uses it too."""
    template = chat_template_text(cfg.chat_template)
    if template is not None:
        tokenizer.chat_template = template


def row_system_prompt(row: dict, cfg, index: int) -> str | None:
    """The row's ``cfg.system_prompt_column`` value, or ``cfg.system_prompt`` where it is empty or missing."""
    column = getattr(cfg, "system_prompt_column", None)
    value = row.get(column) if column else None
    if value is None or value == "":
        return cfg.system_prompt
    if not isinstance(value, str):
        raise DataError(f"row {index}: the system prompt column {column!r} holds a {type(value).__name__}, not text")
    return value


def _render_chat(tokenizer, messages: list[dict], template: str | None, index: int) -> str:
    if template is None:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                             chat_template=template)
    except Exception as exc:  # anything the user's template raises (Jinja syntax, undefined names, raise_exception)
        detail = " ".join(str(exc).split())
        raise DataError(f"data.chat_template: the template fails to render row {index} "
                        f"({type(exc).__name__}: {detail})") from exc


def tokenize_prompts(rows: list[dict], tokenizer, cfg) -> tuple[list[list[int]], int]:
    """(token ids of the rows' prompts, how many were truncated).

    A prompt over ``cfg.max_prompt_tokens`` is a DataError naming it and its length with
    ``cfg.truncation: error`` (the default: its beginning may be the chat header or a schema);
    ``left`` keeps its last tokens, ``right`` its first.  A prompt that starts with a system message
    keeps it; others get the row's system prompt (``row_system_prompt``) when there is one."""
    out, truncated = [], 0
    limit, mode = cfg.max_prompt_tokens, getattr(cfg, "truncation", "error")
    template = chat_template_text(cfg.chat_template)
    for i, row in enumerate(rows):
        prompt = row["prompt"]
        if cfg.chat_template:
            messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
            system = row_system_prompt(row, cfg, i)
            if system and messages[0].get("role") != "system":
                messages = [{"role": "system", "content": system}] + messages
            text = _render_chat(tokenizer, messages, template, i)
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        else:
            if not isinstance(prompt, str):
                raise DataError(f"row {i}: prompt is not text and data.chat_template is off")
            ids = tokenizer(prompt)["input_ids"]
        if len(ids) > limit:
            if mode == "error":
                preview = str(prompt)[:60].replace("\n", " ")
                raise DataError(f"a prompt has {len(ids)} tokens, over data.max_prompt_tokens={limit} "
                                f"(row {i} of {len(rows)}: {preview!r}...); raise data.max_prompt_tokens or set "
                                "data.truncation: left (drop its beginning) or right (drop its end)")
            ids = ids[-limit:] if mode == "left" else ids[:limit]
            truncated += 1
        out.append(ids)
    return out, truncated


class PromptSampler:
    """Draws prompts in shuffled epochs from a seeded generator; its state makes resume exact."""

    def __init__(self, rows: list[dict], seed: int):
        if not rows:
            raise DataError("no training rows")
        self.rows = rows
        self.seed = seed
        self.epoch = 0
        self.position = 0
        self._order = self._shuffled(0)

    def _shuffled(self, epoch: int) -> list[int]:
        order = list(range(len(self.rows)))
        random.Random(self.seed * 100_003 + epoch).shuffle(order)
        return order

    def next(self, n: int) -> list[dict]:
        return [row for _, row in self.next_with_ids(n)]

    def next_with_ids(self, n: int) -> list[tuple[int, dict]]:
        """The next ``n`` rows with their draw index (epoch x rows + position): increasing,
        unique over the run, and restored with the sampler's state (the group ids of a step)."""
        batch = []
        while len(batch) < n:
            if self.position == len(self._order):
                self.epoch += 1
                self.position = 0
                self._order = self._shuffled(self.epoch)
            batch.append((self.epoch * len(self.rows) + self.position, self.rows[self._order[self.position]]))
            self.position += 1
        return batch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._shuffled(self.epoch)
