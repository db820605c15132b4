"""Benchmark loaders and judges for ``rlkit eval``.

``load_benchmark(name, data, ...)`` returns rows ``{"id", "prompt", "answer", "category", "groups",
...}``: ``prompt`` is text or chat messages (as ``rlkit.data.prompt_token_ids`` takes them),
``answer`` the gold answer (math: the final answer string; spider: the gold SQL; toolcall: the
gold calls), ``category`` the row's main category and ``groups`` every breakdown field
(``{"level": "3", "subject": "Algebra"}``). ``judge(name, rows, completions)`` gives per sample
``{"correct", "extracted", "vote", "reason"}`` (``correct`` None: the row cannot be scored).

Benchmarks and their records (the first listed key that is present is used):

- ``gsm8k`` (Cobbe et al. 2021, arXiv 2110.14168): question / problem; answer ending in
  ``#### <number>`` (a bare number is accepted too).
- ``math`` (Hendrycks et al. 2021, arXiv 2103.03874; MATH-500 of Lightman et al. 2023): problem;
  ``answer``, else the last ``\\boxed{}`` of ``solution``; breakdowns ``level`` ("Level 3" -> "3")
  and ``subject`` (``type`` or ``subject``).
- ``amc``, ``aime``: problem / question; answer / expected_answer / final_answer (numbers are
  written as integers when integral), else the boxed answer of ``solution``; breakdown ``year``
  when present.
- ``arith``: the built-in task's held-out split (``rlkit.tasks.arith``); no file.
- ``spider`` (Yu et al. 2018): Spider questions + tables.json + database folder
  (``rlkit.tasks.spider.load_spider``); execution accuracy by the official convention (DISTINCT
  stripped, columns in any order; ``accuracy``) and by the strict one (``accuracy_strict``),
  results as multisets, as lists when the gold query has a top-level ORDER BY
  (``rlkit.eval.spider_exec``, ``rewards.sql_exec``); breakdown ``hardness``
  (``rlkit.eval.spider_hardness``).
- ``toolcall``: BFCL records (``question``, ``function``, ``ground_truth`` possible answers; or
  BFCL's published question files, whose answers ``rlkit.tasks.toolcall.join_possible_answers``
  reads from ``possible_answer/<same file name>``) and ToolRL records (``instruction``, ``input``,
  ``output``), in one file or apart; calls parsed from the ToolRL output format
  (``rewards.toolrl.parse_tool_calls``) and checked by BFCL's rules (``rlkit.eval.toolcall_ast``;
  ``underscore_to_dot=True``, as BFCL does for function-calling models, shows BFCL tools with
  ``.`` written as ``_`` and expects those names); breakdown ``category`` (the record's BFCL
  category, else the shape of its gold calls; ToolRL rows get ``toolrl_<shape>``). Records with a
  gold parameter their function does not declare are logged: BFCL records are scored as BFCL
  does (every call passing it is rejected), ToolRL rows, whose reference passes it, are not scored.
  BFCL's Java and JavaScript categories get the Python rules (a warning says so).

Math answers (gsm8k, math, amc, aime, arith) are extracted with ``rewards.math.extract_answer``
and compared with ``math_equal`` (``rewards.math.is_equivalent``, with integers compared
exactly), which is also how maj@k groups votes.
"""
from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rlkit.eval.metrics import is_number
from rlkit.records import DataError

logger = logging.getLogger("rlkit.eval")

BENCHMARKS = ("gsm8k", "math", "amc", "aime", "arith", "spider", "toolcall")
MATH_LIKE = ("gsm8k", "math", "amc", "aime", "arith")
MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
DEFAULT_MAX_NEW_TOKENS = {"arith": 48, "gsm8k": 512, "math": 1024, "amc": 1024, "aime": 1024, "spider": 512,
                          "toolcall": 256}
PROBLEM_KEYS = ("problem", "question", "Problem", "Question", "prompt", "input")
ANSWER_KEYS = ("answer", "Answer", "expected_answer", "final_answer", "ground_truth", "target")
ID_KEYS = ("id", "unique_id", "idx", "ID", "problem_id")


def check_benchmark(name: str) -> str:
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; choose one of {', '.join(BENCHMARKS)}")
    return name


# ---- loading ---------------------------------------------------------------------------------

