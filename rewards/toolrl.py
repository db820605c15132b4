"""ToolRL tool-call rewards (Qian et al. 2025, "ToolRL: Reward is All Tool Learning Needs",
arXiv 2504.13958; spec section 6).

A completion is ``<think>…</think>`` followed by a ``<tool_call>`` block (one JSON object
``{"name": ..., "parameters": {...}}`` per line) and/or a ``<response>…</response>`` block.
``toolrl_reward`` scores it against the reference assistant text (the ground truth, with tags):

- format ∈ {0, 1}: the stripped completion has exactly the ground truth's tag layout
  (``format_layout``);
- correctness ∈ [−3, 3]: tool names, parameter names and parameter values against the
  reference calls (``correctness``);
- optional dynamic scaling by training step (``scaled``).

Decisions where the spec leaves room (the literal reading is taken throughout):

- Format: each of the six tag strings (``<think>``, ``</think>``, ``<tool_call>``, ...) is
  counted over the whole stripped completion and must occur exactly once for the blocks of the
  layout and never otherwise, *also inside the think text*: a completion whose reasoning
  mentions "<tool_call>" in prose gets format 0. The blocks must come in the order think,
  tool_call, response, joined by exactly one "\\n" (``</think>\\n<tool_call>``,
  ``</tool_call>\\n<response>``); the text must start with ``<think>`` and end with the last
  closing tag. The think and response contents are free (empty allowed, newlines allowed); the
  tool-call block is not (spec section 6, the ToolRL authors' layout): ``<tool_call>`` alone on
  its line, then one JSON object per line (each line, as a whole, parses to a JSON object),
  then ``</tool_call>`` alone on its line; so ``<tool_call>{...}</tool_call>`` on one line, a
  blank line inside the block, an empty block or a call spread over several lines score format
  0. Whether the objects are well-formed calls is the business of correctness.
- The layout of the ground truth is read robustly, because references can mention tags in
  their think text (4% of ToolRL's rlla_sft.json do): the reference's blocks are ``think``
  plus ``tool_call`` / ``response`` when that opening tag occurs *after the reference's first
  ``</think>``* (the whole text when it has none). Its calls are parsed from that same tail.
- Tool-call block: the text between the first ``<tool_call>`` and the first ``</tool_call>``
  after it (both over the whole stripped completion, literally: a tag mentioned in the think
  text is "the first"). Blank lines in it are skipped (the newline right after ``<tool_call>``
  gives one); every other line must be one JSON object with a string ``name``; a
  ``parameters`` value that is present but not a JSON object makes the block unparseable too.
  An empty block parses to no calls (which scores −3 against a reference that has calls: the
  name match of an empty list is 0).
- "a same-name call without ``parameters``": a predicted call whose name is the name of some
  reference call and that has no ``parameters`` key → −3. A call with another name and no
  ``parameters`` is kept, with parameters ``{}``. A reference call without ``parameters`` has
  parameters ``{}``.
- Exact match (+3): same length and, position by position, equal names and equal
  ``parameters`` dicts; other keys of a call object are ignored.
- Multiset match: intersection counts the smaller multiplicity, sizes count multiplicity; both
  lists empty → 1, one empty → 0. Parameter keys are sets (JSON object keys are unique).
- Values: ``#{k : p[k] == g[k]}`` counts the reference keys ``k`` present in the prediction
  with Python-equal JSON values (so ``1 == 1.0`` and ``true == 1`` count as equal; ``"7" != 7``).
- Greedy assignment: reference calls in order; each takes, among the not yet used predicted
  calls of the same name, the one with the highest ``match(keys) + #equal values`` (the first
  such one on ties) and marks it used; without one it adds 0.
- Because the score is order-free, a prediction holding exactly the reference calls in another
  order also reaches ``score = S_max``, i.e. correctness 3 (the "+3 in order" rule is then a
  shortcut that gives the same value).
- Dynamic scaling (``scaled``): the raw format f ∈ [0, 1] maps linearly onto the format range
  (hi, lo) at step s (f = 1 → hi, f = 0 → lo); the raw correctness c ∈ [−3, 3] maps linearly onto
  the correctness range (hi, lo) (c = 3 → hi, c = −3 → lo, so c = 0 stays 0: both ranges of
  correctness are symmetric). ``total`` is the sum of the (scaled) parts.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Hashable, Iterable
from typing import Any

from rewards.core import RewardModule

TAGS = ("think", "tool_call", "response")
_TAG_STRINGS = tuple(s for t in TAGS for s in (f"<{t}>", f"</{t}>"))
_LAYOUT_RE = re.compile(r"<think>.*</think>(\n<tool_call>\n(.*)\n</tool_call>)?(\n<response>.*</response>)?",
                        re.DOTALL)
CORRECTNESS_MAX = 3.0
SCALE_STEPS = 150.0  # the s/150 of the spec's dynamic scaling


def multiset_match(a: Iterable[Hashable], b: Iterable[Hashable]) -> float:
    """|A ∩ B| / (|A| + |B| − |A ∩ B|) on multisets (spec section 6; ToolRL, arXiv 2504.13958).

    The intersection counts each element min(count in A, count in B) times and sizes count
    multiplicity. Both empty → 1.0 (equal lists); exactly one empty → 0.0.
    ``multiset_match("AB", "AAC") == 0.25``.
    """
    ca, cb = Counter(list(a)), Counter(list(b))  # list(): a dict counts its keys once each
    na, nb = sum(ca.values()), sum(cb.values())
    if na == 0 and nb == 0:
        return 1.0
    if na == 0 or nb == 0:
        return 0.0
    common = sum((ca & cb).values())
    return common / (na + nb - common)


def _json_object_lines(block: str) -> bool:
    """True when every line of ``block`` is one JSON object (no blank line, at least one line)."""
    for line in block.split("\n"):
        try:
            if not isinstance(json.loads(line), dict):
                return False
        except ValueError:
            return False
    return True


def format_layout(text: str) -> tuple[str, ...] | None:
    """The blocks of a well-formed completion, e.g. ``("think", "tool_call")``; None otherwise.

    The text is stripped first. Well-formed (spec section 6): ``<think>…</think>``, then
    optionally ``\\n<tool_call>\\n`` + one JSON object per line + ``\\n</tool_call>`` (no blank
    line, nothing else on the tag lines), then optionally ``\\n<response>…</response>``, nothing
    before or after, exactly one newline between blocks, and every tag string occurring exactly
    once if its block is present and never otherwise (counted over the whole text, think
    contents included).
    """
    text = text.strip()
    if any(text.count(tag) > 1 for tag in _TAG_STRINGS):
        return None
    match = _LAYOUT_RE.fullmatch(text)
    if match is None:
        return None
    tool_block, calls, response_block = match.groups()
    if tool_block is not None and not _json_object_lines(calls):
        return None
    layout = ("think",) + tuple(tag for tag, group in zip(TAGS[1:], (tool_block, response_block))
                                if group is not None)
    present = {t for t in TAGS if f"<{t}>" in text or f"</{t}>" in text}
    return layout if present == set(layout) else None


def _reference_tail(ground_truth: str) -> str:
    """The reference after its first ``</think>`` (all of it when it has none): where its tool
    call and response blocks are looked for, so that tags mentioned in its reasoning are ignored."""
    text = ground_truth.strip()
    cut = text.find("</think>")
    return text if cut < 0 else text[cut + len("</think>"):]


def reference_layout(ground_truth: str) -> tuple[str, ...]:
    """The layout a completion must have: ``think``, plus ``tool_call`` / ``response`` when the
    reference opens that block after its first ``</think>`` (see the module docstring)."""
    tail = _reference_tail(ground_truth)
    return ("think",) + tuple(t for t in TAGS[1:] if f"<{t}>" in tail)


def format_score(completion: str, ground_truth: str) -> float:
    """1.0 when the completion's layout is well formed and equals the reference's, else 0.0."""
    layout = format_layout(completion)
    return 1.0 if layout is not None and layout == reference_layout(ground_truth) else 0.0


def parse_tool_calls(text: str) -> list[dict] | None:
    """The calls in the first ``<tool_call>`` … ``</tool_call>`` block of ``text``; None when
    there is no such block or it is unparseable (spec section 6).

    Lines that are blank are skipped; every other line must be one JSON object with a string
    ``name``; ``parameters``, when present, must be a JSON object. The objects are returned as
    parsed (a call may lack ``parameters``; ``correctness`` decides what that means).
    """
    start = text.find("<tool_call>")
    if start < 0:
        return None
    start += len("<tool_call>")
    end = text.find("</tool_call>", start)
    if end < 0:
        return None
    calls = []
    for line in text[start:end].split("\n"):
        if not line.strip():
            continue
        try:
            call = json.loads(line)
        except ValueError:
            return None
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            return None
        if "parameters" in call and not isinstance(call["parameters"], dict):
            return None
        calls.append(call)
    return calls


def reference_calls(ground_truth: str) -> list[dict]:
    """The reference's calls as ``{"name", "parameters"}`` dicts ([] when it has no tool-call
    block after its first ``</think>``); ValueError when its block is unparseable."""
    tail = _reference_tail(ground_truth)
    if "<tool_call>" not in tail:
        return []
    calls = parse_tool_calls(tail)
    if calls is None:
        raise ValueError(f"the ground truth's tool-call block is not parseable: {ground_truth[:200]!r}")
    return [{"name": c["name"], "parameters": c.get("parameters", {})} for c in calls]


def _call_score(gt_params: dict, pred_params: dict) -> float:
    """match(keys_g, keys_p) + #{k in g : k in p and p[k] == g[k]}."""
    equal = sum(1 for k, v in gt_params.items() if k in pred_params and pred_params[k] == v)
    return multiset_match(gt_params, pred_params) + equal


