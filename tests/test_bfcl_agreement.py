"""rlkit's BFCL checker (rlkit.eval.toolcall_ast) agrees with the official one: bfcl-eval's
``ast_checker`` (PyPI package ``bfcl-eval``), run in its own virtualenv, on generated cases.

Slow: the first run creates the virtualenv in pytest's cache folder and installs ``bfcl-eval``
there with ``--no-deps`` (about 2 MB from PyPI); without network the test is skipped. bfcl-eval's
``constants.model_config`` imports every model handler (the OpenAI, Anthropic, ... clients), and
the checker reads only each model's ``underscore_to_dot`` flag from it, so the harness puts a
two-model stand-in of that module in its place; the checker's code runs unchanged.
"""
from __future__ import annotations

import json
import random
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from rlkit.eval.toolcall_ast import check_prediction

pytestmark = pytest.mark.slow

BFCL_EVAL = "bfcl-eval==2026.3.23"
HARNESS = r'''
import json, sys, types
from dataclasses import dataclass


@dataclass
class ModelConfig:
    underscore_to_dot: bool


stub = types.ModuleType("bfcl_eval.constants.model_config")
stub.MODEL_CONFIG_MAPPING = {"plain": ModelConfig(False), "fc": ModelConfig(True)}
sys.modules["bfcl_eval.constants.model_config"] = stub
from bfcl_eval.constants.enums import Language
from bfcl_eval.eval_checker.ast_eval.ast_checker import ast_checker

out = []
for case in json.load(sys.stdin):
    try:
        result = ast_checker(case["functions"], case["output"], case["golds"], Language.PYTHON, case["category"],
                             "fc" if case["underscore_to_dot"] else "plain")
        out.append(bool(result["valid"]))
    except Exception as exc:
        out.append(f"{type(exc).__name__}: {exc}")
json.dump(out, sys.stdout)
'''


@pytest.fixture(scope="module")
def bfcl_python(request) -> Path:
    root = Path(request.config.cache.mkdir("bfcl-eval-venv"))
    python = root / "bin" / "python"
    if python.is_file() and subprocess.run([str(python), "-c", "import bfcl_eval"], capture_output=True).returncode == 0:
        return python
    try:
        venv.create(root, with_pip=True, clear=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
                        "--timeout", "20", "--retries", "1",
                        BFCL_EVAL], check=True, capture_output=True, timeout=600)
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        pytest.skip(f"cannot install {BFCL_EVAL} into a virtualenv (no network?): {exc} {detail[-300:]!r}")
    return python


def official(python: Path, cases: list[dict]) -> list:
    out = subprocess.run([str(python), "-c", HARNESS], input=json.dumps(cases), capture_output=True, text=True,
                         check=True, timeout=600)
    return json.loads(out.stdout)


# ---- case generator ----------------------------------------------------------------------------

STRINGS = ["New York, NY", "San Francisco", "3x**2 + 2x - 1", "units", "O'Brien", "A/B test", "e^x * 2",
           "snake_case_name", "v1.2.3", "Hello World!"]


def string_variants(rng: random.Random, text: str) -> str:
    kind = rng.randrange(9)
    if kind == 0:
        return text.upper()
    if kind == 1:
        return text.replace(" ", "")
    if kind == 2:
        return text + rng.choice(",./-_*^")
    if kind == 3:
        return text + rng.choice("!?+;")
    if kind == 4:
        return text.replace("+", "#").replace("-", "+").replace("#", "-")
    if kind == 5:
        return text.replace("'", '"')
    if kind == 6:
        return rng.choice(STRINGS)
    return text


