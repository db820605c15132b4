"""AST checking of tool calls by the rules of the Berkeley Function Calling Leaderboard (BFCL; Yan
et al. 2024, gorilla.cs.berkeley.edu/blogs/8_berkeley_function_calling_leaderboard.html), as its
``bfcl-eval`` package's ``ast_checker`` applies them to Python categories (``tests/
test_bfcl_agreement.py`` checks agreement with that package on generated cases).

Gold calls are BFCL "possible answers": ``[{function_name: {param: [allowed values...]}}]``, where
an allowed value ``""`` means "may be left out"; a dict parameter's allowed values are dicts whose
keys map to allowed-value lists. Function schemas are BFCL's (``{"name", "parameters":
{"properties": {param: {"type", "items"}}, "required"}}``; the types ``string``, ``integer``,
``float``, ``boolean``, ``array``, ``tuple``, ``dict``, ``any``, and the spellings ``str``,
``int``, ``number``, ``bool``, ``list``, ``object`` of other schemas). A predicted call ``{"name",
"parameters"}`` matches a gold call when:

1. its name equals the function's name; with ``underscore_to_dot`` (BFCL's setting for models whose
   function-calling API refuses dots, off by default) the expected name has ``.`` written as ``_``;
2. every parameter the schema lists as required is present;
3. every parameter is declared by the schema and is one of the gold call's parameters (a gold
   parameter the schema does not declare can never be passed: an invalid case, which
   ``undeclared_gold_params`` finds);
4. every gold parameter whose allowed values do not include ``""`` is present;
5. every value has the schema's type (``type(value)`` exactly: a bool is not an integer) or the type
   of the first allowed value that is not ``""`` (BFCL reads that as "the answer is a variable"
   and then compares the value as it is). An int for a float parameter is accepted at the top level
   only (it becomes a float); inside arrays the items must have the items' type, so ``[1, 2]`` is
   not a list of floats, while inside dicts values are compared with ``==`` (``1 == 1.0``);
6. the value equals an allowed value: strings after ``normalise_string`` (spaces and ``,./-_*^``
   removed, lower case, ``'`` as ``"``: ``"NewYork,NY"`` matches ``"New York, NY"``, ``"units!"``
   does not match ``"units"``); arrays item by item in order (string items normalised, an allowed
   ``""`` standing for the empty list); dicts key by key (every key allowed, string values
   normalised, missing keys allowed ``""``); arrays of dicts dict by dict; other values with ``==``.

Without a schema (ToolRL tool listings may lack one) rules 2-3 use the gold call alone and the type
comes from the allowed values. A prediction is right when its calls pair off with the gold calls:
one gold call (BFCL simple, multiple) needs exactly one matching predicted call; several
(parallel, parallel_multiple) are paired greedily as BFCL does: each gold call in turn takes the
first remaining predicted call that matches it (``match_calls``); no gold call (irrelevance) needs
no call at all (an unparseable call block counts as no call, as in BFCL).
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

CATEGORIES = ("simple", "multiple", "parallel", "parallel_multiple", "irrelevance")
TYPES: dict[str, type] = {"string": str, "any": str, "integer": int, "float": float, "boolean": bool,
                          "array": list, "tuple": list, "dict": dict,
                          # spellings of JSON schema and ToolRL listings (BFCL's Python data does not use them)
                          "str": str, "int": int, "number": float, "bool": bool, "list": list, "object": dict}
_STRIPPED = re.compile(r"[ ,./\-_*^]")


def normalise_string(text: str) -> str:
    """BFCL's string standardisation: spaces and ``,./-_*^`` removed, lower case, ``'`` as ``"``:
    ``"New York, NY"`` -> ``"newyorkny"``; other punctuation (``!``, ``+``) stays."""
    return _STRIPPED.sub("", text).lower().replace("'", '"')


def _std(value: Any) -> Any:
    return normalise_string(value) if type(value) is str else value


def _as_list(options: Any) -> list:
    return options if isinstance(options, list) else [options]


def _answer_type(options: Sequence[Any]) -> type | None:
    """The type of the first allowed value that is not ``""`` (None when there is none)."""
    for option in options:
        if option != "":
            return type(option)
    return None


def _expected_types(prop: Any, options: list) -> tuple[type | None, type | None]:
    """(value type, item type of an array) from the parameter's schema, else from the answers."""
    prop = prop if isinstance(prop, dict) else {}
    name = prop.get("type")
    expected = TYPES.get(name) if isinstance(name, str) else None
    if expected is None:
        expected = _answer_type(options)
    item = None
    if expected is list:
        items = prop.get("items")
        item_name = items.get("type") if isinstance(items, dict) else None
        item = TYPES.get(item_name) if isinstance(item_name, str) else None
        if item is None and not isinstance(name, str):  # no schema: lists of dicts from the answers
            first = next((o for o in options if isinstance(o, list) and o), None)
            item = dict if first is not None and isinstance(first[0], dict) else None
    return expected, item


