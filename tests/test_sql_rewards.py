"""Tests for the Reasoning-SQL rewards (spec section 7; arXiv 2503.23157): rewards.sql and the SQLite
sandbox (rewards.sql_sandbox).  The Spider loader and the SQL demo task: tests/test_sql_tasks.py.

Every database is built here in a temporary folder; nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from rewards import combine
from rewards.sql import (
    SQLReward,
    execution_match,
    extract_sql,
    format_ok,
    has_top_level_order_by,
    ngram_similarity,
    schema_linking,
    syntax_ok,
)
from rewards.sql_sandbox import (
    ExecResult,
    ReadOnlyDatabase,
    SQLSandbox,
    close_default_sandbox,
    default_sandbox,
    results_equal,
)

TIMEOUT = 1.0
GOLD = "SELECT name FROM users WHERE age > 30"
PRED = "SELECT name FROM users WHERE city = 'Paris'"
CITIES = ("Paris", "Rome", "Oslo", "Lima")


def build_db(path: Path) -> Path:
    """users(id, name, age, city) with 200 rows (one name is invalid UTF-8) and orders(...)."""
    conn = sqlite3.connect(path)
    conn.executescript("""
        CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT, age INTEGER, city TEXT);
        CREATE TABLE orders (id INTEGER PRIMARY KEY, user_id INTEGER REFERENCES users(id), amount REAL);
    """)
    conn.executemany("INSERT INTO users VALUES (?, ?, ?, ?)",
                     [(i, f"user{i}", 18 + (i * 7) % 50, CITIES[i % 4]) for i in range(1, 200)])
    conn.execute("INSERT INTO users VALUES (200, CAST(x'fffe' AS TEXT), 40, 'Paris')")
    conn.executemany("INSERT INTO orders VALUES (?, ?, ?)",
                     [(i, 1 + (i * 13) % 200, round(0.1 * i + 0.05, 2)) for i in range(1, 501)])
    conn.commit()
    conn.close()
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> Path:
    return build_db(tmp_path_factory.mktemp("sqldb") / "shop.sqlite")


@pytest.fixture(scope="module")
def sandbox():
    with SQLSandbox(timeout_s=TIMEOUT, workers=2) as box:
        box.start()
        yield box


@pytest.fixture(scope="module", autouse=True)
def warm_default_sandbox():
    """Start the default sandbox's workers up front, so timings measure queries, not spawns."""
    default_sandbox().start()
    yield
    close_default_sandbox()


# Spec section 7 worked example ----------------------------------------------------------------

def test_spec_example(db):
    assert execution_match(PRED, GOLD, db) is False
    assert syntax_ok(PRED, db) is True
    assert schema_linking(PRED, GOLD) == pytest.approx(0.5)
    assert schema_linking(PRED, GOLD, mode="recall") == pytest.approx(2 / 3, abs=1e-3)
    assert execution_match(GOLD, GOLD, db) is True


# Extraction and format ------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("Reasoning...\n```sql\nSELECT 1\n```", "SELECT 1"),
    ("```sqlite\nSELECT 6\n```", "SELECT 6"),
    ("thinking <answer>SELECT name FROM users</answer>", "SELECT name FROM users"),
    ("<answer>\n```sql\nSELECT 2;\n```\n</answer>", "SELECT 2;"),
    ("draft:\n```sql\nSELECT 1\n```\nbetter:\n```SQL\nSELECT 3\n```\n", "SELECT 3"),
    ("```sql\nSELECT 1\n```\n<answer>SELECT 4</answer>", "SELECT 4"),
    ("no query here", None),
    ("```python\nprint(1)\n```", None),
    ("cut off ```sql\nSELECT 5 FROM", None),
    ("```sql\n  \n```", None),
    (None, None),
])
def test_extract_sql(text, expected):
    assert extract_sql(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("Let me think.\n```sql\nSELECT 1\n```\n", True),
    ("<answer>SELECT 1</answer>  ", True),
    ("<answer>```sql\nSELECT 1\n```</answer>", True),
    ("```sql\nSELECT 1\n``` and some words after", False),
    ("```sql\nSELECT 1\n```\n```sql\nSELECT 2\n```", False),
    ("<answer>SELECT 1</answer><answer>SELECT 2</answer>", False),
    ("</answer>SELECT 1<answer>", False),
    ("<answer></answer>", False),
    ("```sql\nSELECT 1\n```<answer>SELECT 1</answer>", False),
    ("SELECT 1", False),
])
def test_format_ok(text, expected):
    assert format_ok(text) is expected


