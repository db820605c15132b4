"""MPO's meta-reward: a meta model that evolves the judge's rubric (spec section 8; Kim et al., 2025,
"Meta Policy Optimization: Adaptive Rubrics for Rewarding LLMs", arXiv 2504.20157).

``MetaReward`` is the reward module.  It owns a ``RubricJudge`` (rewards/judge.py) and delegates
scoring to it, keeping each scored training row (task, completion, item scores, rationales).
Every ``every`` policy updates (calls of ``update(batch)``, one per training step), the meta step:

1. draws ``sample_size`` of the rows kept since the last meta step (seeded, so a resumed run
   draws what the uninterrupted one would);
2. asks the meta model, for each, for an ``ANALYSIS:`` (is the score inflated or too harsh, are
   criteria missing, too coarse or exploitable) and a refined ``RUBRIC:``, one item per line
   ``- <id> (<min>-<max>): <description>`` (a JSON list of items is accepted too);
3. parses each refined rubric (``parse_meta_reply``; one without a valid item is ignored and
   counted in ``meta_invalid``), merges them (``merge_rubrics``: union, deduplicated by id and by
   normalised description, the current rubric's items first in their order, at most
   ``max_items``) and, when the result differs, makes it the judge's rubric from then on.

Every rubric version is written to ``<output_dir>/rubrics/v<k>.json`` (a temporary file, then a
rename) with the analyses that produced it, and all versions are in ``state_dict()``, so every
checkpoint holds them; ``load_state_dict`` puts the latest back into the judge.  Metrics (as
``<component>/<key>``): ``rubric_version``, ``rubric_items``, ``max_score`` (the scale: the rubric's
maximum total) and, at a meta step, ``max_score_before`` / ``max_score_after``,
``rubric_changed``, ``meta_invalid``, ``meta_samples``, ``meta_seconds``; plus the judge's
``parse_failures``, ``parse_failure_rate``, ``failed_rows``.

With ``meta_constrained: auto`` (the default) a vLLM meta client decodes under ``meta_regex``
(an ``ANALYSIS:`` line, then ``RUBRIC:`` and 2 to ``max_items`` item lines), so that even a small
meta model returns a rubric the parser reads; ``true`` / ``false`` as the judge's ``constrained``.

The meta model is the judge's own client with ``meta_model: same`` (one model and one engine or
endpoint for both), or ``meta_client``: ``hf`` | ``vllm`` | ``http`` (with ``meta_model`` as its
model and ``meta_options`` as its options), an option mapping ``{client: ..., ...}``, or
``"package.module:attr"`` (a class, an object with ``generate(prompts, max_tokens, temperature)``
or such a function).  In a data-parallel run rank 0 runs the meta step on its rows and broadcasts
the merged rubric (``torch.distributed``), so every rank's judge uses the same version.
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
import re
import time
from pathlib import Path
from typing import Any

from rewards.judge import (
    Messages,
    _first_json,
    Rubric,
    RubricItem,
    RubricJudge,
    clip_text,
    make_client,
    normalise_description,
    normalise_id,
    prompt_text,
    use_constraint,
)

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


# ---------------------------------------------------------------------------------------- the module

class MetaReward:
    """MPO reward module: a ``RubricJudge`` whose rubric a meta model rewrites every ``every`` updates.

    Keyword arguments: ``rubric`` (the first version; default the judge's), ``every`` (10),
    ``sample_size`` (16), ``max_items`` (8), ``meta_model`` (``same``, or a model for
    ``meta_client``), ``meta_client``, ``meta_options`` (the meta client's options),
    ``meta_max_tokens`` (512), ``meta_temperature`` (0.7), ``meta_constrained`` (``auto`` |
    ``true`` | ``false``: decode under ``meta_regex``; ``meta_analysis_chars`` and
    ``meta_item_chars`` override its length caps), ``buffer_size`` (rows kept between meta
    steps, 256), ``seed``; all others go to ``RubricJudge`` (``client``, ``model``, ``max_tokens``,
    ``on_error``, ``base_url``, ...).  A resumed run takes the rubric from the checkpoint, not
    from ``rubric``.
    """

    def __init__(self, rubric: Any = None, every: int = 10, sample_size: int = 16, max_items: int = 8,
                 meta_model: str = "same", meta_client: Any = None, meta_options: dict | None = None,
                 meta_max_tokens: int = 512, meta_temperature: float = 0.7, meta_constrained: Any = "auto",
                 meta_analysis_chars: int | None = None, meta_item_chars: int | None = None,
                 buffer_size: int = 256, seed: int = 0, **judge_kwargs: Any):
        if every < 1 or sample_size < 1 or max_items < 1 or buffer_size < 1:
            raise ValueError(f"MetaReward: every ({every}), sample_size ({sample_size}), max_items ({max_items}) "
                             f"and buffer_size ({buffer_size}) must be >= 1")
        self.judge = RubricJudge(rubric=rubric, **judge_kwargs)
        self.every, self.sample_size, self.max_items, self.buffer_size = every, sample_size, max_items, buffer_size
        self.meta_max_tokens, self.meta_temperature, self.seed = meta_max_tokens, meta_temperature, seed
        self.meta = self._meta_client(meta_model, meta_client, dict(meta_options or {}))
        self.meta_constrained = use_constraint(meta_constrained, self.meta, "MetaReward (meta model)")
        self.meta_chars = (meta_analysis_chars, meta_item_chars)
        self.updates = 0
        self.invalid_total = 0
        self.versions: list[dict[str, Any]] = [self._version_record(self.judge.rubric, 0, "initial", 0, 0)]
        self.buffer: list[dict[str, Any]] = []   # judged training rows since the last meta step
        self._pending: list[dict[str, Any]] = []  # rows scored since the last update (training or eval)
        self.run_dir: Path | None = None
        self._files_ready = False

    def _meta_client(self, meta_model: str, meta_client: Any, options: dict[str, Any]):
        if meta_client is None:
            if meta_model in (None, "same"):
                return self.judge.client  # one model, one engine or endpoint for both roles
            raise ValueError("MetaReward: meta_model other than 'same' needs meta_client (hf, vllm, http or "
                             "'module:attr')")
        if isinstance(meta_client, dict):
            options = {**meta_client, **options}
            meta_client = options.pop("client", None)
            if meta_client is None:
                raise ValueError("MetaReward: meta_client as a mapping needs a `client` key")
        if meta_model not in (None, "same"):
            options.setdefault("model", meta_model)
        return make_client(meta_client, **options)

    # ------------------------------------------------------------------ scoring

    @property
    def rubric(self) -> Rubric:
        return self.judge.rubric

    @property
    def version(self) -> int:
        return int(self.versions[-1]["version"])

    def __call__(self, completions: list[str], prompts: list | None = None, **columns: Any) -> list[float | None]:
        scores = self.judge(completions, prompts=prompts, **columns)
        tasks = prompts if prompts is not None else [""] * len(completions)
        for task, text, judgement in zip(tasks, completions, self.judge.last):
            if judgement is None:
                continue
            self._pending.append({
                "prompt": prompt_text(task), "completion": clip_text(str(text), self.judge.max_chars),
                "key": _row_key(task, text), "scores": [float(s) for s in judgement.scores],
                "rationales": [r[:300] for r in judgement.rationales], "version": self.version})
        del self._pending[:-4 * self.buffer_size]
        return scores

    # ------------------------------------------------------------------ the meta step

    def update(self, batch: Any) -> dict[str, float]:
        """One policy update: keep this batch's judged rows; every ``every`` updates, the meta step."""
        self._sync_files()
        metrics = self.judge.metrics()
        self._collect(batch)
        self.updates += 1
        if self.updates % self.every == 0:
            metrics.update(self._meta_step())
        metrics.update(rubric_version=float(self.version), rubric_items=float(len(self.rubric.items)),
                       max_score=self.rubric.max_total)
        return metrics

    def _collect(self, batch: Any) -> None:
        """Move the rows of ``batch`` (its ``rows``: prompt and completion) from the pending ones
        into the buffer; rows scored for evaluation stay out.  Without ``rows``, all pending rows."""
        rows = getattr(batch, "rows", None)
        if rows is not None:
            pending: dict[str, list[dict]] = {}
            for record in self._pending:
                pending.setdefault(record["key"], []).append(record)
            for row in rows:
                hits = pending.get(_row_key(row.get("prompt"), row.get("completion", "")))
                if hits:
                    self.buffer.append(hits.pop(0))
        else:
            self.buffer.extend(self._pending)
        self._pending = []
        del self.buffer[:-self.buffer_size]

    def _meta_step(self) -> dict[str, float]:
        started = time.perf_counter()
        before = self.rubric
        merged, analyses, invalid, samples = self._refine(before)
        merged = _broadcast(merged.to_list(), analyses, invalid, samples)
        new_rubric, analyses, invalid, samples = Rubric.from_list(merged[0]), merged[1], merged[2], merged[3]
        self.invalid_total += invalid
        changed = new_rubric != before
        if changed:
            self.judge.set_rubric(new_rubric)
            record = self._version_record(new_rubric, self.version + 1, "meta", invalid, samples)
            self.versions.append(record)
            self._write_version(record, analyses)
            # A new scale shifts the rewards' magnitude, so it is shown on the console (WARNING).
            level = logging.WARNING if new_rubric.max_total != before.max_total else logging.INFO
            logger.log(level, "MPO rubric v%d -> v%d at update %d: %d -> %d items, score scale (max total) %g -> %g",
                       self.version - 1, self.version, self.updates, len(before.items), len(new_rubric.items),
                       before.max_total, new_rubric.max_total)
        self.buffer = []
        return {"rubric_changed": float(changed), "meta_invalid": float(invalid), "meta_samples": float(samples),
                "max_score_before": before.max_total, "max_score_after": new_rubric.max_total,
                "meta_seconds": time.perf_counter() - started}

    def _refine(self, current: Rubric) -> tuple[Rubric, list[str], int, int]:
        """(merged rubric, analyses, invalid refined rubrics, rows sampled) on this rank's buffer."""
        if not self.buffer or not _is_rank0():
            return current, [], 0, 0
        rng = random.Random(self.seed * 1_000_003 + self.updates)
        rows = rng.sample(self.buffer, min(self.sample_size, len(self.buffer)))
        prompts = [meta_messages(current, row, self.max_items, self.judge.max_chars) for row in rows]
        try:
            extra = {}
            if self.meta_constrained:
                extra["regex"] = meta_regex(self.max_items, self.meta_max_tokens, *self.meta_chars)
            replies = list(self.meta.generate(prompts, self.meta_max_tokens, self.meta_temperature, **extra))
        except Exception as exc:  # noqa: BLE001 - a failed meta step keeps the rubric; training goes on
            logger.warning("MPO meta model failed (%s: %s); the rubric stays at v%d", type(exc).__name__, exc,
                           self.version)
            return current, [], len(rows), len(rows)
        parsed = [parse_meta_reply(reply) for reply in replies[:len(rows)]]
        refined = [rubric for _, rubric in parsed if rubric is not None]
        invalid = len(rows) - len(refined)
        if invalid:
            logger.info("MPO: %d of %d refined rubrics unusable (ignored)", invalid, len(rows))
        return merge_rubrics(current, refined, self.max_items), [a for a, _ in parsed], invalid, len(rows)

    @staticmethod
    def _version_record(rubric: Rubric, version: int, source: str, invalid: int, samples: int) -> dict[str, Any]:
        return {"version": version, "source": source, "items": rubric.to_list(), "num_items": len(rubric.items),
                "max_score": rubric.max_total, "invalid": invalid, "samples": samples}

    # ------------------------------------------------------------------ files and state

    def attach(self, context: Any) -> None:
        """Remember the run directory (``<output_dir>/rubrics``); a run that cannot be a resume
        (``train.resume: never``) writes version 0 at once."""
        cfg = getattr(context, "cfg", None)
        output_dir = getattr(getattr(cfg, "train", None), "output_dir", None)
        if output_dir:
            self.run_dir = Path(output_dir)
            if getattr(cfg.train, "resume", "never") == "never":
                self._sync_files()

    def _rubric_dir(self) -> Path | None:
        return None if self.run_dir is None else self.run_dir / "rubrics"

    def _sync_files(self, restored: bool = False) -> None:
        """Once per run: a fresh run moves an older run's ``rubrics/`` aside; a resumed one moves
        versions past its checkpoint into ``rubrics/stale-<time>/``; then the versions not yet on
        disk (or differing from it) are written."""
        folder = self._rubric_dir()
        if folder is None or not _is_rank0() or (self._files_ready and not restored):
            return
        if not restored and folder.is_dir() and any(folder.iterdir()):  # an older run's versions
            folder.rename(folder.with_name(f"rubrics.{int(time.time())}"))
        folder.mkdir(parents=True, exist_ok=True)
        if restored:
            stale = [p for p in folder.glob("v*.json") if _version_of(p) is not None and _version_of(p) > self.version]
            if stale:
                aside = folder / f"stale-{int(time.time())}"
                aside.mkdir(exist_ok=True)
                for path in stale:
                    path.rename(aside / path.name)
        for record in self.versions:
            path = folder / f"v{record['version']}.json"
            if not path.exists() or _read_items(path) != record["items"]:
                self._write_version(record, [])
        self._files_ready = True

    def _write_version(self, record: dict[str, Any], analyses: list[str]) -> None:
        folder = self._rubric_dir()
        if folder is None or not _is_rank0():
            return
        folder.mkdir(parents=True, exist_ok=True)
        payload = {**record, "update": self.updates, "analyses": analyses}
        atomic_write_json(folder / f"v{record['version']}.json", payload)

    def state_dict(self) -> dict[str, Any]:
        """All rubric versions, the update count and the rows kept for the next meta step."""
        return {"versions": [dict(v, items=[dict(i) for i in v["items"]]) for v in self.versions],
                "updates": self.updates, "invalid_total": self.invalid_total,
                "buffer": [{k: v for k, v in row.items()} for row in self.buffer]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the versions, put the latest rubric into the judge and rewrite missing files."""
        versions = state.get("versions")
        if not isinstance(versions, list) or not versions:
            raise ValueError("MetaReward.load_state_dict: the state has no rubric versions")
        self.versions = [dict(v) for v in versions]
        self.judge.set_rubric(self.versions[-1]["items"])
        self.updates = int(state.get("updates", 0))
        self.invalid_total = int(state.get("invalid_total", 0))
        self.buffer = [dict(row) for row in state.get("buffer", [])]
        self._pending = []
        self._sync_files(restored=True)

    def close(self) -> None:
        self.judge.close()
        if self.meta is not self.judge.client:
            close = getattr(self.meta, "close", None)
            if callable(close):
                close()


def _row_key(prompt: Any, completion: Any) -> str:
    return json.dumps([prompt_text(prompt), str(completion)])


def _version_of(path: Path) -> int | None:
    match = re.fullmatch(r"v(\d+)\.json", path.name)
    return int(match.group(1)) if match else None


def _read_items(path: Path) -> Any:
    try:
        return json.loads(path.read_text()).get("items")
    except (OSError, ValueError, AttributeError):
        return None


def atomic_write_json(path: Path, payload: Any) -> None:
    """``payload`` as indented JSON, written atomically (``rlkit.eval.report.atomic_write_text``)."""
    from rlkit.eval.report import atomic_write_text

    atomic_write_text(path, json.dumps(payload, indent=2) + "\n")


def _is_rank0() -> bool:
    return _dist_info()[0] == 0


def _dist_info() -> tuple[int, int]:
    """(rank, world size) of an initialised torch.distributed group, else from the launcher's env."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    except ImportError:
        pass
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _broadcast(*payload: Any) -> tuple:
    """Rank 0's ``payload`` on every rank (identity in one process)."""
    rank, world = _dist_info()
    if world <= 1:
        return payload
    import torch.distributed as dist

    if not dist.is_initialized():
        return payload
    box = [payload if rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return tuple(box[0])
