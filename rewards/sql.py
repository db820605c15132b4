"""Text-to-SQL rewards of Reasoning-SQL (Pourreza et al., 2025, arXiv 2503.23157), spec section 7.

A completion holds its reasoning and then the SQL, in a final ```sql fenced block or between
``<answer>`` tags. The partial rewards (default weights in brackets):

- execution (3): the predicted and gold SQL give equal results on the row's SQLite database
  (``execution_match``: multisets of rows; lists when the gold query has a top-level ORDER BY;
  the strict reading: columns in the order returned, DISTINCT as written; Spider's official
  reading, which ``rlkit eval`` reports, is in ``rewards.sql_exec``);
- judge (2, optional): a judge model grades the SQL in [0, 1]; asked only when execution fails;
- syntax (1): the predicted SQL runs without error (``syntax_ok``);
- schema (1): Jaccard (or recall) of the tables and columns used (``schema_linking``);
- ngram (1): Jaccard of word bigrams of the normalised SQL (``ngram_similarity``);
- format (1): the answer markers appear once each, nothing after the last (``format_ok``).

Every query goes through ``rewards.sql_sandbox`` (read-only, time-limited, crash-isolated); a
result over the sandbox's row cap is run again in full (``rewards.sql_exec.in_full``, up to
``FULL_MAX_ROWS`` rows). No torch import here.
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
import os
import re
from collections.abc import Callable
from typing import Any, Self

from rewards.core import RewardModule
from rewards.pool import load_callable
from rewards.sql_exec import check_db as _check_db, check_gold as _check_gold, in_full
from rewards.sql_sandbox import ExecResult, SQLSandbox, default_sandbox, results_equal

logger = logging.getLogger("rewards.sql")

DEFAULT_WEIGHTS = {"execution": 3.0, "judge": 2.0, "syntax": 1.0, "schema": 1.0, "ngram": 1.0,
                   "format": 1.0}
PARTIALS = tuple(DEFAULT_WEIGHTS)

_FENCE_RE = re.compile(r"```[ \t]*(?:sqlite|sql)\b[ \t]*\n?(.*?)```", re.IGNORECASE | re.DOTALL)
_FENCE_OPEN_RE = re.compile(r"```[ \t]*(?:sqlite|sql)\b", re.IGNORECASE)
_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.IGNORECASE | re.DOTALL)
_TOKEN_RE = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|`[^`]*`|\[[^\]]*\]"
                       r"|\d+(?:\.\d*)?|\.\d+|\w+|<=|>=|<>|!=|==|\|\||\S")


# Extraction and format -----------------------------------------------------------------------

def extract_sql(completion: str) -> str | None:
    """The SQL of the completion's final answer, or None.

    Candidates are closed ```sql (or ```sqlite) fenced blocks and ``<answer>...</answer>`` spans; the one that ends
    last wins (a fenced block inside the answer tags gives its content). An unclosed fence or tag
    (a completion cut off by the token limit) does not count. Empty SQL gives None.
    """
    if not isinstance(completion, str):
        return None
    candidates = [(m.end(), m.group(1)) for m in _FENCE_RE.finditer(completion)]
    for m in _ANSWER_RE.finditer(completion):
        inner = m.group(1)
        fences = _FENCE_RE.findall(inner)
        candidates.append((m.end(), fences[-1] if fences else inner))
    if not candidates:
        return None
    sql = max(candidates, key=lambda c: c[0])[1].strip()
    return sql or None


def format_ok(completion: str, reasoning_tag: str | None = None) -> bool:
    """The format reward's rule (spec section 7: required tags once each, nothing after the last).

    True when all of these hold:
    1. ``<answer>`` and ``</answer>`` appear at most once each, and so does a ```sql opening fence;
    2. the answer is a closed ```sql block or a ``<answer>...</answer>`` pair (open before close);
       when both are present the fenced block lies inside the answer tags;
    3. only whitespace follows the final closing marker (``</answer>`` if present, else the
       closing fence);
    4. the extracted SQL is not empty;
    5. with ``reasoning_tag="think"`` (say), ``<think>`` and ``</think>`` appear once each, in
       that order, before the answer.
    """
    if not isinstance(completion, str):
        return False
    text = completion
    n_open, n_close = text.lower().count("<answer>"), text.lower().count("</answer>")
    fences = list(_FENCE_RE.finditer(text))
    if n_open > 1 or n_close > 1 or len(_FENCE_OPEN_RE.findall(text)) > 1 or n_open != n_close:
        return False
    if n_open:
        answer = _ANSWER_RE.search(text)
        if answer is None:  # the closing tag comes first
            return False
        if fences and not (answer.start() < fences[0].start() and fences[0].end() <= answer.end()):
            return False
        end, start = answer.end(), answer.start()
    elif fences:
        end, start = fences[0].end(), fences[0].start()
    else:
        return False
    if text[end:].strip() or extract_sql(text) is None:
        return False
    return reasoning_tag is None or _reasoning_ok(text[:start], text, reasoning_tag)


def _reasoning_ok(before: str, text: str, tag: str) -> bool:
    opening, closing = f"<{tag}>", f"</{tag}>"
    if text.count(opening) != 1 or text.count(closing) != 1:
        return False
    return before.find(opening) != -1 and before.find(opening) < before.find(closing)


# Execution ------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=4096)
def has_top_level_order_by(sql: str) -> bool:
    """Whether the outermost query sorts its result (ORDER BY outside every parenthesis)."""
    try:
        import sqlglot
        from sqlglot import exp

        trees = [t for t in sqlglot.parse(sql, read="sqlite") if t is not None]
        if trees:
            tree = trees[-1]
            while isinstance(tree, exp.Subquery):
                tree = tree.this
            return bool(tree.args.get("order"))
    except Exception:  # noqa: BLE001 - fall back to a scan of the text
        return _order_by_outside_parentheses(sql)
    return _order_by_outside_parentheses(sql)


def _order_by_outside_parentheses(sql: str) -> bool:
    depth, flat = 0, []
    for token in _TOKEN_RE.findall(sql):
        if token == "(":
            depth += 1
        elif token == ")":
            depth = max(0, depth - 1)
        elif depth == 0:
            flat.append(token.lower())
    return any(a == "order" and b == "by" for a, b in itertools.pairwise(flat))


def execution_match(pred_sql: str, gold_sql: str, db_path: str | os.PathLike, timeout_s: float = 10.0) -> bool:
    """True when the predicted SQL returns the gold query's result on ``db_path``.

    The strict reading (``rewards.sql_exec``): results compare as multisets of row tuples
    (duplicates count, column order as returned, floats to 9 significant digits); as lists when
    the gold query has a top-level ORDER BY. A result over the sandbox's row cap is run again and
    compared in full (only one longer than ``rewards.sql_exec.FULL_MAX_ROWS`` still gives False).
    An error or a timeout of the prediction gives False; a gold query that fails raises
    ValueError naming the query and the database, a missing database FileNotFoundError. Runs in
    the default sandbox.
    """
    _check_db(db_path)
    if not isinstance(pred_sql, str) or not pred_sql.strip():
        return False
    sandbox = default_sandbox()
    gold = in_full(sandbox, [(gold_sql, db_path)], [sandbox.gold(gold_sql, db_path, timeout_s)], timeout_s,
                   gold=True)[0]
    _check_gold(gold, gold_sql, db_path)
    pred = in_full(sandbox, [(pred_sql, db_path)], [sandbox.run(pred_sql, db_path, timeout_s)], timeout_s)[0]
    return results_equal(pred, gold, ordered=has_top_level_order_by(gold_sql))


def syntax_ok(pred_sql: str, db_path: str | os.PathLike, timeout_s: float = 10.0) -> bool:
    """True when the predicted SQL runs on ``db_path`` without error within the time limit (a
    missing database raises FileNotFoundError)."""
    _check_db(db_path)
    if not isinstance(pred_sql, str) or not pred_sql.strip():
        return False
    return default_sandbox().run(pred_sql, db_path, timeout_s).ok


# Schema linking -------------------------------------------------------------------------------

@functools.lru_cache(maxsize=8192)
def schema_items(sql: str) -> frozenset[tuple[str, str]] | None:
    """The tables and columns a query uses, as ``("table", name)`` / ``("column", name)`` pairs,
    lower-case; None when sqlglot cannot parse it.

    Tables are real table names (aliases resolve to them through the AST; CTE names are left
    out); columns are bare names (a qualifier such as ``T1.`` is dropped). Names that are output
    aliases (``count(*) AS n`` ... ``ORDER BY n``) are not columns. A double-quoted bare name
    compared with a column (``country = "France"``, Spider style) is a string, not a column.
    """
    try:
        import sqlglot
        from sqlglot import exp

        trees = [t for t in sqlglot.parse(sql, read="sqlite") if t is not None]
    except Exception:  # noqa: BLE001 - unparseable: the caller scores 0
        return None
    if not trees:
        return None
    items: set[tuple[str, str]] = set()
    for tree in trees:
        ctes = {cte.alias.lower() for cte in tree.find_all(exp.CTE)}
        aliases = {a.alias.lower() for a in tree.find_all(exp.Alias)
                   if not (isinstance(a.this, exp.Column) and a.this.name.lower() == a.alias.lower())}
        for table in tree.find_all(exp.Table):
            name = table.name.lower()
            if name and name not in ctes:
                items.add(("table", name))
        for column in tree.find_all(exp.Column):
            name = column.name.lower()
            if name and name not in aliases and not _quoted_string(column, exp):
                items.add(("column", name))
    return frozenset(items)


def _quoted_string(column: Any, exp: Any) -> bool:
    """A double-quoted unqualified name used as a value (SQLite reads it as a string)."""
    ident = column.this
    if column.table or not getattr(ident, "quoted", False):
        return False
    parent = column.parent
    if isinstance(parent, exp.In):
        return column is not parent.this
    if isinstance(parent, (exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE, exp.Like, exp.ILike)):
        return column is parent.expression and isinstance(parent.this, exp.Column)
    return False


def schema_linking(pred_sql: str, gold_sql: str, mode: str = "jaccard") -> float:
    """Overlap of the tables and columns used (``schema_items``): ``mode="jaccard"``
    |pred & gold| / |pred | gold|, or ``"recall"`` |pred & gold| / |gold|. SQL that does not
    parse (or is not a string) scores 0.0; two queries that use no table or column score 1.0.
    """
    if mode not in ("jaccard", "recall"):
        raise ValueError(f"schema_linking mode must be 'jaccard' or 'recall', got {mode!r}")
    if not isinstance(pred_sql, str) or not isinstance(gold_sql, str):
        return 0.0
    pred, gold = schema_items(pred_sql), schema_items(gold_sql)
    if pred is None or gold is None:
        return 0.0
    union = gold if mode == "recall" else pred | gold
    return 1.0 if not union else len(pred & gold) / len(union)


# N-grams --------------------------------------------------------------------------------------

def sql_tokens(sql: str) -> list[str]:
    """Normalised tokens: lower-case, a trailing semicolon dropped, quoted strings and
    identifiers kept whole, numbers, words, two-character operators and single punctuation
    (commas, parentheses, dots) as separate tokens; whitespace is irrelevant."""
    text = sql.strip().lower()
    while text.endswith(";"):
        text = text[:-1].rstrip()
    return _TOKEN_RE.findall(text)


def ngram_similarity(pred_sql: str, gold_sql: str, n: int = 2) -> float:
    """Jaccard of the sets of word ``n``-grams of the normalised SQL (``sql_tokens``).

    Identical token lists score 1.0 (two empty ones included); one empty side scores 0.0. A
    query shorter than ``n`` tokens counts as one n-gram (itself), so it still compares.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not isinstance(pred_sql, str) or not isinstance(gold_sql, str):
        return 0.0
    a, b = sql_tokens(pred_sql), sql_tokens(gold_sql)
    if a == b:
        return 1.0
    if not a or not b:
        return 0.0
    grams_a, grams_b = _ngrams(a, n), _ngrams(b, n)
    return len(grams_a & grams_b) / len(grams_a | grams_b)


