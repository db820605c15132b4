"""Load-time checks of the ``data`` settings (the task and its files, truncation, ``data.eval_path``,
``data.chat_template``, ``data.system_prompt_column``): rlkit/config.py's ``check_config`` calls
``check_data`` so that a setting which cannot apply fails before a model is loaded, naming its key."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from rlkit.data import EVAL_PATH_TASKS, chat_template_text
from rlkit.records import DataError

FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")  # local data files (a hub id has none)


def check_data(cfg: Any, error: Callable[[str, str], None]) -> None:
    """``error(key, message)`` (which raises) for a data setting that cannot apply to ``cfg``: the
    task and the files it needs, prompt truncation, and the options below."""
    data = cfg.data
    if data.task in ("jsonl", "toolcall", "spider") and not data.path:
        error("data.path", f"task {data.task!r} needs a data.path")
    if data.task not in ("arith", "jsonl", "toolcall", "spider", "sql_demo"):
        error("data.task", f"unknown task {data.task!r}; choose arith, jsonl, toolcall, spider or sql_demo")
    if data.task == "spider" and not data.tables:
        error("data.tables", "task spider needs data.tables (the tables.json of the schemas)")
    if data.truncation not in ("error", "left", "right"):
        error("data.truncation", f"choose error, left or right, got {data.truncation!r}")
    if data.max_prompt_tokens < 1:
        error("data.max_prompt_tokens", "must be >= 1")
    if data.eval_path is not None:
        if data.task not in EVAL_PATH_TASKS:
            error("data.eval_path", f"task {data.task!r} makes its own held-out rows; a held-out file works "
                  f"with data.task {', '.join(EVAL_PATH_TASKS)}")
        if not data.eval_path.strip():
            error("data.eval_path", "is empty; give a file or folder, or leave it unset (a slice of data.path)")
        if Path(data.eval_path).suffix in FILE_SUFFIXES and not Path(data.eval_path).exists():
            error("data.eval_path", f"file not found: {data.eval_path}")
        if data.num_eval < 1:
            error("data.num_eval", "must be >= 1 with data.eval_path (the first data.num_eval rows are evaluated)")
    if not isinstance(data.chat_template, bool):
        try:
            chat_template_text(data.chat_template)
        except DataError as exc:
            error("data.chat_template", str(exc).removeprefix("data.chat_template: "))
    column = data.system_prompt_column
    if column is not None:
        if not column.strip():
            error("data.system_prompt_column", "is empty; name a column, or leave it unset")
        if data.task != "jsonl":
            error("data.system_prompt_column", f"rows of task {data.task!r} carry no columns of their own; "
                  "use data.system_prompt, or data.task jsonl")
        if data.chat_template is False:
            error("data.system_prompt_column", "a system message needs a chat template (data.chat_template is false)")
        if cfg.agent.env is not None:
            error("data.system_prompt_column", "multi-turn episodes (agent.env) take data.system_prompt only")
    if data.system_prompt and data.chat_template is False:
        error("data.system_prompt", "raw-text prompts (data.chat_template: false) have no system message")