def correctness(completion: str, ground_truth: str) -> float:
    """Correctness ∈ [−3, 3] of a completion's tool calls (spec section 6; ToolRL, arXiv 2504.13958).

    0 when the reference has no tool call; −3 when the completion's block is missing or
    unparseable (or a call named like a reference call lacks ``parameters``); +3 when the calls
    equal the reference's in order; else 6·score/S_max − 3 with
    score = match(names) + Σ_g [match(keys_g, keys_p) + #equal values] over a greedy assignment
    and S_max = 1 + Σ_g (1 + |params_g|).
    """
    gt = reference_calls(ground_truth)
    if not gt:
        return 0.0
    parsed = parse_tool_calls(completion.strip())
    if parsed is None:
        return -CORRECTNESS_MAX
    gt_names = {g["name"] for g in gt}
    if any(p["name"] in gt_names and "parameters" not in p for p in parsed):
        return -CORRECTNESS_MAX
    pred = [{"name": p["name"], "parameters": p.get("parameters", {})} for p in parsed]
    if pred == gt:
        return CORRECTNESS_MAX
    score = multiset_match([g["name"] for g in gt], [p["name"] for p in pred])
    used: set[int] = set()
    for g in gt:
        best, best_index = 0.0, None
        for i, p in enumerate(pred):
            if i in used or p["name"] != g["name"]:
                continue
            value = _call_score(g["parameters"], p["parameters"])
            if best_index is None or value > best:
                best, best_index = value, i
        if best_index is not None:
            used.add(best_index)
            score += best
    s_max = 1 + sum(1 + len(g["parameters"]) for g in gt)
    return 2 * CORRECTNESS_MAX * score / s_max - CORRECTNESS_MAX


