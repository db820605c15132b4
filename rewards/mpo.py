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
the merged rubric through the run's collectives (``context.collectives``, from ``attach``), so
every rank's judge uses the same version; rank 0 writes the files.

Layout: the meta prompt, reply parser and merge are in ``rewards.mpo_meta`` (re-exported here).
"""
from __future__ import annotations

import json
import logging
import random
import re
import time
from pathlib import Path
from typing import Any

from rewards.core import RewardModule
from rewards.judge import RubricJudge, make_client, use_constraint
from rewards.judge_rubric import Rubric, clip_text, prompt_text
from rewards.mpo_meta import (MAX_ITEM_RANGE, MAX_RUBRIC_ITEMS_PARSED, merge_rubrics,  # noqa: F401
                              meta_messages, meta_regex, parse_meta_reply, parse_rubric)

logger = logging.getLogger("rewards.mpo")


# ---------------------------------------------------------------------------------------- the module

class MetaReward(RewardModule):
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
        self.collectives = None  # the run's (attach); None: one process
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
        merged = self._broadcast(merged.to_list(), analyses, invalid, samples)
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
        if not self.buffer or not self._is_main():
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
        """Take the run's collectives and folder (``<run_dir>/rubrics``) from the
        ``rlkit.reward_api.RewardContext``; a run that cannot be a resume (``resume: never``)
        writes version 0 at once."""
        self.collectives = context.collectives
        if context.run_dir is not None:
            self.run_dir = Path(context.run_dir)
            if context.resume == "never":
                self._sync_files()

    def _is_main(self) -> bool:
        return self.collectives is None or bool(self.collectives.is_main)

    def _broadcast(self, *payload: Any) -> tuple:
        """Rank 0's ``payload`` on every rank (as it is in one process)."""
        if self.collectives is None or self.collectives.world_size <= 1:
            return payload
        return tuple(self.collectives.broadcast_object(payload))

    def _rubric_dir(self) -> Path | None:
        return None if self.run_dir is None else self.run_dir / "rubrics"

    def _sync_files(self, restored: bool = False) -> None:
        """Once per run: a fresh run moves an older run's ``rubrics/`` aside; a resumed one moves
        versions past its checkpoint into ``rubrics/stale-<time>/``; then the versions not yet on
        disk (or differing from it) are written."""
        folder = self._rubric_dir()
        if folder is None or not self._is_main() or (self._files_ready and not restored):
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
        if folder is None or not self._is_main():
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
    """``payload`` as indented JSON, written atomically (``rlkit.reward_api.atomic_write_text``)."""
    from rlkit.reward_api import atomic_write_text

    atomic_write_text(path, json.dumps(payload, indent=2) + "\n")
