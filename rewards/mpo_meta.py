"""MPO's meta step on text: the meta model's prompt, the regular expression of a well-formed
reply, the parser of refined rubrics and their merge (rewards/mpo.py gives the overview).

``meta_messages`` asks for an ``ANALYSIS:`` and a refined ``RUBRIC:``, one item per line
``- <id> (<min>-<max>): <description>`` (a JSON list of items is accepted too);
``parse_meta_reply`` / ``parse_rubric`` read it and never raise; ``merge_rubrics`` makes one rubric
of several refined ones.  No torch or rlkit import here.
"""
from __future__ import annotations

import logging
import math
import re
from typing import Any

from rewards.judge_rubric import (Messages, Rubric, RubricItem, _first_json, clip_text, normalise_description,
                                  normalise_id)

logger = logging.getLogger("rewards.mpo")

MAX_RUBRIC_ITEMS_PARSED = 32
MAX_ITEM_RANGE = 100.0


# ---------------------------------------------------------------------------------------- meta prompt

def meta_messages(rubric: Rubric, row: dict[str, Any], max_items: int, max_chars: int = 3000) -> Messages:
    """The meta model's prompt for one judged rollout (MPO's meta-analysis and rubric refinement)."""
    scores = row.get("scores") or []
    why = row.get("rationales") or []
    lines = []
    for i, item in enumerate(rubric.items):
        score = scores[i] if i < len(scores) else 0.0
        reason = (why[i] if i < len(why) else "") or "(no rationale)"
        lines.append(f"- {item.id}: {score:g} of {item.max:g} - {reason}")
    total = sum(scores) if scores else 0.0
    user = (
        "You improve the grading rubric of an LLM judge. A writer model is trained with reinforcement "
        "learning to maximise the judge's rubric score, so a vague, coarse or gameable rubric rewards "
        "responses that are not actually good.\n\n"
        f"TASK given to the writer:\n{clip_text(str(row.get('prompt', '')), max_chars)}\n\n"
        f"RESPONSE:\n{clip_text(str(row.get('completion', '')), max_chars)}\n\n"
        f"CURRENT RUBRIC:\n{rubric.format()}\n\n"
        f"JUDGE'S SCORES (total {total:g} of {rubric.max_total:g}):\n" + "\n".join(lines) + "\n\n"
        "First write 'ANALYSIS:' and a few sentences: is the score inflated or too harsh for this response? "
        "Are important criteria missing, too coarse or easy to exploit?\n"
        f"Then write 'RUBRIC:' and the refined rubric, at most {max_items} items, one per line, in this form:\n"
        "- <item_id> (<min>-<max>): <concretely what earns a high score>\n"
        "Keep the ids of the items you keep; give new items short lowercase ids with underscores.")
    return [{"role": "user", "content": user}]