def _check_step(step: float) -> float:
    step = float(step)
    if not math.isfinite(step) or step < 0:
        raise ValueError(f"step must be a finite number >= 0, got {step}")
    return step


def format_range(step: float) -> tuple[float, float]:
    """(value for format 1, value for format 0) at step s: (max(2 − s/150, 1), min(−2 + 2s/150, −1))."""
    s = _check_step(step) / SCALE_STEPS
    return max(2 - s, 1.0), min(-2 + 2 * s, -1.0)


def correctness_range(step: float) -> tuple[float, float]:
    """(value for correctness 3, value for −3) at step s: (min(2 + s/150, 3), max(−2 − s/150, −3))."""
    s = _check_step(step) / SCALE_STEPS
    return min(2 + s, 3.0), max(-2 - s, -3.0)


def scaled(format_value: float, correctness_value: float, step: float) -> tuple[float, float]:
    """Dynamic scaling (spec section 6): map raw format ∈ [0, 1] and correctness ∈ [−3, 3]
    linearly onto their ranges at step s (1 → format hi, 0 → format lo; 3 → correctness hi,
    −3 → correctness lo). Step 0: format 1 → 2, 0 → −2, correctness 1.5 → 1.0."""
    f_hi, f_lo = format_range(step)
    c_hi, c_lo = correctness_range(step)
    fraction = (correctness_value + CORRECTNESS_MAX) / (2 * CORRECTNESS_MAX)
    return f_lo + format_value * (f_hi - f_lo), c_lo + fraction * (c_hi - c_lo)


