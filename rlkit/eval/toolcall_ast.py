"""AST checking of tool calls, after the Berkeley Function Calling Leaderboard (BFCL; Yan et al.
2024, "Berkeley Function Calling Leaderboard", section "Evaluation Metrics: AST evaluation",
gorilla.cs.berkeley.edu/blogs/8_berkeley_function_calling_leaderboard.html).

Gold calls are BFCL "possible answers": ``[{function_name: {param: [allowed values...]}}]``, where
an allowed value ``""`` means "may be left out" and an allowed dict maps its keys to allowed-value
lists in turn. Function schemas are BFCL's JSON schemas (``{"name", "parameters": {"properties",
"required"}}``). A predicted call ``{"name", "parameters"}`` matches a gold call when:

1. the names are equal (also after writing ``.`` as ``_``, as BFCL does for dotted names);
2. every parameter the function's schema lists as required is present;
3. no parameter is unknown (not in the schema's properties) or unexpected (not among the gold
   call's parameters; a gold parameter counts as known even where the schema lacks it);
4. every gold parameter whose allowed values do not include ``""`` is present;
5. every value equals one of its allowed values after normalisation (``values_match``).

A prediction is right when its calls can be matched one to one with the gold calls: for one gold
call (BFCL simple, multiple) that is exactly one matching predicted call; for several (parallel,
parallel_multiple) a perfect matching in any order (``match_calls``); for no gold call
(irrelevance) no call at all (an unparseable call block counts as no call, as in BFCL).
"""
from __future__ import annotations

import math
import string
from collections.abc import Sequence
from typing import Any

CATEGORIES = ("simple", "multiple", "parallel", "parallel_multiple", "irrelevance")
_PUNCTUATION = str.maketrans({c: " " for c in string.punctuation})


