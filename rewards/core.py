"""The reward contract and ``combine()`` (DESIGN.md section 5).

A reward is any callable ``fn(completions: list[str], **columns) -> list[float | None]``, plain or
``async def``; ``columns`` are per-row lists (dataset fields, ``prompts``, ``completion_ids``) and
unused ones must be accepted. ``None`` = "does not apply to this row"; an exception instance =
"this row failed". A row may instead be a ``RewardOutput`` with step spans and/or dense token
rewards; every value becomes a ``RewardOutput`` (or None) before ``combine()`` weighs the components.

Every reward call has a time limit: ``timeout_s`` seconds per row (the component's, else
combine's). A ``pool=True`` component runs each row in a worker process killed at its limit; any
other component runs in a thread of its own (``rewards.pool.CallThread``) and a call on n rows
may take ``n * timeout_s`` seconds (plus ``load_grace_s`` on the component's first call, for
models loaded lazily). The rows of a call that timed out are unscored (NaN, counted as
failures) and the run goes on; a sync call that hangs is abandoned in its thread and the
component is skipped until it returns. A batch call that raises is retried row by row. No torch.

A reward that keeps state across steps implements all of ``StatefulReward`` (most simply by
subclassing ``RewardModule``); one with only some of its methods is refused (``stateful_part``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Protocol, runtime_checkable

from rewards.pool import (CallBusy, CallThread, CallTimeout, RewardError, WorkerPool, check_batch,
                          check_picklable, check_values, load_callable, row_columns)

logger = logging.getLogger("rewards")


@runtime_checkable
class StatefulReward(Protocol):
    """The contract of a reward that keeps state across steps; ``CombinedReward`` calls it by name.

    ``attach(context)``: once, before the first step, with the run's ``rlkit.reward_api.RewardContext``.
    ``update(batch) -> metrics``: once per step, after scoring; may add token terms to the batch
    (``batch.add_token_term``); metrics are logged as ``<component>/<key>``.
    ``state_dict()`` / ``load_state_dict(state)``: small state (numbers, strings, lists, dicts,
    tensors), written by the main rank into the checkpoint's ``reward.pt``.
    ``save_state(folder)`` / ``load_state(folder)``: large state the component owns (a training
    backend's weights and optimizer) in ``folder`` (``reward_state/<component>``, which the component
    creates); called on every rank, so the writes may be collective.  ``close()``: release resources.
    """

    def attach(self, context: Any) -> None: ...
    def update(self, batch: Any) -> dict[str, float]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...
    def save_state(self, folder: Any) -> None: ...
    def load_state(self, folder: Any) -> None: ...
    def close(self) -> None: ...


STATEFUL_METHODS = ("attach", "update", "state_dict", "load_state_dict", "save_state", "load_state", "close")


class RewardModule:
    """A ``StatefulReward`` whose methods do nothing: subclass it and override what you need
    (``__call__`` stays yours)."""

    def attach(self, context: Any) -> None:
        return None

    def update(self, batch: Any) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None

    def save_state(self, folder: Any) -> None:
        return None

    def load_state(self, folder: Any) -> None:
        return None

    def close(self) -> None:
        return None


def stateful_part(name: str, fn: Any) -> StatefulReward | None:
    """``fn`` when it is a ``StatefulReward``, None when it has none of its methods; a ``TypeError``
    naming the missing methods when it has only some (a missing ``load_state_dict`` would
    otherwise lose the component's state on resume without a word)."""
    if isinstance(fn, StatefulReward):
        return fn
    present = [m for m in STATEFUL_METHODS if callable(getattr(fn, m, None))]
    if present:
        missing = [m for m in STATEFUL_METHODS if m not in present]
        raise TypeError(f"reward component {name!r} defines {', '.join(present)} but not {', '.join(missing)}: "
                        "a stateful reward implements all of rewards.StatefulReward (subclass "
                        "rewards.RewardModule for no-op defaults)")
    return None


@dataclass
class RewardOutput:
    """One row's reward: a score plus optional step spans or dense token rewards.

    ``steps``: ``(start_token, end_token_exclusive, step_score)`` spans over completion tokens.
    ``token_rewards``: one float per completion token.

    Steps given without ``token_rewards`` become token rewards: each step's value, after the
    component's credit assignment (``Component.step_credit``; none = the values as they are,
    the sum form), on the step's last token.  A row that gives ``token_rewards`` has done its
    own credit assignment; its ``steps`` are then for inspection only.
    """

    score: float | None
    steps: list[tuple[int, int, float]] | None = None
    token_rewards: list[float] | None = None


@dataclass
class RowFailure:
    """A component that raised, timed out or was skipped (its earlier call still running) on one
    row; its value there is NaN."""

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
    spans per component that gave any, per row (None where absent). ``token_totals``: per component
    that gave token rewards (or steps), the sum of its unweighted token rewards per row (NaN where
    it gave none): a token-level component's per-completion value.
    """

    scores: list[float]
    components: dict[str, list[float]]
    token_rewards: list[list[float] | None]
    step_rewards: dict[str, list[list[tuple[int, int, float]] | None]]
    failures: list[RowFailure]
    num_unscored: int = 0
    token_totals: dict[str, list[float]] = field(default_factory=dict)


@dataclass
class Component:
    """One reward inside ``combine``; ``fn`` may also be an import string "pkg.mod:attr".
    ``timeout_s``: seconds per row for this component (None: combine's ``timeout_s``)."""

    fn: Callable | str
    weight: float = 1.0
    name: str | None = None
    pool: bool = False
    timeout_s: float | None = None
    step_credit: Callable[[list[float]], list[float]] | None = None  # steps -> token rewards; None: as given


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


def _steps_to_tokens(out: RewardOutput | None, n_tokens: int | None, credit: Callable | None,
                     name: str) -> RewardOutput | None:
    """A row's steps as token rewards (the credited value on each step's last token) when the row
    gave steps but no token rewards and its token count is known."""
    if out is None or out.steps is None:
        return out
    if out.token_rewards is not None:
        if credit is not None:  # a credit setting that would do nothing is a broken contract
            raise RewardError(f"reward component {name!r} returns its own token_rewards, so its step_credit "
                              "setting cannot apply; set the credit in the reward's own arguments")
        return out
    if n_tokens is None:  # no completion_ids: the spans cannot be placed
        return out
    credited = (credit or list)([v for _, _, v in out.steps])
    dense = [0.0] * n_tokens
    for (_, end, _), value in zip(out.steps, credited):
        dense[end - 1] += float(value)
    return replace(out, token_rewards=dense)


def _check_seconds(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ValueError(f"{key} must be a positive, finite number of seconds, got {value!r}")
    return float(value)


def _rows_text(rows: list[int]) -> str:
    """[0, 1, 2, 5] -> "0-2, 5"."""
    spans: list[list[int]] = []
    for row in rows:
        if spans and row == spans[-1][1] + 1:
            spans[-1][1] = row
        else:
            spans.append([row, row])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


class CombinedReward:
    """A weighted sum of named reward components; itself a plain reward (``__call__``).

    Time limits (module docstring): ``timeout_s`` per row, ``load_grace_s`` added to each
    in-process component's first call."""

    def __init__(self, components: dict[str, Component], *, fail_fast: bool = False,
                 num_workers: int = 2, timeout_s: float = 10.0, load_grace_s: float = 60.0):
        if not components:
            raise ValueError("combine() needs at least one reward component")
        self.components = components
        self.fail_fast = fail_fast
        self.num_workers = num_workers
        self.timeout_s = _check_seconds("rewards timeout_s", timeout_s)
        if isinstance(load_grace_s, bool) or not isinstance(load_grace_s, (int, float)) or not (
                0 <= load_grace_s < math.inf):
            raise ValueError(f"load_grace_s must be a finite number of seconds >= 0, got {load_grace_s!r}")
        self.load_grace_s = float(load_grace_s)
        self._pool: WorkerPool | None = None
        self._threads: dict[str, CallThread] = {}
        # the components that keep state (StatefulReward), by name; a partial one is refused here
        self.stateful = {name: part for name, comp in components.items()
                         if (part := stateful_part(name, comp.fn)) is not None}

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
                if isinstance(value, Exception) and i not in errors:  # a row the reward could not score
                    errors[i] = f"{type(value).__name__}: {value}"
                try:
                    outs.append(None if i in errors else _normalise(value, n_tokens[i]))
                except (TypeError, ValueError) as exc:
                    errors[i] = f"{type(exc).__name__}: {exc}"
                    outs.append(None)
            if errors:
                self._report(result, name, errors, completions)
            outs = [_steps_to_tokens(out, n_tokens[i], comp.step_credit, name) for i, out in enumerate(outs)]
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
                result.token_totals.setdefault(name, [math.nan] * len(outs))[i] = sum(out.token_rewards)
                applied[i] = True
        result.components[name] = raw
        if any(out is not None and out.steps is not None for out in outs):
            result.step_rewards[name] = [None if out is None else out.steps for out in outs]

    def _report(self, result: RewardResult, name: str, errors: dict[int, str],
                completions: list[str]) -> None:
        """Record the failed rows of one component (one warning naming it and the rows), or,
        with ``fail_fast``, raise for the first."""
        rows = sorted(errors)
        previews = {}
        for i in rows:
            text = completions[i]
            previews[i] = text[:80].replace("\n", " ") + ("..." if len(text) > 80 else "")
        first = rows[0]
        first_line = (errors[first].strip().splitlines() or [""])[0]
        if self.fail_fast:
            raise RewardError(f"reward component {name!r} failed on row {first}: {first_line} "
                              f"(completion: {previews[first]!r})")
        if len(rows) == 1:
            logger.warning("reward component %r failed on row %d: %s (completion: %r)",
                           name, first, first_line, previews[first])
        else:
            logger.warning("reward component %r failed on rows %s (%d of %d, unscored); row %d: %s "
                           "(completion: %r)", name, _rows_text(rows), len(rows), len(completions),
                           first, first_line, previews[first])
        result.failures.extend(RowFailure(name, i, errors[i], previews[i]) for i in rows)

    def _call(self, name: str, comp: Component, completions: list[str],
              columns: dict[str, list]) -> Any:
        """One in-process call in the component's thread, under its time limit."""
        per_row = comp.timeout_s if comp.timeout_s is not None else self.timeout_s
        thread = self._threads.get(name)
        limit = per_row * max(1, len(completions))
        if thread is None:
            thread = self._threads[name] = CallThread(name)
            limit += self.load_grace_s
        return thread.call(comp.fn, completions, columns, limit)

    def _run(self, name: str, comp: Component, completions: list[str],
             columns: dict[str, list]) -> tuple[list, dict[int, str]]:
        """Raw values per row plus ``{row: error}`` for the rows that failed."""
        if comp.pool:
            return self._run_pooled(name, comp, completions, columns)
        n = len(completions)
        try:
            values = self._call(name, comp, completions, columns)
        except RewardError:  # a broken contract (or a nested fail_fast) is not row-local
            raise
        except (CallTimeout, CallBusy) as exc:
            return [None] * n, dict.fromkeys(range(n), f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # noqa: BLE001 - isolate the failing rows below
            logger.warning("reward component %r raised on its batch of %d rows (%s: %s); "
                           "scoring the rows one by one", name, n, type(exc).__name__, exc)
            return self._run_rows(name, comp, completions, columns)
        return check_values(name, values, n), {}

    def _run_rows(self, name: str, comp: Component, completions: list[str],
                  columns: dict[str, list]) -> tuple[list, dict[int, str]]:
        values, errors = [None] * len(completions), {}  # row values; {row: error}
        for i, text in enumerate(completions):
            try:
                out = self._call(name, comp, [text], row_columns(columns, i))
            except RewardError:
                raise
            except Exception as exc:  # noqa: BLE001 - becomes a RowFailure (timeouts too)
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
        """``update(batch)`` of every stateful component; metrics come back as name/key."""
        metrics: dict[str, Any] = {}
        for name, fn in self.stateful.items():
            for key, value in (fn.update(batch) or {}).items():
                metrics[f"{name}/{key}"] = value
        return metrics

    def attach(self, context: Any) -> None:
        """Hand the run (a ``rlkit.reward_api.RewardContext``, from the trainer) to every
        stateful component, once, before the first step."""
        for fn in self.stateful.values():
            fn.attach(context)

    def save_state(self, folder: Any) -> None:
        """``save_state(folder/<name>)`` of every stateful component (on every rank: the writes
        may be collective); a component that writes creates its folder."""
        for name, fn in self.stateful.items():
            fn.save_state(Path(folder) / name)

    def load_state(self, folder: Any) -> None:
        """The counterpart of ``save_state``: ``load_state(folder/<name>)``."""
        for name, fn in self.stateful.items():
            fn.load_state(Path(folder) / name)

    def state_dict(self) -> dict[str, Any]:
        """The states of the stateful components, by component name."""
        return {name: fn.state_dict() for name, fn in self.stateful.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        unknown = sorted(set(state) - set(self.components))
        if unknown:
            raise KeyError(f"reward state names unknown components {unknown}; "
                           f"components are {sorted(self.components)}")
        for name, sub in state.items():
            if name not in self.stateful:
                raise RewardError(f"reward component {name!r} is not a stateful reward; it cannot load a state")
            self.stateful[name].load_state_dict(sub)

    def close(self) -> None:
        """Stop the worker processes and the components' call threads (both restart lazily if
        used again; a thread busy with an abandoned call is left to end on its own) and close
        the stateful components."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        for thread in self._threads.values():
            thread.close()
        self._threads = {}
        for fn in self.stateful.values():
            fn.close()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_pool"], state["_threads"] = None, {}  # processes and threads stay here
        return state

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
    if comp.timeout_s is not None:
        comp.timeout_s = _check_seconds(f"reward {name!r}: timeout_s", comp.timeout_s)
    if comp.pool:
        check_picklable(comp.fn, name)
    return comp


def combine(*, fail_fast: bool = False, num_workers: int = 2, timeout_s: float = 10.0,
            load_grace_s: float = 60.0, **components: Any) -> CombinedReward:
    """Combine named rewards into one weighted reward.

    Each keyword value is a callable, an import string, a ``(callable, weight)`` tuple or a
    ``Component``; the keyword is the component's name (``reward/<name>`` in the logs).
    ``timeout_s``: seconds per row for every component without its own ``Component.timeout_s``
    (a ``pool=True`` row in its worker; an in-process call on n rows gets ``n * timeout_s``,
    plus ``load_grace_s`` on the component's first call). ``num_workers``: worker processes
    of the ``pool=True`` components.
    """
    built = {name: _as_component(name, spec) for name, spec in components.items()}
    return CombinedReward(built, fail_fast=fail_fast, num_workers=num_workers,
                          timeout_s=timeout_s, load_grace_s=load_grace_s)