def test_format_with_reasoning_tag():
    assert format_ok("<think>plan</think>\n<answer>SELECT 1</answer>", reasoning_tag="think")
    assert not format_ok("<answer>SELECT 1</answer>", reasoning_tag="think")
    assert not format_ok("<answer>SELECT 1</answer><think>x</think>", reasoning_tag="think")


# Execution match ------------------------------------------------------------------------------

def test_order_by_detection():
    assert has_top_level_order_by("SELECT a FROM t ORDER BY a")
    assert has_top_level_order_by("SELECT a FROM t UNION SELECT b FROM s ORDER BY 1")
    assert not has_top_level_order_by("SELECT a FROM (SELECT a FROM t ORDER BY a LIMIT 3)")
    assert not has_top_level_order_by("SELECT a FROM t WHERE b = 'order by'")


def test_execution_match_multiset_and_order(db):
    gold = "SELECT name FROM users WHERE city = 'Rome'"
    assert execution_match("SELECT name FROM users WHERE city = 'Rome' ORDER BY name DESC", gold, db)
    ordered = "SELECT name FROM users WHERE city = 'Rome' ORDER BY id"
    assert execution_match("SELECT name FROM users WHERE city = 'Rome' ORDER BY id", ordered, db)
    assert not execution_match("SELECT name FROM users WHERE city = 'Rome' ORDER BY id DESC", ordered, db)
    assert not execution_match("SELECT DISTINCT city FROM users", "SELECT city FROM users", db)  # duplicates
    assert execution_match("SELECT city FROM users ORDER BY city", "SELECT city FROM users", db)


def test_execution_match_values(db):
    gold = "SELECT avg(age) FROM users"
    assert execution_match("SELECT sum(age) * 1.0 / count(*) FROM users", gold, db)
    assert execution_match("SELECT avg(age) + 1e-12 FROM users", gold, db)  # float tolerance
    assert not execution_match("SELECT avg(age) + 0.001 FROM users", gold, db)
    assert execution_match("SELECT 30.0", "SELECT 30", db)  # 30.0 == 30 as Python values
    assert not execution_match("SELECT '30'", "SELECT 30", db)
    # column order counts: row tuples compare as returned
    assert not execution_match("SELECT age, name FROM users", "SELECT name, age FROM users", db)
    assert not execution_match("SELECT nme FROM users", "SELECT name FROM users", db)
    assert not execution_match("", "SELECT name FROM users", db)
    assert not execution_match(None, "SELECT name FROM users", db)


def test_gold_error_raises_naming_query_and_db(db):
    with pytest.raises(ValueError, match="SELECT nope") as info:
        execution_match("SELECT 1", "SELECT nope FROM users", db)
    assert str(db) in str(info.value)


def test_results_equal_truncated_and_mixed_types():
    mixed = [(1, "a", None, b"\x00", 2.5)]
    assert results_equal(ExecResult(True, mixed), ExecResult(True, list(mixed)))
    assert not results_equal(ExecResult(True, mixed, truncated=True), ExecResult(True, mixed))
    assert not results_equal(ExecResult(False, error="x"), ExecResult(True, []))


def test_max_rows_truncates(db):
    with SQLSandbox(timeout_s=TIMEOUT, max_rows=10, workers=1) as box:
        result = box.run("SELECT * FROM orders", db)
    assert result.ok and result.truncated and len(result.rows) == 10


# Adversarial SQL ------------------------------------------------------------------------------

ADVERSARIAL = [
    "DROP TABLE users",
    "DELETE FROM users",
    "UPDATE users SET age = 0",
    "INSERT INTO users VALUES (999, 'x', 1, 'y')",
    "ATTACH DATABASE '{dir}/evil.sqlite' AS evil",
    "PRAGMA user_version = 5",
    "PRAGMA journal_mode = WAL",
    "CREATE TABLE evil (x)",
    "SELECT 1; DROP TABLE users",
    "BEGIN EXCLUSIVE",
    "VACUUM INTO '{dir}/copy.sqlite'",
    "SELECT zeroblob(2000000000)",
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c",
    "SELECT count(*) FROM users a, users b, users c, users d",
    "SELECT a.name FROM users a, orders b, orders c ORDER BY a.name || b.amount || c.amount DESC",
]


