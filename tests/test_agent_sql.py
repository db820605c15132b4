"""The SQL agent (rlkit/agents/sql.py, configs/agent_sql.yaml): ``run_sql`` in tool workers on the
real built-in shop database, a full episode scored by the Reasoning-SQL rewards, and the shipped
config trained for a step on the tiny model.

Expected values are written out or read with plain ``sqlite3`` next to the sandbox; the scripted
policy (tests/helpers/agent_kit.py) stands for the model where the point is the bookkeeping.
"""
from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import pytest

from conftest import REPO_ROOT, tiny_overrides
from helpers.agent_kit import ScriptedPolicy, tool_call
from rlkit.agents import build_runner
from rlkit.agents.render import ChatRenderer
from rlkit.agents.sql import SQLEnv
from rlkit.agents.tools import ToolCall, ToolExecutor, make_tools
from rlkit.config import load_config
from rlkit.rollout import Sampling

CONFIG = REPO_ROOT / "configs" / "agent_sql.yaml"
OSLO = "SELECT count(*) FROM customers WHERE city = 'Oslo'"
FOREVER = "WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r) SELECT count(*) FROM r"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """(rows of the built-in demo through the config's data section, the shop database path)."""
    from rlkit.data import load_rows

    folder = tmp_path_factory.mktemp("sql") / "demo"
    cfg = load_config(CONFIG, [f"data.path={folder}"])
    train, held = load_rows(cfg.data, seed=0)
    return train + held, train[0]["db_path"]


@pytest.fixture(scope="module")
def tok(tiny_model):
    from rlkit.models import load_tokenizer

    return load_tokenizer(tiny_model)


@pytest.fixture
def executor():
    ex = ToolExecutor(make_tools(SQLEnv.tools), timeout_s=5.0, num_workers=1)
    yield ex
    ex.close()


