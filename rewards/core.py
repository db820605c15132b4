"""The reward contract and ``combine()`` (DESIGN.md section 5).

A reward is any callable ``fn(completions: list[str], **columns) -> list[float | None]``, plain or
``async def``; ``columns`` are per-row lists (dataset fields, ``prompts``, ``completion_ids``) and
unused ones must be accepted. ``None`` = "does not apply to this row". A row may instead be a
``RewardOutput`` with step spans and/or dense token rewards; every value is normalised into a
``RewardOutput`` (or None) before ``combine()`` weighs the components, isolates failing rows and
runs ``pool=True`` components in worker processes with a time limit per row. No torch import.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from typing import Any, Callable

from rewards.pool import (RewardError, WorkerPool, call_reward, check_batch, check_picklable,
                          check_values, load_callable, row_columns)

logger = logging.getLogger("rewards")


@dataclass
class RewardOutput:
    """One row's reward: a score plus optional step spans or dense token rewards.

    ``steps``: ``(start_token, end_token_exclusive, step_score)`` spans over completion tokens.
    ``token_rewards``: one float per completion token.
    """

    score: float | None
    steps: list[tuple[int, int, float]] | None = None
    token_rewards: list[float] | None = None


@dataclass
class RowFailure:
    """A component that raised (or timed out) on one row; its value there is NaN."""

    component: str
    row: int
    error: str
    preview: str


@dataclass
class RewardResult:
    """Scores of one batch.

    ``scores``: weighted sum over the components that apply to each row (0.0 where none does;
    those rows are counted in ``num_unscored``). ``components``: each component's raw value per
    row, NaN where it returned None or failed. ``token_rewards``: weighted sum of dense token
    rewards per row (None where no component gave any). ``step_rewards``: raw (unweighted) step
    spans per component that gave any, per row (None where absent).
    """

    scores: list[float]
    components: dict[str, list[float]]
    token_rewards: list[list[float] | None]
    step_rewards: dict[str, list[list[tuple[int, int, float]] | None]]
    failures: list[RowFailure]
    num_unscored: int = 0


@dataclass
class Component:
    """One reward inside ``combine``; ``fn`` may also be an import string "pkg.mod:attr"."""

    fn: Callable | str
    weight: float = 1.0
    name: str | None = None
    pool: bool = False
    timeout_s: float | None = None


def _as_score(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not hasattr(value, "__float__"):
        raise TypeError(f"expected a float, None or RewardOutput, got {type(value).__name__}")
    score = float(value)
    return None if math.isnan(score) else score


def _normalise(value: Any, n_tokens: int | None) -> RewardOutput | None:
    """Turn one row's value into a checked RewardOutput (None when nothing applies)."""
    if not isinstance(value, RewardOutput):
        score = _as_score(value)
        return None if score is None else RewardOutput(score)
    tokens = steps = None
    if value.token_rewards is not None:
        tokens = [float(t) for t in value.token_rewards]
        if n_tokens is not None and len(tokens) != n_tokens:
            raise ValueError(f"token_rewards has {len(tokens)} entries for {n_tokens} tokens")
    if value.steps is not None:
        steps = [(int(s), int(e), float(v)) for s, e, v in value.steps]
        limit = n_tokens if n_tokens is not None else math.inf
        bad = [st for st in steps if not 0 <= st[0] < st[1] <= limit]
        if bad:
            raise ValueError(f"step spans out of range (completion has {n_tokens} tokens): {bad[:3]}")
    out = RewardOutput(_as_score(value.score), steps, tokens)
    return None if out.score is None and steps is None and tokens is None else out


def _add_tokens(total: list[float] | None, tokens: list[float], weight: float, row: int) -> list:
    scaled = [weight * t for t in tokens]
    if total is None:
        return scaled
    if len(total) != len(scaled):
        raise RewardError(f"row {row}: components gave token_rewards of different lengths "
                          f"({len(total)} vs {len(scaled)})")
    return [a + b for a, b in zip(total, scaled)]


