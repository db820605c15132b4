"""``rlkit eval`` scored like the official evaluators: BFCL v4's published files (a question file and
``possible_answer/<same name>``), and Spider execution accuracy by the test-suite evaluator's
convention beside the strict one, with results over the row cap never counted wrong.

Files and SQLite databases are written here in temporary folders.
"""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

import rewards.sql_exec
from rlkit.data import DataError
from rlkit.eval.benchmarks import judge, load_benchmark
from rlkit.eval.metrics import summarize
from rlkit.eval.report import summary_markdown
from rlkit.eval.runner import check_specs

# ---- BFCL v4 files -----------------------------------------------------------------------------

FACTORIAL = {"name": "math.factorial", "description": "Factorial of a number.", "parameters": {
    "type": "dict", "properties": {"number": {"type": "integer", "description": "The number."}},
    "required": ["number"]}}
AREA = {"name": "calculate_triangle_area", "description": "Area of a triangle.", "parameters": {
    "type": "dict", "properties": {"base": {"type": "integer"}, "height": {"type": "integer"},
                                   "unit": {"type": "string"}}, "required": ["base", "height"]}}
QUESTIONS = [  # BFCL v4 shape: question = list of turns, each a list of messages; no ground_truth
    {"id": "simple_python_0", "question": [[{"role": "user", "content": "Area of a triangle, base 10, height 5?"}]],
     "function": [AREA]},
    {"id": "simple_python_1", "question": [[{"role": "user", "content": "Factorial of 5."}]], "function": [FACTORIAL]},
]
ANSWERS = [  # another order than the questions: joined by id
    {"id": "simple_python_1", "ground_truth": [{"math.factorial": {"number": [5]}}]},
    {"id": "simple_python_0", "ground_truth": [{"calculate_triangle_area": {"base": [10], "height": [5],
                                                                            "unit": ["units", ""]}}]},
]