def schema_and_options(rng: random.Random, kind: str) -> tuple[dict, list]:
    """One parameter: its schema and its allowed values (sometimes with "" = optional)."""
    if kind == "string":
        options = rng.sample(STRINGS, rng.choice([1, 2]))
        prop = {"type": rng.choice(["string", "string", "any"])}
    elif kind == "integer":
        options, prop = [rng.randrange(-5, 50)], {"type": "integer"}
    elif kind == "float":
        options, prop = [rng.choice([2.5, 2.0, 3, 0.1, -1.0])], {"type": "float"}
    elif kind == "boolean":
        options, prop = [rng.choice([True, False])], {"type": "boolean"}
    elif kind == "array":
        item = rng.choice(["string", "integer", "float"])
        pool = {"string": lambda: rng.choice(STRINGS), "integer": lambda: rng.randrange(10),
                "float": lambda: rng.choice([1.0, 2.5, 3, 4.0])}[item]
        options = [[pool() for _ in range(rng.randrange(1, 4))] for _ in range(rng.choice([1, 2]))]
        prop = {"type": "array", "items": {"type": item}}
    elif kind == "dict":
        options = [{"name": rng.sample(STRINGS, 1), "count": [rng.randrange(5), ""], "ratio": [rng.choice([1.0, 2])]}]
        prop = {"type": "dict", "properties": {}}
    else:  # array of dicts
        options = [[{"key": [rng.choice(STRINGS)], "n": [rng.randrange(3)]} for _ in range(rng.randrange(1, 3))]]
        prop = {"type": "array", "items": {"type": "dict"}}
    if rng.random() < 0.3:
        options = options + [""]
    return prop, options


def value_variant(rng: random.Random, prop: dict, options: list):
    """A predicted value: usually the first allowed value, often altered."""
    first = next((o for o in options if o != ""), "")
    value = json.loads(json.dumps(first))
    if isinstance(value, dict):  # an allowed dict: pick one value per key
        value = {k: v[0] for k, v in value.items() if v and v[0] != "" and rng.random() < 0.9}
    if isinstance(value, list) and value and isinstance(value[0], dict):
        value = [{k: v[0] for k, v in d.items()} for d in value]
    if rng.random() < 0.75:
        return value
    if isinstance(value, bool):
        return rng.choice([int(value), not value, str(value).lower()])
    if isinstance(value, int):
        return rng.choice([float(value), value + 1, str(value), bool(value % 2)])
    if isinstance(value, float):
        return rng.choice([int(value), value + 0.5, str(value), round(value)])
    if isinstance(value, str):
        return string_variants(rng, value) if rng.random() < 0.85 else len(value)
    if isinstance(value, dict):
        choice = rng.randrange(4)
        if choice == 0 and value:
            key = rng.choice(list(value))
            value[key] = float(value[key]) if isinstance(value[key], int) else value[key]
        elif choice == 1:
            value["extra"] = 1
        elif choice == 2 and "name" in value:
            value["name"] = string_variants(rng, value["name"])
        else:
            value.pop(rng.choice(list(value)), None) if value else None
        return value
    if isinstance(value, list):
        choice = rng.randrange(6)
        if choice == 0:
            return value[::-1]
        if choice == 1:
            return [float(v) if type(v) is int else (int(v) if type(v) is float and v.is_integer() else v) for v in value]
        if choice == 2:
            return [string_variants(rng, v) if isinstance(v, str) else v for v in value]
        if choice == 3:
            return value[:-1]
        if choice == 4 and value and isinstance(value[0], dict):
            return [{**d, "n": float(d["n"])} for d in value]
        return []
    return value


NAMES = ["get_weather", "math.factorial", "geo.distance.find", "calc_area", "stats.mean", "spotify.play"]
KINDS = ["string", "integer", "float", "boolean", "array", "dict", "array_dict"]


def make_function(rng: random.Random, name: str) -> tuple[dict, dict]:
    """A function schema and one gold call of it."""
    props, gold, required = {}, {}, []
    for p in range(rng.randrange(1, 5)):
        key = f"p{p}_{rng.choice(KINDS)}"
        prop, options = schema_and_options(rng, key.split("_", 1)[1])
        props[key] = prop
        if rng.random() < 0.9:
            gold[key] = options
            if "" not in options and rng.random() < 0.7:
                required.append(key)
        elif rng.random() < 0.3:
            required.append(key)  # required but not in the gold call: no call can be right
    if rng.random() < 0.05:
        gold["undeclared"] = ["x", ""] if rng.random() < 0.5 else ["x"]
    return {"name": name, "description": "", "parameters": {"type": "dict", "properties": props,
                                                             "required": required}}, {name: gold}


