"""Process rewards: a process reward model (PRM) scores every reasoning step of a completion.

``ProcessReward`` is a reward module (a class named in ``rewards.functions``).  Per row it
cuts the completion into steps, scores the steps, applies a credit assignment
(rlkit/algorithms/credit.py, through ``rlkit.reward_api``: ``sum``, ``min_form`` (softmin or
strict), ``clip``, ``delta``, ``clip_delta``) and returns the credited step rewards on each step's last token as dense token
rewards, for a token-level estimator such as ``process_rloo``.  The outcome (verifiable)
reward is a separate entry of ``rewards.functions`` (its weight is its coefficient; it applies
only where the row has an answer) and lands on the last token.

Steps: a step ends at the token that holds the last character of a ``separator`` occurrence
(default "\\n\\n"), also when the tokenizer merged the separator into a larger token such as
".\\n\\n" or "\\n\\nThe"; the last step ends at the last token.  Token positions come from the
``completion_offsets`` column (the end character of each sampled token, rlkit/tokens.py).

Scorers (``kind``):
- ``token_classification``: a two-label token-classification model; a step's reward is
  p(good) - p(bad) at the step's last token (rlkit's ``train-prm`` trains one);
- ``causal_lm``: a language model asked after each step for a "good" vs "bad" token
  (Math-Shepherd, Wang et al. 2024, arXiv 2312.08935): reward = p(good) / (p(good) + p(bad));
- ``function``: any Python callable ``fn(prompt, steps) -> list[float]`` (``"module:name"``).
"""
from __future__ import annotations

import re
from typing import Any, Callable

from rewards.core import RewardModule, RewardOutput
from rewards.pool import load_callable


def split_steps(text: str, char_ends: list[int], separator: str = "\n\n") -> list[tuple[int, int]]:
    """Token spans ``(start, end_exclusive)`` of the steps of one completion.

    ``char_ends[k]`` is where token k's text ends in ``text``.  Every token holding the last
    character of a ``separator`` occurrence ends a step; the last token ends the last step.
    A completion without the separator is one step; an empty one has none.
    """
    n = len(char_ends)
    if n == 0:
        return []
    boundaries: set[int] = set()
    if separator:
        position = text.find(separator)
        while position != -1:
            last_char = position + len(separator) - 1
            boundaries.add(_token_at(char_ends, last_char))
            position = text.find(separator, position + len(separator))
    boundaries.add(n - 1)
    spans, start = [], 0
    for end in sorted(boundaries):
        if end >= start:
            spans.append((start, end + 1))
            start = end + 1
    return spans


def _token_at(char_ends: list[int], char_index: int) -> int:
    """The token whose text covers ``char_index`` (the first with char_ends > index)."""
    lo, hi = 0, len(char_ends) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if char_ends[mid] > char_index:
            hi = mid
        else:
            lo = mid + 1
    return lo


def step_texts(text: str, char_ends: list[int], spans: list[tuple[int, int]]) -> list[str]:
    """The text of each step span."""
    starts = [0] + list(char_ends)
    return [text[starts[s]:char_ends[e - 1]] for s, e in spans]


_EQUATION = re.compile(r"(-?\d[\d,]*(?:\.\d+)?)\s*([+\-*/x×÷])\s*(-?\d[\d,]*(?:\.\d+)?)\s*=\s*(-?\d[\d,]*(?:\.\d+)?)")


def arithmetic_step_label(step: str) -> int:
    """1 when every ``a op b = c`` in the step is right (or there is none), else 0: the
    automatic labeller that lets a PRM be trained on the arithmetic task without outside data."""
    for a, op, b, c in _EQUATION.findall(step):
        x, y, z = (float(v.replace(",", "")) for v in (a, b, c))
        if op == "+":
            value = x + y
        elif op == "-":
            value = x - y
        elif op in "*x×":
            value = x * y
        else:
            value = x / y if y else float("nan")
        if not abs(value - z) < 1e-6:
            return 0
    return 1


def arithmetic_step_scores(prompt: str, steps: list[str]) -> list[float]:
    """A ``function`` scorer from ``arithmetic_step_label``: 1.0 per right step, 0.0 per wrong one."""
    return [float(arithmetic_step_label(s)) for s in steps]


