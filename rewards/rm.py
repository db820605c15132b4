"""Outcome reward models: a sequence-classification model scores each prompt + completion.

``RewardModel`` is a reward module (a class named in ``rewards.functions``) that sits in
``combine()`` beside rule rewards: the component's value for a row is the model's one logit for
the row's prompt and completion (optionally normalised), weighted like any other component.
It never trains: the model is frozen, in eval mode, scored under ``torch.no_grad``.

Input layout (the one ``rlkit train-rm`` trains on, ``rm_input_ids``): with a chat template in
the model's tokenizer, the prompt as a user message (a prompt that is a list of chat messages
stays as it is), the completion as an assistant message, the template applied without a
generation prompt; without one, ``prompt + completion`` plus the eos token.  A sequence longer
than ``max_length`` tokens keeps its end (the score is read at the last token).  Rows are
scored in batches of ``batch_size``, sorted by length.

Failures: a batch that raises is scored again row by row, inside the call, so that the
normalisation below still sees the whole call; a row that fails alone is returned as a
``ScoreFailure``, which ``combine()`` records as that row's failure (NaN, counted and logged;
``fail_fast`` stops the run) while the other rows keep their scores.

``normalize``: ``none`` (the logit), ``batch`` (z-score over the rows of the call that scored:
mean 0, population std 1; a row alone scores 0), ``running`` (z-score with a running mean and
std over every row scored so far, this call's rows included, kept in ``state_dict`` so a resumed
run goes on with them).  The running statistics are per process.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from rewards.core import RewardModule

logger = logging.getLogger("rewards")

NORMALIZE_MODES = ("none", "batch", "running")


class ScoreFailure(Exception):
    """A row the reward model could not score.  Returned as a row's value, ``combine()`` records
    the row as failed with this message (not as "does not apply"); the other rows keep their scores."""


def rm_input_ids(tokenizer, prompt: Any, completion: str) -> list[int]:
    """The token ids a reward model scores for one row (see the module docstring for the layout)."""
    if tokenizer.chat_template:
        if isinstance(prompt, list):
            messages = list(prompt)
        else:
            messages = [{"role": "user", "content": prompt}] if prompt else []
        messages.append({"role": "assistant", "content": completion})
        return list(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])
    if isinstance(prompt, list):
        raise ValueError("the prompt is a list of chat messages, but the reward model's tokenizer has no chat template")
    text = (prompt or "") + completion
    eos = tokenizer.eos_token
    if eos and not text.endswith(eos):
        text += eos
    return list(tokenizer(text)["input_ids"])


def bf16_fast(device) -> bool:
    """Whether bfloat16 autocast pays off on ``device``: a CUDA GPU that supports it, or a CPU
    with AVX512-BF16 / AMX."""
    import torch

    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    try:
        with open("/proc/cpuinfo") as info:
            flags = info.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


class RewardModel(RewardModule):
    """Scores from a sequence-classification reward model (see the module docstring).

    Keyword arguments (``rewards.functions[].kwargs``): ``path`` (a model folder with one label,
    such as ``rlkit train-rm`` writes), ``batch_size`` (16), ``max_length`` (2048 tokens),
    ``normalize`` (``none`` | ``batch`` | ``running``), ``bf16`` (True: bfloat16 autocast where
    the device runs it fast, ``bf16_fast``; False: float32), ``device`` (default: the run's
    device, ``cpu`` outside a run).  The model loads when the run attaches the reward (so a bad
    path stops the run before its first step), or at the first call outside a run.
    """

    def __init__(self, path: str, batch_size: int = 16, max_length: int = 2048, normalize: str = "none",
                 bf16: bool = True, device: str | None = None):
        if not isinstance(path, str) or not path:
            raise ValueError("RewardModel needs path=FOLDER (a sequence-classification reward model)")
        if normalize not in NORMALIZE_MODES:
            raise ValueError(f"RewardModel: normalize must be one of {', '.join(NORMALIZE_MODES)}, not {normalize!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"RewardModel: batch_size must be an integer >= 1, got {batch_size!r}")
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
            raise ValueError(f"RewardModel: max_length must be an integer >= 1, got {max_length!r}")
        if not isinstance(bf16, bool):
            raise ValueError(f"RewardModel: bf16 must be true or false, got {bf16!r}")
        self.path, self.batch_size, self.max_length = path, batch_size, max_length
        self.normalize, self.bf16, self.device = normalize, bf16, device
        self.model = self.tokenizer = None
        self.autocast = False
        self.count, self.mean, self.m2 = 0, 0.0, 0.0  # running statistics (Welford)
        self.last_stats: dict[str, float] = {}

    # ------------------------------------------------------------------ set-up

    def attach(self, context) -> None:
        """Take the run's device unless ``device`` was given, and load the model."""
        if self.device is None:
            self.device = str(context.device)
        self.load()

    def load(self) -> None:
        """Load the tokenizer and the frozen model once; refuse a model that is not a one-label
        sequence classifier (a causal LM would get a random score head)."""
        if self.model is not None:
            return
        if not Path(self.path).is_dir():
            raise ValueError(f"RewardModel: {self.path} is not a model folder")
        import torch
        from transformers import AutoConfig, AutoModelForSequenceClassification

        from rlkit.reward_api import load_tokenizer

        config = AutoConfig.from_pretrained(self.path)
        architectures = config.architectures or []
        if not any(a.endswith("ForSequenceClassification") for a in architectures) or config.num_labels != 1:
            raise ValueError(f"RewardModel: {self.path} is not a one-label sequence-classification model "
                             f"(architectures {architectures}, {config.num_labels} labels); train one with "
                             "`rlkit train-rm`")
        device = torch.device(self.device or "cpu")
        self.tokenizer = load_tokenizer(self.path)
        model = AutoModelForSequenceClassification.from_pretrained(self.path, dtype=torch.float32)
        text_config = model.config.get_text_config()
        if text_config.pad_token_id is None:  # needed to find each row's last token in a padded batch
            text_config.pad_token_id = self.tokenizer.pad_token_id
        self.model = model.to(device).eval().requires_grad_(False)
        self.autocast = self.bf16 and bf16_fast(device)
        self.device = str(device)
        logger.info("RewardModel %s on %s, bf16 autocast %s", self.path, device, "on" if self.autocast else "off")

    # ------------------------------------------------------------------ scoring

    def __call__(self, completions: list[str], prompts: list[Any] | None = None, **columns: Any) -> list:
        """One value per row: the (normalised) score, or a ``ScoreFailure``."""
        self.load()
        prompts = prompts if prompts is not None else [None] * len(completions)
        raw: list[float | None] = [None] * len(completions)
        errors: dict[int, str] = {}
        ids: dict[int, list[int]] = {}
        for i, (prompt, completion) in enumerate(zip(prompts, completions)):
            try:
                ids[i] = rm_input_ids(self.tokenizer, prompt, completion)[-self.max_length:]
            except Exception as exc:  # noqa: BLE001 - one row's template or tokenizer error fails that row
                errors[i] = f"{type(exc).__name__}: {exc}"
        order = sorted(ids, key=lambda i: len(ids[i]))
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            try:
                values = self._forward([ids[i] for i in chunk])
            except Exception as exc:  # noqa: BLE001 - retried row by row below
                logger.warning("RewardModel: a batch of %d rows failed (%s: %s); scoring them one by one",
                               len(chunk), type(exc).__name__, exc)
                values = []
                for i in chunk:
                    try:
                        values.append(self._forward([ids[i]])[0])
                    except Exception as row_exc:  # noqa: BLE001 - becomes the row's failure
                        errors[i] = f"{type(row_exc).__name__}: {row_exc}"
                        values.append(None)
            for i, value in zip(chunk, values):
                raw[i] = value
        scored = [v for v in raw if v is not None]
        scale = self._scale(scored)
        self.last_stats = {"raw_mean": _mean(scored), "raw_std": _std(scored),
                           "failed_rows": float(len(errors)), "scored_rows": float(len(scored))}
        if self.normalize == "running":
            self.last_stats.update(running_mean=self.mean, running_std=self._running_std())
        return [ScoreFailure(f"RewardModel: {errors[i]}") if i in errors else (value - scale[0]) / scale[1]
                for i, value in enumerate(raw)]

    def _forward(self, rows: list[list[int]]) -> list[float]:
        """The model's logit for each row of token ids (right-padded; the model reads each row's
        last non-pad token)."""
        import torch

        pad = self.model.config.get_text_config().pad_token_id
        ids = torch.full((len(rows), max(len(r) for r in rows)), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for k, row in enumerate(rows):
            ids[k, :len(row)] = torch.tensor(row, dtype=torch.long)
            mask[k, :len(row)] = 1
        device = torch.device(self.device)
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.autocast):
            logits = self.model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
        return logits.float().reshape(len(rows), -1)[:, 0].tolist()

    def _scale(self, scored: list[float]) -> tuple[float, float]:
        """(shift, divisor) for this call's raw scores; updates the running statistics first."""
        if self.normalize == "batch" and scored:
            return _mean(scored), _std(scored) or 1.0
        if self.normalize == "running":
            for value in scored:
                self.count += 1
                delta = value - self.mean
                self.mean += delta / self.count
                self.m2 += delta * (value - self.mean)
            return (self.mean, self._running_std() or 1.0) if self.count else (0.0, 1.0)
        return 0.0, 1.0

    def _running_std(self) -> float:
        return math.sqrt(self.m2 / self.count) if self.count else 0.0

    # ------------------------------------------------------------------ state

    def update(self, batch) -> dict[str, float]:
        """Nothing learns; reports the last call's statistics (``raw_mean``, ``raw_std``,
        ``scored_rows``, ``failed_rows``, and ``running_mean`` / ``running_std`` with
        ``normalize=running``)."""
        return dict(self.last_stats)

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count, "mean": self.mean, "m2": self.m2} if self.normalize == "running" else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.normalize == "running" and state:
            self.count, self.mean, self.m2 = int(state["count"]), float(state["mean"]), float(state["m2"])

    def close(self) -> None:
        """Drop the model (a later call loads it again)."""
        self.model = self.tokenizer = None


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _std(values: list[float]) -> float:
    """Population standard deviation (NaN for none)."""
    if not values:
        return math.nan
    mean = _mean(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
