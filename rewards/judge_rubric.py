"""The judge's rubric, its prompt and the parser of its replies (rewards/judge.py gives the overview).

A rubric is a list of items ``{"id": str, "description": str, "min": number, "max": number}``
(``Rubric``, ``RubricItem``).  The judge is asked (``judge_messages``) for one line per item and
nothing else::

    <item id>: <score> - <one short sentence of rationale>

``parse_scores`` reads that reply robustly: markdown bold/backticks, bullets and numbering, extra
spaces, ``(0-5)`` after the id, ``=`` or `` - `` instead of ``:``; scores written ``4``, ``4.0``,
``4/5``, ``4 out of 5`` or ``80%`` (a fraction whose denominator is not the item's max, and a
percentage, are rescaled onto the item's range); also a JSON object (``{"<id>": 4}`` or
``{"<id>": {"score": 4, "rationale": "..."}}``) or a JSON list of ``{"id", "score", "rationale"}``.
Scores are clamped to the item's range.  An item that is missing or malformed (an echoed range such
as ``task_fit: 0-5`` included) scores 0, clamped into its range (its min when that is above 0), and
is counted in the ``parse_failures`` metric.  The parser never raises, whatever the text.
``judge_regex`` is the regular expression of a well-formed reply (constrained decoding).
No torch or rlkit import here.
"""
from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rewards.pool import RewardError

logger = logging.getLogger("rewards.judge")

Messages = list[dict[str, str]]
MAX_PARSE_CHARS = 20_000   # longer judge replies are cut before parsing (the scores come first)


class JudgeError(RewardError):
    """The judge could not be reached or answered nonsense for a whole batch (with ``on_error:
    raise``).  A ``RewardError``, so ``CombinedReward`` stops the run instead of failing row by row."""


# ---------------------------------------------------------------------------------------- rubrics

@dataclass(frozen=True)
class RubricItem:
    """One criterion: ``id`` (short, lowercase), what it measures, and its score range."""

    id: str
    description: str
    min: float = 0.0
    max: float = 5.0

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "description": self.description, "min": _plain(self.min), "max": _plain(self.max)}

    def line(self) -> str:
        """``- id (min-max): description``, the form the judge and the meta model read."""
        return f"- {self.id} ({_fmt(self.min)}-{_fmt(self.max)}): {self.description}"


@dataclass(frozen=True)
class Rubric:
    """An ordered tuple of ``RubricItem``; the judge's score is the sum over the items."""

    items: tuple[RubricItem, ...]

    def __post_init__(self) -> None:
        if not self.items:
            raise ValueError("a rubric needs at least one item")
        ids = [item.id for item in self.items]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(f"rubric item ids must be unique; repeated: {dup}")

    @property
    def max_total(self) -> float:
        return float(sum(item.max for item in self.items))

    @property
    def min_total(self) -> float:
        return float(sum(item.min for item in self.items))

    @property
    def ids(self) -> list[str]:
        return [item.id for item in self.items]

    def to_list(self) -> list[dict[str, Any]]:
        return [item.to_dict() for item in self.items]

    def format(self) -> str:
        return "\n".join(item.line() for item in self.items)

    @classmethod
    def from_list(cls, data: Any, where: str = "rubric") -> Rubric:
        """A rubric from a list of item mappings; a bad item is a ValueError naming ``where[i].key``."""
        if isinstance(data, Rubric):
            return data
        if isinstance(data, dict) and isinstance(data.get("items"), (list, tuple)):
            data = data["items"]
        if not isinstance(data, (list, tuple)) or not data:
            raise ValueError(f"{where}: expected a non-empty list of items, got {data!r}")
        return cls(tuple(_item_from_mapping(raw, f"{where}[{i}]") for i, raw in enumerate(data)))


