"""How two SQL execution results are compared: the strict reading and Spider's official one.

- Strict (``rewards.sql_sandbox.results_equal``; the default of the training reward,
  ``rewards.sql.execution_match`` and ``SQLReward``): the queries run as written; the results are
  equal as multisets of rows with the columns in the order returned (as lists when the gold query
  has a top-level ORDER BY).
- Official (``official_sql`` + ``results_equal_any_column_order``): the convention of Spider's
  test-suite evaluator (Zhong et al. 2020, "Semantic Evaluation for Text-to-SQL with Distilled Test
  Suites", github.com/taoyds/test-suite-sql-eval, ``eval_exec_match`` with ``keep_distinct=False``),
  by which published Spider execution accuracies are computed. Before running, every ``DISTINCT``
  keyword is removed from both queries (also the one of ``COUNT(DISTINCT x)``, as that evaluator
  does; found with sqlglot's tokenizer, so a string or a quoted name ``"distinct"`` stays),
  ``> =``, ``< =``, ``! =`` are closed up and ``YEAR(CURDATE())`` becomes 2020; the results are
  equal when some order of the predicted columns makes them equal (multisets of rows; lists when
  the gold query contains "order by" anywhere, ``official_ordered``). Floats compare as in the
  strict reading (9 significant digits; that evaluator compares them exactly). ``rlkit eval
  --benchmark spider`` reports this as its accuracy and the strict reading beside it.

Row cap: a sandbox fetches at most ``max_rows`` rows and a truncated result compares as unequal.
``in_full`` runs the truncated queries of a batch again with ``FULL_MAX_ROWS`` so that such results
are compared in full; a result longer than that is still truncated, and the evaluation then leaves
the row unscored. No rlkit or torch import here.
"""
from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

from rewards.sql_sandbox import FLOAT_DIGITS, ExecResult, normalise_rows, results_equal

FULL_MAX_ROWS = 1_000_000      # the cap of the second run of a truncated query
MAX_PERMUTATIONS = 100_000     # column orders tried at most (identical columns are tried once)
_SPACED = re.compile(r"([<>!]) =")
_CURRENT_YEAR = re.compile(r"YEAR\s*\(\s*CURDATE\s*\(\s*\)\s*\)\s*", re.IGNORECASE)


def official_sql(sql: str) -> str:
    """``sql`` as the official evaluator runs it: ``> =``-style operators closed up, every
    ``DISTINCT`` removed (``strip_distinct``), ``YEAR(CURDATE())`` as 2020."""
    return _CURRENT_YEAR.sub("2020", strip_distinct(_SPACED.sub(r"\1=", sql)))


def official_ordered(gold_sql: str) -> bool:
    """The official evaluator's test for "row order matters": the (prepared) gold query contains
    ``order by`` anywhere, a subquery's included."""
    return "order by" in gold_sql.lower()


def strip_distinct(sql: str) -> str:
    """``sql`` without its ``DISTINCT`` keywords (sqlglot's SQLite tokenizer finds them; strings and
    quoted names are left alone). Text that does not tokenize is returned unchanged."""
    if "distinct" not in sql.lower():
        return sql
    try:
        import sqlglot
        from sqlglot.tokens import TokenType

        spans = [(t.start, t.end + 1) for t in sqlglot.tokenize(sql, read="sqlite")
                 if t.token_type == TokenType.DISTINCT]
    except Exception:  # noqa: BLE001 - untokenizable: run it as written (it will most likely fail)
        return sql
    out, last = [], 0
    for start, end in spans:
        out.append(sql[last:start])
        last = end
    out.append(sql[last:])
    return "".join(out)


def _column_orders(pred: list[tuple], gold: list[tuple]):
    """Orders ``perm`` of the predicted columns (gold column i <- predicted column perm[i]) whose
    columns hold the same multisets of values as the gold ones; of predicted columns with identical
    contents only the first unused one is tried."""
    width = len(gold[0])
    pred_cols = [tuple(row[j] for row in pred) for j in range(width)]
    pred_bags = [Counter(col) for col in pred_cols]
    candidates = []
    for i in range(width):
        bag = Counter(row[i] for row in gold)
        candidates.append([j for j in range(width) if pred_bags[j] == bag])
    perm: list[int] = []
    used: set[int] = set()

    def extend(i: int):
        if i == width:
            yield list(perm)
            return
        tried: set[tuple] = set()
        for j in candidates[i]:
            if j in used or pred_cols[j] in tried:
                continue
            tried.add(pred_cols[j])
            used.add(j)
            perm.append(j)
            yield from extend(i + 1)
            perm.pop()
            used.discard(j)

    yield from extend(0)


