"""Prompt datasets: the built-in arithmetic task, JSONL / JSON / Parquet files and hub ids,
tool-calling records (ToolRL, BFCL: rlkit/tasks/toolcall.py), Spider-format Text-to-SQL
(rlkit/tasks/spider.py) and a built-in Text-to-SQL demo (rlkit/tasks/sql_demo.py).

Every row is a dict with at least ``prompt`` (text, or a list of chat messages) and usually
``answer``; all other columns travel with the row to the reward functions.
"""
from __future__ import annotations

import random
from typing import Any

from rlkit.records import DataError, json_lines, json_lines_numbered, located_records, read_records

__all__ = ["DataError", "PromptSampler", "json_lines", "json_lines_numbered", "load_rows", "located_records",
           "prompt_token_ids", "read_records", "tokenize_prompts"]


def load_rows(cfg, seed: int) -> tuple[list[dict], list[dict]]:
    """(train rows, held-out eval rows) for ``cfg`` (a DataConfig)."""
    if cfg.task == "arith":
        from rlkit.tasks.arith import arith_split

        eval_levels = cfg.eval_levels or cfg.levels
        train = arith_split("train", cfg.num_train, levels=cfg.levels, seed=seed, instruction=cfg.instruction)
        held = arith_split("eval", cfg.num_eval, levels=eval_levels, instruction=cfg.instruction)
        return train, held
    if cfg.task == "toolcall":
        from rlkit.tasks.toolcall import load_tool_rows

        rows = load_tool_rows(cfg.path)
    elif cfg.task in ("spider", "sql_demo"):
        from rlkit.tasks.spider import load_spider

        kwargs = {"instruction": cfg.instruction} if cfg.instruction else {}
        questions, tables, db_dir = cfg.path, cfg.tables, cfg.db_dir
        if cfg.task == "sql_demo":  # built once into the cache (or data.path, a folder)
            from rlkit.tasks.sql_demo import build_sql_demo, default_demo_folder

            questions, tables, db_dir = build_sql_demo(cfg.path or default_demo_folder())
        rows = load_spider(questions, tables, db_dir=db_dir, sample_rows=cfg.sample_rows, **kwargs)
    else:
        rows = [_normalise(r, cfg, cfg.path, where) for where, r in located_records(cfg.path)]
    # Hold out a fixed slice (independent of the training seed) for evaluation.
    order = list(range(len(rows)))
    random.Random(1234).shuffle(order)
    n_eval = min(cfg.num_eval, len(rows) // 5)
    held = [rows[i] for i in order[:n_eval]]
    train = [rows[i] for i in order[n_eval:]]
    if not train:
        raise DataError(f"{cfg.path}: no training rows left after holding out {n_eval} for evaluation")
    return train, held


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


def tokenize_prompts(rows: list[dict], tokenizer, cfg) -> tuple[list[list[int]], int]:
    """(token ids of the rows' prompts, how many were truncated).

    A prompt over ``cfg.max_prompt_tokens`` is a DataError naming it and its length with
    ``cfg.truncation: error`` (the default: its beginning may be the chat header or a schema);
    ``left`` keeps its last tokens, ``right`` its first."""
    out, truncated = [], 0
    limit, mode = cfg.max_prompt_tokens, getattr(cfg, "truncation", "error")
    for i, row in enumerate(rows):
        prompt = row["prompt"]
        if cfg.chat_template:
            messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
            if cfg.system_prompt and messages[0].get("role") != "system":
                messages = [{"role": "system", "content": cfg.system_prompt}] + messages
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
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