def _items_typed(value: list, options: list, item: type) -> bool:
    """BFCL's one-level item check: for some allowed list, every item has the item type or the type
    of that list's first item; an allowed value that is not a list (``""``) passes."""
    for option in options:
        if not isinstance(option, list):
            return True
        answer = _answer_type(option)
        if all(type(v) is item or (answer is not None and type(v) is answer) for v in value):
            return True
    return False


def _dict_ok(value: Any, options: list) -> bool:
    if not isinstance(value, dict):
        return False
    for option in options:
        if not isinstance(option, dict):
            continue
        if all(key in option and _std(v) in [_std(o) for o in _as_list(option[key])] for key, v in value.items()) \
                and all(key in value or "" in _as_list(allowed) for key, allowed in option.items()):
            return True
    return False


def _list_ok(value: list, options: list) -> bool:
    std = [_std(v) for v in value]
    return any(std == [_std(o) for o in option] for option in options if isinstance(option, (list, str)))


def _list_of_dicts_ok(value: list, options: list) -> bool:
    return any(len(option) == len(value) and all(_dict_ok(v, [o]) for v, o in zip(value, option))
               for option in options if isinstance(option, (list, str)))


def param_problem(key: str, value: Any, options: Any, prop: Any = None) -> str | None:
    """Why ``value`` is not an allowed value of parameter ``key`` (rules 5-6 of the module
    docstring; ``prop`` is the parameter's schema); None when it is."""
    options = _as_list(options)
    expected, item = _expected_types(prop, options)
    if expected is None:  # no type anywhere: only "" is allowed
        return None if value in options else f"parameter {key!r} = {value!r} not among {options!r}"
    if expected is float and type(value) is int:
        value = float(value)
    answer = _answer_type(options)
    variable = answer is not None and answer is not expected
    if type(value) is expected:
        if item is not None and not _items_typed(value, options, item):
            return f"parameter {key!r} = {value!r}: items are not all of type {item.__name__}"
    elif answer is not None and type(value) is answer:
        variable = True
    else:
        return f"parameter {key!r} = {value!r} has type {type(value).__name__}, expected {expected.__name__}"
    if variable:
        ok = value in options
    elif expected is dict:
        ok = _dict_ok(value, options)
    elif expected is list:
        ok = _list_of_dicts_ok(value, options) if item is dict else _list_ok(value, options)
    elif expected is str:
        ok = normalise_string(value) in [normalise_string(o) for o in options if type(o) is str]
    else:
        ok = value in options
    return None if ok else f"parameter {key!r} = {value!r} not among {options!r}"


def exact_allowed(value: Any) -> Any:
    """A plain parameter value as the one allowed candidate, for gold calls that are concrete calls
    (ToolRL references) rather than BFCL possible answers: a dict's entries become one-element
    allowed lists, and so do those of the dicts of a list (the shapes rule 6 compares)."""
    if isinstance(value, dict):
        return {k: [v] for k, v in value.items()}
    if isinstance(value, list):
        return [{k: [v] for k, v in item.items()} if isinstance(item, dict) else item for item in value]
    return value


