"""Synthetic arithmetic task in five levels, generated from a seed (no files needed).

Levels 1-3 are bare expressions ("What is 47 + 38?"); levels 4-5 are word problems built
from templates whose ground truth is computed alongside the text.  Every answer is a
non-negative integer stored as a string.

Train/eval split: a question belongs to the held-out eval split exactly when
``sha1(question) mod 10 == 0``.  Membership is a property of the text, so the two splits
are disjoint by construction.  The eval rows for a given ``(n, levels)`` come from a fixed
internal seed (identical in every process, independent of the training seed, and each
shorter eval list is a prefix of a longer one); train rows come from ``seed`` and skip
eval-hashed questions.  Eval questions are distinct; train rows are drawn with replacement.
Level 1 has only 8,100 distinct questions, 818 of them held out: asking for more level-1
eval rows than that raises ValueError.
"""
from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence

ARITH_LEVELS: tuple[tuple[int, str], ...] = (
    (1, "two-digit addition (operands 10..99)"),
    (2, "three-digit addition and subtraction (non-negative results)"),
    (3, "two-digit x one/two-digit multiplication; four-digit addition/subtraction"),
    (4, "two-step word problems (addition/subtraction) in six templates"),
    (5, "three-step word problems with multiplication/division in six templates"),
)
DEFAULT_INSTRUCTION = ""  # empty: prompt == question
EVAL_SEED = 1_000_003     # fixed seed of the held-out eval split; never the training seed
_EVAL_MODULUS = 10        # one question text in ten is held out
_MAX_DRY_DRAWS = 20_000   # consecutive draws without a new eval question before giving up

_PEOPLE = (("Mia", "she"), ("Liam", "he"), ("Ava", "she"), ("Noah", "he"), ("Zoe", "she"),
           ("Omar", "he"), ("Priya", "she"), ("Kenji", "he"), ("Sofia", "she"), ("Leo", "he"),
           ("Amara", "she"), ("Diego", "he"))
_ITEMS = ("apples", "marbles", "stickers", "pencils", "books", "stamps", "seashells",
          "trading cards", "oranges", "beads")
_GETS = ("buys", "finds", "gets", "is given", "picks up")
_GIVES = ("gives away", "loses", "donates", "trades away", "hands out")
_SHOPS = (("bakery", "muffins"), ("fruit stand", "melons"), ("bookstore", "notebooks"),
          ("flower shop", "roses"), ("toy store", "yo-yos"))
_THINGS = ("bike", "game", "jacket", "backpack", "lamp", "pair of shoes")
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August")
_VEHICLES = ("bus", "train", "truck", "car", "ferry")
_CROPS = ("tomatoes", "peppers", "lettuce", "beans", "sunflowers")

Problem = tuple[str, int]


def _people(rng: random.Random) -> tuple[tuple[str, str], tuple[str, str]]:
    """Two different (name, pronoun) pairs."""
    first, second = rng.sample(_PEOPLE, 2)
    return first, second


def _cap(pronoun: str) -> str:
    """Pronoun at the start of a sentence."""
    return pronoun.capitalize()


# ---- levels 1-3: bare expressions ------------------------------------------------------

def _expression(a: int, op: str, b: int) -> Problem:
    """'What is a op b?' and its value (op in + - *)."""
    value = a + b if op == "+" else a - b if op == "-" else a * b
    return f"What is {a} {op} {b}?", value


def _add_or_sub(rng: random.Random, lo: int, hi: int) -> Problem:
    """Addition or subtraction of two numbers in [lo, hi]; subtraction never goes negative."""
    a, b = rng.randint(lo, hi), rng.randint(lo, hi)
    if rng.random() < 0.5:
        return _expression(a, "+", b)
    return _expression(max(a, b), "-", min(a, b))


def _level1(rng: random.Random) -> Problem:
    return _expression(rng.randint(10, 99), "+", rng.randint(10, 99))


def _level2(rng: random.Random) -> Problem:
    return _add_or_sub(rng, 100, 999)


def _level3(rng: random.Random) -> Problem:
    if rng.random() < 0.5:
        b = rng.randint(2, 9) if rng.random() < 0.5 else rng.randint(10, 99)
        return _expression(rng.randint(10, 99), "*", b)
    return _add_or_sub(rng, 1000, 9999)


# ---- level 4: two-step word problems -----------------------------------------------------