def _item_from_mapping(raw: Any, where: str) -> RubricItem:
    if isinstance(raw, RubricItem):
        return raw
    if not isinstance(raw, dict):
        raise TypeError(f"{where}: expected a mapping with id, description, min, max; got {raw!r}")
    unknown = sorted(set(raw) - {"id", "description", "min", "max"})
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown} (an item has id, description, min, max)")
    for key in ("id", "description"):
        if not isinstance(raw.get(key), str) or not raw[key].strip():
            raise ValueError(f"{where}.{key}: expected a non-empty string, got {raw.get(key)!r}")
    item_id = normalise_id(raw["id"])
    if not item_id:
        raise ValueError(f"{where}.id: {raw['id']!r} has no letters or digits")
    low, high = raw.get("min", 0), raw.get("max", 5)
    for key, value in (("min", low), ("max", high)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{where}.{key}: expected a finite number, got {value!r}")
    if not low < high:
        raise ValueError(f"{where}: min ({low}) must be below max ({high})")
    return RubricItem(item_id, " ".join(raw["description"].split()), float(low), float(high))


def normalise_id(text: str) -> str:
    """``"Task Fit "`` -> ``"task_fit"``: lowercase, runs of other characters -> ``_``, at most 40 chars."""
    out = re.sub(r"[^0-9a-z]+", "_", str(text).lower()).strip("_")
    return out[:40].strip("_")


def normalise_description(text: str) -> str:
    """Lowercase, punctuation stripped, spaces collapsed: the key that deduplicates items."""
    return " ".join(re.sub(r"[^\w\s]|_", " ", str(text).lower()).split())


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _plain(x: float) -> int | float:
    return int(x) if float(x).is_integer() else float(x)


DEFAULT_RUBRIC = Rubric.from_list([
    {"id": "task_fit", "description": "Does what the prompt asks: topic, form and any length or line constraints.",
     "min": 0, "max": 5},
    {"id": "language", "description": "Fluent, grammatical English with no repetition or broken sentences.",
     "min": 0, "max": 5},
    {"id": "craft", "description": "Vivid, specific and original wording rather than generic phrases.",
     "min": 0, "max": 5},
])


# ---------------------------------------------------------------------------------------- parsing

@dataclass
class Judgement:
    """One row's parsed reply: per-item scores (0 where missing, then clamped), rationales and the
    number of items that were missing or malformed."""

    scores: list[float]
    rationales: list[str]
    missing: int

    @property
    def total(self) -> float:
        return float(sum(self.scores))


_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)"
_SCORE_TEXT = re.compile(
    rf"^\s*(?P<num>{_NUMBER})(?:\s*(?P<pct>%)|\s*(?:/|out\s+of|of)\s*(?P<den>{_NUMBER}))?\s*(?:points?|pts\.?)?"
    r"\s*[-\u2013\u2014:,;|.)\]]*\s*(?P<why>.*)$", re.IGNORECASE | re.DOTALL)
_ECHOED_RANGE = re.compile(rf"^\s*\(?\s*{_NUMBER}\s*(?:-|\u2013|to)\s*{_NUMBER}\s*\)?\s*$", re.IGNORECASE)
_BULLET = re.compile(r"^\s*(?:[-+\u2022>]|\d{1,2}[.)]|\(?[a-z][.)])?\s*", re.IGNORECASE)
_RANGE_NOTE = re.compile(r"\(.*?\)|\[.*?\]")
_KEY_SEP = re.compile(r"^(?P<key>[^:=\n]{1,80}?)\s*[:=]\s*(?P<rest>.*)$")                       # "id: 4 - why"
_KEY_DASH = re.compile(r"^(?P<key>[^:=\n]{1,80}?)\s+[-\u2013\u2014]\s+(?P<rest>[-+]?\.?\d.*)$")   # "id - 4 - why"


