"""``rlkit reward-check REWARD --data FILE``: test a reward before training on it.

The reward (any ``rewards.functions`` entry: ``module:function``, or ``module:Class``
instantiated with ``--kwargs``, as ``rlkit.scoring.build_reward`` does) scores, for every data
row, the row's reference answer, perturbed answers and degenerate outputs (``perturb.py``); the
report (``report.py``) names every case where a wrong output scores at least as well as the
reference. Data: math JSONL/JSON (GSM8K ``question``/``answer``, MATH ``problem``/``solution``,
or ``prompt``/``answer``), Spider-format SQL (questions + ``--tables`` + ``--db-dir``, or
``--data sql_demo``; rows with ``gold_sql`` and ``db_path`` also work), ToolRL or BFCL tool-call
files. Exit codes: 0 done, 1 findings under ``--strict``, 2 bad input (one line on stderr).
"""
from __future__ import annotations

import argparse

import functools
import inspect
import json
import random
import sys
from pathlib import Path
from typing import Any

from rlkit.reward_check.perturb import PERTURBERS, Perturber
from rlkit.reward_check.report import check_reward, findings, format_report

__all__ = ["PERTURBERS", "Perturber", "add_parser", "build_reward_fn", "check_reward", "detect_task",
           "format_report", "load_rows", "main"]

TASKS = ("auto", "math", "sql", "toolcall")
DEFAULT_LIMIT = 200


class CheckError(ValueError):
    """Bad input to the command; the message is the one line printed."""


def add_parser(sub: Any) -> None:
    about = "test a reward on references, perturbed answers and degenerate outputs before training on it"
    p = sub.add_parser("reward-check", help=about, description=about, formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="example:\n  rlkit reward-check rewards.math:correctness --data train.jsonl --strict")
    p.add_argument("reward", help='a rewards.functions entry: "module:function" or "module:Class"')
    p.add_argument("--data", required=True, help="data file (math JSONL/JSON, Spider questions, ToolRL/BFCL) "
                                                 "or sql_demo")
    p.add_argument("--task", choices=TASKS, default="auto", help="which perturbations (auto: from the data's keys)")
    p.add_argument("--tables", default=None, help="Spider tables.json (default: tables.json beside --data)")
    p.add_argument("--db-dir", default=None, help="Spider database folder <db_id>/<db_id>.sqlite "
                                                  "(default: database/ beside --data)")
    p.add_argument("--limit", type=int, default=DEFAULT_LIMIT,
                   help=f"rows to check, a seeded sample (default {DEFAULT_LIMIT}; 0: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the row sample")
    p.add_argument("--kwargs", default="{}", help="JSON object: the reward's keyword arguments")
    p.add_argument("--perturber", default=None, help="module:object with reference/perturb/degenerate "
                                                     "(default: the task's built-in one)")
    p.add_argument("--examples", type=int, default=3, help="examples shown per hole kind")
    p.add_argument("--timeout-s", type=float, default=10.0, help="reward time limit per output")
    p.add_argument("--strict", action="store_true", help="exit 1 on any hole or reference below the maximum")
    p.add_argument("--json", default=None, metavar="OUT", help="also write the report as JSON")


