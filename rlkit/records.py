"""Reading records from files: ``DataError`` and the JSON-lines / JSON / Parquet / hub readers.

The task loaders (rlkit/tasks/) and the prompt data sets (rlkit/data.py, which re-exports these
names) both read through this module, so neither imports the other.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class DataError(ValueError):
    """Bad input data; the message names the file and row."""


def read_records(path: str) -> list[dict]:
    """Rows of a .jsonl, .json (a list) or .parquet file, or of a hub data set id (``name:split``)."""
    return [record for _, record in located_records(path)]


def located_records(path: str) -> list[tuple[str, Any]]:
    """``read_records`` with where each record is, for error messages: ``line N`` (1-based, in a
    .jsonl file) or ``record N`` (1-based, in a JSON list, a Parquet file or a hub split)."""
    p = Path(path)
    if p.suffix in (".jsonl", ".json", ".parquet") and not p.exists():
        raise DataError(f"data file not found: {path}")
    if p.suffix == ".jsonl":
        return [(f"line {n}", r) for n, r in json_lines_numbered(p.read_text(encoding="utf-8"), path)]
    return [(f"record {i}", r) for i, r in enumerate(_read_other(p, path), 1)]


def _read_other(p: Path, path: str) -> list:
    if p.suffix == ".json":
        try:
            data = json.loads(p.read_text())
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: invalid JSON at line {exc.lineno} ({exc.msg})") from exc
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
        return data
    if p.suffix == ".parquet":
        import datasets

        return list(datasets.load_dataset("parquet", data_files=str(p), split="train"))
    if p.exists() or p.suffix or path.startswith((".", "/")):
        raise DataError(f"{path}: not found or not a supported format (.jsonl, .json, .parquet, or a hub id)")
    import datasets  # a hub id such as "openai/gsm8k:train", only when the user names one

    name, _, split = path.partition(":")
    return list(datasets.load_dataset(name, split=split or "train"))


def json_lines(text: str, path: str | Path) -> list:
    """The records of JSON-lines ``text`` (blank lines skipped); a bad line is a DataError
    naming ``path`` and the line number."""
    return [record for _, record in json_lines_numbered(text, path)]


def json_lines_numbered(text: str, path: str | Path) -> list[tuple[int, Any]]:
    """``(1-based line number, record)`` of JSON-lines ``text``, blank lines skipped."""
    records = []
    for line_no, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append((line_no, json.loads(line)))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}, line {line_no}: invalid JSON ({exc.msg})") from exc
    return records
