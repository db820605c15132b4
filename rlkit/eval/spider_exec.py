"""Spider execution accuracy for ``rlkit eval --benchmark spider``: both readings of
``rewards.sql_exec`` for every prediction.

- ``correct``: the official reading (Spider's test-suite evaluator, ``eval_exec_match`` with
  ``keep_distinct=False``): DISTINCT stripped from both queries, the predicted columns in any
  order. This is the benchmark's ``accuracy``, comparable with published numbers.
- ``correct_strict``: the strict reading (the queries as written, columns in the order returned),
  the training reward's default; reported as ``accuracy_strict``.

Results compare as lists when order matters (official: the gold query contains "order by";
strict: it has a top-level ORDER BY), else as multisets of rows.
The evaluation sandbox fetches at most ``max_rows`` rows; a truncated result is run again with
``rewards.sql_exec.FULL_MAX_ROWS``, and one longer still leaves the sample unscored (``None``),
never wrong. A gold query that fails leaves its row unscored.
"""
from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Sequence
from typing import Any

logger = logging.getLogger("rlkit.eval")


def result_key(result: Any, ordered: bool) -> str:
    """A maj@k vote key of a result that ignores the order of its columns (and of its rows unless
    ``ordered``): columns sorted by their contents, then the rows as a list or a multiset."""
    from rewards.sql_sandbox import normalise_rows

    rows = normalise_rows(result.rows)
    width = len(rows[0]) if rows else 0
    order = sorted(range(width), key=lambda j: repr(sorted(repr(row[j]) for row in rows)))
    rows = [tuple(row[j] for j in order) for row in rows]
    body = repr(rows) if ordered else repr(sorted(Counter(map(repr, rows)).items()))
    return hashlib.sha1(body.encode("utf-8", "replace")).hexdigest()[:16]


def _verdict(pred: Any, gold: Any, ordered: bool, equal) -> bool | None:
    if gold.truncated or (pred.ok and pred.truncated):
        return None
    return equal(pred, gold, ordered=ordered)


def judge_spider(rows: Sequence[dict], completions: Sequence[Sequence[str]], sandbox: Any,
                 timeout_s: float) -> list[list[dict]]:
    """Per row, per completion ``{"correct", "correct_strict", "extracted", "vote", "reason"}``
    (module docstring); ``sandbox`` a ``rewards.sql_sandbox.SQLSandbox`` (a private one when None)."""
    from rewards.sql import extract_sql, has_top_level_order_by
    from rewards.sql_exec import in_full, official_ordered, official_sql, results_equal_any_column_order
    from rewards.sql_sandbox import SQLSandbox, results_equal

    gold_sql = {"strict": [row["gold_sql"] for row in rows], "official": [official_sql(row["gold_sql"]) for row in rows]}
    jobs = [(i, j, extract_sql(text)) for i, texts in enumerate(completions) for j, text in enumerate(texts)]
    own = sandbox is None
    sandbox = SQLSandbox(timeout_s=timeout_s) if own else sandbox
    try:
        gold_items = [(sql, row["db_path"]) for mode in ("strict", "official") for sql, row in zip(gold_sql[mode], rows)]
        gold_runs = in_full(sandbox, gold_items, sandbox.gold_many(gold_items, timeout_s=timeout_s), timeout_s,
                            gold=True)
        golds = {"strict": gold_runs[:len(rows)], "official": gold_runs[len(rows):]}
        pred_items = list(dict.fromkeys((mode_sql, rows[i]["db_path"]) for i, _, sql in jobs if sql is not None
                                        for mode_sql in (sql, official_sql(sql))))
        ran = dict(zip(pred_items, in_full(sandbox, pred_items, sandbox.run_many(pred_items, timeout_s=timeout_s),
                                           timeout_s)))
    finally:
        if own:
            sandbox.close()
    out: list[list[dict]] = []
    for i, (row, texts) in enumerate(zip(rows, completions)):
        gold, strict_gold = golds["official"][i], golds["strict"][i]
        ordered = official_ordered(gold_sql["official"][i])
        strict_ordered = has_top_level_order_by(gold_sql["strict"][i])
        if not gold.ok:
            logger.warning("spider row %s: the gold query fails on %s (%s); row not scored",
                           row.get("id"), row["db_path"], gold.error)
        verdicts = []
        for j, text in enumerate(texts):
            sql = extract_sql(text)
            if not gold.ok:
                verdicts.append({"correct": None, "correct_strict": None, "extracted": sql, "vote": None,
                                 "reason": f"gold query fails: {gold.error}"})
                continue
            if sql is None:
                verdicts.append({"correct": False, "correct_strict": False, "extracted": None, "vote": None,
                                 "reason": "no SQL found"})
                continue
            pred = ran[(official_sql(sql), row["db_path"])]
            strict_pred = ran[(sql, row["db_path"])]
            correct = _verdict(pred, gold, ordered, results_equal_any_column_order)
            strict = (_verdict(strict_pred, strict_gold, strict_ordered, results_equal) if strict_gold.ok else None)
            if correct is None:
                reason = "a result is longer than the row cap: not scored"
            elif not pred.ok:
                reason = f"error: {pred.error}"
            elif not correct:
                reason = "different result"
            else:
                reason = "same result" if strict else "same result up to column order and DISTINCT"
            vote = result_key(pred, ordered) if pred.ok and not pred.truncated else None
            verdicts.append({"correct": correct, "correct_strict": strict, "extracted": sql, "vote": vote,
                             "reason": reason})
        out.append(verdicts)
    return out
