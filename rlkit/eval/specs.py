"""Checking benchmark specs (``eval.benchmarks`` in a config, or ``rlkit eval`` options).

Apart from the stdlib this imports ``rlkit.eval.benchmarks`` only (for the benchmark names),
so ``rlkit.config`` can check specs when it loads a config without importing the runner, the
checkpoint code or the models.
"""
from __future__ import annotations

from collections.abc import Sequence

from rlkit.eval.benchmarks import check_benchmark

SPEC_KEYS = ("name", "benchmark", "data", "limit", "max_new_tokens", "samples", "temperature", "top_p", "tables",
             "db_dir", "instruction", "levels", "chat_template", "system_prompt", "max_prompt_tokens",
             "underscore_to_dot")


def check_specs(specs: Sequence[dict]) -> list[dict]:
    """Validated copies of benchmark specs: ``benchmark`` known, no unknown keys, unique names
    (``name`` defaults to the benchmark); ValueError naming the spec otherwise."""
    out, names = [], set()
    for i, spec in enumerate(specs):
        if not isinstance(spec, dict) or "benchmark" not in spec:
            raise ValueError(f"benchmark spec {i}: expected a mapping with a 'benchmark' key, got {spec!r:.120}")
        unknown = sorted(set(spec) - set(SPEC_KEYS))
        if unknown:
            raise ValueError(f"benchmark spec {i} ({spec.get('name', spec['benchmark'])}): unknown keys {unknown}; "
                             f"known: {', '.join(SPEC_KEYS)}")
        check_benchmark(spec["benchmark"])
        if spec.get("underscore_to_dot") not in (None, False, True):
            raise ValueError(f"benchmark spec {i} ({spec.get('name', spec['benchmark'])}): underscore_to_dot must be "
                             f"true or false, got {spec['underscore_to_dot']!r}")
        if spec.get("underscore_to_dot") and spec["benchmark"] != "toolcall":
            raise ValueError(f"benchmark spec {i} ({spec.get('name', spec['benchmark'])}): underscore_to_dot applies "
                             f"to the toolcall benchmark only")
        spec = {**spec, "name": str(spec.get("name") or spec["benchmark"])}
        if spec["name"] in names:
            raise ValueError(f"benchmark spec {i}: name {spec['name']!r} is used twice")
        names.add(spec["name"])
        out.append(spec)
    return out
