"""The Text-to-SQL tasks: the Spider loader (rlkit.tasks.spider), the built-in demo task
(rlkit.tasks.sql_demo) with its execution-accuracy component, and configs/grpo_sql.yaml.  The
Reasoning-SQL rewards and the SQLite sandbox: tests/test_sql_rewards.py.

Every database is built here in a temporary folder; nothing is downloaded.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from rewards.sql_sandbox import SQLSandbox
from rlkit.tasks.spider import SpiderFormatError, load_spider, load_tables, schema_ddl
from test_sql_rewards import build_db  # the shop database (users, orders) of the reward tests

SPIDER_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "spider"


# Spider loader ---------------------------------------------------------------------------------

TABLES = [{
    "db_id": "shop",
    "table_names_original": ["users", "orders", "order"],
    "column_names_original": [[-1, "*"], [0, "id"], [0, "name"], [0, "age"], [0, "city"], [1, "id"],
                              [1, "user_id"], [1, "amount"], [2, "Home Town"], [2, "select"]],
    "column_types": ["text", "number", "text", "number", "text", "number", "number", "number", "text", "time"],
    "primary_keys": [1, 5],
    "foreign_keys": [[6, 1]],
}]


def write_spider(tmp_path: Path, questions: list[dict]) -> tuple[Path, Path, Path]:
    (tmp_path / "tables.json").write_text(json.dumps(TABLES))
    (tmp_path / "questions.json").write_text(json.dumps(questions))
    db_dir = tmp_path / "database"
    (db_dir / "shop").mkdir(parents=True)
    conn = sqlite3.connect(build_db(db_dir / "shop" / "shop.sqlite"))
    conn.execute('CREATE TABLE "order" ("Home Town" TEXT, "select" TEXT)')
    conn.execute("INSERT INTO \"order\" VALUES ('Lyon', 'x')")
    conn.commit()
    conn.close()
    return tmp_path / "questions.json", tmp_path / "tables.json", db_dir


def test_schema_ddl_is_valid_sql():
    ddl = schema_ddl(TABLES[0])
    assert "PRIMARY KEY (id)" in ddl and "FOREIGN KEY (user_id) REFERENCES users(id)" in ddl
    assert 'CREATE TABLE "order"' in ddl and '"Home Town" TEXT' in ddl
    conn = sqlite3.connect(":memory:")
    conn.executescript(ddl)
    names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
    assert names == ["order", "orders", "users"]


def test_load_spider(tmp_path):
    questions = [{"db_id": "shop", "question": "How many users?", "query": "SELECT count(*) FROM users"}]
    qpath, tpath, db_dir = write_spider(tmp_path, questions)
    rows = load_spider(qpath, tpath)
    assert rows[0]["gold_sql"] == "SELECT count(*) FROM users" and rows[0]["db_path"] is None
    assert "How many users?" in rows[0]["prompt"] and "CREATE TABLE users" in rows[0]["prompt"]
    rows = load_spider(qpath, tpath, db_dir=db_dir, sample_rows=2, instruction="Answer in SQL.")
    assert rows[0]["db_path"] == str(db_dir / "shop" / "shop.sqlite")
    assert "user1\t" in rows[0]["prompt"] and "Home Town\tselect\nLyon\tx" in rows[0]["prompt"]
    assert rows[0]["prompt"].endswith("Answer in SQL.")
    assert rows[0]["question"] == "How many users?" and rows[0]["db_id"] == "shop"


def test_load_spider_errors_name_file_and_row(tmp_path):
    questions = [{"db_id": "shop", "question": "q", "query": "SELECT 1"},
                 {"db_id": "nowhere", "question": "q", "query": "SELECT 1"}]
    qpath, tpath, _ = write_spider(tmp_path, questions)
    with pytest.raises(SpiderFormatError, match=r"questions.json: record 1 .*'nowhere'"):
        load_spider(qpath, tpath)
    qpath.write_text(json.dumps([{"db_id": "shop", "question": "q"}]))
    with pytest.raises(SpiderFormatError, match=r"record 0 has no string 'query'"):
        load_spider(qpath, tpath)
    qpath.write_text(json.dumps([{"db_id": "shop", "question": "q", "query": "SELECT 1"}]))
    with pytest.raises(FileNotFoundError, match="record 0"):
        load_spider(qpath, tpath, db_dir=tmp_path / "elsewhere")
    with pytest.raises(ValueError, match="sample_rows"):
        load_spider(qpath, tpath, sample_rows=1)


@pytest.mark.skipif(not (SPIDER_DIR / "tables.json").is_file(), reason=f"no Spider sample at {SPIDER_DIR}")
def test_spider_dev_sample():
    tables = load_tables(SPIDER_DIR / "tables.json")
    rows = load_spider(SPIDER_DIR / "dev_questions.json", SPIDER_DIR / "tables.json")
    assert rows and all(row["db_id"] in tables for row in rows)
    for db_id in sorted(tables):  # every schema, not only those the questions use
        conn = sqlite3.connect(":memory:")
        conn.executescript(schema_ddl(tables[db_id]))  # raises on invalid DDL
        conn.close()


def test_sql_demo_task_builds_once_and_every_gold_query_runs(tmp_path):
    from rlkit.tasks.sql_demo import build_sql_demo

    questions, tables, db_dir = build_sql_demo(tmp_path / "demo")
    database = db_dir / "shop" / "shop.sqlite"
    stamp = database.stat().st_mtime_ns
    assert build_sql_demo(tmp_path / "demo") == (questions, tables, db_dir) and database.stat().st_mtime_ns == stamp
    rows = load_spider(questions, tables, db_dir=db_dir)
    assert len(rows) > 150 and len({r["question"] for r in rows}) == len(rows)
    with SQLSandbox(timeout_s=5.0, workers=1) as box:
        results = box.gold_many([(r["gold_sql"], r["db_path"]) for r in rows])
    assert all(r.ok for r in results), [r.error for r in results if not r.ok][:3]
    assert sum(len(r.rows) > 0 for r in results) > 0.9 * len(results)


def test_execution_accuracy_component(tmp_path):
    from rewards.sql import execution_accuracy
    from rewards.sql_sandbox import close_default_sandbox
    from rlkit.tasks.sql_demo import build_sql_demo

    _, _, db_dir = build_sql_demo(tmp_path / "demo")
    database = str(db_dir / "shop" / "shop.sqlite")
    gold = "SELECT count(*) FROM customers WHERE city = 'Oslo'"
    right = "```sql\nSELECT COUNT(id) FROM customers WHERE city = 'Oslo';\n```"
    wrong = "```sql\nSELECT count(*) FROM customers\n```"
    try:
        got = execution_accuracy([right, wrong, "no sql", right], gold_sql=[gold, gold, gold, None],
                                 db_path=[database] * 4)
    finally:
        close_default_sandbox()
    assert got == [1.0, 0.0, 0.0, None]


def test_grpo_sql_config_loads_the_demo(tmp_path):
    """The shipped config: ``data.task: sql_demo`` through load_rows, and its reward functions
    score a right and a wrong completion."""
    from rlkit.config import ConfigError, load_config
    from rlkit.data import load_rows
    from rlkit.scoring import build_reward

    config = Path(__file__).resolve().parents[1] / "configs" / "grpo_sql.yaml"
    cfg = load_config(config, [f"data.path={tmp_path / 'demo'}"])
    train, held = load_rows(cfg.data, seed=0)
    assert len(held) == 37 and len(train) == 151 and all(r["db_path"] for r in train)  # num_eval 40, capped at a fifth
    reward = build_reward(cfg.rewards)
    try:
        row = train[0]
        result = reward.score([f"```sql\n{row['gold_sql']}\n```", "```sql\nSELECT 1\n```"],
                              gold_sql=[row["gold_sql"]] * 2, db_path=[row["db_path"]] * 2)
    finally:
        reward.close()
        from rewards.sql_sandbox import close_default_sandbox
        close_default_sandbox()
    assert result.components["execution"] == [1.0, 0.0]
    assert result.scores[0] == pytest.approx(7.0)  # execution 3 + syntax, schema, n-gram, format 1 each
    with pytest.raises(ConfigError, match="data.tables"):
        load_config(config, ["data.task=spider", "data.path=q.json"])