def _schema_for(name: str, functions: Sequence[dict]) -> dict | None:
    for function in functions:
        if isinstance(function, dict) and function.get("name") == name:
            return function
    return None


def _spec(schema: dict | None) -> tuple[dict | None, list]:
    spec = (schema or {}).get("parameters")
    if not isinstance(spec, dict):
        return None, []
    properties = spec.get("properties")
    required = spec.get("required")
    return (properties if isinstance(properties, dict) else None), (required if isinstance(required, list) else [])


def call_problems(pred: dict, gold: dict, functions: Sequence[dict] = (), *,
                  underscore_to_dot: bool = False) -> list[str]:
    """Why the predicted call ``{"name", "parameters"}`` does not match the gold call
    ``{name: {param: [allowed...]}}`` (the module docstring's rules); [] when it matches."""
    (gold_name, gold_params), = gold.items()
    schema = _schema_for(gold_name, functions)
    expected_name = str(schema.get("name")) if schema is not None else gold_name
    if underscore_to_dot:
        expected_name = expected_name.replace(".", "_")
    name = pred.get("name")
    if name != expected_name:
        return [f"function {name!r} instead of {expected_name!r}"]
    params = pred.get("parameters", pred.get("arguments", {}))
    if not isinstance(params, dict):
        return [f"{gold_name}: parameters are not an object"]
    properties, required = _spec(schema)
    problems = [f"{gold_name}: required parameter {key!r} missing" for key in required if key not in params]
    for key, value in params.items():
        if properties is not None and key not in properties:
            problems.append(f"{gold_name}: unknown parameter {key!r}")
        elif key not in gold_params:
            problems.append(f"{gold_name}: unexpected parameter {key!r}")
        else:
            problem = param_problem(key, value, gold_params[key], (properties or {}).get(key))
            if problem:
                problems.append(f"{gold_name}: {problem}")
    for key, options in gold_params.items():
        if key not in params and "" not in _as_list(options) and key not in required:
            problems.append(f"{gold_name}: parameter {key!r} missing")
    return problems


def call_matches(pred: dict, gold: dict, functions: Sequence[dict] = (), *, underscore_to_dot: bool = False) -> bool:
    return not call_problems(pred, gold, functions, underscore_to_dot=underscore_to_dot)


def match_calls(preds: Sequence[dict], golds: Sequence[dict], functions: Sequence[dict] = (), *,
                underscore_to_dot: bool = False) -> int | None:
    """BFCL's pairing of parallel calls: each gold call in turn takes the first predicted call not
    yet taken that matches it. None when every gold call found one (and the counts are equal),
    else the index of the first gold call left without a match."""
    if len(preds) != len(golds):
        return 0
    taken: set[int] = set()
    for g, gold in enumerate(golds):
        found = next((p for p, pred in enumerate(preds) if p not in taken
                      and call_matches(pred, gold, functions, underscore_to_dot=underscore_to_dot)), None)
        if found is None:
            return g
        taken.add(found)
    return None


def undeclared_gold_params(golds: Sequence[dict], functions: Sequence[dict]) -> list[str]:
    """``"function.param"`` for every gold parameter its function's schema does not declare (BFCL
    rejects any call that passes such a parameter: a record that needs one cannot be answered)."""
    out = []
    for gold in golds:
        (name, params), = gold.items()
        properties, _ = _spec(_schema_for(name, functions))
        if properties is not None:
            out += [f"{name}.{key}" for key in params if key not in properties]
    return out


def call_shape(golds: Sequence[dict], functions: Sequence[dict]) -> str:
    """The BFCL category a record's shape implies: irrelevance (no gold call), simple / multiple
    (one call, one or several functions offered), parallel / parallel_multiple (several calls of
    one function / of several functions)."""
    if not golds:
        return "irrelevance"
    if len(golds) == 1:
        return "simple" if len(functions) <= 1 else "multiple"
    names = {next(iter(g)) for g in golds}
    return "parallel" if len(names) == 1 and len(functions) <= 1 else "parallel_multiple"