def load_benchmark(name: str, data: str | Path | None = None, *, limit: int | None = None,
                   tables: str | Path | None = None, db_dir: str | Path | None = None,
                   instruction: str | None = None, levels: Sequence[int] | None = None,
                   underscore_to_dot: bool = False) -> list[dict]:
    """Rows of benchmark ``name`` (module docstring); the first ``limit`` records when given.

    ``instruction`` replaces the benchmark's default instruction (math-like: ``MATH_INSTRUCTION``
    appended to the problem; arith: none; spider: rlkit.tasks.spider's); ``""`` adds none.
    ``levels`` picks the arith levels (default 1-5). ``underscore_to_dot`` (toolcall only): see
    the module docstring. Bad records raise ``rlkit.data.DataError`` naming the file, the row and
    the key.
    """
    check_benchmark(name)
    if underscore_to_dot and name != "toolcall":
        raise ValueError(f"underscore_to_dot applies to the toolcall benchmark only, not {name!r}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    if name == "arith":
        return _load_arith(limit if limit is not None else 200, levels or (1, 2, 3, 4, 5), instruction)
    if data is None:
        raise DataError(f"benchmark {name!r} needs a data file (--data)")
    if name == "spider":
        rows = _load_spider(data, tables, db_dir, instruction)
        return rows if limit is None else rows[:limit]
    if name == "toolcall":
        return _load_toolcall(data, limit, bool(underscore_to_dot))
    from rlkit.records import read_records

    records = read_records(str(data))
    if limit is not None:
        records = records[:limit]
    instruction = MATH_INSTRUCTION if instruction is None else instruction
    make = {"gsm8k": _gsm8k_row, "math": _math_row}.get(name, _competition_row)
    return [make(_as_dict(r, data, i), data, i, instruction) for i, r in enumerate(records)]


def _as_dict(record: Any, path: Any, index: int) -> dict:
    if not isinstance(record, dict):
        raise DataError(f"{path}, record {index + 1}: expected an object, got {type(record).__name__}")
    return record


def _pick(record: dict, keys: Sequence[str], path: Any, index: int, what: str) -> tuple[str, Any]:
    for key in keys:
        if key in record and record[key] is not None and str(record[key]).strip():
            return key, record[key]
    raise DataError(f"{path}, record {index + 1}: no {what} (looked for keys {', '.join(map(repr, keys))}; "
                    f"the row has {', '.join(map(repr, record)) or 'no keys'})")


def _row_id(record: dict, index: int) -> Any:
    for key in ID_KEYS:
        if record.get(key) is not None:
            return record[key]
    return index


def _with_instruction(problem: str, instruction: str) -> str:
    return f"{problem.strip()}\n\n{instruction}" if instruction else problem.strip()


def _answer_text(value: Any) -> str:
    """A gold answer as text: integral floats without ``.0`` (AMC files store 142.0)."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _gsm8k_row(record: dict, path: Any, index: int, instruction: str) -> dict:
    from rewards.math import extract_answer

    _, problem = _pick(record, PROBLEM_KEYS, path, index, "question")
    key, raw = _pick(record, ("answer", "Answer", "final_answer"), path, index, "answer")
    text = _answer_text(raw)
    if "####" in text:
        gold = extract_answer(text)
    else:
        gold = text.replace(",", "") if is_number(text.replace(",", "")) else None
    if not gold:
        raise DataError(f"{path}, record {index + 1}: key {key!r} has no final answer: expected GSM8K's "
                        f"'#### <number>' line or a number, got {text[-80:]!r}")
    return {"id": _row_id(record, index), "prompt": _with_instruction(str(problem), instruction),
            "question": str(problem), "answer": gold, "category": None, "groups": {}}


def _final_answer(record: dict, keys: Sequence[str], path: Any, index: int) -> str:
    from rewards.math import extract_answer

    for key in keys:
        value = record.get(key)
        if value is not None and str(value).strip():
            text = _answer_text(value)
            return (extract_answer(text) or text) if "\\boxed" in text else text
    solution = record.get("solution")
    if isinstance(solution, str) and solution.strip():
        boxed = extract_answer(solution) if ("\\boxed" in solution or "\\fbox" in solution) else None
        if boxed:
            return boxed
        raise DataError(f"{path}, record {index + 1}: key 'solution' has no \\boxed{{...}} answer and the row has "
                        f"none of the keys {', '.join(map(repr, keys))}")
    raise DataError(f"{path}, record {index + 1}: no answer (looked for keys {', '.join(map(repr, keys))} and "
                    f"'solution'; the row has {', '.join(map(repr, record))})")


def _level(value: Any) -> str:
    text = str(value).strip()
    return text[len("Level"):].strip() if text.lower().startswith("level") else text


def _math_row(record: dict, path: Any, index: int, instruction: str) -> dict:
    _, problem = _pick(record, PROBLEM_KEYS, path, index, "problem")
    gold = _final_answer(record, ("answer", "Answer", "final_answer", "expected_answer"), path, index)
    groups = {}
    if record.get("level") is not None:
        groups["level"] = _level(record["level"])
    subject = record.get("type", record.get("subject"))
    if subject is not None:
        groups["subject"] = str(subject)
    return {"id": _row_id(record, index), "prompt": _with_instruction(str(problem), instruction),
            "question": str(problem), "answer": gold, "category": groups.get("subject"), "groups": groups}


def _competition_row(record: dict, path: Any, index: int, instruction: str) -> dict:
    _, problem = _pick(record, PROBLEM_KEYS, path, index, "problem")
    gold = _final_answer(record, ANSWER_KEYS, path, index)
    year = record.get("year", record.get("Year"))
    groups = {"year": str(year)} if year is not None else {}
    return {"id": _row_id(record, index), "prompt": _with_instruction(str(problem), instruction),
            "question": str(problem), "answer": gold, "category": groups.get("year"), "groups": groups}


def _load_arith(n: int, levels: Sequence[int], instruction: str | None) -> list[dict]:
    from rlkit.tasks.arith import arith_split

    rows = arith_split("eval", n, levels=tuple(levels), instruction=instruction or "")
    return [{"id": i, "prompt": r["prompt"], "question": r["question"], "answer": r["answer"],
             "category": str(r["level"]), "groups": {"level": str(r["level"])}} for i, r in enumerate(rows)]


def _load_spider(data: str | Path, tables: str | Path | None, db_dir: str | Path | None,
                 instruction: str | None) -> list[dict]:
    from rlkit.eval.spider_hardness import spider_hardness
    from rlkit.tasks.spider import load_spider

    if tables is None:
        raise DataError(f"benchmark 'spider' ({data}) needs the schemas file tables.json (--tables)")
    if db_dir is None:
        raise DataError(f"benchmark 'spider' ({data}) needs the database folder <db_dir>/<db_id>/<db_id>.sqlite "
                        "(--db-dir) to compare execution results")
    kwargs = {"instruction": instruction} if instruction is not None else {}
    rows = []
    for i, row in enumerate(load_spider(data, tables, db_dir=db_dir, **kwargs)):
        hardness = spider_hardness(row["gold_sql"])
        rows.append({"id": i, "prompt": row["prompt"], "question": row["question"], "answer": row["gold_sql"],
                     "gold_sql": row["gold_sql"], "db_path": row["db_path"], "db_id": row["db_id"],
                     "category": hardness, "groups": {"hardness": hardness}})
    return rows


def _load_toolcall(data: str | Path, limit: int | None, underscore_to_dot: bool = False) -> list[dict]:
    from rlkit.tasks.toolcall import detect_format, join_possible_answers, read_tool_records

    records = read_tool_records(data)
    if limit is not None:
        records = records[:limit]
    records = join_possible_answers(records, data)
    rows = []
    for i, record in enumerate(records):
        kind = detect_format(record, data, i)
        rows.append(_bfcl_eval_row(record, data, i, underscore_to_dot) if kind == "bfcl"
                    else _toolrl_eval_row(record, data, i))
    invalid = [f"{r['id']} ({r['undeclared'][0][:60]!r}{' ...' if len(r['undeclared']) > 1 else ''})"
               for r in rows if r.get("undeclared")]
    if invalid:
        logger.warning("%s: %d record(s) have gold parameters their function does not declare (a call passing "
                       "one is rejected, as in BFCL; ToolRL rows are not scored): %s", data, len(invalid),
                       "; ".join(invalid[:5]) + (" ..." if len(invalid) > 5 else ""))
    if any("java" in str(r["category"]) for r in rows):
        logger.warning("%s: Java/JavaScript records are checked by BFCL's Python rules (BFCL converts their string "
                       "values to typed ones first); these numbers do not compare with BFCL's", data)
    return rows


def _bfcl_eval_row(record: dict, path: Any, index: int, underscore_to_dot: bool = False) -> dict:
    from rlkit.eval.toolcall_ast import call_shape, undeclared_gold_params
    from rlkit.tasks.toolcall import bfcl_row

    functions = record.get("function")
    functions = [functions] if isinstance(functions, dict) else functions
    shown = record
    if underscore_to_dot and isinstance(functions, list):  # the names a function-calling API accepts
        shown = {**record, "function": [{**f, "name": f["name"].replace(".", "_")}
                                        if isinstance(f, dict) and isinstance(f.get("name"), str) else f
                                        for f in functions]}
    row = bfcl_row(shown, path, index)  # validates question, function and ground_truth
    golds = record["ground_truth"]
    for call in golds:
        (name, params), = call.items()
        for key, allowed in params.items():
            if not isinstance(allowed, list):
                raise DataError(f"{path}, record {index + 1}: key 'ground_truth': call {name!r}, parameter {key!r}: "
                                f"expected a list of allowed values, got {allowed!r:.80}")
    category = row["category"]
    if category == "bfcl":  # neither a category nor an id: name it by its shape
        category = call_shape(golds, row["tools"])
    return {"id": record.get("id", index), "prompt": row["prompt"], "question": _last_user(row["prompt"]),
            "answer": golds, "functions": functions, "category": category, "groups": {"category": category},
            "underscore_to_dot": underscore_to_dot, "undeclared": undeclared_gold_params(golds, functions)}


def _toolrl_eval_row(record: dict, path: Any, index: int) -> dict:
    from rewards.toolrl import reference_calls
    from rlkit.eval.toolcall_ast import call_shape, concrete_golds, undeclared_gold_params
    from rlkit.tasks.toolcall import toolrl_row

    row = toolrl_row(record, path, index)
    try:
        calls = reference_calls(record["output"])
    except ValueError as exc:
        raise DataError(f"{path}, record {index + 1}: key 'output': {exc}") from exc
    golds = concrete_golds(calls)
    shape = call_shape(golds, row["tools"])
    category = "toolrl_" + ("no_call" if shape == "irrelevance" else shape)
    # a reference passing a parameter its tool does not declare (a garbled ToolRL output) cannot
    # be matched by any call: such a row is not scored
    undeclared = undeclared_gold_params(golds, row["tools"])
    return {"id": record.get("id", index), "prompt": row["prompt"], "question": _last_user(row["prompt"]),
            "answer": golds, "functions": row["tools"], "category": category, "groups": {"category": category},
            "undeclared": undeclared, "unscorable": bool(undeclared)}


def _last_user(messages: list[dict]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            return str(message.get("content"))
    return str(messages[-1].get("content")) if messages else ""


# ---- judging ---------------------------------------------------------------------------------

def vote_equal(name: str) -> Callable[[Any, Any], bool] | None:
    """How maj@k compares two votes: ``math_equal`` for math answers, plain equality otherwise."""
    return math_equal if name in MATH_LIKE else None


def judge(name: str, rows: Sequence[dict], completions: Sequence[Sequence[str]], *, sandbox: Any = None,
          sql_timeout_s: float = 10.0) -> list[list[dict]]:
    """Per row, per completion: ``{"correct": bool | None, "extracted", "vote", "reason"}``.

    ``vote`` is the answer maj@k votes with (None: no answer); ``extracted`` what was read from
    the completion (math: the answer; spider: the SQL; toolcall: the parsed calls). Spider runs
    its queries in ``sandbox`` (a ``rewards.sql_sandbox.SQLSandbox``; a private one when None)
    and adds ``correct_strict`` (``rlkit.eval.spider_exec``).
    """
    check_benchmark(name)
    if len(rows) != len(completions):
        raise ValueError(f"judge: {len(rows)} rows but {len(completions)} lists of completions")
    if name in MATH_LIKE:
        return [[_judge_math(row["answer"], text) for text in texts] for row, texts in zip(rows, completions)]
    if name == "toolcall":
        return [[_judge_toolcall(row, text) for text in texts] for row, texts in zip(rows, completions)]
    return _judge_spider(rows, completions, sandbox, sql_timeout_s)


_INTEGER = re.compile(r"^[+-]?\d{1,3}(?:,\d{3})+$|^[+-]?\d+$")


def math_equal(pred: Any, gold: Any) -> bool:
    """``rewards.math.is_equivalent``; two plain integers are compared here directly, with the same
    verdict (integral values compare exactly there too: 10001 is not 10000, spec section 9)."""
    from rewards.math import is_equivalent

    if pred is None or gold is None:
        return False
    a, b = str(pred).strip().rstrip("."), str(gold).strip().rstrip(".")
    if _INTEGER.match(a) and _INTEGER.match(b):
        return int(a.replace(",", "")) == int(b.replace(",", ""))
    return is_equivalent(pred, gold)


def _judge_math(gold: str, text: str) -> dict:
    from rewards.math import extract_answer

    pred = extract_answer(text)
    correct = pred is not None and math_equal(pred, gold)
    return {"correct": correct, "extracted": pred, "vote": pred,
            "reason": "no answer found" if pred is None else ("equal" if correct else f"{pred!r} != {gold!r}")}


def _judge_toolcall(row: dict, text: str) -> dict:
    from rewards.toolrl import parse_tool_calls
    from rlkit.eval.toolcall_ast import canonical_calls, check_prediction

    calls = parse_tool_calls(text.strip()) if isinstance(text, str) else None
    if row.get("unscorable"):
        return {"correct": None, "extracted": calls, "vote": None,
                "reason": f"not scored: the reference passes undeclared parameters {row['undeclared']}"}
    correct, reason = check_prediction(calls, row["answer"], row.get("functions") or [],
                                       underscore_to_dot=bool(row.get("underscore_to_dot")))
    return {"correct": correct, "extracted": calls, "vote": canonical_calls(calls), "reason": reason}


def _judge_spider(rows: Sequence[dict], completions: Sequence[Sequence[str]], sandbox: Any,
                  timeout_s: float) -> list[list[dict]]:
    from rlkit.eval.spider_exec import judge_spider

    return judge_spider(rows, completions, sandbox, timeout_s)
