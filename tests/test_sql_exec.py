"""Execution-match conventions (rewards.sql_exec): Spider's official reading beside the strict one,
results over the sandbox's row cap compared in full, and schema-linking items (rewards.sql).

Every database is built here with sqlite3 in a temporary folder.
"""
from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from rewards.sql import execution_match, has_top_level_order_by, schema_items, schema_linking
from rewards.sql_exec import (
    official_execution_match,
    official_ordered,
    official_sql,
    results_equal_any_column_order,
    strip_distinct,
)
from rewards.sql_sandbox import ExecResult, close_default_sandbox, results_equal

BIG = 12_000  # rows of table big: over the sandbox's default cap of 10,000


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sqlexec") / "concert.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript("""
        CREATE TABLE singer (id INTEGER PRIMARY KEY, name TEXT, country TEXT, age INTEGER);
        CREATE TABLE big (id INTEGER PRIMARY KEY, v INTEGER);
    """)
    conn.executemany("INSERT INTO singer VALUES (?, ?, ?, ?)", [
        (1, "Ann", "France", 30), (2, "Bob", "France", 41), (3, "Cid", "Spain", 25), (4, "Dee", "Spain", 52),
        (5, "Eve", "Italy", 33)])
    conn.executemany("INSERT INTO big VALUES (?, ?)", [(i, i % 7) for i in range(BIG)])
    conn.commit()
    conn.close()
    yield path
    close_default_sandbox()


def test_strip_distinct_uses_tokens_not_text():
    sql = "SELECT DISTINCT name, count(DISTINCT age) FROM singer WHERE country = 'distinct' AND \"distinct\" > = 1"
    assert official_sql(sql) == "SELECT  name, count( age) FROM singer WHERE country = 'distinct' AND \"distinct\" >= 1"
    assert strip_distinct("select distinct(country) from singer") == "select (country) from singer"
    assert strip_distinct("SELECT name FROM singer") == "SELECT name FROM singer"
    assert official_sql("SELECT name FROM singer WHERE age < YEAR(CURDATE()) - 2000") == (
        "SELECT name FROM singer WHERE age < 2020- 2000")
    # the official evaluator keeps row order wherever "order by" appears, a subquery's included
    nested = "SELECT name FROM singer WHERE age = (SELECT age FROM singer ORDER BY age LIMIT 1)"
    assert official_ordered(nested) and not has_top_level_order_by(nested)


def test_results_compare_in_any_column_order():
    gold = ExecResult(True, [(1, "a", 2.0), (2, "b", 3.0)])
    swapped = ExecResult(True, [("b", 3, 2), ("a", 2, 1)])
    assert results_equal_any_column_order(swapped, gold) and not results_equal(swapped, gold)
    # the same columns paired into other rows are a different result
    assert not results_equal_any_column_order(ExecResult(True, [("b", 2.0, 1), ("a", 3.0, 2)]), gold)
    # ordered: the rows' order still counts, the columns' does not
    assert results_equal_any_column_order(ExecResult(True, [("a", 2.0, 1), ("b", 3.0, 2)]), gold, ordered=True)
    assert not results_equal_any_column_order(swapped, gold, ordered=True)
    assert not results_equal_any_column_order(ExecResult(True, [(1, "a")]), ExecResult(True, [(1, "a", 2.0)]))
    assert not results_equal_any_column_order(ExecResult(True, gold.rows, truncated=True), gold)
    # many identical columns: each distinct column is tried once, so this is quick
    wide = ExecResult(True, [tuple([0] * 12 + [i]) for i in range(50)])
    flipped = ExecResult(True, [tuple([i] + [0] * 12) for i in range(50)])
    assert results_equal_any_column_order(flipped, wide)


@pytest.mark.parametrize(("pred", "official", "strict"), [
    ("SELECT age, name FROM singer WHERE country = 'France'", True, False),         # columns swapped
    ("SELECT DISTINCT name, age FROM singer WHERE country = 'France'", True, True),  # DISTINCT, no duplicates
    ("SELECT DISTINCT country FROM singer", True, False),                           # DISTINCT drops duplicates
    ("SELECT name, age FROM singer WHERE country = 'Spain'", False, False),         # wrong answer
    ("SELECT name FROM singer WHERE country = 'France'", False, False),             # a column missing
    ("SELEC name FROM singer", False, False),                                       # an error
])
def test_official_and_strict_execution_match(db, pred, official, strict):
    gold = ("SELECT country FROM singer" if pred == "SELECT DISTINCT country FROM singer"
            else "SELECT name, age FROM singer WHERE country = 'France'")
    assert official_execution_match(pred, gold, db) is official
    assert execution_match(pred, gold, db) is strict


def test_distinct_in_the_gold_is_stripped_too(db):
    gold = "SELECT DISTINCT country FROM singer ORDER BY country"
    assert execution_match("SELECT country FROM singer GROUP BY country ORDER BY country", gold, db)
    # the official evaluator runs the gold without DISTINCT: five rows, duplicates included
    assert not official_execution_match("SELECT country FROM singer GROUP BY country ORDER BY country", gold, db)
    assert official_execution_match("SELECT country FROM singer ORDER BY country", gold, db)


def test_result_over_the_row_cap_is_compared_in_full(db):
    gold = "SELECT id, v FROM big"
    assert execution_match("SELECT id, v FROM big ORDER BY id DESC", gold, db)       # 12,000 rows, all compared
    assert not execution_match("SELECT id, v FROM big WHERE id > 0", gold, db)       # one row fewer
    assert official_execution_match("SELECT v, id FROM big", gold, db) is True
    assert not official_execution_match("SELECT v, id + 1 FROM big", gold, db)


def test_table_and_column_of_the_same_name_are_different_items():
    # Spider's orchestra table has a column Orchestra
    assert schema_items("SELECT Orchestra FROM orchestra") == {("table", "orchestra"), ("column", "orchestra")}
    # {table orchestra, column orchestra} vs {table conductor, column orchestra}: 1 shared of 3
    assert schema_linking("SELECT Orchestra FROM conductor", "SELECT Orchestra FROM orchestra") == pytest.approx(1 / 3)
    assert schema_linking("SELECT Orchestra FROM conductor", "SELECT Orchestra FROM orchestra",
                          mode="recall") == pytest.approx(1 / 2)
    assert schema_linking("SELECT T1.Orchestra FROM orchestra AS T1", "SELECT Orchestra FROM orchestra") == 1.0