class CombinedReward:
    """A weighted sum of named reward components; itself a plain reward (``__call__``)."""

    def __init__(self, components: dict[str, Component], *, fail_fast: bool = False,
                 num_workers: int = 2, timeout_s: float = 10.0):
        if not components:
            raise ValueError("combine() needs at least one reward component")
        self.components = components
        self.fail_fast = fail_fast
        self.num_workers = num_workers
        self.timeout_s = timeout_s
        self._pool: WorkerPool | None = None

    @property
    def weights(self) -> dict[str, float]:
        return {name: comp.weight for name, comp in self.components.items()}

    def __call__(self, completions: list[str], **columns: list) -> list[float]:
        return self.score(completions, **columns).scores

    def score(self, completions: list[str], **columns: list) -> RewardResult:
        """Score a batch: run every component, isolate failing rows, combine by weight."""
        completions, columns = check_batch(completions, columns)
        n = len(completions)
        ids = columns.get("completion_ids")
        n_tokens = [None if ids is None else len(ids[i]) for i in range(n)]
        result = RewardResult([0.0] * n, {}, [None] * n, {}, [])
        applied = [False] * n
        for name, comp in self.components.items():
            values, errors = self._run(name, comp, completions, columns)
            outs: list[RewardOutput | None] = []
            for i, value in enumerate(values):
                try:
                    outs.append(None if i in errors else _normalise(value, n_tokens[i]))
                except (TypeError, ValueError) as exc:
                    errors[i] = f"{type(exc).__name__}: {exc}"
                    outs.append(None)
            for i in sorted(errors):
                self._fail(result, name, i, errors[i], completions[i])
            self._accumulate(result, applied, name, comp.weight, outs)
        result.num_unscored = applied.count(False)
        return result

    @staticmethod
    def _accumulate(result: RewardResult, applied: list[bool], name: str, weight: float,
                    outs: list[RewardOutput | None]) -> None:
        raw = []
        for i, out in enumerate(outs):
            score = None if out is None else out.score
            raw.append(math.nan if score is None else score)
            if score is not None:
                result.scores[i] += weight * score
                applied[i] = True
            if out is not None and out.token_rewards is not None:
                result.token_rewards[i] = _add_tokens(
                    result.token_rewards[i], out.token_rewards, weight, i)
        result.components[name] = raw
        if any(out is not None and out.steps is not None for out in outs):
            result.step_rewards[name] = [None if out is None else out.steps for out in outs]

    def _fail(self, result: RewardResult, name: str, row: int, error: str, text: str) -> None:
        preview = text[:80].replace("\n", " ") + ("..." if len(text) > 80 else "")
        first_line = (error.strip().splitlines() or [""])[0]
        if self.fail_fast:
            raise RewardError(f"reward component {name!r} failed on row {row}: {first_line} "
                              f"(completion: {preview!r})")
        logger.warning("reward component %r failed on row %d: %s (completion: %r)",
                       name, row, first_line, preview)
        result.failures.append(RowFailure(name, row, error, preview))

    def _run(self, name: str, comp: Component, completions: list[str],
             columns: dict[str, list]) -> tuple[list, dict[int, str]]:
        """Raw values per row plus ``{row: error}`` for the rows that failed."""
        if comp.pool:
            return self._run_pooled(name, comp, completions, columns)
        try:
            values = call_reward(comp.fn, completions, columns)
        except RewardError:  # a broken contract (or a nested fail_fast) is not row-local
            raise
        except Exception:  # noqa: BLE001 - isolate the failing rows below
            return self._run_rows(name, comp, completions, columns)
        return check_values(name, values, len(completions)), {}

    def _run_rows(self, name: str, comp: Component, completions: list[str],
                  columns: dict[str, list]) -> tuple[list, dict[int, str]]:
        values, errors = [None] * len(completions), {}  # row values; {row: error}
        for i, text in enumerate(completions):
            try:
                out = call_reward(comp.fn, [text], row_columns(columns, i))
            except Exception as exc:  # noqa: BLE001 - becomes a RowFailure
                errors[i] = f"{type(exc).__name__}: {exc}"
                if self.fail_fast:
                    break
                continue
            values[i] = check_values(name, out, 1)[0]
        return values, errors

    def _run_pooled(self, name: str, comp: Component, completions: list[str],
                    columns: dict[str, list]) -> tuple[list, dict[int, str]]:
        if self._pool is None:
            self._pool = WorkerPool(self.num_workers)
        rows = [([text], row_columns(columns, i)) for i, text in enumerate(completions)]
        timeout = comp.timeout_s if comp.timeout_s is not None else self.timeout_s
        values, errors = [None] * len(completions), {}  # row values; {row: error}
        for i, (status, payload) in enumerate(self._pool.run_rows(comp.fn, rows, timeout)):
            if status == "ok":
                values[i] = check_values(name, payload, 1)[0]
            else:
                errors[i] = payload
        return values, errors

    def update(self, batch: Any) -> dict[str, Any]:
        """Forward ``update(batch)`` to stateful components; metrics come back as name/key."""
        metrics: dict[str, Any] = {}
        for name, comp in self.components.items():
            update = getattr(comp.fn, "update", None)
            if callable(update):
                for key, value in (update(batch) or {}).items():
                    metrics[f"{name}/{key}"] = value
        return metrics

    def attach(self, context: Any) -> None:
        """Hand the training run to components that build on it (``attach(context)``; the
        trainer passes a ``rlkit.trainer.RewardContext``): PRIME's PRM gets its own backend."""
        for comp in self.components.values():
            attach = getattr(comp.fn, "attach", None)
            if callable(attach):
                attach(context)

    def save_state(self, folder: Any) -> None:
        """Components that own a training backend write it into ``folder/<name>/`` (called on
        every rank: the writes may be collective)."""
        from pathlib import Path

        for name, comp in self.components.items():
            save = getattr(comp.fn, "save_state", None)
            if callable(save):
                sub = Path(folder) / name
                sub.mkdir(parents=True, exist_ok=True)
                save(sub)

    def load_state(self, folder: Any) -> None:
        """The counterpart of ``save_state``; a missing folder is an error naming it."""
        from pathlib import Path

        for name, comp in self.components.items():
            load = getattr(comp.fn, "load_state", None)
            if callable(load):
                sub = Path(folder) / name
                if not sub.is_dir():
                    raise RewardError(f"no saved state for reward component {name!r} at {sub}")
                load(sub)

    def state_dict(self) -> dict[str, Any]:
        """The states of the components that have ``state_dict()``, by component name."""
        return {name: comp.fn.state_dict() for name, comp in self.components.items()
                if callable(getattr(comp.fn, "state_dict", None))}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        unknown = sorted(set(state) - set(self.components))
        if unknown:
            raise KeyError(f"reward state names unknown components {unknown}; "
                           f"components are {sorted(self.components)}")
        for name, sub in state.items():
            loader = getattr(self.components[name].fn, "load_state_dict", None)
            if not callable(loader):
                raise RewardError(f"reward component {name!r} has no load_state_dict()")
            loader(sub)

    def close(self) -> None:
        """Stop the worker processes (the pool restarts lazily if used again) and close the
        components that have ``close()``."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        for comp in self.components.values():
            close = getattr(comp.fn, "close", None)
            if callable(close):
                close()

    def __enter__(self) -> CombinedReward:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _as_component(name: str, spec: Any) -> Component:
    if isinstance(spec, Component):
        comp = replace(spec, name=name)
    elif isinstance(spec, tuple):
        if len(spec) != 2:
            raise TypeError(f"reward {name!r}: expected (callable, weight), got {spec!r}")
        comp = Component(spec[0], weight=spec[1], name=name)
    else:
        comp = Component(spec, name=name)
    if isinstance(comp.fn, str):
        comp.fn = load_callable(comp.fn)
    if not callable(comp.fn):
        raise TypeError(f"reward {name!r} is not callable: {comp.fn!r}")
    comp.weight = float(comp.weight)
    if not math.isfinite(comp.weight):
        raise ValueError(f"reward {name!r} has a non-finite weight {comp.weight}")
    if comp.pool:
        check_picklable(comp.fn, name)
    return comp


def combine(*, fail_fast: bool = False, num_workers: int = 2, timeout_s: float = 10.0,
            **components: Any) -> CombinedReward:
    """Combine named rewards into one weighted reward.

    Each keyword value is a callable, an import string, a ``(callable, weight)`` tuple or a
    ``Component``; the keyword is the component's name (``reward/<name>`` in the logs).
    ``timeout_s`` and ``num_workers`` apply to ``pool=True`` components.
    """
    built = {name: _as_component(name, spec) for name, spec in components.items()}
    return CombinedReward(built, fail_fast=fail_fast, num_workers=num_workers,
                          timeout_s=timeout_s)