@pytest.mark.parametrize("query", ADVERSARIAL)
def test_adversarial_sql_is_contained(db, sandbox, query):
    query = query.format(dir=db.parent)
    before, files_before = sha256(db), sorted(os.listdir(db.parent))
    gold = "SELECT count(*) FROM users"
    for call in (lambda: execution_match(query, gold, db, timeout_s=TIMEOUT),
                 lambda: syntax_ok(query, db, timeout_s=TIMEOUT),
                 lambda: sandbox.run(query, db)):
        start = time.perf_counter()
        out = call()
        elapsed = time.perf_counter() - start
        assert elapsed < TIMEOUT + 1, (query, elapsed)
        assert out is False or (isinstance(out, ExecResult) and not out.ok), (query, out)
    assert sha256(db) == before
    assert sorted(os.listdir(db.parent)) == files_before  # no journal, WAL, attached or copied file
    assert sandbox.run("SELECT count(*) FROM users", db).rows == [(200,)]


def test_timeouts_are_reported(db, sandbox):
    result = sandbox.run(ADVERSARIAL[-3], db)
    assert result.timed_out and not result.ok and "timed out" in result.error


def test_invalid_utf8_is_read(db, sandbox):
    before = sha256(db)
    result = sandbox.run("SELECT name FROM users WHERE id = 200", db)
    assert result.ok and result.rows == [("\ufffd\ufffd",)]
    assert syntax_ok("SELECT * FROM users", db, timeout_s=TIMEOUT)
    assert execution_match("SELECT name FROM users WHERE id >= 200", "SELECT name FROM users WHERE id = 200", db)
    assert sha256(db) == before


def test_read_pragmas_allowed(db, sandbox):
    result = sandbox.run("PRAGMA table_info(users)", db)
    assert result.ok and [r[1] for r in result.rows] == ["id", "name", "age", "city"]


def test_missing_database_is_an_error_result(tmp_path, sandbox):
    result = sandbox.run("SELECT 1", tmp_path / "absent.sqlite")
    assert not result.ok and "not found" in result.error
    with pytest.raises(FileNotFoundError, match="absent.sqlite"):
        syntax_ok("SELECT 1", tmp_path / "absent.sqlite")
    with pytest.raises(FileNotFoundError, match="absent.sqlite"):
        execution_match("SELECT 1", "SELECT 1", tmp_path / "absent.sqlite")


def test_in_process_connection_is_read_only(db):
    with ReadOnlyDatabase(db) as ro:
        assert not ro.query("DELETE FROM users").ok
        assert ro.query("SELECT count(*) FROM orders").rows == [(500,)]
        slow = ro.query(ADVERSARIAL[-3], timeout_s=0.3)
    assert slow.timed_out


# Crash isolation -------------------------------------------------------------------------------

def test_hung_or_crashed_worker_costs_one_row(db, sandbox):
    kills = sandbox.kills
    query = "SELECT count(*) FROM users"
    start = time.perf_counter()
    results = sandbox.run_many([(query, db)] * 5, _faults=[None, "crash", None, "hang", None])
    elapsed = time.perf_counter() - start
    assert [r.ok for r in results] == [True, False, True, False, True]
    assert all(r.rows == [(200,)] for r in results if r.ok)
    assert "died" in results[1].error
    assert results[3].timed_out and "killed" in results[3].error
    assert elapsed < TIMEOUT + 1 + 2.0, elapsed  # the hang is cut at timeout + 1 s (+ respawn slack)
    assert sandbox.kills == kills + 2
    assert [r.rows for r in sandbox.run_many([(query, db)] * 3)] == [[(200,)]] * 3


def test_worker_killed_from_outside_is_replaced(db, sandbox):
    pids = sandbox.start()
    os.kill(pids[0], signal.SIGKILL)
    time.sleep(0.2)
    results = sandbox.run_many([("SELECT count(*) FROM orders", db)] * 4)
    assert all(r.ok for r in results)  # a dead idle worker is replaced before it gets a row
    assert sandbox.run("SELECT count(*) FROM orders", db).rows == [(500,)]
    assert pids[0] not in sandbox.pids


# Gold cache ------------------------------------------------------------------------------------

def test_gold_cache_skips_second_execution(db):
    query = "SELECT city, count(*) FROM users GROUP BY city"
    with SQLSandbox(timeout_s=TIMEOUT, workers=1) as box:
        first = box.gold(query, db)
        executed = box.executions
        second = box.gold(query, db)
        assert box.executions == executed and box.cache_hits == 1
        assert second.rows == first.rows
        box.gold_many([(query, db), ("SELECT 1", db), ("SELECT 1", db)])
        assert box.executions == executed + 1  # only the new query, once
    with SQLSandbox(timeout_s=TIMEOUT, workers=1, cache=False) as box:
        box.gold(query, db)
        box.gold(query, db)
        assert box.executions == 2 and box.cache_hits == 0