def parse_scores(text: Any, rubric: Rubric) -> Judgement:
    """The item scores in a judge reply (format in the module docstring).  Never raises."""
    n = len(rubric.items)
    found: dict[int, tuple[float, str]] = {}
    try:
        reply = _as_text(text)[:MAX_PARSE_CHARS]
        index = {item.id: i for i, item in enumerate(rubric.items)}
        for i, value in _json_scores(reply, index, rubric).items():
            found.setdefault(i, value)
        for line in reply.splitlines():
            hit = _line_score(line, index, rubric)
            if hit is not None and hit[0] not in found:
                found[hit[0]] = hit[1]
    except Exception:
        logger.debug("judge reply could not be parsed", exc_info=True)
    scores, rationales = [], []
    for i, item in enumerate(rubric.items):
        score, why = found.get(i, (0.0, ""))
        scores.append(min(max(score, item.min), item.max))
        rationales.append(why)
    return Judgement(scores, rationales, n - len(found))


def _as_text(text: Any) -> str:
    if isinstance(text, str):
        return text
    if isinstance(text, (bytes, bytearray)):
        return bytes(text).decode("utf-8", errors="replace")
    return "" if text is None else str(text)


def _line_score(line: str, index: dict[str, int], rubric: Rubric) -> tuple[int, tuple[float, str]] | None:
    """``(item index, (score, rationale))`` for one ``id: score - rationale`` line, else None."""
    clean = line.replace("**", "").replace("__", " ").replace("`", "").replace("*", "").replace("#", "")
    clean = _BULLET.sub("", clean, count=1)
    match = _KEY_SEP.match(clean) or _KEY_DASH.match(clean)
    if match is None:
        return None
    key = normalise_id(_RANGE_NOTE.sub(" ", match.group("key")))
    if key not in index:
        return None
    item = rubric.items[index[key]]
    value = _score_value(match.group("rest"), item)
    return None if value is None else (index[key], value)


def _score_value(rest: str, item: RubricItem) -> tuple[float, str] | None:
    if _ECHOED_RANGE.match(rest):  # "task_fit: 0-5" repeats the rubric; it is no score
        return None
    match = _SCORE_TEXT.match(rest)
    if match is None:
        return None
    score = _number(match.group("num"), "100" if match.group("pct") else match.group("den"), item)
    return None if score is None else (score, match.group("why").strip()[:500])


def _number(num: Any, den: Any, item: RubricItem) -> float | None:
    """A finite score on the item's scale: ``num``, or ``num/den`` of the range when ``den`` is
    given and is not the item's max."""
    try:
        value = float(num)
        scale = None if den in (None, "") else float(den)
    except (TypeError, ValueError, OverflowError):
        return None
    if not math.isfinite(value) or (scale is not None and not math.isfinite(scale)):
        return None
    if scale is not None and scale > 0 and scale != item.max:
        value = item.min + value / scale * (item.max - item.min)
    return value


def _json_scores(reply: str, index: dict[str, int], rubric: Rubric) -> dict[int, tuple[float, str]]:
    """Scores from a JSON object or list inside the reply (empty when there is none)."""
    data = _first_json(reply)
    if isinstance(data, dict) and isinstance(data.get("scores"), (dict, list)):
        data = data["scores"]
    pairs: list[tuple[Any, Any]] = []
    if isinstance(data, dict):
        pairs = list(data.items())
    elif isinstance(data, list):
        pairs = [(entry.get("id", entry.get("item")), entry) for entry in data if isinstance(entry, dict)]
    out: dict[int, tuple[float, str]] = {}
    for key, value in pairs:
        i = index.get(normalise_id(str(key)))
        if i is None or i in out:
            continue
        why = ""
        if isinstance(value, dict):
            why = str(value.get("rationale", value.get("reason", "")))[:500]
            value = value.get("score")
        if isinstance(value, str):
            parsed = _score_value(value, rubric.items[i])
            score = None if parsed is None else parsed[0]
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            score = _number(value, None, rubric.items[i])
        else:
            score = None
        if score is not None:
            out[i] = (score, why)
    return out


