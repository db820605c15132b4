"""The ``sql`` environment: Text-to-SQL where the model may run read-only queries first.

Each episode's database is its row's ``db_path`` (the built-in shop database of ``sql_demo`` or
Spider-format data).  The ``run_sql`` tool runs one statement on it in a tool worker through
``rewards.sql_sandbox.ReadOnlyDatabase`` (read-only connection, authorizer, its own deadline
``QUERY_TIMEOUT_S`` inside the worker's hard time limit ``agent.tool_timeout_s``, and in a worker
process SQLite's heap capped at ``WORKER_HEAP_MB``).  The model sees the query and nothing else:
the database path and the row cap are keyword-only, filled by ``SQLEnv.tool_kwargs()``.

What comes back is bounded: at most ``max_rows`` rows (``SQLEnv(max_rows=...)``), one line per
row with ``" | "`` between values, each value cut to ``MAX_CELL_CHARS``, all of it cut to
``MAX_OUTPUT_CHARS`` at a row boundary, and a last line saying how many rows there were or that
more were left out.  A query that fails raises ``SQLError`` with a message written for the
model (the executor shows it as ``Error: SQLError: ...`` and counts it in ``agent/tool_errors``):
a write is "only read-only queries are allowed", an unknown table or column lists the ones that
exist, a query past its deadline says so.  The episode ends on a turn without a tool call; the
Reasoning-SQL rewards (``rewards.sql``) score that turn's final SQL.
"""
from __future__ import annotations

from typing import Any

from rlkit.agents.env import Environment

MAX_ROWS = 10             # rows shown per query (SQLEnv's default)
MAX_CELL_CHARS = 60       # characters of one value
MAX_OUTPUT_CHARS = 800    # characters of one result (whole rows)
MAX_HINT_CHARS = 300      # characters of the table/column list added to an error
QUERY_TIMEOUT_S = 2.0     # SQLite interrupts the query past this (the worker is killed later)
WORKER_HEAP_MB = 256      # SQLite's process-wide heap limit, set in worker processes only
INSTRUCTION = ("You may run read-only SQLite queries on the database with the run_sql tool to look at the "
               "tables and values first. When you know the answer, reply without a tool call and put the "
               "final query in a ```sql code block.")


class SQLError(Exception):
    """A query that did not run; the message is what the model reads."""


def run_sql(query: str, *, db_path: str = "", max_rows: int = MAX_ROWS) -> str:
    """Run one read-only SQLite query on the question's database and see its first rows.

    Args:
        query: One SQLite SELECT statement.
        db_path: The database file (set by the environment).
        max_rows: Rows shown at most (set by the environment).
    """
    import multiprocessing

    from rewards.sql_sandbox import ReadOnlyDatabase

    if not isinstance(query, str) or not query.strip():
        raise SQLError("give the query as a non-empty string holding one SQLite SELECT statement")
    if not db_path:
        raise SQLError("this question has no database to query")
    heap = WORKER_HEAP_MB if multiprocessing.parent_process() is not None else None
    try:
        db = ReadOnlyDatabase(db_path, heap_limit_mb=heap)
    except Exception:  # noqa: BLE001 - never show the model the path
        raise SQLError("the database of this question cannot be opened") from None
    with db:
        result = db.query(query, timeout_s=QUERY_TIMEOUT_S, max_rows=max(int(max_rows), 1))
        if not result.ok:
            raise SQLError(_explain(result.error or "failed", result.timed_out, db))
    return format_rows(result.rows, result.truncated)


def format_rows(rows: list[tuple], truncated: bool) -> str:
    """Rows as text: ``a | b`` per row, values cut, the whole cut at a row, then a count line."""
    if not rows:
        return "(no rows)"
    lines, size = [], 0
    for row in rows:
        line = " | ".join(_cell(v) for v in row)
        if lines and size + len(line) + 1 > MAX_OUTPUT_CHARS:
            break
        lines.append(line[:MAX_OUTPUT_CHARS])
        size += len(line) + 1
    if len(lines) < len(rows) or truncated:
        more = "the query returned more" if truncated else f"it returned {len(rows)}"
        lines.append(f"(showing the first {len(lines)} rows; {more})")
    else:
        lines.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "NULL"
    text = f"<{len(value)} bytes>" if isinstance(value, bytes) else str(value)
    text = " ".join(text.split()) if any(c in text for c in "\n\r\t") else text
    return text if len(text) <= MAX_CELL_CHARS else text[:MAX_CELL_CHARS - 3] + "..."


def _explain(error: str, timed_out: bool, db) -> str:
    """The sandbox's error as a message the model can act on (one line)."""
    if timed_out:
        return f"the query ran longer than {QUERY_TIMEOUT_S:g} s and was stopped; simplify it or add a LIMIT"
    if "not authorized" in error:
        return f"only read-only queries (one SELECT) are allowed; this one was refused ({error.split(': ', 1)[-1]})"
    message = error.split(": ", 1)[1] if error.split(": ", 1)[0].endswith("Error") else error
    message = " ".join(message.split())
    if message.startswith("no such table"):
        tables = _tables(db)
        message += f"; the tables are: {', '.join(tables)}" if tables else ""
    elif message.startswith("no such column"):
        columns = [f"{t}({', '.join(_columns(db, t))})" for t in _tables(db)]
        message += f"; the columns are: {'; '.join(columns)}" if columns else ""
    return message if len(message) <= MAX_HINT_CHARS + 100 else message[:MAX_HINT_CHARS + 97] + "..."


def _tables(db) -> list[str]:
    result = db.query("SELECT name FROM sqlite_master WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite_%' "
                      "ORDER BY name", timeout_s=QUERY_TIMEOUT_S, max_rows=200)
    return [str(r[0]) for r in result.rows] if result.ok else []


def _columns(db, table: str) -> list[str]:
    from rlkit.tasks.spider import quote_name

    result = db.query(f"PRAGMA table_info({quote_name(table)})", timeout_s=QUERY_TIMEOUT_S, max_rows=200)
    return [str(r[1]) for r in result.rows] if result.ok else []


class SQLEnv(Environment):
    """Text-to-SQL with ``run_sql``; ``instruction`` is appended to the row's prompt and each
    query shows at most ``max_rows`` rows (``agent.env_kwargs``)."""

    tools = (run_sql,)

    def __init__(self, instruction: str = INSTRUCTION, max_rows: int = MAX_ROWS):
        if not isinstance(max_rows, int) or max_rows < 1:
            raise ValueError(f"agent.env_kwargs.max_rows: must be an integer >= 1, got {max_rows!r}")
        self.instruction, self.max_rows = instruction, max_rows
        self.db_path = ""

    def reset(self, row: dict[str, Any]) -> list[dict]:
        self.db_path = str(row.get("db_path") or "")
        messages = super().reset(row)
        if self.instruction:
            messages[-1]["content"] = messages[-1]["content"].rstrip() + "\n\n" + self.instruction
        return messages

    def tool_kwargs(self) -> dict[str, Any]:
        return {"db_path": self.db_path, "max_rows": self.max_rows}
