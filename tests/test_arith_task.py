"""Tests for the synthetic arithmetic task (rlkit.tasks.arith)."""
from __future__ import annotations

import hashlib
import json
import operator
import os
import random
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from rlkit.tasks import arith
from rlkit.tasks.arith import ARITH_LEVELS, arith_split, is_eval_question, make_problem

ALL_LEVELS = tuple(level for level, _ in ARITH_LEVELS)
_EXPR = re.compile(r"What is (\d+) ([-+*]) (\d+)\?")
_OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul}

# (level, seed) -> (question, hand-checked answer) for make_problem(random.Random(seed), level)
HAND_CHECKED = {
    (4, 0): ("Priya saves 72 dollars in May and 61 dollars in August. Then she spends 82 "
             "dollars on a backpack. How many dollars does she have left?", "51"),
    (4, 2): ("Liam has 33 stamps. He gets 52 more and hands out 42. How many stamps does he "
             "have now?", "43"),
    (4, 7): ("Ava is driving to a town 453 km away. She drives 32 km before lunch and 47 km "
             "after lunch. How many more km does she need to drive?", "374"),
    (4, 19): ("A bus has 17 passengers. At the first stop 5 people get off and 34 get on. "
              "How many passengers are on the bus now?", "46"),
    (5, 0): ("A car travels at 30 km per hour for 4 hours and then 37 km more. The whole trip "
             "is 291 km. How many km are left?", "134"),
    (5, 2): ("Liam buys 4 packs of stamps with 8 stamps in each pack. He gives 9 to Diego and "
             "then finds 20 more. How many stamps does he have now?", "43"),
    (5, 5): ("At the toy store, Zoe buys 2 yo-yos for 15 dollars each and a game for 17 "
             "dollars. She pays with 50 dollars. How much change in dollars does she get?",
             "3"),
    (5, 7): ("Ava bakes 2 trays of cookies with 6 cookies on each tray. She eats 2 and shares "
             "the rest equally among 2 friends. How many cookies does each friend get?", "5"),
    (5, 19): ("A farmer plants 11 rows of tomatoes with 5 plants in each row. 18 plants die "
              "and the farmer plants 8 new ones. How many plants are there now?", "45"),
}


def test_same_seed_same_rows():
    assert arith_split("train", 300, ALL_LEVELS, seed=7) == arith_split(
        "train", 300, ALL_LEVELS, seed=7)
    assert arith_split("train", 300, ALL_LEVELS, seed=7) != arith_split(
        "train", 300, ALL_LEVELS, seed=8)


def test_eval_split_fixed_and_disjoint_from_train():
    levels = ALL_LEVELS
    evals = [arith_split("eval", 2000, levels, seed=s) for s in (0, 1, 123)]
    assert evals[0] == evals[1] == evals[2]
    eval_questions = {row["question"] for row in evals[0]}
    assert len(eval_questions) == 2000                       # eval questions are distinct
    assert all(is_eval_question(q) for q in eval_questions)
    for seed in (0, 1):
        train = arith_split("train", 2000, levels, seed=seed)
        assert not eval_questions & {row["question"] for row in train}
    assert arith_split("eval", 500, levels) == evals[0][:500]  # shorter eval is a prefix


def test_eval_split_identical_in_another_process():
    code = ("import hashlib, json; from rlkit.tasks.arith import arith_split; "
            "rows = arith_split('eval', 200, (1, 2, 3, 4, 5)); "
            "print(hashlib.sha1(json.dumps(rows).encode()).hexdigest())")
    here = hashlib.sha1(json.dumps(arith_split("eval", 200, (1, 2, 3, 4, 5))).encode())
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[1],
                         env={**os.environ, "PYTHONHASHSEED": "12345"}).stdout.strip()
    assert out == here.hexdigest()


@pytest.mark.parametrize("level", [1, 2, 3])
def test_expression_answers_are_correct(level):
    for row in arith_split("train", 1000, (level,), seed=3):
        match = _EXPR.fullmatch(row["question"])
        assert match, row["question"]
        a, op, b = int(match[1]), match[2], int(match[3])
        assert row["answer"] == str(_OPS[op](a, b))
        assert int(row["answer"]) >= 0
        if level == 1:
            assert op == "+" and 10 <= a <= 99 and 10 <= b <= 99
        if level == 2:
            assert op in "+-" and 100 <= a <= 999 and 100 <= b <= 999
        if level == 3 and op == "*":
            assert 10 <= a <= 99 and 2 <= b <= 99
        if level == 3 and op != "*":
            assert 1000 <= a <= 9999 and 1000 <= b <= 9999


@pytest.mark.parametrize("level", [4, 5])
def test_word_problem_answers_are_nonnegative_integers(level):
    for row in arith_split("train", 2000, (level,), seed=5):
        assert re.fullmatch(r"\d+", row["answer"]), row
        assert row["question"].endswith("?")


def test_hand_checked_word_problems():
    for (level, seed), (question, answer) in HAND_CHECKED.items():
        row = make_problem(random.Random(seed), level)
        assert row == {"question": question, "answer": answer, "level": level}


def test_word_problem_levels_have_enough_templates():
    assert len(arith._WORD4) >= 4 and len(arith._WORD5) >= 4
    for level in (4, 5):
        openings = {" ".join(r["question"].split()[:2])
                    for r in arith_split("train", 600, (level,), seed=1)}
        assert len(openings) >= 8                            # varied names and templates


def test_levels_are_balanced_and_prompt_default():
    rows = arith_split("train", 1001, ALL_LEVELS, seed=2)
    counts = Counter(row["level"] for row in rows)
    assert max(counts.values()) - min(counts.values()) <= 1 and set(counts) == set(ALL_LEVELS)
    assert all(row["prompt"] == row["question"] for row in rows)
    assert set(rows[0]) == {"question", "answer", "level", "prompt"}


def test_instruction_is_appended():
    rows = arith_split("eval", 3, (1,), instruction="Answer after '####'.")
    assert all(r["prompt"] == r["question"] + "\nAnswer after '####'." for r in rows)


def test_bad_level_and_split_errors():
    with pytest.raises(ValueError, match="level 6"):
        arith_split("train", 10, (1, 6))
    with pytest.raises(ValueError, match="level 0"):
        make_problem(random.Random(0), 0)
    with pytest.raises(ValueError, match="'test'"):
        arith_split("test", 10)
    with pytest.raises(ValueError, match="level 1 ran out"):
        arith_split("eval", 2000, (1,))


def test_generation_is_fast():
    start = time.perf_counter()
    rows = arith_split("train", 10_000, ALL_LEVELS, seed=0)
    assert len(rows) == 10_000 and time.perf_counter() - start < 1.0