def write_lines(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def call(name: str, params: dict) -> str:
    return f"<think>ok</think>\n<tool_call>\n{json.dumps({'name': name, 'parameters': params})}\n</tool_call>"


@pytest.fixture
def bfcl_v4(tmp_path) -> Path:
    write_lines(tmp_path / "possible_answer" / "BFCL_v4_simple_python.json", ANSWERS)
    return write_lines(tmp_path / "BFCL_v4_simple_python.json", QUESTIONS)


def test_bfcl_v4_question_file_joins_possible_answers(bfcl_v4):
    rows = load_benchmark("toolcall", bfcl_v4)
    assert [r["id"] for r in rows] == ["simple_python_0", "simple_python_1"]
    assert rows[1]["answer"] == [{"math.factorial": {"number": [5]}}]
    assert rows[0]["prompt"][-1] == {"role": "user", "content": "Area of a triangle, base 10, height 5?"}
    assert [r["category"] for r in rows] == ["simple_python", "simple_python"]
    verdicts = judge("toolcall", rows, [[call("calculate_triangle_area", {"base": 10, "height": 5, "unit": "Units"}),
                                         call("calculate_triangle_area", {"base": 10, "height": 5.0})],
                                        [call("math.factorial", {"number": 5}), call("math_factorial", {"number": 5})]])
    assert [[v["correct"] for v in row] for row in verdicts] == [[True, False], [True, False]]
    # the training loader reads the same files
    from rlkit.tasks.toolcall import load_tool_rows

    train = load_tool_rows(bfcl_v4)
    assert '"name": "math.factorial", "parameters": {"number": 5}' in train[1]["ground_truth"]


def test_bfcl_v4_missing_answers_are_clear_errors(bfcl_v4, tmp_path):
    lone = write_lines(tmp_path / "other" / "BFCL_v4_simple_python.json", QUESTIONS)
    with pytest.raises(DataError, match=r"possible_answer/BFCL_v4_simple_python\.json.*does not exist"):
        load_benchmark("toolcall", lone)
    write_lines(bfcl_v4.parent / "possible_answer" / bfcl_v4.name, ANSWERS[:1])
    with pytest.raises(DataError, match=r"record 1: key 'id': 'simple_python_0' has no entry in .*possible_answer"):
        load_benchmark("toolcall", bfcl_v4)
    # irrelevance files come without answers: no call is expected
    irrelevance = write_lines(tmp_path / "BFCL_v4_irrelevance.json", [dict(QUESTIONS[1], id="irrelevance_0")])
    rows = load_benchmark("toolcall", irrelevance)
    assert rows[0]["answer"] == [] and rows[0]["category"] == "irrelevance"


def test_underscore_to_dot_is_an_explicit_option(bfcl_v4):
    rows = load_benchmark("toolcall", bfcl_v4, underscore_to_dot=True)
    system = rows[1]["prompt"][0]["content"]
    assert '"name": "math_factorial"' in system and "math.factorial" not in system
    verdicts = judge("toolcall", rows[1:], [[call("math_factorial", {"number": 5}), call("math.factorial", {"number": 5})]])
    assert [v["correct"] for v in verdicts[0]] == [True, False]
    with pytest.raises(ValueError, match="underscore_to_dot applies to the toolcall benchmark only"):
        load_benchmark("gsm8k", bfcl_v4, underscore_to_dot=True)
    with pytest.raises(ValueError, match="underscore_to_dot"):
        check_specs([{"benchmark": "arith", "underscore_to_dot": True}])
    assert check_specs([{"benchmark": "toolcall", "data": "x", "underscore_to_dot": True}])[0]["underscore_to_dot"]


def test_bfcl_gold_parameter_the_function_does_not_declare(tmp_path, caplog):
    record = dict(QUESTIONS[1], ground_truth=[{"math.factorial": {"number": [5], "precise": [True]}}])
    rows = load_benchmark("toolcall", write_lines(tmp_path / "bad.json", [record]))
    assert rows[0]["undeclared"] == ["math.factorial.precise"]
    assert "gold parameters their function does not declare" in caplog.text
    verdicts = judge("toolcall", rows, [[call("math.factorial", {"number": 5, "precise": True}),
                                         call("math.factorial", {"number": 5})]])
    assert [v["correct"] for v in verdicts[0]] == [False, False]


# ---- Spider execution accuracy ------------------------------------------------------------------

@pytest.fixture(scope="module")
def concert(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("spider") / "concert.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript("CREATE TABLE singer (id INTEGER PRIMARY KEY, name TEXT, country TEXT, age INTEGER);"
                       "CREATE TABLE big (id INTEGER PRIMARY KEY, v INTEGER);")
    conn.executemany("INSERT INTO singer VALUES (?, ?, ?, ?)", [
        (1, "Ann", "France", 30), (2, "Bob", "France", 41), (3, "Cid", "Spain", 25), (4, "Dee", "Spain", 52)])
    conn.executemany("INSERT INTO big VALUES (?, ?)", [(i, i % 3) for i in range(100)])
    conn.commit()
    conn.close()
    return path


def fence(sql: str) -> str:
    return f"```sql\n{sql}\n```"


def spider_row(gold: str, db: Path, hardness: str = "easy") -> dict:
    return {"id": gold, "gold_sql": gold, "db_path": str(db), "answer": gold, "category": hardness,
            "groups": {"hardness": hardness}}


def test_spider_official_and_strict_accuracy(concert):
    names = "SELECT name, age FROM singer WHERE country = 'France'"
    countries = "SELECT country FROM singer"
    rows = [spider_row(names, concert), spider_row(countries, concert, "medium"), spider_row(names, concert, "hard")]
    completions = [[fence("SELECT age, name FROM singer WHERE country = 'France'")],   # columns swapped
                   [fence("SELECT DISTINCT country FROM singer")],                     # DISTINCT
                   [fence("SELECT name, age FROM singer WHERE country = 'Spain'")]]     # wrong
    verdicts = judge("spider", rows, completions)
    got = [(v[0]["correct"], v[0]["correct_strict"]) for v in verdicts]
    assert got == [(True, False), (True, False), (False, False)]
    assert verdicts[0][0]["reason"] == "same result up to column order and DISTINCT"
    records = [{"samples": v, "groups": r["groups"]} for r, v in zip(rows, verdicts)]
    metrics = summarize(records)
    assert metrics["accuracy"] == pytest.approx(2 / 3) and metrics["accuracy_strict"] == 0.0
    table = summary_markdown("spider", metrics, records)
    assert "| accuracy_strict | 0.0% |" in table
    assert "| hardness | problems | accuracy | accuracy_strict |" in table
    assert table.index("| easy |") < table.index("| medium |") < table.index("| hard |")


def test_spider_result_over_the_row_cap_is_never_counted_wrong(concert, monkeypatch):
    from rewards.sql_sandbox import SQLSandbox

    rows = [spider_row("SELECT id, v FROM big WHERE id < 30", concert), spider_row("SELECT id, v FROM big", concert)]
    completions = [[fence("SELECT v, id FROM big WHERE id < 30 ORDER BY id DESC")], [fence("SELECT v, id FROM big")]]
    monkeypatch.setattr(rewards.sql_exec, "FULL_MAX_ROWS", 50)  # a second run fetches 50 rows instead of 10
    with SQLSandbox(timeout_s=5.0, max_rows=10, workers=1) as sandbox:
        verdicts = judge("spider", rows, completions, sandbox=sandbox)
    assert verdicts[0][0]["correct"] is True                   # 30 rows: run again and compared in full
    assert verdicts[1][0]["correct"] is None                   # 100 rows: longer than either cap, not scored
    assert "not scored" in verdicts[1][0]["reason"]
    metrics = summarize([{"samples": v, "groups": {}} for v in verdicts])
    assert metrics["n"] == 1 and metrics["skipped"] == 1 and metrics["accuracy"] == 1.0