def _first_json(text: str, pick: Callable[[Any], Any] | None = None) -> Any:
    """The first JSON value in ``text`` (decoded from a ``{`` or ``[``, at most 20 tries) for which
    ``pick(value)`` is not None, and that result; by default the first non-empty object or list."""
    if "{" not in text and "[" not in text:
        return None
    pick = pick or (lambda value: value if isinstance(value, (dict, list)) and value else None)
    decoder = json.JSONDecoder()
    for tries, match in enumerate(re.finditer(r"[\[{]", text)):
        if tries == 20:  # enough for any reply that holds JSON; bounds the work on garbage
            break
        try:
            value, _ = decoder.raw_decode(text, match.start())
        except (ValueError, RecursionError):
            continue
        picked = pick(value)
        if picked is not None:
            return picked
    return None


# ---------------------------------------------------------------------------------------- prompts

def prompt_text(prompt: Any) -> str:
    """The task a completion answers: a text prompt, or the last user message of a chat prompt."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, (list, tuple)):
        users = [m.get("content", "") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
        if users:
            return str(users[-1])
        return "\n".join(str(m.get("content", "")) for m in prompt if isinstance(m, dict))
    return "" if prompt is None else str(prompt)


def clip_text(text: str, max_chars: int) -> str:
    return text if len(text) <= max_chars else text[:max_chars] + " [...]"


JUDGE_SYSTEM = "You are a strict, fair grader. You follow the answer format exactly."


def judge_messages(rubric: Rubric, task: str, completion: str, max_chars: int = 3000,
                   system: str | None = JUDGE_SYSTEM) -> Messages:
    """The chat messages asking the judge for one ``<id>: <score> - <rationale>`` line per item."""
    template = "\n".join(f"{item.id}: <score {_fmt(item.min)}-{_fmt(item.max)}> - <rationale>" for item in rubric.items)
    user = (f"Grade the RESPONSE to the TASK with the rubric below.\n\n"
            f"TASK:\n{clip_text(task, max_chars)}\n\n"
            f"RESPONSE:\n{clip_text(completion, max_chars)}\n\n"
            f"RUBRIC (item id, score range, what it measures):\n{rubric.format()}\n\n"
            f"Answer with exactly one line per rubric item and nothing else, in this form:\n{template}")
    messages = [{"role": "system", "content": system}] if system else []
    return messages + [{"role": "user", "content": user}]


def judge_regex(rubric: Rubric, max_tokens: int, rationale_chars: int | None = None) -> str:
    """The regular expression of a well-formed judge reply: one ``<id>: <score> - <rationale>``
    line per item, in the rubric's order.  A score is an integer of the item's range where the
    range has integer ends (at most 100 values), else a signed decimal; a rationale starts with a
    letter (so that ``3 - 5 ...`` cannot read as an echoed range) and has 1 to R characters
    without a newline: ``rationale_chars``, or by default as many as let all lines fit
    ``max_tokens`` (8 to 160), counting about 2 characters a token for the id, 4 tokens for the
    score and separators, and 3 characters a token for the rationale."""
    per_line = max_tokens / len(rubric.items)
    lines = []
    for item in rubric.items:
        room = rationale_chars or max(8, min(160, int(3 * (per_line - len(item.id) / 2 - 4))))
        lines.append(f"{re.escape(item.id)}: {_score_regex(item)} - [A-Za-z][^\\n]{{0,{room - 1}}}\\n")
    return "".join(lines)


def _score_regex(item: RubricItem) -> str:
    low, high = item.min, item.max
    if float(low).is_integer() and float(high).is_integer() and high - low <= 100:
        values = [str(v) for v in range(int(low), int(high) + 1)]
        return "(" + "|".join(re.escape(v) for v in sorted(values, key=len, reverse=True)) + ")"
    return r"-?[0-9]{1,3}(\.[0-9]{1,2})?"


def render_prompt(messages: Messages | str, tokenizer: Any = None) -> tuple[str, bool]:
    """``(text, templated)``: the messages through the tokenizer's chat template when it has one,
    else ``Role: content`` blocks ending in ``Assistant:``."""
    if isinstance(messages, str):
        return messages, False
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
        return text, True
    blocks = [f"{m.get('role', 'user').capitalize()}: {m.get('content', '')}" for m in messages]
    return "\n\n".join(blocks + ["Assistant:"]), False