def meta_regex(max_items: int, max_tokens: int, analysis_chars: int | None = None,
               item_chars: int | None = None) -> str:
    """The regular expression of a well-formed meta reply: ``ANALYSIS: <one line>``, then
    ``RUBRIC:`` and 2 to ``max_items`` lines ``- <id> (<min>-<max>): <description>`` (ids of 3-25
    lowercase letters and underscores, integer ranges 0-1 .. 0-10, descriptions that start with a
    letter); the analysis holds at most ``analysis_chars`` characters and a description
    ``item_chars``, by default as many as let the reply fit ``max_tokens`` at about 3 characters a
    token."""
    budget = 3 * max_tokens
    analysis = analysis_chars or max(20, min(400, budget // 4))
    description = item_chars or max(12, min(200, (budget - analysis - 20) // max(max_items, 2) - 30))
    item = rf"- [a-z][a-z_]{{2,24}} \(0-([1-9]|10)\): [A-Za-z][^\n]{{9,{description}}}\n"
    return rf"ANALYSIS: [^\n]{{10,{analysis}}}\nRUBRIC:\n({item}){{2,{max(max_items, 2)}}}"


_RUBRIC_MARKER = re.compile(r"(?:refined\s+|new\s+|updated\s+)?rubric\s*[:\-]*\s*$", re.IGNORECASE)
_ITEM_LINE = re.compile(
    r"^\s*(?:[-+*\u2022]|\d{1,2}[.)])?\s*\**\s*`?(?P<id>[A-Za-z][\w \-]{0,59}?)`?\s*\**\s*"
    r"[(\[]\s*(?P<lo>[-+]?\d+(?:\.\d+)?)\s*(?:-|\u2013|\u2014|to|\.\.|,)\s*(?P<hi>[-+]?\d+(?:\.\d+)?)\s*"
    r"(?:points?|pts)?\s*[)\]]\s*\**\s*[:\-\u2013\u2014]\s*(?P<desc>.+?)\s*$", re.IGNORECASE)


def parse_meta_reply(text: Any) -> tuple[str, Rubric | None]:
    """``(analysis, refined rubric or None)`` from a meta reply.  Never raises."""
    try:
        reply = text if isinstance(text, str) else ("" if text is None else str(text))
        reply = reply[:50_000]
        head, body = _split_at_marker(reply)
        analysis = re.sub(r"^\s*\**\s*analysis\s*\**\s*[:\-]*\s*", "", head, flags=re.IGNORECASE).strip()
        rubric = parse_rubric(body)
        return analysis[:2000], rubric
    except Exception:
        logger.debug("meta reply could not be parsed", exc_info=True)
        return "", None


def _split_at_marker(reply: str) -> tuple[str, str]:
    """(text before the last ``RUBRIC:`` marker line, text after it); no marker: ('', reply)."""
    lines = reply.splitlines()
    for i in range(len(lines) - 1, -1, -1):
        clean = lines[i].replace("*", "").replace("#", "").strip()
        head, sep, rest = clean.partition(":")
        if _RUBRIC_MARKER.fullmatch(clean) or (sep and _RUBRIC_MARKER.fullmatch(head + ":")):
            tail = [rest] if sep and rest.strip() else []
            return "\n".join(lines[:i]), "\n".join(tail + lines[i + 1:])
    return "", reply


def parse_rubric(text: Any) -> Rubric | None:
    """A rubric from text: a JSON list of items (or ``{"rubric": [...]}``), else the item lines
    ``- id (min-max): description``.  Invalid items are skipped; None when none is valid.  Never raises."""
    try:
        reply = text if isinstance(text, str) else ("" if text is None else str(text))
        items = _json_items(reply[:50_000])
        if not items:
            items = [_line_item(line) for line in reply[:50_000].splitlines()]
        return _valid_rubric([item for item in items if item is not None])
    except Exception:
        logger.debug("rubric could not be parsed", exc_info=True)
        return None


def _json_items(text: str) -> list[RubricItem | None]:
    """Items of the first JSON list of item mappings (or ``{"rubric" | "items": [...]}``) in ``text``."""
    def pick(data: Any) -> list[RubricItem | None] | None:
        if isinstance(data, dict):
            data = data.get("rubric", data.get("items"))
        if isinstance(data, list) and data and all(isinstance(entry, dict) for entry in data):
            return [_json_item(entry) for entry in data]
        return None

    return _first_json(text, pick) or []


def _json_item(entry: dict) -> RubricItem | None:
    low, high = entry.get("min", 0), entry.get("max")
    if isinstance(entry.get("range"), (list, tuple)) and len(entry["range"]) == 2:
        low, high = entry["range"]
    desc = entry.get("description", entry.get("criterion", ""))
    return _item(entry.get("id", entry.get("name", "")), desc, low, high)


def _line_item(line: str) -> RubricItem | None:
    match = _ITEM_LINE.match(line)
    if match is None:
        return None
    return _item(match.group("id"), match.group("desc"), match.group("lo"), match.group("hi"))


def _item(raw_id: Any, desc: Any, low: Any, high: Any) -> RubricItem | None:
    """A checked item, or None: an id with a letter, a description of 3-500 characters with a letter, a finite
    range min < max within +-MAX_ITEM_RANGE."""
    try:
        lo, hi = float(low), float(high)
    except (TypeError, ValueError, OverflowError):
        return None
    item_id = normalise_id(str(raw_id))
    text = " ".join(str(desc).replace("**", "").split()).strip()
    if not re.search(r"[a-z]", item_id) or not 3 <= len(text) <= 500 or not re.search(r"[A-Za-z]", text):
        return None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi and max(abs(lo), abs(hi)) <= MAX_ITEM_RANGE):
        return None
    return RubricItem(item_id, text, lo, hi)


def _valid_rubric(items: list[RubricItem]) -> Rubric | None:
    """Items with repeated ids dropped (the first stays); None when nothing is left."""
    seen: set[str] = set()
    kept = []
    for item in items[:MAX_RUBRIC_ITEMS_PARSED]:
        if item.id not in seen:
            seen.add(item.id)
            kept.append(item)
    return Rubric(tuple(kept)) if kept else None


def merge_rubrics(current: Rubric, refined: list[Rubric], max_items: int = 8) -> Rubric:
    """One rubric from the refined ones: their union, deduplicated by id and by normalised
    description (the first occurrence wins), the current rubric's ids first in its order, then new
    items in the order they appear; at most ``max_items``.  No refined rubric: ``current``."""
    candidates = [item for rubric in refined for item in rubric.items]
    if not candidates:
        return current
    by_id: dict[str, RubricItem] = {}
    for item in candidates:
        by_id.setdefault(item.id, item)
    ordered = [by_id[i] for i in current.ids if i in by_id] + candidates
    kept: list[RubricItem] = []
    ids: set[str] = set()
    descriptions: set[str] = set()
    for item in ordered:
        key = normalise_description(item.description)
        if item.id in ids or key in descriptions:
            continue
        kept.append(item)
        ids.add(item.id)
        descriptions.add(key)
        if len(kept) == max_items:
            break
    return Rubric(tuple(kept))