class ProcessReward(RewardModule):
    """Step rewards from a PRM, credited, as dense token rewards (see the module docstring).

    Keyword arguments (``rewards.functions[].kwargs``): ``kind``, ``model`` (path of the PRM
    for the model kinds), ``fn`` (the ``function`` scorer), ``separator``, ``credit``,
    ``min_form``, ``temperature``, ``eta``, ``batch_size``, ``device``, ``good_token`` /
    ``bad_token`` / ``step_tag`` (``causal_lm``), ``max_length``, ``autocast_bf16`` (score the
    model kinds under bfloat16 autocast: about twice as fast on a CPU with AVX512-BF16).
    """

    wants_completion_offsets = True  # the trainer then passes the completion_offsets column

    def __init__(self, kind: str = "function", model: str | None = None, fn: str | Callable | None = None,
                 separator: str = "\n\n", credit: str = "min_form", min_form: str = "softmin",
                 temperature: float = 0.1, eta: float = 0.5, batch_size: int = 16, device: str = "cpu",
                 good_token: str = "+", bad_token: str = "-", step_tag: str = "\n\n", max_length: int = 2048,
                 autocast_bf16: bool = False):
        from rlkit.reward_api import CREDIT_MODES, MIN_FORMS

        if credit not in CREDIT_MODES:
            raise ValueError(f"ProcessReward: unknown credit {credit!r}; choose one of {', '.join(CREDIT_MODES)}")
        if min_form not in MIN_FORMS:
            raise ValueError(f"ProcessReward: unknown min_form {min_form!r}; choose softmin or strict")
        self.separator, self.credit, self.min_form = separator, credit, min_form
        self.temperature, self.eta = temperature, eta
        if kind == "function":
            if fn is None:
                raise ValueError("ProcessReward(kind='function') needs fn='module:function'")
            self.scorer = load_callable(fn) if isinstance(fn, str) else fn
        elif kind in ("token_classification", "causal_lm"):
            if not model:
                raise ValueError(f"ProcessReward(kind={kind!r}) needs model=PATH")
            from rewards.prm_models import CausalLMStepScorer, TokenClassificationStepScorer

            cls = TokenClassificationStepScorer if kind == "token_classification" else CausalLMStepScorer
            extra = {}
            if kind == "causal_lm":
                extra = {"good_token": good_token, "bad_token": bad_token, "step_tag": step_tag}
            self.scorer = cls(model, batch_size=batch_size, device=device, max_length=max_length,
                              autocast_bf16=autocast_bf16, **extra)
        else:
            raise ValueError(f"ProcessReward: unknown kind {kind!r}; "
                             "choose token_classification, causal_lm or function")
        self.kind = kind
        self.last_stats: dict[str, float] = {}

    def __call__(self, completions: list[str], prompts: list[Any] | None = None,
                 completion_offsets: list[list[int]] | None = None, **columns: Any) -> list[RewardOutput]:
        from rlkit.reward_api import credit_step_rewards

        if completion_offsets is None:
            raise ValueError("ProcessReward needs the completion_offsets column (the trainer provides it)")
        prompts = prompts or [""] * len(completions)
        spans = [split_steps(text, ends, self.separator) for text, ends in zip(completions, completion_offsets)]
        texts = [step_texts(text, ends, s) for text, ends, s in zip(completions, completion_offsets, spans)]
        if self.kind == "function":
            raw = [list(map(float, self.scorer(_prompt_text(p), t))) if t else [] for p, t in zip(prompts, texts)]
        else:
            raw = self.scorer.score([_prompt_text(p) for p in prompts], texts)
        outputs = []
        for row, (row_spans, row_raw, ends) in enumerate(zip(spans, raw, completion_offsets)):
            if len(row_raw) != len(row_spans):
                raise ValueError(f"row {row}: the scorer gave {len(row_raw)} step scores for {len(row_spans)} steps")
            credited = credit_step_rewards(row_raw, self.credit, min_form=self.min_form,
                                           temperature=self.temperature, eta=self.eta)
            dense = [0.0] * len(ends)
            for (_, end), value in zip(row_spans, credited):
                dense[end - 1] += value
            outputs.append(RewardOutput(score=None, steps=[(s, e, v) for (s, e), v in zip(row_spans, row_raw)],
                                        token_rewards=dense))
        steps = [len(s) for s in spans]
        flat = [v for r in raw for v in r]
        self.last_stats = {"steps_mean": sum(steps) / max(len(steps), 1),
                           "step_score_mean": sum(flat) / max(len(flat), 1),
                           "step_score_min_mean": sum(min(r) for r in raw if r) / max(sum(1 for r in raw if r), 1)}
        return outputs

    def update(self, batch) -> dict[str, float]:
        """Nothing learns here; reports the step statistics of the last scored batch
        (logged as ``<name>/steps_mean``, ``<name>/step_score_mean``, ...)."""
        return dict(self.last_stats)


def _prompt_text(prompt: Any) -> str:
    """Chat prompts (lists of messages) become their concatenated contents."""
    if isinstance(prompt, list):
        return "\n".join(str(m.get("content", "")) for m in prompt if isinstance(m, dict))
    return "" if prompt is None else str(prompt)
