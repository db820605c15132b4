"""Spider-format text-to-SQL data (Yu et al., 2018) for the Reasoning-SQL rewards (spec section 7,
Reasoning-SQL, arXiv 2503.23157; the rewards live in ``rewards.sql``).

Inputs: a questions JSON file (a list of records with ``db_id``, ``question``, ``query``), a
``tables.json`` in Spider's schema format (``db_id``, ``table_names_original``,
``column_names_original`` as ``[table_index, name]`` pairs with ``[-1, "*"]`` first,
``column_types``, ``primary_keys``, ``foreign_keys`` as ``[column, referenced_column]`` index
pairs), and optionally a database folder laid out as ``<db_dir>/<db_id>/<db_id>.sqlite``.

Each row of ``load_spider`` is ``{"prompt", "gold_sql", "db_id", "db_path", "question"}``; the
prompt holds the schema as CREATE TABLE statements (``schema_ddl``), optional sample rows read
through a guarded read-only connection (``sample_rows_text``), the question and the instruction.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from rewards.sql_sandbox import ReadOnlyDatabase
from rlkit.records import DataError

DEFAULT_INSTRUCTION = ("Think step by step about which tables and columns are needed, then write "
                       "one SQLite query that answers the question. Put the final query in a "
                       "```sql code block at the end of your answer.")
SPIDER_TYPES = {"text": "TEXT", "number": "NUMERIC", "time": "DATETIME", "boolean": "BOOLEAN",
                "others": "TEXT"}
SAMPLE_TIMEOUT_S = 5.0
_PLAIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# SQLite keywords that cannot be used as bare identifiers safely (quoted when they are names).
_KEYWORDS = frozenset((
    "abort", "action", "add", "after", "all", "alter", "always", "analyze", "and", "as", "asc", "attach",
    "autoincrement", "before", "begin", "between", "by", "cascade", "case", "cast", "check", "collate",
    "column", "commit", "conflict", "constraint", "create", "cross", "current", "current_date", "current_time",
    "current_timestamp", "database", "default", "deferrable", "deferred", "delete", "desc", "detach",
    "distinct", "do", "drop", "each", "else", "end", "escape", "except", "exclude", "exclusive", "exists",
    "explain", "fail", "filter", "first", "following", "for", "foreign", "from", "full", "generated", "glob",
    "group", "groups", "having", "if", "ignore", "immediate", "in", "index", "indexed", "initially", "inner",
    "insert", "instead", "intersect", "into", "is", "isnull", "join", "key", "last", "left", "like", "limit",
    "match", "materialized", "natural", "no", "not", "nothing", "notnull", "null", "nulls", "of", "offset",
    "on", "or", "order", "others", "outer", "over", "partition", "plan", "pragma", "preceding", "primary",
    "query", "raise", "range", "recursive", "references", "regexp", "reindex", "release", "rename", "replace",
    "restrict", "returning", "right", "rollback", "row", "rows", "savepoint", "select", "set", "table", "temp",
    "temporary", "then", "ties", "to", "transaction", "trigger", "unbounded", "union", "unique", "update",
    "using", "vacuum", "values", "view", "virtual", "when", "where", "window", "with", "without",
))


class SpiderFormatError(DataError):
    """Malformed Spider data; the message names the file and the row or key."""


def quote_name(name: str) -> str:
    """An identifier as written in DDL: bare when plain and not a keyword, else double-quoted."""
    if _PLAIN_NAME.fullmatch(name) and name.lower() not in _KEYWORDS:
        return name
    return '"' + name.replace('"', '""') + '"'


def _table_columns(record: dict[str, Any]) -> list[list[tuple[int, str, str]]]:
    """Per table: ``(global column index, name, SQL type)``; the ``*`` column is skipped."""
    tables = record["table_names_original"]
    types = record.get("column_types") or []
    out: list[list[tuple[int, str, str]]] = [[] for _ in tables]
    for idx, (table_idx, name) in enumerate(record["column_names_original"]):
        if table_idx < 0:
            continue
        if table_idx >= len(tables):
            raise SpiderFormatError(f"db {record.get('db_id')!r}: column {idx} ({name!r}) names table "
                                    f"{table_idx}, but there are {len(tables)} tables")
        spider_type = types[idx] if idx < len(types) else "text"
        out[table_idx].append((idx, name, SPIDER_TYPES.get(str(spider_type).lower(), "TEXT")))
    return out


def _primary_keys(record: dict[str, Any]) -> set[int]:
    keys: set[int] = set()
    for key in record.get("primary_keys") or []:
        keys.update(key if isinstance(key, list) else [key])
    return keys


def schema_ddl(table_record: dict[str, Any]) -> str:
    """CREATE TABLE statements for one tables.json record: column types, primary keys (composite
    when a table has several) and foreign keys (one clause per referencing column). SQLite's
    internal tables (``sqlite_sequence``: names starting with ``sqlite_``) are left out."""
    record = table_record
    for key in ("table_names_original", "column_names_original"):
        if key not in record:
            raise SpiderFormatError(f"db {record.get('db_id')!r}: tables.json record lacks {key!r}")
    tables = record["table_names_original"]
    columns = record["column_names_original"]
    per_table = _table_columns(record)
    pks = _primary_keys(record)
    fks: dict[int, list[tuple[int, int]]] = {}
    for pair in record.get("foreign_keys") or []:
        src, dst = pair
        if not (0 <= src < len(columns) and 0 <= dst < len(columns)):
            raise SpiderFormatError(f"db {record.get('db_id')!r}: foreign key {pair} names a column "
                                    f"outside 0..{len(columns) - 1}")
        fks.setdefault(columns[src][0], []).append((src, dst))
    statements = []
    for t, table in enumerate(tables):
        if table.lower().startswith("sqlite_"):
            continue
        lines = [f"  {quote_name(name)} {sql_type}" for _, name, sql_type in per_table[t]]
        keys = [quote_name(name) for idx, name, _ in per_table[t] if idx in pks]
        if keys:
            lines.append(f"  PRIMARY KEY ({', '.join(keys)})")
        for src, dst in fks.get(t, []):
            ref_table = tables[columns[dst][0]]
            lines.append(f"  FOREIGN KEY ({quote_name(columns[src][1])}) REFERENCES "
                         f"{quote_name(ref_table)}({quote_name(columns[dst][1])})")
        statements.append(f"CREATE TABLE {quote_name(table)} (\n" + ",\n".join(lines) + "\n);")
    return "\n\n".join(statements)


def sample_rows_text(db_path: str | Path, table: str, n: int = 3) -> str:
    """Up to ``n`` rows of ``table`` as a tab-separated block with a header line, read through a
    guarded read-only connection (``rewards.sql_sandbox.ReadOnlyDatabase``) with a time limit."""
    if n <= 0:
        return ""
    with ReadOnlyDatabase(db_path) as db:
        result = db.query(f"SELECT * FROM {quote_name(table)} LIMIT {int(n)}", SAMPLE_TIMEOUT_S, n)
        header = db.query(f"PRAGMA table_info({quote_name(table)})", SAMPLE_TIMEOUT_S, 10_000)
    if not result.ok:
        raise ValueError(f"cannot read sample rows of table {table!r} from {db_path}: {result.error}")
    names = [str(row[1]) for row in header.rows] if header.ok else []
    lines = [f"/* {len(result.rows)} example rows of table {table}: */", "\t".join(names)]
    lines += ["\t".join(_cell(v) for v in row) for row in result.rows]
    return "\n".join(lines)


def _cell(value: Any, limit: int = 60) -> str:
    text = "NULL" if value is None else (f"<{len(value)} bytes>" if isinstance(value, bytes) else str(value))
    text = text.replace("\t", " ").replace("\n", " ")
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _read_json_list(path: Path, what: str) -> list:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"Spider {what} file not found: {path}") from None
    except json.JSONDecodeError as exc:
        raise SpiderFormatError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, list):
        raise SpiderFormatError(f"{path}: expected a JSON list of {what} records, got {type(data).__name__}")
    return data


def load_tables(tables_path: str | Path) -> dict[str, dict[str, Any]]:
    """tables.json as ``{db_id: record}``; malformed records raise naming the file and index."""
    path = Path(tables_path)
    tables: dict[str, dict[str, Any]] = {}
    for i, record in enumerate(_read_json_list(path, "tables")):
        if not isinstance(record, dict) or not isinstance(record.get("db_id"), str):
            raise SpiderFormatError(f"{path}: record {i} has no string 'db_id'")
        for key in ("table_names_original", "column_names_original"):
            if not isinstance(record.get(key), list):
                raise SpiderFormatError(f"{path}: record {i} (db_id {record['db_id']!r}) lacks list {key!r}")
        if record["db_id"] in tables:
            raise SpiderFormatError(f"{path}: db_id {record['db_id']!r} appears twice (record {i})")
        tables[record["db_id"]] = record
    return tables


def _schema_text(record: dict[str, Any], db_path: Path | None, sample_rows: int) -> str:
    text = schema_ddl(record)
    if sample_rows > 0 and db_path is not None:
        samples = [sample_rows_text(db_path, t, sample_rows) for t in record["table_names_original"]
                   if not t.lower().startswith("sqlite_")]
        text += "\n\n" + "\n\n".join(samples)
    return text


def build_prompt(question: str, schema: str, instruction: str = DEFAULT_INSTRUCTION) -> str:
    """The prompt text: schema, question, instruction."""
    parts = [f"Database schema (SQLite):\n{schema}", f"Question: {question.strip()}"]
    if instruction:
        parts.append(instruction)
    return "\n\n".join(parts)


def load_spider(questions_path: str | Path, tables_path: str | Path, db_dir: str | Path | None = None,
                sample_rows: int = 0, instruction: str = DEFAULT_INSTRUCTION) -> list[dict[str, Any]]:
    """Rows ``{"prompt", "gold_sql", "db_id", "db_path", "question"}`` for rewards.sql.SQLReward.

    ``db_path`` is ``<db_dir>/<db_id>/<db_id>.sqlite`` (which must exist) or None without
    ``db_dir``; ``sample_rows > 0`` (needs ``db_dir``) adds that many rows per table to the
    prompt. A record without ``db_id``/``question``/``query`` or whose ``db_id`` is not in
    tables.json raises SpiderFormatError naming the file and the record index.
    """
    qpath = Path(questions_path)
    if sample_rows > 0 and db_dir is None:
        raise ValueError("load_spider: sample_rows > 0 needs db_dir (the folder of the .sqlite databases)")
    tables = load_tables(tables_path)
    schemas: dict[str, str] = {}
    rows = []
    for i, record in enumerate(_read_json_list(qpath, "questions")):
        if not isinstance(record, dict):
            raise SpiderFormatError(f"{qpath}: record {i} is a {type(record).__name__}, not an object")
        for key in ("db_id", "question", "query"):
            if not isinstance(record.get(key), str) or not record[key].strip():
                raise SpiderFormatError(f"{qpath}: record {i} has no string {key!r}")
        db_id = record["db_id"]
        if db_id not in tables:
            raise SpiderFormatError(f"{qpath}: record {i} names db_id {db_id!r}, which is not in {tables_path}")
        db_path = None
        if db_dir is not None:
            db_path = Path(db_dir) / db_id / f"{db_id}.sqlite"
            if not db_path.is_file():
                raise FileNotFoundError(f"{qpath}: record {i} (db_id {db_id!r}): database not found: {db_path}")
        if db_id not in schemas:
            schemas[db_id] = _schema_text(tables[db_id], db_path, sample_rows)
        rows.append({"prompt": build_prompt(record["question"], schemas[db_id], instruction),
                     "gold_sql": record["query"], "db_id": db_id,
                     "db_path": None if db_path is None else str(db_path), "question": record["question"]})
    return rows