def normalise_string(text: str) -> str:
    """Lower case, punctuation removed, whitespace collapsed: ``" New-York. "`` -> ``"new york"``."""
    return " ".join(text.lower().translate(_PUNCTUATION).split())


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def values_match(pred: Any, allowed: Any) -> bool:
    """Whether ``pred`` equals one allowed value ``allowed`` (one candidate, not the list of them).

    Strings compare by ``normalise_string``; numbers by value (``3 == 3.0``, booleans are not
    numbers); lists element by element, in order; a dict candidate maps keys to allowed-value
    lists (``""`` among them: the key may be missing) and the predicted dict may hold no other
    keys; ``None`` matches only ``None``.
    """
    if isinstance(allowed, dict):
        if not isinstance(pred, dict):
            return False
        if any(key not in allowed for key in pred):
            return False
        for key, options in allowed.items():
            options = options if isinstance(options, list) else [options]
            if key not in pred:
                if "" not in options:
                    return False
            elif not any_value_matches(pred[key], options):
                return False
        return True
    if isinstance(allowed, (list, tuple)):
        return (isinstance(pred, (list, tuple)) and len(pred) == len(allowed)
                and all(values_match(p, a) for p, a in zip(pred, allowed)))
    if isinstance(allowed, bool) or isinstance(pred, bool):
        return isinstance(allowed, bool) and isinstance(pred, bool) and pred == allowed
    if _is_number(allowed):
        return _is_number(pred) and math.isclose(float(pred), float(allowed), rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(allowed, str):
        return isinstance(pred, str) and normalise_string(pred) == normalise_string(allowed)
    return pred == allowed


def any_value_matches(pred: Any, options: Sequence[Any]) -> bool:
    """Whether ``pred`` matches one of the allowed values (an explicit ``""`` matches the ``""`` marker)."""
    return any(values_match(pred, option) for option in options)


def exact_allowed(value: Any) -> Any:
    """A plain value as the one allowed candidate (dict entries wrapped into one-element lists), for
    gold calls that are concrete calls (ToolRL references) rather than BFCL possible answers."""
    if isinstance(value, dict):
        return {k: [exact_allowed(v)] for k, v in value.items()}
    if isinstance(value, list):
        return [exact_allowed(v) for v in value]
    return value


def _same_name(a: str, b: str) -> bool:
    return a == b or a.replace(".", "_") == b.replace(".", "_")


def _schema_for(name: str, functions: Sequence[dict]) -> dict | None:
    for function in functions:
        if isinstance(function, dict) and _same_name(str(function.get("name")), name):
            return function
    return None


def call_problems(pred: dict, gold: dict, functions: Sequence[dict] = ()) -> list[str]:
    """Why the predicted call ``{"name", "parameters"}`` does not match the gold call
    ``{name: {param: [allowed...]}}`` (the module docstring's rules); [] when it matches."""
    (gold_name, gold_params), = gold.items()
    name = pred.get("name")
    if not isinstance(name, str) or not _same_name(name, gold_name):
        return [f"function {name!r} instead of {gold_name!r}"]
    params = pred.get("parameters", pred.get("arguments", {}))
    if not isinstance(params, dict):
        return [f"{gold_name}: parameters are not an object"]
    problems = []
    schema = _schema_for(gold_name, functions)
    spec = (schema or {}).get("parameters") or {}
    properties = spec.get("properties") if isinstance(spec, dict) else None
    for required in (spec.get("required") or []) if isinstance(spec, dict) else []:
        if required not in params:
            problems.append(f"{gold_name}: required parameter {required!r} missing")
    for key in params:
        if key in gold_params:
            continue
        known = not isinstance(properties, dict) or key in properties
        problems.append(f"{gold_name}: {'unexpected' if known else 'unknown'} parameter {key!r}")
    for key, options in gold_params.items():
        options = options if isinstance(options, list) else [options]
        if key not in params:
            if "" not in options and not any(f"{key!r} missing" in p for p in problems):
                problems.append(f"{gold_name}: parameter {key!r} missing")
        elif not any_value_matches(params[key], options):
            problems.append(f"{gold_name}: parameter {key!r} = {params[key]!r} not among {options!r}")
    return problems


def call_matches(pred: dict, gold: dict, functions: Sequence[dict] = ()) -> bool:
    return not call_problems(pred, gold, functions)


def match_calls(preds: Sequence[dict], golds: Sequence[dict], functions: Sequence[dict] = ()) -> bool:
    """Whether the predicted calls pair off one to one with the gold calls (any order): a perfect
    bipartite matching, found with augmenting paths (Kuhn's algorithm)."""
    if len(preds) != len(golds):
        return False
    edges = [[j for j, pred in enumerate(preds) if call_matches(pred, gold, functions)] for gold in golds]
    owner: dict[int, int] = {}  # predicted call -> gold call

    def assign(g: int, seen: set[int]) -> bool:
        for p in edges[g]:
            if p in seen:
                continue
            seen.add(p)
            if p not in owner or assign(owner[p], seen):
                owner[p] = g
                return True
        return False

    return all(assign(g, set()) for g in range(len(golds)))


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


def check_prediction(pred_calls: list[dict] | None, golds: Sequence[dict],
                     functions: Sequence[dict] = ()) -> tuple[bool, str]:
    """``(correct, reason)`` for the parsed calls of one completion (None: no parseable call block).

    No gold call: right when there is no call. Otherwise the calls must match one to one.
    """
    calls = pred_calls or []
    if not golds:
        return (not calls, "no call, as expected" if not calls else f"{len(calls)} call(s) where none was expected")
    if pred_calls is None:
        return False, "no parseable <tool_call> block"
    if len(calls) != len(golds):
        return False, f"{len(calls)} call(s) where {len(golds)} were expected"
    if len(golds) == 1:
        problems = call_problems(calls[0], golds[0], functions)
        return (not problems, "; ".join(problems) or "match")
    if match_calls(calls, golds, functions):
        return True, "match"
    return False, "the calls cannot be paired with the gold calls"


def canonical_calls(pred_calls: list[dict] | None) -> str | None:
    """A vote key for a completion's calls: the sorted calls as normalised JSON; ``"[]"`` for no
    call; None when the block is unparseable."""
    import json

    if pred_calls is None:
        return None

    def norm(value: Any) -> Any:
        if isinstance(value, str):
            return normalise_string(value)
        if _is_number(value):
            return float(value)
        if isinstance(value, dict):
            return {k: norm(v) for k, v in value.items()}
        if isinstance(value, list):
            return [norm(v) for v in value]
        return value

    calls = [json.dumps({"name": c.get("name"), "parameters": norm(c.get("parameters", c.get("arguments", {})))},
                        sort_keys=True) for c in pred_calls]
    return json.dumps(sorted(calls))
