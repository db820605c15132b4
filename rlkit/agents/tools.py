"""Tools: plain Python functions, their JSON schemas, the parser of the model's calls, and the
executor that runs each call in a worker process under a time limit.

A tool is a module-level function with type hints and a Google-style docstring (a summary line
and an ``Args:`` entry per parameter); its keyword-only parameters (after ``*``) belong to the
environment: they are left out of the schema and filled from ``Environment.tool_kwargs()`` (a
database path, say), so the model can neither see nor set them.  The schema comes from
transformers' ``get_json_schema``,
the one chat templates take as ``tools=``.  A function that cannot be described that way is
refused with ``ToolError`` when the environment is built, naming the function and what is missing.

The model calls a tool with the ``<tool_call>`` layout that ToolRL's data and Hermes/Qwen-style
chat templates share: one JSON object ``{"name": ..., "arguments": {...}}`` per line between a
``<tool_call>`` line and a ``</tool_call>`` line.  ``parse_tool_calls`` reads them strictly: a
block that is not that (bad JSON, no name, arguments that are not an object) becomes a
``ToolCall`` with ``error`` set, which the runner turns into an error observation.

``ToolExecutor`` runs every call in a worker of ``rewards.pool.WorkerPool`` (spawned processes):
a call that raises, hangs past ``timeout_s`` (its worker is killed and replaced) or returns
something huge (cut to ``max_chars`` in the worker) yields an error or a truncated observation;
nothing a tool does changes the trainer's process.
"""
from __future__ import annotations

import inspect
import json
import re
from dataclasses import dataclass, field
from typing import Callable

CALL_START, CALL_END = "<tool_call>", "</tool_call>"
TOOL_CALL_BLOCK = re.compile(re.escape(CALL_START) + r"(.*?)" + re.escape(CALL_END), re.DOTALL)


class ToolError(ValueError):
    """A tool that cannot be used: no schema-able signature, not importable by a worker, a duplicate name."""


@dataclass(frozen=True)
class Tool:
    name: str
    fn: Callable
    schema: dict                     # {"type": "function", "function": {name, description, parameters}}
    hidden: tuple[str, ...] = ()     # keyword-only parameters: the environment's, not in the schema


def make_tool(fn: Callable) -> Tool:
    """A ``Tool`` from a module-level function with type hints and a Google-style docstring."""
    from transformers.utils import get_json_schema

    if not callable(fn) or not hasattr(fn, "__name__"):
        raise ToolError(f"tool {fn!r} is not a function")
    where = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', fn.__name__)}"
    if "<locals>" in where or "<lambda>" in where:
        raise ToolError(f"tool {where}: must be a module-level function (a worker process imports it by name)")
    try:
        schema = get_json_schema(fn)
    except Exception as exc:  # noqa: BLE001 - transformers raises several types for one cause
        raise ToolError(f"tool {where} has no schema-able signature: {exc} (give every parameter a type hint "
                        "and an 'Args:' line in a Google-style docstring)") from None
    hidden = tuple(n for n, p in inspect.signature(fn).parameters.items() if p.kind is p.KEYWORD_ONLY)
    params = schema["function"].get("parameters", {})
    for name in hidden:  # filled by Environment.tool_kwargs(), never by the model
        params.get("properties", {}).pop(name, None)
        if name in params.get("required", []):
            params["required"].remove(name)
    return Tool(name=fn.__name__, fn=fn, schema=schema, hidden=hidden)


def make_tools(fns) -> dict[str, Tool]:
    tools: dict[str, Tool] = {}
    for fn in fns:
        tool = make_tool(fn)
        if tool.name in tools:
            raise ToolError(f"two tools are named {tool.name!r}")
        tools[tool.name] = tool
    return tools


@dataclass
class ToolCall:
    name: str | None
    arguments: dict = field(default_factory=dict)
    error: str | None = None         # a malformed call: what is wrong with it


def parse_tool_calls(text: str) -> list[ToolCall]:
    """The calls in a model turn: every ``<tool_call>`` block, one JSON object per non-empty line
    (``{"name": str, "arguments": object}``); a malformed line or block is a ``ToolCall`` with
    ``error``.  A ``<tool_call>`` left open (the turn was cut) is an error call too."""
    calls: list[ToolCall] = []
    for block in TOOL_CALL_BLOCK.findall(text):
        lines = [line.strip() for line in block.strip().splitlines() if line.strip()]
        if not lines:
            calls.append(ToolCall(None, error="empty <tool_call> block"))
        for line in lines:
            calls.append(_parse_line(line))
    tail = text.rsplit(CALL_END, 1)[-1]
    if CALL_START in tail:
        calls.append(ToolCall(None, error="<tool_call> without </tool_call>"))
    return calls


