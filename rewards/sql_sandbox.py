"""A sandbox that runs untrusted SQL on SQLite databases (algorithms spec section 7).

Reasoning-SQL (Pourreza et al., 2025, arXiv 2503.23157) rewards a policy for SQL whose result on
the row's database equals the gold query's result. The predicted SQL comes from the policy, so
every query runs here, behind three layers:

Read-only. The database is opened with a ``file:...?mode=ro`` URI, so SQLite itself refuses every
write to the file. ``immutable=1`` is deliberately NOT used: it only tells SQLite to skip locking
and change detection (it makes nothing more read-only) and would let a concurrent writer feed us
torn pages. On top of that: ``PRAGMA query_only=ON``, ``trusted_schema=OFF``, ``temp_store=MEMORY``
(sorts and temporary b-trees never touch the disk), ``SQLITE_LIMIT_ATTACHED=0``, a cap on the size
of one value, and an authorizer that allows only SELECT, reads, function calls and recursive CTEs
plus a few schema-introspection pragmas (``table_info`` and friends); everything else (ATTACH,
DETACH, PRAGMA writes, INSERT/UPDATE/DELETE, CREATE/DROP/ALTER, transactions, savepoints,
ANALYZE, REINDEX, ``load_extension``) is denied when the statement is prepared. Python's
``execute`` runs one statement only, so ``SELECT 1; DROP TABLE t`` is an error too.

A time limit that really interrupts. A progress handler, called every ``PROGRESS_STEPS`` virtual
machine instructions, aborts the statement once its deadline has passed (SQLite reports
"interrupted"); this covers never-ending recursive CTEs and huge joins. Work that runs without VM
steps (one long sort, a lock wait) is covered by the second layer: each query runs in a worker
process of a ``rewards.pool.WorkerPool`` (spawn start method); a worker that has not answered
``kill_grace_s`` (1 s) after the time limit is killed (SIGKILL) and replaced by a fresh one, and
that row alone gets an error result. A worker that crashes (segfault, out of memory) likewise
costs its row only. The worker also sets SQLite's process-wide ``hard_heap_limit``.

Bounded results. At most ``max_rows`` rows are fetched (``truncated`` reports more; a call may ask
for another cap, as ``rewards.sql_exec.in_full`` does to compare a truncated result in full); bytes
that are not valid UTF-8 in TEXT values are decoded with replacement characters instead of raising.

Each worker keeps its read-only connections open between queries (an LRU of ``WORKER_DBS``
databases, reopened when the file's size or modification time changes). Gold results are cached
in the parent per (database path, file signature, gold query) in an LRU dict (``cache=False``
turns it off). ``normalise_rows``/``results_equal`` compare results as multisets of rows (or as
lists when order matters) with floats rounded to ``FLOAT_DIGITS`` significant digits.
"""

from __future__ import annotations

import logging
import math
import os
import sqlite3
import threading
import time
import urllib.parse
from collections import Counter, OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

logger = logging.getLogger("rewards.sql")

PROGRESS_STEPS = 1000            # VM instructions between two deadline checks
BUSY_TIMEOUT_S = 0.5             # wait for a lock held by another process at most this long
FLOAT_DIGITS = 9                 # significant digits kept when comparing floats
WORKER_DBS = 32                  # read-only connections a worker keeps open
MAX_VALUE_BYTES = 64 * 2 ** 20   # SQLITE_LIMIT_LENGTH: the largest string/blob/row a query may build
READ_PRAGMAS = frozenset({"table_info", "table_xinfo", "index_list", "index_info", "index_xinfo",
                          "foreign_key_list"})
DENIED_FUNCTIONS = frozenset({"load_extension"})
_ALLOWED_ACTIONS = frozenset({sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION,
                              sqlite3.SQLITE_RECURSIVE})


@dataclass
class ExecResult:
    """One query's outcome. ``rows``: the fetched rows (``[]`` on error), at most ``max_rows``;
    ``truncated``: the query had more rows; ``seconds``: time spent running it; ``timed_out``: it
    was interrupted by the time limit (or its worker was killed)."""

    ok: bool
    rows: list[tuple] = field(default_factory=list)
    error: str | None = None
    truncated: bool = False
    seconds: float = 0.0
    timed_out: bool = False


def _decode_text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def _authorizer(action: int, arg1: str | None, arg2: str | None, db_name: str | None,
                trigger: str | None) -> int:
    """Allow reads only; see the module docstring."""
    if action in _ALLOWED_ACTIONS:
        if action == sqlite3.SQLITE_FUNCTION and (arg2 or "").lower() in DENIED_FUNCTIONS:
            return sqlite3.SQLITE_DENY
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_PRAGMA and (arg1 or "").lower() in READ_PRAGMAS:
        return sqlite3.SQLITE_OK
    return sqlite3.SQLITE_DENY


