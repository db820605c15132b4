"""Tool-calling prompt datasets for the ToolRL rewards (rewards/toolrl.py; ToolRL, arXiv 2504.13958,
spec section 6).

Every loader returns rows ``{"prompt": [chat messages], "ground_truth": <reference assistant text
with <think>/<tool_call>/<response> tags>, "tools": [tool schemas], "category": str}``;
``ground_truth`` is what ``rewards.toolrl.ToolRLReward`` reads.

Two record kinds (``load_tool_rows(path, format="auto")`` tells them apart by their keys):

- ToolRL (``rlla_sft.json``): ``{"instruction", "input", "output"}``. ``instruction`` is the system
  text; it already lists the tools ("1. Name: …\\nDescription: …\\nParameters: {json}") and the
  output format, so the prompt is ``[system: instruction, user: input]`` verbatim (the dialogue
  history stays one user message, as in ToolRL). ``tools`` is parsed from the listing into
  ``{"name", "description", "parameters": {"type": "object", "properties": {...}}}``.
  ``ground_truth`` is ``output`` verbatim; ``category`` is the layout of that reference
  ("tool_call", "response", "tool_call+response" or "think").
- BFCL (Berkeley Function Calling Leaderboard): ``{"id", "question", "function", "ground_truth"}``
  with ``question`` a list of messages or ``[[messages]]`` (one turn; several turns are refused),
  ``function`` the JSON-schema tools and ``ground_truth`` a list of ``{func_name: {param:
  [allowed values…]}}``. The prompt is ``system_prompt(tools)`` followed by the question's
  messages (a system message of the question is appended to ours, one system message in all).
  The reference text is ``<think></think>\\n<tool_call>\\n`` + one ``{"name", "parameters"}`` line
  per call + ``\\n</tool_call>``, each parameter taking its first allowed value that is not ""
  (BFCL's marker for "may be omitted"); a parameter whose only allowed value is "" is left out;
  a dict value's entries are resolved the same way (BFCL nests allowed-value lists there). An
  empty ``ground_truth`` list (BFCL "irrelevance": no call expected) gives
  ``<think></think>\\n<response></response>``. ``category`` is the record's ``category`` if
  present, else its ``id`` without the trailing index ("live_simple_3-2-0" → "live_simple"),
  else "bfcl".

BFCL's published files keep the answers apart: a question file (``BFCL_v4_simple_python.json``:
``id``, ``question``, ``function``) and ``possible_answer/<the same file name>`` beside it (``id``,
``ground_truth``); ``join_possible_answers`` joins them by ``id`` (the loaders do this for question
records without ``ground_truth``). Irrelevance files, which BFCL publishes without answers, get an
empty ``ground_truth`` (no call expected).

Files: a JSON list, or JSON lines (.jsonl, and BFCL's own .json files, which hold one object per
line). Bad input raises ``rlkit.records.DataError`` (a ValueError) naming the file, the record index
and the missing or bad key.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from rlkit.records import DataError, json_lines

TOOLRL_KEYS = ("instruction", "input", "output")
BFCL_KEYS = ("question", "function", "ground_truth")
_TOOL_ENTRY = re.compile(r"^\d+\.\s*Name:\s*(.*?)\nDescription:\s*(.*?)\nParameters:\s*(.*?)(?=\n\d+\.\s*Name:|\Z)",
                         re.DOTALL | re.MULTILINE)
_BFCL_INDEX = re.compile(r"_\d+(?:-\d+)*$")

OUTPUT_FORMAT = """\
Answer in exactly this format:
<think> your reasoning </think>
<tool_call>
{"name": "tool name", "parameters": {"parameter name": "value", "...": "..."}}
{"name": "another tool", "parameters": {}}
</tool_call>
<response> your reply to the user </response>

