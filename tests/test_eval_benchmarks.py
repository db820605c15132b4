"""Benchmark loaders and judges of ``rlkit eval``: gold answers as predictions score 100%, and
perturbed answers score what the perturbation implies."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from rlkit.data import DataError
from rlkit.eval.benchmarks import judge, load_benchmark, vote_equal
from rlkit.eval.metrics import summarize

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
INT = re.compile(r"^-?\d+$")


def shared(relative: str) -> Path:
    path = SHARED / relative
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    return path


def score(name: str, rows: list[dict], completions: list[list[str]]) -> tuple[dict, list[dict]]:
    verdicts = judge(name, rows, completions)
    records = [{"samples": v, "groups": r["groups"]} for r, v in zip(rows, verdicts)]
    return summarize(records, vote_equal(name)), records


def perturb_every_other(rows: list[dict]) -> tuple[list[str], int]:
    """Gold answers with 1 added to every other integer answer; (answers, how many changed)."""
    answers, changed = [], 0
    for i, row in enumerate(rows):
        gold = row["answer"]
        if i % 2 == 1 and INT.match(gold):
            answers.append(str(int(gold) + 1))
            changed += 1
        else:
            answers.append(gold)
    return answers, changed


# ---- math-like ---------------------------------------------------------------------------------

def test_gsm8k_shared_sample_gold_and_perturbed():
    rows = load_benchmark("gsm8k", shared("gsm8k/train.jsonl"), limit=2000)
    assert len(rows) == 2000 and all(r["answer"] and "####" not in r["answer"] for r in rows)
    assert rows[0]["answer"] == "72" and rows[0]["prompt"].endswith("\\boxed{}.")
    metrics, _ = score("gsm8k", rows, [[f"Some reasoning.\n#### {r['answer']}"] for r in rows])
    assert metrics["accuracy"] == 1.0 and metrics["n"] == 2000
    answers, changed = perturb_every_other(rows)
    assert changed == 1000  # every GSM8K answer is an integer
    metrics, _ = score("gsm8k", rows, [[f"So the answer is {a}."] for a in answers])
    assert metrics["accuracy"] == pytest.approx(0.5)


def test_math_shared_sample_gold_and_perturbed():
    rows = load_benchmark("math", shared("math/math_4500.jsonl"))
    assert len(rows) == 4500
    assert {r["groups"]["level"] for r in rows} == {"1", "2", "3", "4", "5"}
    assert len({r["groups"]["subject"] for r in rows}) == 7
    metrics, _ = score("math", rows, [[f"Thus the answer is $\\boxed{{{r['answer']}}}$."] for r in rows])
    assert metrics["accuracy"] == 1.0
    assert metrics["accuracy_by_level/5"] == 1.0 and metrics["accuracy_by_subject/counting_probability"] == 1.0
    answers, changed = perturb_every_other(rows)
    assert changed > 1000
    metrics, records = score("math", rows, [[f"\\boxed{{{a}}}"] for a in answers])
    assert metrics["accuracy"] == pytest.approx(1 - changed / len(rows))
    wrong = [i for i, r in enumerate(records) if not r["samples"][0]["correct"]]
    assert all(i % 2 == 1 for i in wrong)


def test_math_amc_aime_records_with_key_variants(tmp_path):
    math500 = tmp_path / "math500.jsonl"
    math500.write_text(json.dumps({"problem": "Compute 14/3.", "solution": "... \\boxed{\\frac{14}{3}}",
                                   "answer": "\\frac{14}{3}", "subject": "Algebra", "level": 4,
                                   "unique_id": "test/algebra/1.json"}) + "\n")
    rows = load_benchmark("math", math500)
    assert rows[0]["answer"] == "\\frac{14}{3}" and rows[0]["groups"] == {"level": "4", "subject": "Algebra"}
    assert rows[0]["id"] == "test/algebra/1.json"
    metrics, _ = score("math", rows, [["It is 14/3, i.e. \\boxed{\\dfrac{14}{3}}"]])
    assert metrics["accuracy"] == 1.0

    amc = tmp_path / "amc.json"
    amc.write_text(json.dumps([{"id": 0, "problem": "p0", "answer": 142.0},
                               {"Question": "p1", "expected_answer": "7", "year": 2023},
                               {"question": "p2", "solution": "so \\boxed{12}."}]))
    rows = load_benchmark("amc", amc, instruction="")
    assert [r["answer"] for r in rows] == ["142", "7", "12"]
    assert [r["prompt"] for r in rows] == ["p0", "p1", "p2"]
    metrics, _ = score("amc", rows, [["\\boxed{142}"], ["\\boxed{8}"], ["The answer is 12."]])
    assert metrics["accuracy"] == pytest.approx(2 / 3)

    aime = tmp_path / "aime.jsonl"
    aime.write_text("\n".join(json.dumps({"ID": f"2024-I-{i}", "Problem": f"p{i}", "Answer": i, "Year": 2024})
                              for i in range(3)))
    rows = load_benchmark("aime", aime, limit=2)
    assert [(r["id"], r["answer"], r["groups"]) for r in rows] == [("2024-I-0", "0", {"year": "2024"}),
                                                                   ("2024-I-1", "1", {"year": "2024"})]


def test_bad_records_name_file_row_and_key(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"problem": "p", "answer": "1"}) + "\n" + json.dumps({"problem": "q"}) + "\n")
    with pytest.raises(DataError, match=r"bad\.jsonl, record 2: no answer .*'answer'.*'solution'"):
        load_benchmark("aime", bad)
    noprob = tmp_path / "noprob.jsonl"
    noprob.write_text(json.dumps({"text": "p", "answer": "1"}) + "\n")
    with pytest.raises(DataError, match=r"noprob\.jsonl, record 1: no problem .*'problem'.*the row has 'text'"):
        load_benchmark("math", noprob)
    gsm = tmp_path / "gsm.jsonl"
    gsm.write_text(json.dumps({"question": "q", "answer": "no final line"}) + "\n")
    with pytest.raises(DataError, match=r"gsm\.jsonl, record 1: key 'answer' has no final answer"):
        load_benchmark("gsm8k", gsm)
    nobox = tmp_path / "nobox.jsonl"
    nobox.write_text(json.dumps({"problem": "q", "solution": "it is 3"}) + "\n")
    with pytest.raises(DataError, match=r"nobox\.jsonl, record 1: key 'solution' has no \\boxed"):
        load_benchmark("math", nobox)
    with pytest.raises(DataError, match="needs a data file"):
        load_benchmark("gsm8k", None)
    with pytest.raises(ValueError, match="unknown benchmark 'mmlu'"):
        load_benchmark("mmlu", "x.jsonl")


def test_arith_gold_and_majority_vote():
    rows = load_benchmark("arith", limit=20, levels=[1, 4])
    assert len(rows) == 20 and {r["groups"]["level"] for r in rows} == {"1", "4"}
    metrics, _ = score("arith", rows, [[r["answer"]] for r in rows])
    assert metrics["accuracy"] == 1.0 and metrics["accuracy_by_level/4"] == 1.0
    # three samples each: right, wrong, right -> maj@3 right; pass@1 two thirds
    samples = [[r["answer"], str(int(r["answer"]) + 1), f"{r['answer']}.0"] for r in rows]
    metrics, _ = score("arith", rows, samples)
    assert metrics["maj@3"] == 1.0 and metrics["pass@1"] == pytest.approx(2 / 3) and metrics["pass@3"] == 1.0


# ---- spider ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sql_demo(tmp_path_factory):
    from rlkit.tasks.sql_demo import build_sql_demo

    return build_sql_demo(tmp_path_factory.mktemp("sql") / "demo")


def fence(sql: str) -> str:
    return f"Let me think.\n```sql\n{sql}\n```"


def test_spider_gold_queries_score_100(sql_demo):
    questions, tables, db_dir = sql_demo
    rows = load_benchmark("spider", questions, tables=tables, db_dir=db_dir)
    assert rows and all(Path(r["db_path"]).is_file() for r in rows)
    assert {r["groups"]["hardness"] for r in rows} >= {"easy", "medium"}
    metrics, _ = score("spider", rows, [[fence(r["answer"])] for r in rows])
    assert metrics["accuracy"] == 1.0 and metrics["n"] == len(rows)


def test_spider_perturbations(sql_demo):
    questions, tables, db_dir = sql_demo
    rows = load_benchmark("spider", questions, tables=tables, db_dir=db_dir)
    by_sql = {r["answer"]: r for r in rows}
    ordered = by_sql["SELECT name FROM customers WHERE age > 20 ORDER BY age DESC"]
    unordered = by_sql["SELECT name FROM customers WHERE city = 'Lyon'"]
    counted = by_sql["SELECT count(*) FROM customers WHERE city = 'Lyon'"]
    picked = [ordered, unordered, unordered, counted, counted, ordered]
    completions = [
        [fence("SELECT name FROM customers WHERE age > 20 ORDER BY age ASC")],      # order matters: wrong
        [fence("SELECT name FROM customers WHERE city = 'Lyon' ORDER BY name DESC")],  # multiset: right
        [fence("SELECT name FROM customers WHERE city = 'Lyon' LIMIT 1")],          # a row missing: wrong
        [fence("SELEC count(*) FROM customers")],                                   # error: wrong
        ["The answer is 7."],                                                       # no SQL: wrong
        [fence("SELECT c.name FROM customers AS c WHERE c.age > 20 ORDER BY c.age DESC, c.id")],
    ]
    metrics, records = score("spider", picked, completions)
    verdicts = [r["samples"][0]["correct"] for r in records]
    assert verdicts[:5] == [False, True, False, False, False]
    assert records[3]["samples"][0]["reason"].startswith("error:")
    assert records[4]["samples"][0]["reason"] == "no SQL found"
    assert metrics["accuracy"] == pytest.approx(sum(verdicts) / 6)
    # maj@k votes by execution result: two spellings of the gold outvote two different wrong ones
    samples = [fence("SELECT count(*) FROM customers WHERE city = 'Oslo'"),
               fence(counted["answer"]), fence("SELECT count(id) FROM customers WHERE city='Lyon'"),
               fence("SELECT 0")]
    metrics, records = score("spider", [counted], [samples])
    assert records[0]["majority"] is True and metrics["pass@1"] == 0.5


def test_spider_failing_gold_is_not_scored_and_inputs_are_checked(sql_demo, tmp_path):
    _, tables, db_dir = sql_demo
    questions = tmp_path / "questions.json"
    questions.write_text(json.dumps([{"db_id": "shop", "question": "q1", "query": "SELECT nope FROM customers"},
                                     {"db_id": "shop", "question": "q2", "query": "SELECT count(*) FROM orders"}]))
    rows = load_benchmark("spider", questions, tables=tables, db_dir=db_dir)
    metrics, records = score("spider", rows, [[fence("SELECT 1")], [fence("SELECT count(*) FROM orders")]])
    assert records[0]["samples"][0]["correct"] is None and records[0]["accuracy"] is None
    assert metrics["skipped"] == 1 and metrics["n"] == 1 and metrics["accuracy"] == 1.0
    with pytest.raises(DataError, match="--db-dir"):
        load_benchmark("spider", questions, tables=tables)
    with pytest.raises(DataError, match="--tables"):
        load_benchmark("spider", questions, db_dir=db_dir)


# ---- tool calls --------------------------------------------------------------------------------

WEATHER = {"name": "get_weather", "description": "Weather forecast", "parameters": {
    "type": "dict", "required": ["city"], "properties": {
        "city": {"type": "string"}, "days": {"type": "integer"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}}}
CURRENCY = {"name": "convert_currency", "description": "Convert money", "parameters": {
    "type": "dict", "required": ["amount", "from_currency", "to_currency"], "properties": {
        "amount": {"type": "float"}, "from_currency": {"type": "string"}, "to_currency": {"type": "string"}}}}
HOTELS = {"name": "search_hotels", "description": "Find hotels", "parameters": {
    "type": "dict", "required": ["city"], "properties": {
        "city": {"type": "string"}, "stars": {"type": "integer"}, "amenities": {"type": "array"},
        "budget": {"type": "dict"}}}}

BFCL_RECORDS = [
    {"id": "simple_0", "question": [[{"role": "user", "content": "Weather in Paris for 3 days?"}]],
     "function": [WEATHER],
     "ground_truth": [{"get_weather": {"city": ["Paris", "Paris, France"], "days": [3], "unit": ["", "celsius"]}}]},
    {"id": "multiple_0", "question": [[{"role": "user", "content": "Convert 100 USD to EUR."}]],
     "function": [WEATHER, CURRENCY, HOTELS],
     "ground_truth": [{"convert_currency": {"amount": [100.0], "from_currency": ["USD"], "to_currency": ["EUR"]}}]},
    {"id": "parallel_0", "question": [[{"role": "user", "content": "Weather in Paris and in Tokyo?"}]],
     "function": [WEATHER],
     "ground_truth": [{"get_weather": {"city": ["Paris"], "days": ["", 1], "unit": [""]}},
                      {"get_weather": {"city": ["Tokyo"], "days": ["", 1], "unit": [""]}}]},
    {"id": "parallel_multiple_0",
     "question": [[{"role": "user", "content": "Rome: weather, 4-star hotels with pool and wifi, 50 GBP in JPY."}]],
     "function": [WEATHER, CURRENCY, HOTELS],
     "ground_truth": [{"get_weather": {"city": ["Rome"], "days": [""], "unit": [""]}},
                      {"search_hotels": {"city": ["Rome"], "stars": [4], "amenities": [["pool", "wifi"]],
                                         "budget": [{"max": [200, 200.0], "currency": ["EUR", ""]}, ""]}},
                      {"convert_currency": {"amount": [50], "from_currency": ["GBP"], "to_currency": ["JPY"]}}]},
    {"id": "irrelevance_0", "question": [[{"role": "user", "content": "Tell me a joke."}]],
     "function": [WEATHER], "ground_truth": []},
    {"question": "Weather in Oslo?", "function": [WEATHER], "ground_truth": [{"get_weather": {"city": ["Oslo"]}}]},
]


def calls_text(calls: list[dict]) -> str:
    if not calls:
        return "<think>No tool fits.</think>\n<response>Here is a joke.</response>"
    lines = "\n".join(json.dumps({"name": n, "parameters": p}) for n, p in calls)
    return f"<think>ok</think>\n<tool_call>\n{lines}\n</tool_call>"


@pytest.fixture
def bfcl_file(tmp_path):
    path = tmp_path / "bfcl.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in BFCL_RECORDS))
    return path


def test_toolcall_bfcl_gold_calls_score_100(bfcl_file):
    from rlkit.tasks.toolcall import bfcl_reference

    rows = load_benchmark("toolcall", bfcl_file)
    assert [r["category"] for r in rows] == ["simple", "multiple", "parallel", "parallel_multiple", "irrelevance",
                                             "simple"]
    assert rows[0]["prompt"][0]["role"] == "system" and "get_weather" in rows[0]["prompt"][0]["content"]
    metrics, _ = score("toolcall", rows, [[bfcl_reference(r["ground_truth"])] for r in BFCL_RECORDS])
    assert metrics["accuracy"] == 1.0
    assert metrics["accuracy_by_category/parallel_multiple"] == 1.0


def test_toolcall_perturbations(bfcl_file):
    rows = load_benchmark("toolcall", bfcl_file)
    weather = ("get_weather", {"city": "Paris", "days": 3})
    cases = [  # (row, calls, expected verdict)
        (0, [weather], True),
        (0, [("get_weather", {"city": "PARIS,france", "days": 3, "unit": "Celsius"})], True),  # BFCL's string rule
        (0, [("get_weather", {"city": "Paris, France!", "days": 3})], False),      # '!' is not ignored
        (0, [("get_weather", {"city": "Paris", "days": 3.0})], False),             # a float for an integer
        (0, [("get_weather", {"days": 3})], False),                                # required parameter dropped
        (0, [("get_weather", {"city": "Paris"})], False),                          # gold parameter dropped
        (0, [("get_weather", {"city": "Paris", "days": 3, "unit": "kelvin"})], False),
        (0, [("get_weather", {"city": "Paris", "days": 3, "hours": 2})], False),   # unknown parameter
        (0, [weather, weather], False),                                            # one call too many
        (1, [("convert_currency", {"amount": 100, "from_currency": "usd", "to_currency": "eur"})], True),
        (1, [("get_weather", {"city": "Paris"})], False),                          # wrong function
        (2, [("get_weather", {"city": "Tokyo"}), ("get_weather", {"city": "Paris", "days": 1})], True),  # swapped
        (2, [("get_weather", {"city": "Tokyo"}), ("get_weather", {"city": "Tokyo"})], False),
        (3, [("convert_currency", {"amount": 50.0, "from_currency": "GBP", "to_currency": "JPY"}),
             ("search_hotels", {"city": "rome", "stars": 4, "amenities": ["Pool", "WiFi"], "budget": {"max": 200}}),
             ("get_weather", {"city": "Rome"})], True),                            # any order, nested dict
        (3, [("convert_currency", {"amount": 50.0, "from_currency": "GBP", "to_currency": "JPY"}),
             ("search_hotels", {"city": "rome", "stars": 4, "amenities": ["wifi", "pool"]}),
             ("get_weather", {"city": "Rome"})], False),                           # list order matters
        (4, [], True),
        (4, [("get_weather", {"city": "Paris"})], False),                          # a call in irrelevance
        (5, [("get_weather", {"city": "oslo"})], True),
    ]
    picked = [rows[i] for i, _, _ in cases]
    metrics, records = score("toolcall", picked, [[calls_text(calls)] for _, calls, _ in cases])
    assert [r["samples"][0]["correct"] for r in records] == [want for _, _, want in cases]
    assert "required parameter 'city' missing" in records[4]["samples"][0]["reason"]
    assert metrics["accuracy"] == pytest.approx(sum(w for _, _, w in cases) / len(cases))
    # an unparseable block: wrong where calls are expected, "no call" for irrelevance
    broken = "<think>x</think>\n<tool_call>\nnot json\n</tool_call>"
    _, records = score("toolcall", [rows[0], rows[4]], [[broken], [broken]])
    assert [r["samples"][0]["correct"] for r in records] == [False, True]


def test_toolcall_bad_records(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(BFCL_RECORDS[0]) + "\n" + json.dumps({"question": "q", "answer": "a"}) + "\n")
    with pytest.raises(DataError, match=r"bad\.jsonl, record 2: neither a ToolRL record"):
        load_benchmark("toolcall", path)
    bad_gt = dict(BFCL_RECORDS[0], ground_truth=[{"get_weather": {"city": "Paris"}}])
    path.write_text(json.dumps(bad_gt) + "\n")
    with pytest.raises(DataError, match=r"bad\.jsonl, record 1: key 'ground_truth'.*'city'"):
        load_benchmark("toolcall", path)


def test_toolcall_toolrl_shared_sample():
    from rewards.toolrl import reference_calls

    path = shared("toolrl/rlla_sft.json")
    records = json.loads(path.read_text())
    rows = load_benchmark("toolcall", path)
    assert len(rows) == len(records)
    assert {r["category"] for r in rows} >= {"toolrl_simple", "toolrl_parallel", "toolrl_no_call"}
    # a few references are garbled JSON whose "parameters" their tool does not declare: not scored
    unscorable = [r["unscorable"] for r in rows]
    assert 0 < sum(unscorable) < 0.05 * len(rows)
    gold = [[calls_text([(c["name"], c["parameters"]) for c in reference_calls(r["output"])])] for r in records]
    metrics, _ = score("toolcall", rows, gold)
    assert metrics["accuracy"] == 1.0 and metrics["skipped"] == sum(unscorable)
    # drop the last parameter of every call that has one: exactly those rows turn wrong
    dropped, expected = [], []
    for record in records:
        calls = [(c["name"], dict(c["parameters"])) for c in reference_calls(record["output"])]
        changed = False
        for _, params in calls:
            keys = [k for k, v in params.items() if v != ""]  # "" would read as BFCL's "may be left out"
            if keys:
                params.pop(keys[-1])
                changed = True
        dropped.append([calls_text(calls)])
        expected.append(None if unscorable[len(expected)] else not changed)
    _, scored = score("toolcall", rows, dropped)
    assert [r["samples"][0]["correct"] for r in scored] == expected