def file_signature(db_path: str | os.PathLike) -> tuple[str, int, int]:
    """``(real path, size, mtime_ns)``: a key that changes when the file is replaced or edited."""
    real = os.path.realpath(db_path)
    st = os.stat(real)
    return real, st.st_size, st.st_mtime_ns


class ReadOnlyDatabase:
    """One guarded read-only connection (module docstring) that runs queries with a deadline.

    Runs in the calling process: the workers use it, and so may data loaders (reading sample
    rows); only the worker pool adds crash isolation. ``heap_limit_mb`` sets SQLite's
    process-wide hard heap limit, so only worker processes should pass it.
    """

    def __init__(self, db_path: str | os.PathLike, *, heap_limit_mb: int | None = None,
                 max_value_bytes: int = MAX_VALUE_BYTES):
        path = Path(db_path)
        if not path.is_file():
            raise FileNotFoundError(f"SQLite database not found: {path}")
        self.path = str(path)
        self.signature = file_signature(path)
        uri = f"file:{urllib.parse.quote(str(path.resolve()))}?mode=ro"
        self.conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=BUSY_TIMEOUT_S,
                                    check_same_thread=False)
        try:
            self._configure(heap_limit_mb, max_value_bytes)
        except Exception:
            self.conn.close()
            raise
        self._deadline = math.inf

    def _configure(self, heap_limit_mb: int | None, max_value_bytes: int) -> None:
        conn = self.conn
        for pragma in ("query_only=ON", "trusted_schema=OFF", "temp_store=MEMORY"):
            conn.execute(f"PRAGMA {pragma}")
        if heap_limit_mb:
            conn.execute(f"PRAGMA hard_heap_limit={int(heap_limit_mb) * 2 ** 20}")
        conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
        conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, max_value_bytes)
        conn.setlimit(sqlite3.SQLITE_LIMIT_WORKER_THREADS, 0)
        conn.text_factory = _decode_text
        conn.set_authorizer(_authorizer)  # last: the pragmas above are denied from here on
        conn.set_progress_handler(self._progress, PROGRESS_STEPS)

    def _progress(self) -> int:
        return 1 if time.monotonic() > self._deadline else 0

    def query(self, sql: str, timeout_s: float = 10.0, max_rows: int = 10_000) -> ExecResult:
        """Run one statement; never raises for a bad query (the error is in the result)."""
        start = time.monotonic()
        if not isinstance(sql, str) or not sql.strip():
            return ExecResult(False, error="empty SQL query")
        self._deadline = start + timeout_s
        cursor = self.conn.cursor()
        try:
            cursor.execute(sql)
            rows = cursor.fetchmany(max_rows + 1) if cursor.description is not None else []
        except Exception as exc:  # noqa: BLE001 - every failure of untrusted SQL is a result
            elapsed = time.monotonic() - start
            timed_out = "interrupted" in str(exc) and time.monotonic() > self._deadline
            error = (f"timed out after {timeout_s:g} s (interrupted)" if timed_out
                     else f"{type(exc).__name__}: {exc}")
            return ExecResult(False, error=error, seconds=elapsed, timed_out=timed_out)
        finally:
            self._deadline = math.inf
            cursor.close()
        truncated = len(rows) > max_rows
        return ExecResult(True, rows[:max_rows], None, truncated, time.monotonic() - start)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# Worker side ----------------------------------------------------------------------------------

_WORKER_DBS: OrderedDict[str, ReadOnlyDatabase] = OrderedDict()


def _worker_db(db_path: str, heap_limit_mb: int | None) -> ReadOnlyDatabase:
    """The worker's open connection to ``db_path``, reopened when the file changed."""
    db = _WORKER_DBS.pop(db_path, None)
    if db is not None and db.signature != file_signature(db_path):
        db.close()
        db = None
    if db is None:
        db = ReadOnlyDatabase(db_path, heap_limit_mb=heap_limit_mb)
    _WORKER_DBS[db_path] = db
    while len(_WORKER_DBS) > WORKER_DBS:
        _WORKER_DBS.popitem(last=False)[1].close()
    return db