def _ngrams(tokens: list[str], n: int) -> set[tuple[str, ...]]:
    if len(tokens) < n:
        return {tuple(tokens)}
    return {tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)}


# The reward module ----------------------------------------------------------------------------

class SQLReward(RewardModule):
    """Reasoning-SQL's weighted partial rewards as a reward module (rewards/core.py contract).

    ``fn(completions, **columns)`` reads the gold SQL from ``gold_column`` (falling back to
    ``gold_sql`` then ``query``), the database from ``db_column``, and the question (for the judge)
    from ``question`` (else ``prompts``). A row gets None (does not apply) when it has no gold
    query, no database file, or a gold query that fails (logged as a warning). Otherwise its
    reward is ``sum(weights[k] * partial[k])``: weights replace the defaults as a whole (a partial
    left out weighs 0). The judge ``judge(question, pred_sql, gold_sql) -> float in [0, 1]`` is
    asked only when execution fails and SQL was extracted; when it is not asked its partial is 0.

    ``last_rows`` holds each row's partials (None for skipped rows); ``update(batch)`` returns the
    means of the partials over the last scored batch (judge: over the rows judged) plus counts,
    which the trainer logs as ``<name>/<key>``. ``close()`` stops the sandbox workers.
    """

    def __init__(self, weights: dict[str, float] | None = None, schema_mode: str = "jaccard",
                 judge: Callable[[str, str, str], float] | None = None, timeout_s: float = 10.0,
                 max_rows: int = 10_000, workers: int = 2, cache: bool = True, gold_column: str = "gold_sql",
                 db_column: str = "db_path", reasoning_tag: str | None = None, ngram_n: int = 2):
        weights = dict(DEFAULT_WEIGHTS if weights is None else weights)
        unknown = sorted(set(weights) - set(PARTIALS))
        if unknown:
            raise ValueError(f"SQLReward weights name unknown partials {unknown}; known: {list(PARTIALS)}")
        bad = {k: v for k, v in weights.items() if not math.isfinite(float(v))}
        if bad:
            raise ValueError(f"SQLReward weights must be finite, got {bad}")
        if schema_mode not in ("jaccard", "recall"):
            raise ValueError(f"schema_mode must be 'jaccard' or 'recall', got {schema_mode!r}")
        self.weights = {k: float(weights.get(k, 0.0)) for k in PARTIALS}
        self.schema_mode = schema_mode
        self.judge = load_callable(judge) if isinstance(judge, str) else judge  # "module:function" from YAML
        self.timeout_s = timeout_s
        self.gold_column = gold_column
        self.db_column = db_column
        self.reasoning_tag = reasoning_tag
        self.ngram_n = ngram_n
        self._sandbox_args = {"timeout_s": timeout_s, "max_rows": max_rows, "workers": workers, "cache": cache}
        self._sandbox: SQLSandbox | None = None
        self.last_rows: list[dict[str, float] | None] = []
        self.last_stats: dict[str, float] = {}

    @property
    def sandbox(self) -> SQLSandbox:
        if self._sandbox is None:
            self._sandbox = SQLSandbox(**self._sandbox_args)
        return self._sandbox

    def __getstate__(self) -> dict[str, Any]:  # picklable: the workers are not sent along
        state = dict(self.__dict__)
        state["_sandbox"] = None
        return state

    def _gold_key(self, columns: dict[str, Any]) -> str:
        for key in dict.fromkeys((self.gold_column, "gold_sql", "query")):
            if key in columns:
                return key
        raise KeyError(f"SQLReward needs the gold SQL in column {self.gold_column!r}; the batch has "
                       f"columns {sorted(columns)}")

    def __call__(self, completions: list[str], **columns: Any) -> list[float | None]:
        n = len(completions)
        golds = list(columns[self._gold_key(columns)])
        if self.db_column not in columns:
            raise KeyError(f"SQLReward needs the database path in column {self.db_column!r}; the batch "
                           f"has columns {sorted(columns)}")
        dbs = list(columns[self.db_column])
        questions = list(columns.get("question") or columns.get("prompts") or [""] * n)
        if len(golds) != n or len(dbs) != n or len(questions) != n:
            raise ValueError(f"SQLReward: columns must have one entry per completion ({n})")
        preds = [extract_sql(c) for c in completions]
        rows = self._applicable(golds, dbs)
        gold_items = [(golds[i], dbs[i]) for i in rows]
        gold_results = dict(zip(rows, in_full(self.sandbox, gold_items, self.sandbox.gold_many(gold_items), gold=True)))
        for i in list(rows):
            if not gold_results[i].ok:
                logger.warning("SQLReward row %d skipped: the gold query fails on %s: %s (query: %r)",
                               i, dbs[i], gold_results[i].error, golds[i])
                rows.remove(i)
        to_run = [i for i in rows if preds[i] is not None]
        pred_items = [(preds[i], dbs[i]) for i in to_run]
        pred_results = dict(zip(to_run, in_full(self.sandbox, pred_items, self.sandbox.run_many(pred_items))))
        out: list[float | None] = [None] * n
        self.last_rows = [None] * n
        for i in rows:
            partials = self._partials(completions[i], preds[i], golds[i], questions[i],
                                      pred_results.get(i), gold_results[i])
            self.last_rows[i] = partials
            out[i] = sum(self.weights[k] * partials.get(k, 0.0) for k in PARTIALS)
        self.last_stats = self._stats(n, len(rows), gold_errors=len(gold_results) - len(rows),
                                      timeouts=sum(r.timed_out for r in pred_results.values()))
        return out

    def _applicable(self, golds: list, dbs: list) -> list[int]:
        rows = []
        for i, (gold, db) in enumerate(zip(golds, dbs)):
            if not isinstance(gold, str) or not gold.strip():
                continue
            if db is None or not os.path.isfile(db):
                logger.warning("SQLReward row %d skipped: database not found: %s", i, db)
                continue
            rows.append(i)
        return rows

    def _partials(self, completion: str, pred: str | None, gold: str, question: Any,
                  pred_result: ExecResult | None, gold_result: ExecResult) -> dict[str, float]:
        parts = {"format": float(format_ok(completion, self.reasoning_tag))}
        if pred is None or pred_result is None:
            parts.update(execution=0.0, syntax=0.0, schema=0.0, ngram=0.0)
        else:
            execution = results_equal(pred_result, gold_result, ordered=has_top_level_order_by(gold))
            parts.update(execution=float(execution), syntax=float(pred_result.ok),
                         schema=schema_linking(pred, gold, self.schema_mode),
                         ngram=ngram_similarity(pred, gold, self.ngram_n))
        if self.judge is not None and self.weights["judge"] != 0.0 and pred is not None and not parts["execution"]:
            parts["judge"] = self._ask_judge(str(question), pred, gold)
        return parts

    def _ask_judge(self, question: str, pred: str, gold: str) -> float:
        try:
            score = float(self.judge(question, pred, gold))  # type: ignore[misc]
        except Exception as exc:  # noqa: BLE001 - a failing judge costs the row its judge score
            logger.warning("SQLReward judge failed (%s: %s); judge score 0", type(exc).__name__, exc)
            return 0.0
        if not math.isfinite(score):
            logger.warning("SQLReward judge returned %r; judge score 0", score)
            return 0.0
        return min(1.0, max(0.0, score))

    def _stats(self, n: int, scored: int, gold_errors: int, timeouts: int) -> dict[str, float]:
        stats: dict[str, float] = {}
        done = [r for r in self.last_rows if r is not None]
        for key in PARTIALS:
            values = [r[key] for r in done if key in r]
            if values:
                stats[key] = sum(values) / len(values)
        stats.update(judge_calls=float(sum("judge" in r for r in done)), scored=float(scored),
                     skipped=float(n - scored), gold_errors=float(gold_errors), timeouts=float(timeouts))
        return stats

    def update(self, batch: Any = None) -> dict[str, float]:
        """The last batch's partial means and counts (see the class docstring)."""
        return dict(self.last_stats)

    def close(self) -> None:
        if self._sandbox is not None:
            self._sandbox.close()
            self._sandbox = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def execution_accuracy(completions: list[str], gold_sql: list[str | None] | None = None,
                       db_path: list[str | None] | None = None, timeout_s: float = 10.0,
                       **columns: Any) -> list[float | None]:
    """1.0 where the completion's SQL returns the gold query's result (``execution_match``
    through the default sandbox), else 0.0; None without a gold query or a database.  Meant as a
    zero-weight component that ``rewards.accuracy_component`` reports as accuracy."""
    if gold_sql is None or db_path is None:
        raise KeyError(f"execution_accuracy needs the gold_sql and db_path columns; the batch has {sorted(columns)}")
    sandbox = default_sandbox()
    out: list[float | None] = [None] * len(completions)
    rows = [i for i, (g, d) in enumerate(zip(gold_sql, db_path)) if g and d and os.path.isfile(d)]
    gold_items = [(gold_sql[i], db_path[i]) for i in rows]
    golds = dict(zip(rows, in_full(sandbox, gold_items, sandbox.gold_many(gold_items, timeout_s=timeout_s),
                                   timeout_s, gold=True)))
    preds = {i: extract_sql(completions[i]) for i in rows if golds[i].ok}
    pred_items = [(p, db_path[i]) for i, p in preds.items() if p]
    ran = dict(zip([i for i, p in preds.items() if p],
                   in_full(sandbox, pred_items, sandbox.run_many(pred_items, timeout_s=timeout_s), timeout_s)))
    for i in preds:
        out[i] = float(i in ran and results_equal(ran[i], golds[i], ordered=has_top_level_order_by(gold_sql[i])))
    return out


def sql_format(completions: list[str], reasoning_tag: str | None = None, **columns: Any) -> list[float]:
    """1.0 where the completion has the answer format of SQLReward's format partial (``format_ok``),
    else 0.0.  Meant as a zero-weight component that ``monitor.format_component`` names, so that
    ``monitor/format_only`` counts completions with the format but a wrong result."""
    return [float(format_ok(text, reasoning_tag)) for text in completions]