Rules:
1. Always start with <think>. Then give a <tool_call> block, a <response> block, or both (tool calls first).
2. Inside <tool_call>, write one JSON object per line with a "name" and a "parameters" object \
(an empty object when the tool takes no parameters).
3. Use each tag once, put exactly one newline between blocks, write nothing after the last block, \
and do not write the tag names inside your reasoning."""


def system_prompt(tools: list[dict]) -> str:
    """The system message for a tool-calling prompt: the tools as JSON and the output format of
    ToolRL (arXiv 2504.13958; spec section 6) that ``rewards.toolrl`` checks."""
    listing = json.dumps(tools, indent=2, ensure_ascii=False)
    return ("You are a helpful assistant that can call tools to solve the user's task.\n\n"
            f"Available tools (JSON schema):\n{listing}\n\n{OUTPUT_FORMAT}")


def read_tool_records(path: str | Path) -> list[Any]:
    """Records of a JSON list file or of a JSON-lines file (whatever the suffix; a file holding a
    single JSON object is one record)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"data file not found: {path}")
    text = p.read_text(encoding="utf-8")
    if p.suffix != ".jsonl":
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = None  # maybe JSON lines (BFCL's .json files)
        if isinstance(data, list):
            return data
        if isinstance(data, dict):
            return [data]  # one JSON object: JSON lines with a single record
        if data is not None:
            raise DataError(f"{path}: expected a JSON list of records or JSON lines, got {type(data).__name__}")
    return json_lines(text, path)


def _limited(records: list[Any], limit: int | None) -> list[Any]:
    if limit is None:
        return records
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    return records[:limit]


def _require(record: Any, keys: tuple[str, ...], path: str | Path, index: int) -> dict:
    if not isinstance(record, dict):
        raise DataError(f"{path}, record {index + 1}: expected an object, got {type(record).__name__}")
    for key in keys:
        if key not in record:
            raise DataError(f"{path}, record {index + 1}: missing key {key!r} (keys: {', '.join(map(str, record))})")
    return record


def _bad(path: str | Path, index: int, key: str, why: str) -> DataError:
    return DataError(f"{path}, record {index + 1}: key {key!r}: {why}")


# ---- ToolRL ---------------------------------------------------------------------------------

def parse_toolrl_tools(instruction: str) -> list[dict]:
    """The tools listed in a ToolRL system text ("N. Name: …\\nDescription: …\\nParameters: {json}"),
    as JSON-schema tools; [] when there is no "**Available Tools**" section. ValueError when a
    ``Parameters`` value is not a JSON object."""
    start = instruction.find("**Available Tools**")
    if start < 0:
        return []
    section = instruction[start:]
    end = section.find("\n**", len("**Available Tools**"))
    section = section if end < 0 else section[:end]
    tools = []
    for name, description, params in _TOOL_ENTRY.findall(section):
        try:
            properties = json.loads(params.strip())
        except json.JSONDecodeError as exc:
            raise ValueError(f"tool {name.strip()!r}: Parameters is not valid JSON ({exc.msg})") from exc
        if not isinstance(properties, dict):
            raise ValueError(f"tool {name.strip()!r}: Parameters is not a JSON object")  # noqa: TRY004 - bad data
        tools.append({"name": name.strip(), "description": description.strip(),
                      "parameters": {"type": "object", "properties": properties}})
    return tools


def _layout_category(reference: str) -> str:
    from rewards.toolrl import reference_layout

    blocks = reference_layout(reference)[1:]
    return "+".join(blocks) if blocks else "think"


def toolrl_row(record: Any, path: str | Path = "<records>", index: int = 0) -> dict:
    """One ToolRL record (``instruction``, ``input``, ``output``) as a row (module docstring)."""
    record = _require(record, TOOLRL_KEYS, path, index)
    for key in TOOLRL_KEYS:
        if not isinstance(record[key], str):
            raise _bad(path, index, key, f"expected a string, got {type(record[key]).__name__}")
    if not record["output"].strip():
        raise _bad(path, index, "output", "empty reference")
    try:
        tools = parse_toolrl_tools(record["instruction"])
    except ValueError as exc:
        raise _bad(path, index, "instruction", str(exc)) from exc
    return {"prompt": [{"role": "system", "content": record["instruction"]},
                       {"role": "user", "content": record["input"]}],
            "ground_truth": record["output"], "tools": tools, "category": _layout_category(record["output"])}


def load_toolrl(path: str | Path, limit: int | None = None) -> list[dict]:
    """Rows of a ToolRL file such as rlla_sft.json (the first ``limit`` records when given)."""
    records = _limited(read_tool_records(path), limit)
    return [toolrl_row(r, path, i) for i, r in enumerate(records)]


# ---- BFCL -----------------------------------------------------------------------------------

