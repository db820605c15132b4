"""Pure parts of ``rlkit eval``: pass@k, maj@k, summaries, Spider hardness, the BFCL AST checker."""
from __future__ import annotations

import math
from itertools import combinations

import pytest

from rlkit.eval.metrics import ks_for, maj_at_k, majority_vote, mean_pass_at_k, metric_slug, pass_at_k, summarize
from rlkit.eval.spider_hardness import classify, hardness_counts, spider_hardness
from rlkit.eval.toolcall_ast import (
    call_problems,
    call_shape,
    canonical_calls,
    check_prediction,
    exact_allowed,
    match_calls,
    normalise_string,
    undeclared_gold_params,
)

# ---- pass@k ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "c", "k", "expected"), [
    (5, 2, 1, 0.4), (5, 2, 2, 0.7), (4, 0, 1, 0.0), (4, 0, 4, 0.0), (4, 4, 1, 1.0), (4, 4, 4, 1.0),
    (3, 1, 3, 1.0), (10, 3, 5, 1 - 21 / 252), (1, 1, 1, 1.0), (1, 0, 1, 0.0),
])
def test_pass_at_k_hand_values(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_equals_the_subset_definition():
    # 1 - C(n-c, k)/C(n, k) is the share of k-subsets holding a correct sample
    for n in range(1, 8):
        for c in range(n + 1):
            for k in range(1, n + 1):
                subsets = list(combinations([True] * c + [False] * (n - c), k))
                share = sum(any(s) for s in subsets) / len(subsets)
                assert pass_at_k(n, c, k) == pytest.approx(share, abs=1e-12)


def test_pass_at_k_is_stable_for_large_n():
    value = pass_at_k(10_000, 3, 100)
    assert math.isfinite(value)
    assert value == pytest.approx(1 - math.comb(9_997, 100) / math.comb(10_000, 100), rel=1e-9)


@pytest.mark.parametrize(("n", "c", "k"), [(3, 1, 4), (3, 1, 0), (3, 4, 1), (3, -1, 1)])
def test_pass_at_k_rejects_bad_arguments(n, c, k):
    with pytest.raises(ValueError, match="pass@k"):
        pass_at_k(n, c, k)


def test_mean_pass_at_k_and_ks():
    assert mean_pass_at_k([(5, 2), (5, 0)], 1) == pytest.approx(0.2)
    assert mean_pass_at_k([], 1) == 0.0
    assert ks_for(1) == [1]
    assert ks_for(8) == [1, 2, 4, 8]
    assert ks_for(5) == [1, 2, 4, 5]


# ---- maj@k -------------------------------------------------------------------------------------

def test_majority_vote_counts_and_breaks_ties_by_first_occurrence():
    assert majority_vote(["3", "5", "5", "3", "5"]) == 1
    assert majority_vote(["3", "5", "5", "3"]) == 0         # tie: "3" came first
    assert majority_vote(["7", None, None, "7"]) == 0       # None does not vote
    assert majority_vote([None, "2", None]) == 1
    assert majority_vote([None, None]) is None
    assert majority_vote([]) is None


def test_majority_vote_with_an_equivalence():
    from rewards.math import is_equivalent

    answers = ["0.5", "1/2", "\\frac{1}{2}", "2", "2"]
    assert majority_vote(answers, is_equivalent) == 0
    assert majority_vote(answers) == 3                        # plain strings: "2" wins


def test_maj_at_k_verdicts():
    assert maj_at_k(["4", "5", "4"], [True, False, True]) is True
    assert maj_at_k(["5", "4", "5"], [False, True, False]) is False
    assert maj_at_k(["5", "4"], [False, True]) is False       # tie goes to the first answer
    assert maj_at_k([None, None], [False, False]) is False
    with pytest.raises(ValueError):
        maj_at_k(["1"], [True, False])


def _record(verdicts, votes=None, groups=None):
    votes = votes or [None] * len(verdicts)
    return {"samples": [{"correct": c, "vote": v, "tokens": 3} for c, v in zip(verdicts, votes)],
            "groups": groups or {}}


def test_summarize_greedy_and_breakdowns():
    records = [_record([True], groups={"level": "1"}), _record([False], groups={"level": "1"}),
               _record([True], groups={"level": "2"}), _record([None], groups={"level": "2"})]
    metrics = summarize(records)
    assert metrics["accuracy"] == pytest.approx(2 / 3)
    assert metrics["n"] == 3 and metrics["skipped"] == 1
    assert metrics["accuracy_by_level/1"] == 0.5
    assert metrics["accuracy_by_level/2"] == 1.0
    assert "pass@1" not in metrics and not any(k.startswith("maj@") for k in metrics)
    assert records[3]["accuracy"] is None


def test_summarize_sampled():
    records = [_record([True, False, False, True], ["1", "2", "2", "1"]),   # tie -> "1" (correct)
               _record([False, False, True, False], ["3", "3", "4", None]),
               _record([False] * 4, ["9"] * 4)]
    metrics = summarize(records)
    assert metrics["accuracy"] == pytest.approx((0.5 + 0.25 + 0) / 3)
    assert metrics["pass@1"] == pytest.approx(metrics["accuracy"])
    assert metrics["pass@2"] == pytest.approx((pass_at_k(4, 2, 2) + pass_at_k(4, 1, 2)) / 3)
    assert metrics["pass@4"] == pytest.approx(2 / 3)
    assert metrics["maj@4"] == pytest.approx(1 / 3)
    assert [r["majority"] for r in records] == [True, False, False]


def test_unscored_samples_are_left_out_not_counted_wrong():
    records = [{"samples": [{"correct": True, "vote": "a"}, {"correct": None, "vote": None},
                            {"correct": False, "vote": "b"}], "groups": {}},
               {"samples": [{"correct": None}, {"correct": None}, {"correct": None}], "groups": {}}]
    metrics = summarize(records)
    assert records[0]["accuracy"] == 0.5 and metrics["accuracy"] == 0.5
    assert metrics["n"] == 1 and metrics["skipped"] == 1
    assert metrics["pass@2"] == 1.0 and "maj@2" in metrics


def test_spider_hardness_in_its_natural_order():
    from rlkit.eval.report import summary_markdown

    levels = ["extra", "hard", "medium", "easy", "medium", "extra"]
    records = [_record([i % 2 == 0], ["x"], {"hardness": level}) for i, level in enumerate(levels)]
    metrics = summarize(records)
    assert [k for k in metrics if k.startswith("accuracy_by_hardness/")] == [
        f"accuracy_by_hardness/{k}" for k in ("easy", "medium", "hard", "extra")]
    table = summary_markdown("spider", metrics, records)
    assert table.index("| easy |") < table.index("| medium |") < table.index("| hard |") < table.index("| extra |")
    # other fields: numbers in numeric order, then names alphabetically
    from rlkit.eval.metrics import breakdown

    mixed = [_record([True], ["x"], {"level": v}) for v in ("b", "10", "a", "9")]
    summarize(mixed)
    assert list(breakdown(mixed, "level")) == ["9", "10", "a", "b"]


def test_metric_slug():
    assert metric_slug("Counting & Probability") == "counting_probability"
    assert metric_slug("Level 5") == "level_5"
    assert metric_slug("") == "none"


# ---- Spider hardness ---------------------------------------------------------------------------

HAND_CLASSIFIED = [
    ("SELECT count(*) FROM singer", "easy"),
    ("SELECT DISTINCT country FROM singer WHERE age > 20", "easy"),
    ("SELECT name, country, age FROM singer ORDER BY age DESC", "medium"),
    ("SELECT avg(age), min(age), max(age) FROM singer WHERE country = 'France'", "medium"),
    ("SELECT country, count(*) FROM singer GROUP BY country", "medium"),
    ("SELECT song_name, song_release_year FROM singer ORDER BY age LIMIT 1", "medium"),
    ("SELECT name FROM singer WHERE name LIKE '%Hey%'", "medium"),
    ("SELECT name FROM singer WHERE name LIKE '%Hey%' OR age < 20", "hard"),
    ("SELECT song_name FROM singer WHERE age > (SELECT avg(age) FROM singer)", "hard"),
    ("SELECT name FROM stadium WHERE stadium_id NOT IN (SELECT stadium_id FROM concert)", "hard"),
    ("SELECT country FROM singer WHERE age > 40 INTERSECT SELECT country FROM singer WHERE age < 30", "hard"),
    (("SELECT T2.name FROM singer_in_concert AS T1 JOIN singer AS T2 ON T1.singer_id = T2.singer_id "
     "JOIN concert AS T3 ON T1.concert_id = T3.concert_id WHERE T3.year = 2014"), "hard"),
    (("SELECT T2.name, T2.capacity FROM concert AS T1 JOIN stadium AS T2 ON T1.stadium_id = T2.stadium_id "
     "WHERE T1.year >= 2014 GROUP BY T2.stadium_id ORDER BY count(*) DESC LIMIT 1"), "extra"),
    (("SELECT name FROM singer WHERE age > (SELECT avg(age) FROM singer) "
     "UNION SELECT name FROM singer WHERE country = 'France'"), "extra"),
]


@pytest.mark.parametrize(("sql", "level"), HAND_CLASSIFIED)
def test_spider_hardness_hand_classified(sql, level):
    assert spider_hardness(sql) == level


def test_spider_hardness_counts_and_rule():
    counts = hardness_counts("SELECT a, b FROM t JOIN u ON t.x = u.x WHERE a LIKE 'x%' OR b = 1 GROUP BY a, b")
    # component1: WHERE, GROUP BY, one join, one OR, one LIKE; others: 2 columns, 2 conditions, 2 group keys
    assert (counts.component1, counts.component2, counts.others) == (5, 0, 3)
    assert classify(counts) == "extra"
    assert spider_hardness("this is not sql at all (") == "unknown"


def test_spider_hardness_on_the_shared_dev_sample():
    import json
    from collections import Counter
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "shared" / "data" / "spider" / "dev_questions.json"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    levels = Counter(spider_hardness(r["query"]) for r in json.loads(path.read_text()))
    assert levels["unknown"] == 0
    total = sum(levels.values())
    # Spider's dev set is about 24% easy, 43% medium, 17% hard, 16% extra (Yu et al. 2018)
    for level, share in (("easy", 0.24), ("medium", 0.43), ("hard", 0.17), ("extra", 0.16)):
        assert abs(levels[level] / total - share) < 0.08, levels


# ---- BFCL AST checking (bfcl-eval's ast_checker rules; tests/test_bfcl_agreement.py compares) ---------

FUNCTIONS = [
    {"name": "get_weather", "parameters": {"type": "dict", "required": ["city"], "properties": {
        "city": {"type": "string"}, "unit": {"type": "string"}, "days": {"type": "integer"}}}},
    {"name": "math.add", "parameters": {"type": "dict", "required": ["a", "b"], "properties": {
        "a": {"type": "float"}, "b": {"type": "float"}, "opts": {"type": "dict"},
        "xs": {"type": "array", "items": {"type": "float"}}, "expr": {"type": "string"}}}},
]
GOLD_WEATHER = {"get_weather": {"city": ["New York, NY", "NYC"], "unit": ["celsius", ""], "days": [3]}}


def one(params: dict, gold: dict = GOLD_WEATHER, name: str | None = None, **kwargs) -> bool:
    """check_prediction's verdict for one predicted call against one gold call."""
    call = {"name": name or next(iter(gold)), "parameters": params}
    return check_prediction([call], [gold], FUNCTIONS, **kwargs)[0]


def test_strings_are_standardised_as_bfcl_does():
    # BFCL removes spaces and , . / - _ * ^, lower-cases, and writes ' as "; nothing else
    assert normalise_string("New York, NY") == "newyorkny"
    assert normalise_string("It's 3/4 A_B*C^D-E.!") == 'it"s34abcde!'
    assert one({"city": "NewYork,NY", "days": 3})                        # spaces and commas ignored
    assert one({"city": "new york ny", "days": 3})
    assert not one({"city": "New York!", "days": 3}, {"get_weather": {"city": ["New York"], "days": [3]}})
    gold_expr = {"math.add": {"a": [1.0], "b": [2.0], "expr": ["3x**2 + 2x - 1"]}}
    assert one({"a": 1.0, "b": 2.0, "expr": "3x^2+2x-1"}, gold_expr)     # * and ^ and spaces go
    assert not one({"a": 1.0, "b": 2.0, "expr": "3x**2 - 2x + 1"}, gold_expr)  # + and - are not the same
    assert not one({"city": "units!", "days": 3}, {"get_weather": {"city": ["units"], "days": [3]}})


def test_types_as_bfcl_checks_them():
    assert not one({"city": "NYC", "days": 3.0})                          # a float for an integer
    assert not one({"city": "NYC", "days": True})                         # a bool is not an integer
    assert not one({"city": "NYC", "days": "3"})
    add = {"math.add": {"a": [1.0], "b": [2.5], "xs": [[1.0, 2.0], ""]}}
    assert one({"a": 1, "b": 2.5}, add)                                   # an int for a float: top level only
    assert not one({"a": 1.0, "b": 2}, add)                               # 2 -> 2.0 != 2.5
    assert one({"a": 1.0, "b": 2.5, "xs": [1.0, 2.0]}, add)
    assert not one({"a": 1.0, "b": 2.5, "xs": [1, 2]}, {"math.add": {"a": [1.0], "b": [2.5], "xs": [[1.0, 2.0]]}})
    assert one({"a": 1.0, "b": 2.5, "xs": []}, add)                       # "" allows the empty list
    # a gold value of another type than the schema's is a "variable": compared as it is
    assert one({"a": 1.0, "b": 2.5}, {"math.add": {"a": [1], "b": [2.5]}})
    # dict values are compared with == (BFCL checks no types inside dicts), strings standardised
    opts = {"math.add": {"a": [1.0], "b": [2.5], "opts": [{"k": [2.0], "mode": ["Fast Mode", ""]}]}}
    assert one({"a": 1.0, "b": 2.5, "opts": {"k": 2, "mode": "fast-mode"}}, opts)
    assert one({"a": 1.0, "b": 2.5, "opts": {"k": 2}}, opts)
    assert not one({"a": 1.0, "b": 2.5, "opts": {"k": 2, "other": 1}}, opts)
    assert not one({"a": 1.0, "b": 2.5, "opts": {"mode": "fast"}}, opts)


def test_dotted_names_only_with_underscore_to_dot():
    gold = {"math.add": {"a": [1.0], "b": [2.0]}}
    assert one({"a": 1.0, "b": 2.0}, gold, "math.add")
    assert not one({"a": 1.0, "b": 2.0}, gold, "math_add")               # off by default, as in BFCL
    assert one({"a": 1.0, "b": 2.0}, gold, "math_add", underscore_to_dot=True)
    assert not one({"a": 1.0, "b": 2.0}, gold, "math.add", underscore_to_dot=True)  # BFCL expects the rewrite


def test_undeclared_gold_parameter_is_never_accepted():
    gold = {"get_weather": {"city": ["NYC"], "zip": ["10001", ""]}}
    assert not one({"city": "NYC", "zip": "10001"}, gold)
    assert one({"city": "NYC"}, gold)
    assert undeclared_gold_params([gold, GOLD_WEATHER], FUNCTIONS) == ["get_weather.zip"]


def test_call_checks():
    good = {"name": "get_weather", "parameters": {"city": "nyc", "days": 3}}
    assert call_problems(good, GOLD_WEATHER, FUNCTIONS) == []
    assert call_problems({"name": "get_weather", "parameters": {"city": "NYC", "days": 3, "unit": "Celsius"}},
                         GOLD_WEATHER, FUNCTIONS) == []
    missing = call_problems({"name": "get_weather", "parameters": {"days": 3}}, GOLD_WEATHER, FUNCTIONS)
    assert missing == ["get_weather: required parameter 'city' missing"]
    assert call_problems({"name": "get_weather", "parameters": {"city": "NYC"}}, GOLD_WEATHER, FUNCTIONS) == [
        "get_weather: parameter 'days' missing"]
    unknown = call_problems({"name": "get_weather", "parameters": {"city": "NYC", "days": 3, "zip": "1"}},
                            GOLD_WEATHER, FUNCTIONS)
    assert unknown == ["get_weather: unknown parameter 'zip'"]
    unexpected = call_problems({"name": "math.add", "parameters": {"a": 1, "b": 2, "xs": [1.0]}},
                               {"math.add": {"a": [1.0], "b": [2.0]}}, FUNCTIONS)
    assert unexpected == ["math.add: unexpected parameter 'xs'"]
    wrong = call_problems({"name": "get_weather", "parameters": {"city": "Boston", "days": 3}}, GOLD_WEATHER,
                          FUNCTIONS)
    assert len(wrong) == 1 and "'city'" in wrong[0]
    assert call_problems({"name": "get_forecast", "parameters": {"city": "NYC"}}, GOLD_WEATHER, FUNCTIONS)
    # without a schema the gold call alone says which parameters exist and their types
    assert call_problems({"name": "f", "parameters": {"n": 2}}, {"f": {"n": [2]}}) == []
    assert call_problems({"name": "f", "parameters": {"n": 2.0}}, {"f": {"n": [2]}})
    assert exact_allowed({"a": 1, "b": {"c": 2}}) == {"a": [1], "b": [{"c": 2}]}
    assert exact_allowed([1, {"b": 2}]) == [1, {"b": [2]}]


def test_parallel_calls_pair_greedily_as_bfcl():
    golds = [{"math.add": {"a": [1.0], "b": [2.0]}}, {"math.add": {"a": [3.0], "b": [4.0]}}, GOLD_WEATHER]
    preds = [{"name": "get_weather", "parameters": {"city": "new york, ny", "days": 3}},
             {"name": "math.add", "parameters": {"a": 3.0, "b": 4}},
             {"name": "math.add", "parameters": {"a": 1.0, "b": 2}}]
    assert match_calls(preds, golds, FUNCTIONS) is None
    assert check_prediction(preds, golds, FUNCTIONS) == (True, "match")
    assert match_calls(preds[:2], golds, FUNCTIONS) == 0
    duplicate = [preds[0], preds[1], preds[1]]
    assert match_calls(duplicate, golds, FUNCTIONS) == 0
    # BFCL pairs greedily: gold 0 takes pred 0 (v=1 fits both golds), and gold 1 finds nothing left
    loose = [{"x": {"v": [1, 2]}}, {"x": {"v": [1]}}]
    calls = [{"name": "x", "parameters": {"v": 1}}, {"name": "x", "parameters": {"v": 2}}]
    assert match_calls(calls, loose) == 1
    assert check_prediction(calls, loose)[0] is False
    assert check_prediction(calls[::-1], loose)[0] is True


def test_irrelevance_and_unparseable_predictions():
    assert check_prediction(None, [])[0] is True
    assert check_prediction([], [])[0] is True
    assert check_prediction([{"name": "get_weather", "parameters": {"city": "x"}}], [])[0] is False
    assert check_prediction(None, [GOLD_WEATHER], FUNCTIONS)[0] is False
    assert check_prediction([], [GOLD_WEATHER], FUNCTIONS)[0] is False


def test_call_shape_and_vote_keys():
    weather = [FUNCTIONS[0]]
    assert call_shape([], FUNCTIONS) == "irrelevance"
    assert call_shape([GOLD_WEATHER], weather) == "simple"
    assert call_shape([GOLD_WEATHER], FUNCTIONS) == "multiple"
    assert call_shape([GOLD_WEATHER, GOLD_WEATHER], weather) == "parallel"
    assert call_shape([GOLD_WEATHER, {"math.add": {}}], FUNCTIONS) == "parallel_multiple"
    a = [{"name": "f", "parameters": {"x": "New York", "n": 1}}, {"name": "g", "parameters": {}}]
    b = [{"name": "g", "parameters": {}}, {"name": "f", "parameters": {"n": 1.0, "x": "newyork"}}]
    assert canonical_calls(a) == canonical_calls(b)
    assert canonical_calls([]) == "[]" and canonical_calls(None) is None