def _load(spec: str, what: str) -> Any:
    from rewards import load_callable

    try:
        return load_callable(spec)
    except (ValueError, ImportError, AttributeError) as exc:
        raise CheckError(f"{what} {spec!r}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - a module that fails on import (SyntaxError, ...)
        raise CheckError(f"{what} {spec!r}: importing it failed: {type(exc).__name__}: {exc}") from None


def build_reward_fn(spec: str, kwargs: dict) -> Any:
    """The callable of a rewards.functions entry, constructed as ``rlkit.scoring.build_reward``
    does: a class instantiated with ``kwargs``, a function with ``kwargs`` bound."""
    fn = _load(spec, "reward")
    try:
        if inspect.isclass(fn):
            return fn(**kwargs)
        if kwargs:
            inspect.signature(fn).bind_partial([], **kwargs)
            return functools.partial(fn, **kwargs)
    except (TypeError, ValueError) as exc:
        raise CheckError(f"--kwargs for {spec}: {exc}") from None
    if not callable(fn):
        raise CheckError(f"reward {spec!r} is not callable")
    return fn


def _records(path: Path) -> list[Any]:
    from rlkit.records import DataError, located_records
    from rlkit.tasks.toolcall import read_tool_records

    try:
        return [r for _, r in located_records(str(path))]
    except DataError:
        return read_tool_records(path)  # JSON lines in a .json file (BFCL), other suffixes


def detect_task(record: Any) -> str | None:
    """math, sql or toolcall from one record's keys; None when none fits."""
    from rlkit.tasks.toolcall import BFCL_KEYS, TOOLRL_KEYS

    keys = set(record) if isinstance(record, dict) else set()
    if {"db_id", "question", "query"} <= keys or {"gold_sql", "db_path"} <= keys:
        return "sql"
    if set(TOOLRL_KEYS) <= keys or set(BFCL_KEYS) <= keys:
        return "toolcall"
    if keys & {"answer", "solution"} and keys & {"prompt", "question", "problem"}:
        return "math"
    return None


def _math_rows(records: list[Any], path: str) -> list[dict]:
    rows = []
    for i, r in enumerate(records):
        if not isinstance(r, dict):
            raise CheckError(f"{path}, record {i + 1}: expected an object, got {type(r).__name__}")
        prompt = next((r[k] for k in ("prompt", "question", "problem") if k in r), None)
        answer = next((r[k] for k in ("answer", "solution") if k in r), None)
        if prompt is None or answer is None:
            raise CheckError(f"{path}, record {i + 1}: a math row needs prompt/question/problem and answer/solution "
                             f"(keys: {', '.join(map(str, r))})")
        rows.append({**r, "prompt": prompt, "answer": answer})
    return rows


def _spider_rows(path: Path, tables: str | None, db_dir: str | None) -> list[dict]:
    from rlkit.tasks.spider import load_spider

    tables_path = Path(tables) if tables else path.parent / "tables.json"
    db_path = Path(db_dir) if db_dir else path.parent / "database"
    if not tables_path.is_file():
        raise CheckError(f"--tables: Spider tables file not found: {tables_path}")
    if not db_path.is_dir():
        raise CheckError(f"--db-dir: database folder not found: {db_path} (SQL rewards run the queries)")
    return load_spider(path, tables_path, db_dir=db_path)


def load_rows(data: str, task: str = "auto", tables: str | None = None, db_dir: str | None = None,
              custom: bool = False) -> tuple[str, list[dict]]:
    """(task, rows) of ``data``; ``custom`` (a user's perturber) accepts records of no known task."""
    from rlkit.records import DataError

    try:
        if data == "sql_demo":
            from rlkit.tasks.spider import load_spider
            from rlkit.tasks.sql_demo import build_sql_demo, default_demo_folder

            return "sql", load_spider(*build_sql_demo(default_demo_folder()))
        path = Path(data)
        if not path.is_file():
            raise CheckError(f"--data: file not found: {data}")
        records = _records(path)
        if not records:
            raise CheckError(f"--data: {data} holds no records")
        kind = detect_task(records[0]) if task == "auto" else task
        if kind is None and not custom:
            keys = ", ".join(map(str, records[0])) if isinstance(records[0], dict) else type(records[0]).__name__
            raise CheckError(f"--task auto: cannot tell the task of {data} from its keys ({keys}); "
                             "pass --task math|sql|toolcall")
        if kind == "toolcall":
            from rlkit.tasks.toolcall import load_tool_rows

            return kind, load_tool_rows(path)
        if kind == "sql":
            if isinstance(records[0], dict) and {"gold_sql", "db_path"} <= set(records[0]):
                return kind, [dict(r) for r in records]
            return kind, _spider_rows(path, tables, db_dir)
        if kind == "math":
            return kind, _math_rows(records, data)
        return "custom", [dict(r) if isinstance(r, dict) else {"prompt": r} for r in records]
    except (DataError, FileNotFoundError, OSError) as exc:
        raise CheckError(f"--data {data}: {exc}") from None


def _perturber(spec: str | None, task: str) -> Any:
    if spec is None:
        return PERTURBERS[task]
    obj = _load(spec, "perturber")
    obj = obj() if inspect.isclass(obj) else obj
    missing = [m for m in ("reference", "perturb", "degenerate") if not callable(getattr(obj, m, None))]
    if missing:
        raise CheckError(f"--perturber {spec}: lacks {', '.join(missing)}")
    return obj


def sample(rows: list[dict], limit: int, seed: int) -> list[tuple[int, dict]]:
    """``(index, row)`` of a seeded sample of ``limit`` rows (all rows when 0 or more than there are), in data order."""
    if limit < 0:
        raise CheckError(f"--limit must be >= 0, got {limit}")
    indices = range(len(rows))
    if 0 < limit < len(rows):
        indices = sorted(random.Random(seed).sample(indices, limit))
    return [(i, rows[i]) for i in indices]


def run(args: Any) -> tuple[int, str]:
    """(exit code, report text) of the parsed arguments; CheckError for bad input."""
    try:
        kwargs = json.loads(args.kwargs)
    except json.JSONDecodeError as exc:
        raise CheckError(f"--kwargs: not valid JSON ({exc.msg})") from None
    if not isinstance(kwargs, dict):
        raise CheckError(f"--kwargs: expected a JSON object, got {type(kwargs).__name__}")
    if args.examples < 0:
        raise CheckError(f"--examples must be >= 0, got {args.examples}")
    if not args.timeout_s > 0:
        raise CheckError(f"--timeout-s must be > 0, got {args.timeout_s}")
    fn = build_reward_fn(args.reward, kwargs)
    task, rows = load_rows(args.data, args.task, args.tables, args.db_dir, custom=args.perturber is not None)
    perturber = _perturber(args.perturber, task)
    try:
        report = check_reward(fn, sample(rows, args.limit, args.seed), perturber, reward_name=args.reward,
                              examples=args.examples, timeout_s=args.timeout_s)
    except ValueError as exc:
        raise CheckError(str(exc).splitlines()[0]) from None
    finally:
        close = getattr(fn, "close", None)
        if callable(close):
            close()
    report.update(data=args.data, task=task, seed=args.seed)
    if args.json:
        try:
            Path(args.json).write_text(json.dumps(report, indent=1, default=str))
        except OSError as exc:
            raise CheckError(f"--json {args.json}: {exc}") from None
    return (1 if args.strict and findings(report) else 0), format_report(report)


def main(args: Any) -> int:
    """The command: the report on stdout; bad input is one line on stderr and exit 2."""
    try:
        code, text = run(args)
    except CheckError as exc:
        print(f"rlkit reward-check: {exc}", file=sys.stderr)
        return 2
    print(text, flush=True)
    return code
