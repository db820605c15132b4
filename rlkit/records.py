"""Reading records from files: ``DataError`` and the JSON-lines / JSON / Parquet / CSV readers, local
``datasets`` folders (``save_to_disk``) and hub ids.

The task loaders (rlkit/tasks/) and the prompt data sets (rlkit/data.py, which re-exports these
names) both read through this module, so neither imports the other.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any


class DataError(ValueError):
    """Bad input data; the message names the file and row."""


TRAIN_SPLITS = ("train",)                       # the split of a saved DatasetDict that trains
EVAL_SPLITS = ("test", "validation", "train")   # the first of these a saved DatasetDict has evaluates


def read_records(path: str, splits: tuple[str, ...] = TRAIN_SPLITS) -> list[dict]:
    """Rows of a .jsonl, .json (a list), .parquet or .csv file, a ``datasets.save_to_disk`` folder
    (of a saved DatasetDict: the first of ``splits`` it has) or a hub data set id (``name:split``)."""
    return [record for _, record in located_records(path, splits)]


def located_records(path: str, splits: tuple[str, ...] = TRAIN_SPLITS) -> list[tuple[str, Any]]:
    """``read_records`` with where each record is, for error messages: ``line N`` (1-based, in a
    .jsonl or .csv file) or ``record N`` (1-based, in a JSON list, a Parquet file, a saved data set
    or a hub split)."""
    p = Path(path)
    if p.suffix in (".jsonl", ".json", ".parquet", ".csv") and not p.exists():
        raise DataError(f"data file not found: {path}")
    if p.suffix == ".jsonl":
        return [(f"line {n}", r) for n, r in json_lines_numbered(p.read_text(encoding="utf-8"), path)]
    if p.suffix == ".csv":
        return csv_records(p, path)
    if p.is_dir():
        return [(f"record {i}", r) for i, r in enumerate(_saved_dataset(p, path, splits), 1)]
    return [(f"record {i}", r) for i, r in enumerate(_read_other(p, path), 1)]


def csv_records(p: Path, path: str) -> list[tuple[str, dict]]:
    """``(line N, row)`` of a CSV file with a header row (RFC 4180 quoting, so a quoted field may
    hold commas and newlines; a UTF-8 byte order mark is skipped).  Values stay text."""
    out = []
    try:
        with p.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                return []
            repeated = sorted({name for name in header if header.count(name) > 1})
            if repeated:
                raise DataError(f"{path}, line 1: repeated column name(s) {', '.join(map(repr, repeated))}")
            for fields in reader:
                if not fields:  # a blank line
                    continue
                if len(fields) != len(header):
                    raise DataError(f"{path}, line {reader.line_num}: {len(fields)} fields where the header "
                                    f"has {len(header)} (a comma inside a value needs the value in double quotes)")
                out.append((f"line {reader.line_num}", dict(zip(header, fields))))
    except csv.Error as exc:
        raise DataError(f"{path}: invalid CSV ({exc})") from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    return out


def _saved_dataset(p: Path, path: str, splits: tuple[str, ...]) -> list:
    import datasets

    try:
        data = datasets.load_from_disk(str(p))
    except FileNotFoundError as exc:
        raise DataError(f"{path}: a folder, but not one written by datasets' save_to_disk ({exc})") from exc
    if isinstance(data, datasets.DatasetDict):
        split = next((s for s in splits if s in data), None)
        if split is None:
            raise DataError(f"{path}: the saved DatasetDict has no split {' or '.join(map(repr, splits))} "
                            f"(splits: {', '.join(data)})")
        data = data[split]
    return list(data)


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
        raise DataError(f"{path}: not found or not a supported format "
                        "(.jsonl, .json, .parquet, .csv, a save_to_disk folder, or a hub id)")
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