def _w4_inventory(rng: random.Random) -> Problem:
    (name, p), _ = _people(rng)
    item = rng.choice(_ITEMS)
    a, b = rng.randint(12, 99), rng.randint(5, 60)
    c = rng.randint(3, a + b - 1)
    return (f"{name} has {a} {item}. {_cap(p)} {rng.choice(_GETS)} {b} more and "
            f"{rng.choice(_GIVES)} {c}. How many {item} does {p} have now?", a + b - c)


def _w4_shop(rng: random.Random) -> Problem:
    shop, goods = rng.choice(_SHOPS)
    a = rng.randint(60, 250)
    b = rng.randint(10, a // 2)
    c = rng.randint(5, a - b)
    return (f"A {shop} has {a} {goods}. It sells {b} in the morning and {c} in the "
            f"afternoon. How many {goods} are left?", a - b - c)


def _w4_travel(rng: random.Random) -> Problem:
    (name, p), _ = _people(rng)
    t = rng.randint(120, 480)
    a = rng.randint(20, t // 2)
    b = rng.randint(10, t - a - 10)
    return (f"{name} is driving to a town {t} km away. {_cap(p)} drives {a} km before lunch "
            f"and {b} km after lunch. How many more km does {p} need to drive?", t - a - b)


def _w4_saving(rng: random.Random) -> Problem:
    (name, p), _ = _people(rng)
    m1, m2 = rng.sample(_MONTHS, 2)
    a, b = rng.randint(10, 95), rng.randint(10, 95)
    c = rng.randint(5, a + b - 1)
    return (f"{name} saves {a} dollars in {m1} and {b} dollars in {m2}. Then {p} spends {c} "
            f"dollars on a {rng.choice(_THINGS)}. How many dollars does {p} have left?",
            a + b - c)


def _w4_compare(rng: random.Random) -> Problem:
    (name, _), (other, _) = _people(rng)
    item = rng.choice(_ITEMS)
    a = rng.randint(15, 99)
    b = rng.randint(1, a - 1)
    return (f"{name} collected {a} {item}. {other} collected {b} fewer than {name}. "
            f"How many {item} did they collect together?", a + (a - b))


def _w4_bus(rng: random.Random) -> Problem:
    a = rng.randint(15, 70)
    b, c = rng.randint(2, a), rng.randint(2, 40)
    return (f"A bus has {a} passengers. At the first stop {b} people get off and {c} get on. "
            f"How many passengers are on the bus now?", a - b + c)


# ---- level 5: three-step word problems with multiplication -------------------------------

def _w5_packs(rng: random.Random) -> Problem:
    (name, p), (other, _) = _people(rng)
    item = rng.choice(_ITEMS)
    a, b = rng.randint(2, 9), rng.randint(4, 12)
    c, d = rng.randint(1, a * b - 1), rng.randint(1, 20)
    return (f"{name} buys {a} packs of {item} with {b} {item} in each pack. {_cap(p)} gives "
            f"{c} to {other} and then {rng.choice(_GETS)} {d} more. How many {item} does {p} "
            f"have now?", a * b - c + d)


def _w5_weekly(rng: random.Random) -> Problem:
    (name, p), _ = _people(rng)
    a, w = rng.randint(5, 25), rng.randint(3, 10)
    c, d = rng.randint(2, a * w - 1), rng.randint(5, 50)
    return (f"{name} saves {a} dollars every week for {w} weeks. Then {p} spends {c} dollars "
            f"on a {rng.choice(_THINGS)} and gets {d} dollars as a gift. How many dollars "
            f"does {p} have now?", a * w - c + d)


def _w5_share(rng: random.Random) -> Problem:
    (name, p), _ = _people(rng)
    a, b, k = rng.randint(2, 6), rng.randint(6, 12), rng.randint(2, 5)
    c = (a * b) % k + k * rng.randint(0, 1) or k    # a*b - c divisible by k, c >= 1
    return (f"{name} bakes {a} trays of cookies with {b} cookies on each tray. {_cap(p)} eats "
            f"{c} and shares the rest equally among {k} friends. How many cookies does each "
            f"friend get?", (a * b - c) // k)


def _w5_trip(rng: random.Random) -> Problem:
    vehicle = rng.choice(_VEHICLES)
    s, h = rng.randrange(30, 95, 5), rng.randint(2, 5)
    b, left = rng.randint(5, 50), rng.randint(10, 150)
    t = s * h + b + left
    return (f"A {vehicle} travels at {s} km per hour for {h} hours and then {b} km more. "
            f"The whole trip is {t} km. How many km are left?", left)


def _w5_change(rng: random.Random) -> Problem:
    (name, p), _ = _people(rng)
    shop, goods = rng.choice(_SHOPS)
    a, price, q = rng.randint(2, 9), rng.randint(2, 15), rng.randint(3, 30)
    cost = a * price + q
    bill = (cost // 50 + 1) * 50
    return (f"At the {shop}, {name} buys {a} {goods} for {price} dollars each and a "
            f"{rng.choice(_THINGS)} for {q} dollars. {_cap(p)} pays with {bill} dollars. "
            f"How much change in dollars does {p} get?", bill - cost)


def _w5_garden(rng: random.Random) -> Problem:
    crop = rng.choice(_CROPS)
    r, c = rng.randint(3, 12), rng.randint(4, 15)
    d, e = rng.randint(2, r * c // 2), rng.randint(2, 20)
    return (f"A farmer plants {r} rows of {crop} with {c} plants in each row. {d} plants die "
            f"and the farmer plants {e} new ones. How many plants are there now?",
            r * c - d + e)


_WORD4 = (_w4_inventory, _w4_shop, _w4_travel, _w4_saving, _w4_compare, _w4_bus)
_WORD5 = (_w5_packs, _w5_weekly, _w5_share, _w5_trip, _w5_change, _w5_garden)
_GENERATORS: dict[int, Callable[[random.Random], Problem]] = {
    1: _level1, 2: _level2, 3: _level3,
    4: lambda rng: rng.choice(_WORD4)(rng),
    5: lambda rng: rng.choice(_WORD5)(rng),
}


# ---- public API --------------------------------------------------------------------------

def _check_level(level: int) -> None:
    """Raise ValueError naming ``level`` when it is not one of ARITH_LEVELS."""
    if isinstance(level, bool) or level not in _GENERATORS:
        valid = ", ".join(str(lvl) for lvl, _ in ARITH_LEVELS)
        raise ValueError(f"unknown arithmetic level {level!r}; valid levels are {valid}")


def make_problem(rng: random.Random, level: int) -> dict:
    """One problem of ``level``: ``{"question": str, "answer": str, "level": int}``."""
    _check_level(level)
    question, value = _GENERATORS[level](rng)
    return {"question": question, "answer": str(value), "level": level}


def is_eval_question(question: str) -> bool:
    """True when ``question`` belongs to the held-out eval split (stable sha1 of the text)."""
    digest = hashlib.sha1(question.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % _EVAL_MODULUS == 0


def _draw(rng: random.Random, level: int, want_eval: bool, seen: set[str] | None) -> dict:
    """Draw problems of ``level`` until one lands in the wanted split (and is unseen)."""
    for _ in range(_MAX_DRY_DRAWS):
        row = make_problem(rng, level)
        question = row["question"]
        if is_eval_question(question) != want_eval:
            continue
        if seen is not None:
            if question in seen:
                continue
            seen.add(question)
        return row
    split = "eval" if want_eval else "train"
    raise ValueError(f"level {level} ran out of distinct {split} questions after "
                     f"{len(seen or ())} rows; ask for fewer rows or add levels")


def arith_split(split: str, n: int, levels: Sequence[int] = (1,), seed: int = 0,
                instruction: str = DEFAULT_INSTRUCTION) -> list[dict]:
    """``n`` rows of the ``split`` ("train" or "eval") split, levels in round-robin order.

    Each row is ``{"question", "answer", "level", "prompt"}``; ``prompt`` is the user
    message: the question, then ``instruction`` on a new line when it is not empty.
    ``seed`` drives the train split only; the eval split always uses ``EVAL_SEED``.
    """
    if split not in ("train", "eval"):
        raise ValueError(f"unknown split {split!r}; expected 'train' or 'eval'")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    levels = tuple(levels)
    if not levels:
        raise ValueError("levels must name at least one level")
    for level in levels:
        _check_level(level)
    want_eval = split == "eval"
    rng = random.Random(EVAL_SEED if want_eval else seed)
    seen: set[str] | None = set() if want_eval else None
    rows = []
    for i in range(n):
        row = _draw(rng, levels[i % len(levels)], want_eval, seen)
        question = row["question"]
        row["prompt"] = f"{question}\n{instruction}" if instruction else question
        rows.append(row)
    return rows