def _parse_line(line: str) -> ToolCall:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        return ToolCall(None, error=f"not JSON ({exc.msg} at column {exc.colno})")
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return ToolCall(None, error='expected {"name": "...", "arguments": {...}}')
    args = obj.get("arguments", {})
    if isinstance(args, str):  # some templates put the arguments as a JSON string
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            pass
    if not isinstance(args, dict):
        return ToolCall(obj["name"], error="arguments must be a JSON object")
    return ToolCall(obj["name"], args)


def run_tool(completions: list, *, fn: Callable, arguments: dict, max_chars: int) -> list:
    """Worker side of one call (``rewards.pool`` calls ``fn(completions, **columns)``): the
    result as text, cut to ``max_chars`` here so a huge result never crosses the pipe."""
    out = fn(**arguments)
    text = out if isinstance(out, str) else json.dumps(out, default=str)
    if len(text) > max_chars:
        text = text[:max_chars] + f"... [cut: {len(text)} characters]"
    return [text]


def load_modules(completions: list, *, modules: list[str]) -> list:
    """Worker side of ``ToolExecutor.start``: import the tools' modules once."""
    import importlib

    for name in modules:
        importlib.import_module(name)
    return [len(modules)]


@dataclass
class ToolResult:
    name: str | None
    content: str
    ok: bool


class ToolExecutor:
    """Runs calls in ``num_workers`` worker processes, ``timeout_s`` each (rewards/pool.py)."""

    def __init__(self, tools: dict[str, Tool], timeout_s: float = 5.0, num_workers: int = 2,
                 max_chars: int = 2000):
        from rewards.pool import WorkerPool

        self.tools, self.timeout_s, self.max_chars = tools, timeout_s, max_chars
        self.pool = WorkerPool(num_workers) if tools else None

    def start(self) -> None:
        """Start the workers and import the tools' modules in each (before the first step, so
        no call waits for a worker to start)."""
        if self.pool is None:
            return
        modules = sorted({t.fn.__module__ for t in self.tools.values()})
        job = ([""], {"modules": modules})
        for status, payload in self.pool.run_rows(load_modules, [job] * self.pool.num_workers, 120.0):
            if status != "ok":
                raise ToolError(f"tool workers could not import {', '.join(modules)}: {payload}")

    def run(self, calls: list[ToolCall], bound: dict | None = None) -> list[ToolResult]:
        """One result per call, in order; problems become error results, never exceptions.
        ``bound``: the environment's values of the tools' keyword-only parameters."""
        results: list[ToolResult | None] = [None] * len(calls)
        jobs, where = [], []
        for i, call in enumerate(calls):
            problem = call.error or self._check(call)
            if problem:
                results[i] = ToolResult(call.name, f"Error: {problem}", ok=False)
                continue
            tool = self.tools[call.name]
            hidden = {k: v for k, v in (bound or {}).items() if k in tool.hidden}
            jobs.append(([""], {"fn": tool.fn, "arguments": {**call.arguments, **hidden}, "max_chars": self.max_chars}))
            where.append(i)
        if jobs:
            for i, (status, payload) in zip(where, self.pool.run_rows(run_tool, jobs, self.timeout_s)):
                if status == "ok":
                    results[i] = ToolResult(calls[i].name, str(payload[0]), ok=True)
                else:
                    first = str(payload).strip().splitlines()[0] if str(payload).strip() else status
                    results[i] = ToolResult(calls[i].name, f"Error: {first}"[: self.max_chars], ok=False)
        return results  # type: ignore[return-value]

    def _check(self, call: ToolCall) -> str | None:
        tool = self.tools.get(call.name)
        if tool is None:
            return f"unknown tool {call.name!r}; available: {', '.join(sorted(self.tools)) or 'none'}"
        params = {n: p for n, p in inspect.signature(tool.fn).parameters.items() if n not in tool.hidden}
        missing = [n for n, p in params.items() if p.default is inspect.Parameter.empty and n not in call.arguments]
        extra = [n for n in call.arguments if n not in params]
        if missing or extra:
            return (f"{call.name} takes ({', '.join(params)})"
                    + (f"; missing {', '.join(missing)}" if missing else "")
                    + (f"; unexpected {', '.join(extra)}" if extra else ""))
        return None

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