def _question_messages(question: Any, path: str | Path, index: int) -> list[dict]:
    if isinstance(question, str):
        return [{"role": "user", "content": question}]
    if not isinstance(question, list) or not question:
        raise _bad(path, index, "question", "expected a non-empty list of messages (or [[messages]])")
    if all(isinstance(turn, list) for turn in question):
        turns = [turn for turn in question if turn]
        if len(turns) != 1:
            raise _bad(path, index, "question", f"{len(turns)} turns; only single-turn records are supported")
        question = turns[0]
    for message in question:
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise _bad(path, index, "question", f"expected messages with 'role' and 'content', got {message!r:.80}")
    return [{"role": m["role"], "content": m["content"]} for m in question]


def _first_allowed(allowed: Any) -> tuple[bool, Any]:
    """(found, value): the first allowed value that is not "" (resolving dict entries alike)."""
    for value in allowed:
        if value == "":
            continue
        if isinstance(value, dict):
            return True, _resolve_params(value)
        return True, value
    return False, None


def _resolve_params(params: dict) -> dict:
    resolved = {}
    for name, allowed in params.items():
        if not isinstance(allowed, list):
            raise ValueError(  # noqa: TRY004 - bad data: the loaders raise ValueError (DataError)
                f"parameter {name!r}: expected a list of allowed values, got {allowed!r:.80}")
        found, value = _first_allowed(allowed)
        if found:
            resolved[name] = value
    return resolved


def bfcl_reference(ground_truth: list, path: str | Path = "<records>", index: int = 0) -> str:
    """The reference assistant text for a BFCL ground truth (module docstring)."""
    if not isinstance(ground_truth, list):
        raise _bad(path, index, "ground_truth", f"expected a list, got {type(ground_truth).__name__}")
    if not ground_truth:
        return "<think></think>\n<response></response>"
    lines = []
    for entry in ground_truth:
        if not isinstance(entry, dict) or len(entry) != 1:
            raise _bad(path, index, "ground_truth", f"expected {{function name: {{param: [values]}}}}, got {entry!r:.80}")
        (name, params), = entry.items()
        if not isinstance(params, dict):
            raise _bad(path, index, "ground_truth", f"call {name!r}: parameters must be an object")
        try:
            call = {"name": name, "parameters": _resolve_params(params)}
        except ValueError as exc:
            raise _bad(path, index, "ground_truth", f"call {name!r}: {exc}") from exc
        lines.append(json.dumps(call, ensure_ascii=False))
    return "<think></think>\n<tool_call>\n" + "\n".join(lines) + "\n</tool_call>"


def _bfcl_category(record: dict) -> str:
    if isinstance(record.get("category"), str):
        return record["category"]
    if isinstance(record.get("id"), str) and record["id"]:
        return _BFCL_INDEX.sub("", record["id"])
    return "bfcl"


def bfcl_row(record: Any, path: str | Path = "<records>", index: int = 0) -> dict:
    """One BFCL record (``question``, ``function``, ``ground_truth``) as a row (module docstring)."""
    record = _require(record, BFCL_KEYS, path, index)
    tools = record["function"]
    tools = [tools] if isinstance(tools, dict) else tools
    if not isinstance(tools, list) or not all(isinstance(t, dict) and "name" in t for t in tools):
        raise _bad(path, index, "function", "expected a list of tool schemas with a 'name' each")
    messages = _question_messages(record["question"], path, index)
    system = system_prompt(tools)
    if messages[0]["role"] == "system":
        system = f"{system}\n\n{messages.pop(0)['content']}"
    return {"prompt": [{"role": "system", "content": system}] + messages,
            "ground_truth": bfcl_reference(record["ground_truth"], path, index),
            "tools": tools, "category": _bfcl_category(record)}


def load_bfcl(path: str | Path, limit: int | None = None) -> list[dict]:
    """Rows of a BFCL file: records with inline ``ground_truth``, or a BFCL question file whose
    answers are in ``possible_answer/`` (``join_possible_answers``); the first ``limit`` records
    when given."""
    records = join_possible_answers(_limited(read_tool_records(path), limit), path)
    return [bfcl_row(r, path, i) for i, r in enumerate(records)]


def _is_question_record(record: Any) -> bool:
    return (isinstance(record, dict) and "question" in record and "function" in record
            and "ground_truth" not in record and not all(k in record for k in TOOLRL_KEYS))