def predicted_call(rng: random.Random, function: dict, gold: dict) -> dict:
    (name, allowed), = gold.items()
    props = function["parameters"]["properties"]
    params = {}
    for key, options in allowed.items():
        if key not in props:
            if rng.random() < 0.5:
                params[key] = "x"
            continue
        if "" in options and rng.random() < 0.3:
            continue
        if rng.random() < 0.05:
            continue
        params[key] = value_variant(rng, props[key], options)
    if rng.random() < 0.05:
        params["unknown"] = 1
    roll = rng.random()
    shown = name.replace(".", "_") if roll < 0.15 else (rng.choice(NAMES) if roll < 0.18 else name)
    return {"name": shown, "parameters": params}


def make_case(rng: random.Random) -> dict:
    category = rng.choice(["simple", "multiple", "parallel", "parallel_multiple"])
    names = rng.sample(NAMES, 3)
    functions, golds = [], []
    if category == "simple":
        function, gold = make_function(rng, names[0])
        functions, golds = [function], [gold]
    elif category == "multiple":
        made = [make_function(rng, n) for n in names]
        functions, golds = [f for f, _ in made], [made[0][1]]
    elif category == "parallel":
        function, gold = make_function(rng, names[0])
        functions = [function]
        golds = [gold] + [make_function(rng, names[0])[1] for _ in range(rng.randrange(1, 3))]
        golds = [{names[0]: {k: v for k, v in g[names[0]].items() if k in gold[names[0]]}} for g in golds]
    else:
        made = [make_function(rng, n) for n in names[:2]]
        functions = [f for f, _ in made]
        golds = [g for _, g in made] + ([made[0][1]] if rng.random() < 0.5 else [])
    by_name = {f["name"]: f for f in functions}
    calls = [predicted_call(rng, by_name[next(iter(g))], g) for g in golds]
    rng.shuffle(calls)
    if rng.random() < 0.05:
        calls = calls[:-1] or calls + calls
    return {"functions": functions, "golds": golds, "calls": calls, "category": category,
            "underscore_to_dot": rng.random() < 0.3}


def test_checker_agrees_with_bfcl_eval(bfcl_python):
    rng = random.Random(20260323)
    cases = [make_case(rng) for _ in range(3000)]
    payload = [{"functions": c["functions"], "golds": c["golds"], "category": c["category"],
                "underscore_to_dot": c["underscore_to_dot"],
                "output": [{call["name"]: call["parameters"]} for call in c["calls"]]} for c in cases]
    theirs = official(bfcl_python, payload)
    ours = [check_prediction(c["calls"], c["golds"], c["functions"], underscore_to_dot=c["underscore_to_dot"])
            for c in cases]
    crashed = [i for i, v in enumerate(theirs) if not isinstance(v, bool)]
    assert not crashed, f"bfcl-eval raised on {len(crashed)} cases, e.g. {theirs[crashed[0]]}"
    right = sum(theirs)
    assert 0.15 * len(cases) < right < 0.85 * len(cases), f"{right} of {len(cases)} right: cases too easy or too hard"
    differ = [i for i, (t, (o, _)) in enumerate(zip(theirs, ours)) if t != o]
    detail = [(cases[i]["calls"], cases[i]["golds"], theirs[i], ours[i][1]) for i in differ[:3]]
    print(f"bfcl-eval agreement: {len(cases) - len(differ)}/{len(cases)} ({right} right)", file=sys.stderr)
    assert not differ, f"{len(differ)} of {len(cases)} verdicts differ from bfcl-eval, e.g. {detail}"