def toolrl_reward(completion: str, ground_truth: str, step=None) -> dict:
    """ToolRL reward of one completion (spec section 6 contract; arXiv 2504.13958).

    ``ground_truth`` is the reference assistant text with tags. Returns ``{"format",
    "correctness", "total"}``: raw format ∈ {0, 1} and correctness ∈ [−3, 3] when ``step`` is
    None, else both dynamically scaled at that step (``scaled``); ``total`` = format + correctness.
    """
    text = completion.strip()
    fmt = format_score(text, ground_truth)
    corr = correctness(text, ground_truth)
    if step is not None:
        fmt, corr = scaled(fmt, corr, step)
    return {"format": fmt, "correctness": corr, "total": fmt + corr}


class ToolRLReward(RewardModule):
    """The ToolRL reward as a reward module (rewards/core.py contract; arXiv 2504.13958, spec 6).

    ``fn(completions, **columns) -> list[float | None]``: per row ``total`` of ``toolrl_reward``
    against the row's ``ground_truth_column`` (the reference assistant text); None where that is
    None or empty. Unknown columns are ignored; a batch without the column is a ValueError, a
    ground truth that is not a string a TypeError.

    With ``dynamic_scaling`` the rows are scored at the module's step counter s, which
    ``update(batch)`` advances by one after each training step (the counter is saved by
    ``state_dict()``). ``total_steps`` (an extension, not in the spec): when given, the scaling
    reads s/total_steps wherever the spec reads s/150, i.e. the schedule spans the whole run
    (``total_steps=150`` is the spec itself); None keeps the spec's s/150.

    ``correctness_mode="exact"`` (an extension for the paper's reward-granularity ablation, not in
    the spec) replaces the fine-grained correctness by its coarse form: +3 when the calls match the
    reference exactly (fine-grained correctness 3), else −3, before any scaling.

    ``update(batch)`` returns the means of the raw (unscaled) ``format`` and ``correctness``
    over the rows of the last scored batch (logged as ``<name>/format``, ``<name>/correctness``),
    or {} when no row was scored. The counter lives in this object: do not run it with
    ``pool=True`` (worker processes would advance copies).
    """

    def __init__(self, dynamic_scaling: bool = False, ground_truth_column: str = "ground_truth",
                 total_steps: int | None = None, correctness_mode: str = "fine"):
        if total_steps is not None and total_steps <= 0:
            raise ValueError(f"ToolRLReward: total_steps must be positive, got {total_steps}")
        if correctness_mode not in ("fine", "exact"):
            raise ValueError(f"ToolRLReward: correctness_mode must be 'fine' or 'exact', got {correctness_mode!r}")
        self.correctness_mode = correctness_mode
        self.dynamic_scaling = dynamic_scaling
        self.ground_truth_column = ground_truth_column
        self.total_steps = total_steps
        self.step = 0
        self.last_stats: dict[str, float] = {}

    def scale_step(self) -> float:
        """The step fed to the spec's formulas: the counter, or counter·150/total_steps."""
        if self.total_steps is None:
            return float(self.step)
        return self.step * SCALE_STEPS / self.total_steps

    def __call__(self, completions: list[str], **columns: Any) -> list[float | None]:
        if self.ground_truth_column not in columns:
            raise ValueError(f"ToolRLReward needs the {self.ground_truth_column!r} column; "
                             f"the batch has {sorted(columns)}")
        truths = columns[self.ground_truth_column]
        if len(truths) != len(completions):
            raise ValueError(f"ToolRLReward: {len(truths)} ground truths for {len(completions)} completions")
        step = self.scale_step() if self.dynamic_scaling else None
        out: list[float | None] = []
        raw: list[tuple[float, float]] = []
        for row, (text, truth) in enumerate(zip(completions, truths)):
            if truth is None or truth == "":
                out.append(None)
                continue
            if not isinstance(truth, str):
                raise TypeError(f"row {row}: {self.ground_truth_column!r} must be the reference assistant "
                                 f"text (str), got {type(truth).__name__}")
            fmt, corr = format_score(text.strip(), truth), correctness(text, truth)
            if self.correctness_mode == "exact":  # the ablation's coarse reward: all calls right or nothing
                corr = CORRECTNESS_MAX if corr == CORRECTNESS_MAX else -CORRECTNESS_MAX
            raw.append((fmt, corr))
            if step is not None:
                fmt, corr = scaled(fmt, corr, step)
            out.append(fmt + corr)  # == toolrl_reward(text, truth, step)["total"]
        self.last_stats = {} if not raw else {"format": sum(f for f, _ in raw) / len(raw),
                                              "correctness": sum(c for _, c in raw) / len(raw)}
        return out

    def update(self, batch: Any) -> dict[str, float]:
        """Advance the step counter; return the raw format / correctness means of the last batch."""
        self.step += 1
        return dict(self.last_stats)

    def state_dict(self) -> dict[str, int]:
        """The step counter of the dynamic scaling (part of training checkpoints)."""
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        step = state.get("step") if isinstance(state, dict) else None
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"ToolRLReward.load_state_dict: expected {{'step': int >= 0}}, got {state!r}")
        self.step = step