def results_equal_any_column_order(pred: ExecResult, gold: ExecResult, ordered: bool = False,
                                   digits: int = FLOAT_DIGITS) -> bool:
    """Execution match with the columns in any order (the official convention): both ran, neither
    was truncated, the row counts and widths agree, and some order of the predicted columns makes
    the rows equal as multisets (as lists when ``ordered``); floats as in ``results_equal``."""
    if not (pred.ok and gold.ok) or pred.truncated or gold.truncated or len(pred.rows) != len(gold.rows):
        return False
    if not gold.rows:
        return True
    if results_equal(pred, gold, ordered, digits):
        return True
    a, b = normalise_rows(pred.rows, digits), normalise_rows(gold.rows, digits)
    width = len(b[0])
    if any(len(row) != width for row in a) or any(len(row) != width for row in b):
        return False
    target = b if ordered else Counter(b)
    for tries, perm in enumerate(_column_orders(a, b)):
        if tries >= MAX_PERMUTATIONS:
            break
        moved = [tuple(row[j] for j in perm) for row in a]
        if (moved if ordered else Counter(moved)) == target:
            return True
    return False


def check_db(db_path: Any) -> None:
    """A missing database file is the caller's error, not a wrong answer."""
    if db_path is None or not os.path.isfile(db_path):
        raise FileNotFoundError(f"SQLite database not found: {db_path}")


def check_gold(gold: ExecResult, gold_sql: str, db_path: Any) -> None:
    """A gold query that fails makes its row unscorable, not wrong."""
    if not gold.ok:
        raise ValueError(f"the gold SQL query fails on database {db_path}: {gold.error} "
                         f"(query: {gold_sql!r})")


def in_full(sandbox: Any, items: Sequence[tuple[str, Any]], results: list[ExecResult],
            timeout_s: float | None = None, *, gold: bool = False) -> list[ExecResult]:
    """``results`` with each truncated one replaced by a second run of its ``(sql, db_path)`` item
    with ``max_rows=FULL_MAX_ROWS`` (through the gold cache when ``gold``); a query still longer
    stays truncated."""
    redo = [i for i, r in enumerate(results) if r.ok and r.truncated]
    if not redo or getattr(sandbox, "max_rows", FULL_MAX_ROWS) >= FULL_MAX_ROWS:
        return results
    run = sandbox.gold_many if gold else sandbox.run_many
    again = run([items[i] for i in redo], timeout_s, max_rows=FULL_MAX_ROWS)
    out = list(results)
    for i, result in zip(redo, again):
        out[i] = result
    return out


def official_execution_match(pred_sql: str, gold_sql: str, db_path: str | os.PathLike,
                             timeout_s: float = 10.0) -> bool | None:
    """Spider's official execution match (module docstring) on ``db_path`` through the default
    sandbox: None when a result is longer than ``FULL_MAX_ROWS`` rows (it cannot be judged);
    errors of the gold query as in ``rewards.sql.execution_match``."""
    from rewards.sql_sandbox import default_sandbox

    check_db(db_path)
    if not isinstance(pred_sql, str) or not pred_sql.strip():
        return False
    sandbox = default_sandbox()
    gold_run, pred_run = official_sql(gold_sql), official_sql(pred_sql)
    gold = in_full(sandbox, [(gold_run, db_path)], [sandbox.gold(gold_run, db_path, timeout_s)], timeout_s,
                   gold=True)[0]
    check_gold(gold, gold_run, db_path)
    pred = in_full(sandbox, [(pred_run, db_path)], [sandbox.run(pred_run, db_path, timeout_s)], timeout_s)[0]
    if gold.truncated or (pred.ok and pred.truncated):
        return None
    return results_equal_any_column_order(pred, gold, ordered=official_ordered(gold_run))