def _digest(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _run(executor, db_path, *queries, **bound):
    calls = [ToolCall("run_sql", {"query": q}) for q in queries]
    return executor.run(calls, {"db_path": db_path, "max_rows": 10, **bound})


def test_the_model_sees_only_the_query_never_the_database_path(demo, tok):
    rows, db_path = demo
    tool = make_tools(SQLEnv.tools)["run_sql"]
    params = tool.schema["function"]["parameters"]
    assert set(params["properties"]) == {"query"} and params["required"] == ["query"]
    assert tool.hidden == ("db_path", "max_rows")
    env = SQLEnv()
    messages = env.reset(rows[0])
    assert env.tool_kwargs() == {"db_path": db_path, "max_rows": 10}
    text = tok.decode(ChatRenderer(tok).prompt_ids(messages, [tool.schema]))
    assert '"name": "run_sql"' in text and "run_sql tool" in text and rows[0]["question"] in text
    for secret in (db_path, "shop.sqlite", "db_path", "max_rows"):
        assert secret not in text


@pytest.mark.slow
def test_the_longest_demo_prompt_fits_the_config_with_smollm2(demo):
    """With SmolLM2's tokenizer and the tool description in the system message, every sql_demo
    prompt fits data.max_prompt_tokens, and with a full episode rollout.max_model_len (436
    tokens at most when written; nothing truncates an agent's prompt, so this must hold)."""
    from rlkit.models import load_tokenizer, resolve_model_path

    rows, _ = demo
    cfg = load_config(CONFIG, [])
    renderer = ChatRenderer(load_tokenizer(resolve_model_path(cfg.model.path)), cfg.data.system_prompt)
    schemas = [t.schema for t in make_tools(SQLEnv.tools).values()]
    longest = max(len(renderer.prompt_ids(SQLEnv(**cfg.agent.env_kwargs).reset(r), schemas)) for r in rows)
    assert longest <= cfg.data.max_prompt_tokens
    assert longest + cfg.agent.max_episode_tokens <= cfg.rollout.max_model_len


def test_a_select_returns_its_rows_as_text(demo, executor):
    _, db_path = demo
    conn = sqlite3.connect(db_path)
    oslo = conn.execute("SELECT name, age FROM customers WHERE city = 'Oslo' ORDER BY id LIMIT 5").fetchall()
    conn.close()
    count, names, orders = _run(executor, db_path, OSLO,
                                "SELECT name, age FROM customers WHERE city = 'Oslo' ORDER BY id LIMIT 5",
                                "SELECT * FROM orders")
    assert (count.ok, count.content) == (True, "13\n(1 row)")       # 13 customers in Oslo (sqlite3 CLI)
    assert names.content == "\n".join(f"{n} | {a}" for n, a in oslo) + "\n(5 rows)"
    lines = orders.content.splitlines()                              # 400 orders, 10 shown
    assert len(lines) == 11 and lines[-1] == "(showing the first 10 rows; the query returned more)"
    (three,) = _run(executor, db_path, "SELECT * FROM orders", max_rows=3)
    assert len(three.content.splitlines()) == 4


def test_writes_are_refused_and_leave_the_file_unchanged(demo, executor):
    _, db_path = demo
    before = _digest(db_path)
    results = _run(executor, db_path, "DROP TABLE orders", "INSERT INTO orders VALUES (999, 1, 1, 1, 2020)",
                   "SELECT 1; DELETE FROM orders", "ATTACH DATABASE '/tmp/x.sqlite' AS x")
    assert [r.ok for r in results] == [False] * 4
    for r in results[:2] + results[3:]:
        assert r.content.startswith("Error: SQLError: only read-only queries (one SELECT) are allowed")
    assert "one statement at a time" in results[2].content
    assert _digest(db_path) == before
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (400,)


def test_errors_the_model_can_use_and_a_query_that_never_ends(demo, executor):
    _, db_path = demo
    table, column, syntax = _run(executor, db_path, "SELECT * FROM clients", "SELECT nme FROM customers", "SELEC 1")
    assert table.content == "Error: SQLError: no such table: clients; the tables are: customers, orders, products"
    assert column.content.startswith("Error: SQLError: no such column: nme; the columns are: "
                                     "customers(id, name, city, age); orders(")
    assert syntax.content == 'Error: SQLError: near "SELEC": syntax error'
    (forever,) = _run(executor, db_path, FOREVER)
    assert not forever.ok and "ran longer than 2 s and was stopped" in forever.content
    (after,) = _run(executor, db_path, OSLO)
    assert (after.ok, after.content) == (True, "13\n(1 row)")
    (nowhere,) = _run(executor, "", OSLO)
    assert nowhere.content == "Error: SQLError: this question has no database to query"


def test_long_values_are_cut():
    from rlkit.agents.sql import MAX_CELL_CHARS, format_rows

    text = format_rows([("x" * 500, b"\x00" * 7, None, "a\nb")], truncated=False)
    first = text.splitlines()[0]
    assert first == "x" * (MAX_CELL_CHARS - 3) + "... | <7 bytes> | NULL | a b"
    wide = format_rows([("y" * 50,) * 3] * 10, truncated=False)
    assert len(wide) < 900 and wide.endswith("(showing the first 5 rows; it returned 10)")


def _episode(tok, demo, final_sql):
    rows, _ = demo
    row = next(r for r in rows if r["question"] == "How many customers live in Oslo?")
    policy = ScriptedPolicy(tok, [tool_call("run_sql", query=OSLO),
                                  f"There are 13.\n```sql\n{final_sql}\n```<eos>"])
    cfg = load_config(CONFIG, [])
    runner = build_runner(cfg.agent, policy, tok)
    try:
        (ep,) = runner.run([row], Sampling(n=1, max_new_tokens=200))
    finally:
        runner.executor.close()
    return ep, row, policy


def test_an_episode_explores_then_answers_and_is_scored(tok, demo):
    """Turn 1 runs a query, turn 2 sees its rows and answers; the config's rewards score the
    final text: right SQL 3 + 1 + 1 + 1 + 1 = 7; 'Lima' instead of 'Oslo' (7 customers, not 13)
    fails execution, keeps syntax, schema and format, and shares 9 of the 11 distinct bigrams."""
    from rewards.sql_sandbox import close_default_sandbox
    from rlkit.scoring import build_reward

    ep, row, policy = _episode(tok, demo, OSLO)
    assert [t.stop for t in ep.turns] == ["tool_call", "eos"] and ep.done and not ep.truncated
    assert ep.turns[0].tool_results[0].content == "13\n(1 row)" and ep.tool_errors == 0
    assert tok.decode(policy.calls[1][0]).endswith("<s>tool: 13\n(1 row)</s>\n<s>assistant: ")
    assert ep.text == f"There are 13.\n```sql\n{OSLO}\n```"
    wrong, _, _ = _episode(tok, demo, OSLO.replace("Oslo", "Lima"))
    cfg = load_config(CONFIG, [])
    reward = build_reward(cfg.rewards, cfg.agent)
    try:
        result = reward.score([ep.text, wrong.text], gold_sql=[row["gold_sql"]] * 2, db_path=[row["db_path"]] * 2)
    finally:
        reward.close()
        close_default_sandbox()
    assert row["gold_sql"] == OSLO
    assert result.components["execution"] == [1.0, 0.0]
    assert result.components["sql"] == pytest.approx([7.0, 3 + 9 / 11])


def test_the_config_trains_on_the_tiny_model(tiny_model, tmp_path, cli):
    """``rlkit train --config configs/agent_sql.yaml`` runs two steps (hf backend), logs the
    agent metrics every step and evaluates multi-turn at the end.  The character tokenizer makes
    the prompts over a thousand tokens long, hence the larger limits."""
    overrides = tiny_overrides(tiny_model, "hf", train__steps=2, train__prompts_per_step=2,
                               rollout__num_samples=2, rollout__max_new_tokens=16, rollout__max_model_len=4096,
                               data__max_prompt_tokens=4096, data__path=tmp_path / "demo", data__num_eval=2,
                               agent__max_episode_tokens=64, agent__tool_workers=1, train__micro_batch_size=4,
                               eval__before="false", eval__every=0)
    res = cli(overrides, config=CONFIG, timeout=600)
    assert res.returncode == 0, res.describe()
    records = [json.loads(line) for line in (res.run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "agent/turns_mean" in r]
    assert len(steps) == 2, records
    for r in steps:
        assert 1.0 <= r["agent/turns_mean"] <= 3.0
        assert r["agent/tool_calls_per_episode"] >= 0.0 and r["agent/tool_errors"] >= 0.0
        assert 0.0 <= r["agent/truncated_frac"] <= 1.0 and 0.0 < r["agent/model_token_frac"] <= 1.0
    (final,) = [r for r in records if "eval/turns_mean" in r]
    assert final["step"] == 2 and 1.0 <= final["eval/turns_mean"] <= 3.0 and "eval/accuracy" in final