def check_prediction(pred_calls: list[dict] | None, golds: Sequence[dict], functions: Sequence[dict] = (), *,
                     underscore_to_dot: bool = False) -> tuple[bool, str]:
    """``(correct, reason)`` for the parsed calls of one completion (None: no parseable call block).

    No gold call: right when there is no call. Otherwise the calls must pair off with the gold
    calls (``match_calls``); ``underscore_to_dot`` as in the module docstring.
    """
    calls = pred_calls or []
    if not golds:
        return (not calls, "no call, as expected" if not calls else f"{len(calls)} call(s) where none was expected")
    if pred_calls is None:
        return False, "no parseable <tool_call> block"
    if len(calls) != len(golds):
        return False, f"{len(calls)} call(s) where {len(golds)} were expected"
    if len(golds) == 1:
        problems = call_problems(calls[0], golds[0], functions, underscore_to_dot=underscore_to_dot)
        return (not problems, "; ".join(problems) or "match")
    unmatched = match_calls(calls, golds, functions, underscore_to_dot=underscore_to_dot)
    if unmatched is None:
        return True, "match"
    return False, f"gold call {unmatched} ({next(iter(golds[unmatched]))}) matches none of the remaining calls"


def canonical_calls(pred_calls: list[dict] | None) -> str | None:
    """A vote key for a completion's calls: the sorted calls as normalised JSON; ``"[]"`` for no
    call; None when the block is unparseable."""
    import json

    if pred_calls is None:
        return None

    def norm(value: Any) -> Any:
        if isinstance(value, str):
            return normalise_string(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, dict):
            return {k: norm(v) for k, v in value.items()}
        if isinstance(value, list):
            return [norm(v) for v in value]
        return value

    calls = [json.dumps({"name": c.get("name"), "parameters": norm(c.get("parameters", c.get("arguments", {})))},
                        sort_keys=True) for c in pred_calls]
    return json.dumps(sorted(calls))


def concrete_golds(calls: Sequence[dict]) -> list[dict]:
    """Concrete reference calls ``{"name", "parameters"}`` (ToolRL's) as BFCL possible answers whose
    only allowed value per parameter is the reference's own."""
    return [{c["name"]: {k: [exact_allowed(v)] for k, v in c["parameters"].items()}} for c in calls]


def ast_call_accuracy(completions: list[str], ground_truth: list[str | None] | None = None,
                      tools: list[Sequence[dict]] | None = None, **columns: Any) -> list[float | None]:
    """A reward component (``fn(completions, **columns)``) giving 1.0 where a completion's calls
    pass the BFCL AST check against a ToolRL reference (``ground_truth``, the reference text; its
    calls are the only allowed values), else 0.0, exactly as ``rlkit eval --benchmark toolcall``
    judges ToolRL rows.  None without a reference, or when the reference passes a parameter its
    tool does not declare (not scorable).  Meant as a zero-weight component reported as accuracy
    (``rewards.accuracy_component``), so held-out evaluation during training is the AST check."""
    from rewards.toolrl import parse_tool_calls, reference_calls

    if ground_truth is None:
        raise ValueError(f"ast_call_accuracy needs the 'ground_truth' column; the batch has {sorted(columns)}")
    tools = tools if tools is not None else [()] * len(completions)
    out: list[float | None] = []
    for text, truth, functions in zip(completions, ground_truth, tools):
        try:
            calls = reference_calls(truth) if truth else None
        except ValueError:
            calls = None
        golds = None if calls is None else concrete_golds(calls)
        if golds is None or undeclared_gold_params(golds, functions or ()):
            out.append(None)
            continue
        pred = parse_tool_calls(text.strip()) if isinstance(text, str) else None
        out.append(float(check_prediction(pred, golds, functions or ())[0]))
    return out