def _worker_query(sqls: list[str], db_path: list[str], timeout_s: list[float], max_rows: list[int],
                  heap_limit_mb: list[int | None], fault: list[str | None]) -> ExecResult:
    """The task run in a pool worker (the pool calls it with one-row columns)."""
    if fault[0] == "crash":  # test hook: a worker that dies in the middle of a row
        os._exit(70)
    if fault[0] == "hang":   # test hook: a worker that no progress handler can interrupt
        time.sleep(3600)
    start = time.monotonic()
    try:
        db = _worker_db(db_path[0], heap_limit_mb[0])
    except Exception as exc:  # noqa: BLE001 - e.g. not a database: an error result
        return ExecResult(False, error=f"cannot open {db_path[0]}: {type(exc).__name__}: {exc}",
                          seconds=time.monotonic() - start)
    return db.query(sqls[0], timeout_s[0], max_rows[0])


def _worker_ping(completions: list[str], **columns: Any) -> int:
    return os.getpid()


# Comparison -----------------------------------------------------------------------------------

def normalise_value(value: Any, digits: int = FLOAT_DIGITS) -> Any:
    """A value as compared: finite floats rounded to ``digits`` significant digits (integral ones
    compare equal to ints, as in Python); everything else unchanged."""
    if isinstance(value, float) and math.isfinite(value):
        return float(f"{value:.{digits}g}")
    return value


def normalise_rows(rows: Iterable[Sequence], digits: int = FLOAT_DIGITS) -> list[tuple]:
    """Rows as tuples of normalised values; columns keep the order the query returned them in."""
    return [tuple(normalise_value(v, digits) for v in row) for row in rows]


def results_equal(pred: ExecResult, gold: ExecResult, ordered: bool = False,
                  digits: int = FLOAT_DIGITS) -> bool:
    """Execution match: both ran, neither was truncated (a partial result proves nothing), and the
    rows are equal as multisets (duplicates count), or as lists when ``ordered``."""
    if not (pred.ok and gold.ok) or pred.truncated or gold.truncated:
        return False
    if len(pred.rows) != len(gold.rows):
        return False
    a, b = normalise_rows(pred.rows, digits), normalise_rows(gold.rows, digits)
    return a == b if ordered else Counter(a) == Counter(b)


# Parent side ----------------------------------------------------------------------------------