def exact_call(completions: list[str], ground_truth: list[str | None] | None = None, **columns: Any) -> list[float | None]:
    """1.0 where the completion has the reference's format and all of its calls right
    (``toolrl_reward`` format 1 and correctness 3), else 0.0; None without a reference.  Meant
    as a zero-weight component that ``rewards.accuracy_component`` reports as accuracy."""
    if ground_truth is None:
        raise ValueError(f"exact_call needs the 'ground_truth' column; the batch has {sorted(columns)}")
    out: list[float | None] = []
    for text, truth in zip(completions, ground_truth):
        if not truth:
            out.append(None)
            continue
        r = toolrl_reward(text, truth)
        out.append(float(r["format"] == 1.0 and r["correctness"] == CORRECTNESS_MAX))
    return out


def format_only(completions: list[str], ground_truth: list[str | None] | None = None,
                **columns: Any) -> list[float | None]:
    """ToolRL's raw format score (``format_score``: 1.0 for the reference's tag layout, else 0.0),
    None without a reference.  Meant as a zero-weight component that ``monitor.format_component``
    names, so that ``monitor/format_only`` counts completions with the format but wrong calls."""
    if ground_truth is None:
        raise ValueError(f"format_only needs the 'ground_truth' column; the batch has {sorted(columns)}")
    return [None if not truth else format_score(text.strip(), truth) for text, truth in zip(completions, ground_truth)]


def calls_answer(completion: str) -> str | None:
    """A completion's tool calls as one comparable text (sorted JSON lines of name and parameters;
    "" for a completion without a call block, None for an unparseable block): the final answer
    ``monitor/collapse`` compares (``monitor.answer_fn: rewards.toolrl:calls_answer``)."""
    calls = parse_tool_calls(completion.strip()) if "<tool_call>" in completion else []
    if calls is None:
        return None
    return "\n".join(sorted(json.dumps({"name": c["name"], "parameters": c.get("parameters", {})}, sort_keys=True)
                            for c in calls))