def possible_answer_path(path: str | Path) -> Path:
    """Where BFCL keeps the answers of question file ``path``: ``possible_answer/<its name>`` beside it."""
    return Path(path).parent / "possible_answer" / Path(path).name


def join_possible_answers(records: list[Any], path: str | Path) -> list[Any]:
    """BFCL question records (``id``, ``question``, ``function``, no ``ground_truth``) with the
    ``ground_truth`` of their ``id`` in ``possible_answer_path(path)``; other records unchanged.

    Without that file, records whose ids all name an irrelevance category get ``[]`` (no call
    expected); otherwise, and for a question whose id has no answer there, a DataError names the
    file and the record.
    """
    if not any(_is_question_record(r) for r in records):
        return records
    answers_path = possible_answer_path(path)
    questions = [(i, r) for i, r in enumerate(records) if _is_question_record(r)]
    for i, record in questions:
        if record.get("id") is None:
            raise _bad(path, i, "id", "a BFCL question record without ground_truth needs an id to find its "
                                      f"answer in {answers_path}")
    if not answers_path.is_file():
        if all("irrelevance" in str(r["id"]) for _, r in questions):
            return [{**r, "ground_truth": []} if _is_question_record(r) else r for r in records]
        raise DataError(f"{path}: BFCL question records (no 'ground_truth') need their possible answers in "
                        f"{answers_path} (BFCL's possible_answer/ folder, same file name); that file does not exist")
    by_id: dict[Any, Any] = {}
    for j, answer in enumerate(read_tool_records(answers_path)):
        answer = _require(answer, ("id", "ground_truth"), answers_path, j)
        by_id[answer["id"]] = answer["ground_truth"]
    out = list(records)
    for i, record in questions:
        if record["id"] not in by_id:
            raise _bad(path, i, "id", f"{record['id']!r} has no entry in {answers_path}")
        out[i] = {**record, "ground_truth": by_id[record["id"]]}
    return out


# ---- either ---------------------------------------------------------------------------------

def detect_format(record: Any, path: str | Path = "<records>", index: int = 0) -> str:
    """"toolrl" or "bfcl" from a record's keys; DataError when neither key set is complete."""
    if isinstance(record, dict):
        if all(k in record for k in TOOLRL_KEYS):
            return "toolrl"
        if all(k in record for k in BFCL_KEYS):
            return "bfcl"
        keys = ", ".join(map(str, record))
    else:
        keys = type(record).__name__
    raise DataError(f"{path}, record {index + 1}: neither a ToolRL record (keys {', '.join(TOOLRL_KEYS)}) "
                    f"nor a BFCL record (keys {', '.join(BFCL_KEYS)}); got {keys}")


def load_tool_rows(path: str | Path, format: str = "auto", limit: int | None = None) -> list[dict]:
    """Rows of a ToolRL or BFCL file; ``format="auto"`` decides from the first record's keys (and
    every record is then read as that kind)."""
    if format not in ("auto", "toolrl", "bfcl"):
        raise ValueError(f"format must be 'auto', 'toolrl' or 'bfcl', got {format!r}")
    records = _limited(read_tool_records(path), limit)
    if not records:
        return []
    if format != "toolrl":
        records = join_possible_answers(records, path)
    kind = detect_format(records[0], path, 0) if format == "auto" else format
    make = toolrl_row if kind == "toolrl" else bfcl_row
    return [make(r, path, i) for i, r in enumerate(records)]


_THINK = re.compile(r"^\s*<think>(.*?)</think>", re.DOTALL)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def short_think_target(row: dict, sentences: int = 1) -> str:
    """A row's reference (``ground_truth``) with its ``<think>`` block cut to the first ``sentences``
    sentences, the calls and response unchanged: a warm-start target (``rlkit sft --target-fn
    rlkit.tasks.toolcall:short_think_target``) a small model can learn to finish within a short
    generation budget.  A reference without a leading ``<think>`` block is returned as it is."""
    reference = row["ground_truth"]
    match = _THINK.match(reference)
    if not match:
        return reference
    kept = " ".join(_SENTENCE_END.split(match.group(1).strip())[:sentences])
    return f"<think> {kept} </think>{reference[match.end():]}"