class SQLSandbox:
    """Runs SQL in ``workers`` worker processes; see the module docstring.

    ``run``/``run_many`` execute queries (``run_many`` spreads rows over the workers);
    ``gold``/``gold_many`` do the same through the gold cache. Counters for tests and logs:
    ``executions`` (queries sent to a worker), ``cache_hits``, ``cache_misses``, ``kills``
    (workers killed or lost).
    """

    def __init__(self, timeout_s: float = 10.0, max_rows: int = 10_000, workers: int = 2,
                 cache: bool = True, *, cache_size: int = 4096, memory_mb: int | None = 1024,
                 kill_grace_s: float = 1.0):
        if timeout_s <= 0 or max_rows < 1 or workers < 1:
            raise ValueError(f"SQLSandbox needs timeout_s > 0, max_rows >= 1 and workers >= 1, got "
                             f"timeout_s={timeout_s}, max_rows={max_rows}, workers={workers}")
        self.timeout_s = float(timeout_s)
        self.max_rows = int(max_rows)
        self.workers = int(workers)
        self.cache = bool(cache)
        self.cache_size = int(cache_size)
        self.memory_mb = memory_mb
        self.kill_grace_s = float(kill_grace_s)
        self.executions = self.cache_hits = self.cache_misses = self.kills = 0
        self._cache: OrderedDict[tuple, ExecResult] = OrderedDict()
        self._pool: Any = None
        self._lock = threading.RLock()

    # workers

    def _get_pool(self) -> Any:
        if self._pool is None:
            from rewards.pool import WorkerPool

            self._pool = WorkerPool(self.workers)
        return self._pool

    def start(self) -> list[int]:
        """Start the workers now (otherwise the first query does); returns their process ids."""
        with self._lock:
            pool = self._get_pool()
            pool.run_rows(_worker_ping, [([""], {})] * self.workers, 60.0)
            return pool.pids

    @property
    def pids(self) -> list[int]:
        return [] if self._pool is None else self._pool.pids

    def run(self, sql: str, db_path: str | os.PathLike, timeout_s: float | None = None, *,
            max_rows: int | None = None) -> ExecResult:
        """Run one query (no cache)."""
        return self.run_many([(sql, db_path)], timeout_s, max_rows=max_rows)[0]

    def run_many(self, items: Sequence[tuple[str, str | os.PathLike]], timeout_s: float | None = None,
                 *, max_rows: int | None = None, _faults: Sequence[str | None] | None = None) -> list[ExecResult]:
        """Run ``(sql, db_path)`` pairs in parallel over the workers; one result per pair, in order.

        A missing database or a non-string query is an error result without a worker; a row whose
        worker hangs or dies gets an error result and its worker is replaced. ``max_rows`` replaces
        the sandbox's cap for this call. ``_faults`` is a test hook ("crash" or "hang" per row).
        """
        timeout = self.timeout_s if timeout_s is None else float(timeout_s)
        cap = self.max_rows if max_rows is None else int(max_rows)
        results: list[ExecResult | None] = [None] * len(items)
        todo: list[int] = []
        for i, (sql, db_path) in enumerate(items):
            if not isinstance(sql, str):
                results[i] = ExecResult(False, error=f"SQL query must be a string, got {type(sql).__name__}")
            elif db_path is None or not os.path.isfile(db_path):
                results[i] = ExecResult(False, error=f"SQLite database not found: {db_path}")
            else:
                todo.append(i)
        if todo:
            faults = _faults or [None] * len(items)
            rows = [([items[i][0]], {"db_path": [os.path.realpath(items[i][1])], "timeout_s": [timeout],
                                     "max_rows": [cap], "heap_limit_mb": [self.memory_mb],
                                     "fault": [faults[i]]}) for i in todo]
            with self._lock:
                self.executions += len(rows)
                outs = self._get_pool().run_rows(_worker_query, rows, timeout + self.kill_grace_s)
            for i, out in zip(todo, outs):
                results[i] = self._from_pool(out, timeout)
        return results  # type: ignore[return-value]

    def _from_pool(self, out: tuple[str, Any], timeout: float) -> ExecResult:
        status, payload = out
        if status == "ok":
            return payload
        self.kills += 1
        if status == "timeout":
            return ExecResult(False, error=f"timed out after {timeout:g} s; the worker did not answer "
                              f"within {self.kill_grace_s:g} s more and was killed",
                              seconds=timeout + self.kill_grace_s, timed_out=True)
        first_line = (str(payload).strip().splitlines() or [""])[0]
        return ExecResult(False, error=f"worker failed: {first_line}")

    # gold cache

    def gold(self, sql: str, db_path: str | os.PathLike, timeout_s: float | None = None, *,
             max_rows: int | None = None) -> ExecResult:
        """Run a gold query through the cache."""
        return self.gold_many([(sql, db_path)], timeout_s, max_rows=max_rows)[0]

    def gold_many(self, items: Sequence[tuple[str, str | os.PathLike]],
                  timeout_s: float | None = None, *, max_rows: int | None = None) -> list[ExecResult]:
        """``run_many`` through the gold cache: each distinct missing (query, database, row cap)
        runs once.

        Cached: successful results and deterministic errors; never timeouts or lost workers.
        """
        cap = self.max_rows if max_rows is None else int(max_rows)
        keys = [self._key(sql, db, cap) for sql, db in items]
        results: list[ExecResult | None] = [None] * len(items)
        missing: dict[tuple, list[int]] = {}
        with self._lock:
            for i, key in enumerate(keys):
                hit = self._cache.get(key) if key is not None and self.cache else None
                if hit is not None:
                    self._cache.move_to_end(key)
                    self.cache_hits += 1
                    results[i] = hit
                else:
                    missing.setdefault(key if key is not None else ("row", i), []).append(i)
            self.cache_misses += len(missing)
        order = list(missing)
        outs = self.run_many([items[missing[k][0]] for k in order], timeout_s, max_rows=cap)
        with self._lock:
            for key, out in zip(order, outs):
                for i in missing[key]:
                    results[i] = out
                if self.cache and key[0] != "row" and not out.timed_out and not (out.error or "").startswith(
                        "worker failed"):
                    self._cache[key] = out
                    while len(self._cache) > self.cache_size:
                        self._cache.popitem(last=False)
        return results  # type: ignore[return-value]

    @staticmethod
    def _key(sql: Any, db_path: Any, max_rows: int) -> tuple | None:
        if not isinstance(sql, str) or db_path is None:
            return None
        try:
            return (*file_signature(db_path), sql, max_rows)
        except OSError:
            return None

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()

    def close(self) -> None:
        """Stop the workers (they start again on the next query)."""
        with self._lock:
            if self._pool is not None:
                self._pool.close()
                self._pool = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_DEFAULT: SQLSandbox | None = None
_DEFAULT_LOCK = threading.Lock()


def default_sandbox() -> SQLSandbox:
    """The module-wide sandbox used by the Contract functions of ``rewards.sql`` (created lazily;
    its workers stop at interpreter exit or with ``close_default_sandbox``)."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = SQLSandbox()
        return _DEFAULT


def close_default_sandbox() -> None:
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is not None:
            _DEFAULT.close()
            _DEFAULT = None