# Schema linking and n-grams --------------------------------------------------------------------

def test_schema_linking_aliases_and_errors():
    gold = "SELECT T1.name FROM users AS T1 JOIN orders AS T2 ON T1.id = T2.user_id"
    pred = "SELECT users.name FROM users JOIN orders ON users.id = orders.user_id"
    assert schema_linking(pred, gold) == 1.0
    aliased = "SELECT count(*) AS n FROM users WHERE city = \"Paris\" GROUP BY city ORDER BY n"
    assert schema_linking(aliased, "SELECT count(*) FROM users GROUP BY city") == 1.0
    assert schema_linking("SELEC name FRM", gold) == 0.0
    assert schema_linking(None, gold) == 0.0
    with pytest.raises(ValueError, match="mode"):
        schema_linking(gold, gold, mode="f1")


def test_ngram_similarity():
    assert ngram_similarity(GOLD, GOLD) == 1.0
    assert ngram_similarity("select  NAME from users;", "SELECT name FROM users") == 1.0
    assert ngram_similarity("SELECT a,b FROM t", "SELECT a , b FROM t") == 1.0
    assert ngram_similarity(PRED, GOLD) == pytest.approx(4 / 10)
    assert ngram_similarity("", "") == 1.0
    assert ngram_similarity("", GOLD) == 0.0
    assert ngram_similarity("SELECT", "SELECT") == 1.0


# The reward module ----------------------------------------------------------------------------

def test_sql_reward_end_to_end(db, tmp_path, caplog):
    asked = []

    def judge(question, pred_sql, gold_sql):
        asked.append((question, pred_sql))
        return 0.5

    completions = [
        f"The users older than 30.\n```sql\n{GOLD}\n```",                 # right
        f"Maybe by city.\n```sql\n{PRED}\n```",                             # wrong: judged
        "I do not know.",                                                   # no SQL
        f"```sql\n{GOLD}\n```",                                              # no gold query
        f"```sql\n{GOLD}\n```",                                              # gold query fails
        f"```sql\n{GOLD}\n```",                                              # no database
    ]
    golds = [GOLD, GOLD, GOLD, None, "SELECT nope FROM users", GOLD]
    dbs = [str(db)] * 5 + [str(tmp_path / "missing.sqlite")]
    with SQLReward(judge=judge, timeout_s=TIMEOUT, workers=2) as reward:
        with caplog.at_level(logging.WARNING, logger="rewards.sql"):
            scores = reward(completions, gold_sql=golds, db_path=dbs, prompts=["p"] * 6,
                            completion_ids=[[1]] * 6, question=[f"q{i}" for i in range(6)])
        assert scores[0] == pytest.approx(3 + 1 + 1 + 1 + 1)
        assert scores[1] == pytest.approx(2 * 0.5 + 1 + 0.5 + 0.4 + 1)
        assert scores[2] == 0.0
        assert scores[3:] == [None, None, None]
        assert asked == [("q1", PRED)]  # only where execution failed and SQL was given
        assert "SELECT nope" in caplog.text
        stats = reward.update(None)
        assert stats["execution"] == pytest.approx(1 / 3)
        assert stats["syntax"] == pytest.approx(2 / 3)
        assert stats["format"] == pytest.approx(2 / 3)
        assert stats["judge"] == 0.5 and stats["judge_calls"] == 1
        assert stats["gold_errors"] == 1 and stats["skipped"] == 3
        assert reward.last_rows[1]["schema"] == pytest.approx(0.5)
        executed = reward.sandbox.executions
        reward(completions[:2], gold_sql=golds[:2], db_path=dbs[:2])
        assert reward.sandbox.executions == executed + 2  # the predictions only: gold is cached


def test_sql_reward_in_combine_and_options(db):
    reward = SQLReward(weights={"execution": 1.0}, schema_mode="recall", timeout_s=TIMEOUT, workers=1)
    with combine(sql=(reward, 2.0)) as combined:
        result = combined.score([f"```sql\n{GOLD}\n```", f"```sql\n{PRED}\n```"],
                                query=[GOLD, GOLD], db_path=[str(db)] * 2)
        assert result.scores == [2.0, 0.0]
        metrics = combined.update(None)
    assert metrics["sql/execution"] == 0.5 and metrics["sql/schema"] == pytest.approx((1 + 2 / 3) / 2)
    with pytest.raises(ValueError, match="unknown partials"):
        SQLReward(weights={"exec": 1.0})
    with pytest.raises(KeyError, match="db_path"):
        SQLReward(workers=1)(["x"], gold_sql=[GOLD])
