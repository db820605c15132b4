"""Running reward functions: loading them by name, in-process calls (sync or async) under a
time limit, and a process pool.

In-process calls (``CallThread``): each component of ``combine()`` that is not pooled runs its
calls in a daemon thread of its own, one call at a time, and the caller waits at most the call's
time limit. A sync function that runs past it cannot be stopped from outside: the caller stops
waiting, the call is abandoned (it goes on in its thread, which stays busy) and the component's
next calls are refused at once (``CallBusy``) until that call has ended; nothing piles up and
training goes on. An ``async def`` reward is awaited in that thread's own event loop and
cancelled at the limit (as ``asyncio.wait_for`` does), so it normally ends cleanly. The thread
inherits the caller's torch grad mode, inference mode and current CUDA device (when torch is
loaded), so a reward sees the state it would see in the caller's thread.

Process pool: for CPU-heavy reward functions, with a hard time limit per row.
Each row runs in a worker process started with the ``spawn`` method (safe next to CUDA and
threads). A row that exceeds its time limit is not waited for: its worker is killed (SIGKILL)
and reaped at once, a fresh worker takes its place, and the row is reported as timed out while
the other workers go on with the remaining rows. The time limit of a row starts when the worker
has unpickled the task (so importing the reward's module in a fresh worker is not charged to
the row); a worker that cannot even load the task within ``timeout + load_grace_s`` is killed too.

Protocol (parent -> worker): ``send_bytes(pickle.dumps((fn, completions, columns)))`` per task,
``send_bytes(b"")`` to stop. Worker -> parent: ``("start", None)`` once the task is loaded, then
``("ok", values)`` or ``("error", message)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import multiprocessing
import multiprocessing.connection as mpc
import os
import pickle
import queue
import signal
import sys
import threading
import time
import traceback
import weakref
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable


def _worker_main(conn: mpc.Connection) -> None:
    """Worker loop: load a task, announce the start, run it, send the outcome back."""
    # Ctrl-C in a terminal reaches the whole process group: the trainer stops its workers itself,
    # and a worker that died of it would only add a traceback to the trainer's one-line message.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):
            return
        if not data:
            return
        try:
            fn, completions, columns = pickle.loads(data)
        except Exception as exc:  # noqa: BLE001 - reported to the parent as a row error
            conn.send(("error", f"could not load the task in the worker: {exc!r}"))
            continue
        conn.send(("start", None))
        try:
            out = call_reward(fn, completions, columns)
            conn.send_bytes(pickle.dumps(("ok", out)))
        except Exception as exc:  # noqa: BLE001 - the parent turns it into a RowFailure
            tb = traceback.format_exc(limit=3)
            conn.send(("error", f"{type(exc).__name__}: {exc}\n{tb}"))


class RewardError(RuntimeError):
    """A reward component broke its contract, or failed while ``fail_fast=True``."""


async def _await(awaitable: Any) -> Any:
    return await awaitable


def load_callable(spec: str) -> Any:
    """Return the object named by ``"package.module:attr"`` (``attr`` may be dotted)."""
    if not isinstance(spec, str) or ":" not in spec:
        raise ValueError(f"expected 'package.module:attr', got {spec!r}")
    module_name, _, attr = spec.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ImportError(f"cannot import module {module_name!r} for {spec!r}: {exc}") from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise AttributeError(f"{spec!r}: {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def call_reward(fn: Callable, completions: list[str], columns: dict[str, list]) -> Any:
    """Call a sync or async reward without a time limit (the pool's workers use it: the parent
    kills them at the limit); an event loop running in this thread is left alone."""
    out = fn(completions, **columns)
    if not inspect.isawaitable(out):
        return out
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_await(out))
    with ThreadPoolExecutor(max_workers=1) as executor:
        return executor.submit(asyncio.run, _await(out)).result()


class CallTimeout(Exception):
    """An in-process reward call ran past its time limit (its rows are unscored)."""


class CallBusy(Exception):
    """A component's earlier call, abandoned after its time limit, is still running."""


def _torch_thread_state() -> tuple | None:
    """The caller thread's torch state that is per thread: grad mode, inference mode, CUDA device
    (None when torch is not loaded; this module never imports it)."""
    torch = sys.modules.get("torch")
    if torch is None or not hasattr(torch, "is_grad_enabled"):
        return None
    device = None
    with contextlib.suppress(Exception):
        if torch.cuda.is_initialized():
            device = torch.cuda.current_device()
    return torch.is_grad_enabled(), torch.is_inference_mode_enabled(), device


@contextlib.contextmanager
def _thread_state(state: tuple | None):
    if state is None:
        yield
        return
    torch = sys.modules["torch"]
    grad, inference, device = state
    if device is not None:
        torch.cuda.set_device(device)
    with torch.inference_mode(inference), torch.set_grad_enabled(grad):
        yield


async def _within(awaitable: Any, started: float, timeout_s: float) -> Any:
    """Await ``awaitable`` until ``started + timeout_s``; then cancel it (as asyncio.wait_for does,
    but a TimeoutError the reward raises itself stays the reward's error)."""
    task = asyncio.ensure_future(awaitable)
    done, _ = await asyncio.wait({task}, timeout=max(0.0, started + timeout_s - time.monotonic()))
    if task not in done:
        task.cancel()
        raise CallTimeout(f"timed out after {timeout_s:g} s (the coroutine was cancelled)")
    return task.result()


class _Job:
    """One call handed to a ``CallThread``; ``done`` is set when it has ended, however."""

    def __init__(self, fn: Callable, completions: list, columns: dict, timeout_s: float):
        self.fn, self.completions, self.columns, self.timeout_s = fn, completions, columns, timeout_s
        self.state = _torch_thread_state()
        self.started = time.monotonic()
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with _thread_state(self.state):
                out = self.fn(self.completions, **self.columns)
                if inspect.isawaitable(out):
                    out = asyncio.run(_within(out, self.started, self.timeout_s))
            self.result = out
        except BaseException as exc:  # noqa: BLE001 - handed to the caller, which decides
            self.error = exc
        finally:
            self.done.set()


class CallThread:
    """Runs one reward component's in-process calls in a daemon thread, one call at a time, each
    under a time limit (module docstring).

    ``call`` returns the function's value or raises what it raised; ``CallTimeout`` when the
    limit passed first (a sync call is then abandoned: Python cannot stop a thread, so it runs
    on and keeps this thread busy; an async call is cancelled), and ``CallBusy`` while an
    abandoned call is still running. The thread is a daemon, so a hung call never blocks the
    interpreter's exit.
    """

    def __init__(self, name: str):
        self.name = name
        self._start()

    def _start(self) -> None:
        self._pid = os.getpid()
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._current: _Job | None = None
        self._thread = threading.Thread(target=self._loop, args=(self._jobs,), name=f"reward:{self.name}",
                                        daemon=True)
        self._thread.start()

    @staticmethod
    def _loop(jobs: queue.SimpleQueue) -> None:
        while True:
            job = jobs.get()
            if job is None:
                return
            job.run()

    @property
    def busy(self) -> bool:
        """True while a call (an abandoned one, between calls) is running."""
        return self._current is not None and not self._current.done.is_set()

    def call(self, fn: Callable, completions: list, columns: dict, timeout_s: float) -> Any:
        if self._pid != os.getpid():  # a forked child has no copy of the thread: start its own
            self._start()
        if self.busy:
            held = time.monotonic() - self._current.started
            raise CallBusy(f"not called: its call that started {held:.1f} s ago, abandoned at its time "
                           "limit, is still running")
        job = _Job(fn, completions, columns, timeout_s)
        self._current = job
        self._jobs.put(job)
        if not job.done.wait(timeout_s):
            raise CallTimeout(f"timed out after {timeout_s:g} s (the call is abandoned in its thread; "
                              "the component is skipped until it ends)")
        if job.error is not None:
            raise job.error
        return job.result

    def close(self) -> None:
        """Let the thread end after its current call (an abandoned call is not waited for)."""
        self._jobs.put(None)
        if not self.busy:
            self._thread.join(timeout=1.0)


def row_columns(columns: dict[str, list], i: int) -> dict[str, list]:
    """The one-row slice of every column, as one-element lists."""
    return {key: [values[i]] for key, values in columns.items()}


def check_values(name: str, values: Any, n: int) -> list:
    """A component's output as a list of exactly ``n`` values, else RewardError naming it."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        raise RewardError(f"reward component {name!r} returned {type(values).__name__}, "
                          f"expected a list of {n} values")
    if len(values) != n:
        raise RewardError(f"reward component {name!r} returned {len(values)} values "
                          f"for {n} completions")
    return list(values)


def check_batch(completions: Any, columns: dict[str, Any]) -> tuple[list[str], dict[str, list]]:
    """Completions and columns as lists; every column needs one entry per completion."""
    completions = list(completions)
    n = len(completions)
    checked = {}
    for key, values in columns.items():
        if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
            raise ValueError(f"reward column {key!r} must be a list with one entry per "
                             f"completion, got {type(values).__name__}")
        if len(values) != n:
            raise ValueError(f"reward column {key!r} has {len(values)} entries for "
                             f"{n} completions")
        checked[key] = list(values)
    return completions, checked


@dataclass
class _Worker:
    process: Any
    conn: mpc.Connection
    task: int | None = None          # index of the row it is running
    deadline: float = 0.0            # monotonic time after which it is killed
    started: bool = False


@dataclass
class _Workers:
    """The live workers; kept apart from WorkerPool so a finalizer can stop them."""

    items: list[_Worker] = field(default_factory=list)


def _stop(worker: _Worker, kill: bool) -> None:
    """Stop one worker and reap it (no zombie is left behind)."""
    if not kill:  # ask politely first: an idle worker exits on the empty message
        try:
            worker.conn.send_bytes(b"")
            worker.process.join(timeout=1.0)
        except (OSError, ValueError):
            pass
    if worker.process.is_alive():
        worker.process.kill()
    worker.process.join(timeout=5.0)
    worker.conn.close()


def _stop_all(workers: _Workers) -> None:
    for worker in workers.items:
        _stop(worker, kill=False)
    workers.items.clear()


class WorkerPool:
    """A lazily started set of ``num_workers`` spawn processes that score one row per task."""

    def __init__(self, num_workers: int = 2, load_grace_s: float = 60.0):
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        self.num_workers = num_workers
        self.load_grace_s = load_grace_s
        self._ctx = multiprocessing.get_context("spawn")
        self._workers = _Workers()
        self._finalizer = weakref.finalize(self, _stop_all, self._workers)

    def _spawn(self) -> _Worker:
        parent, child = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(target=_worker_main, args=(child,), name="rewards-pool")
        proc.start()
        child.close()
        return _Worker(process=proc, conn=parent)

    def _ensure_started(self) -> None:
        while len(self._workers.items) < self.num_workers:
            self._workers.items.append(self._spawn())

    def _replace(self, worker: _Worker) -> None:
        _stop(worker, kill=True)
        idx = self._workers.items.index(worker)
        self._workers.items[idx] = self._spawn()

    def run_rows(
        self, fn: Callable, rows: list[tuple[list, dict]], timeout_s: float
    ) -> list[tuple[str, Any]]:
        """Score each ``(completions, columns)`` row with ``fn`` in the workers.

        Returns one ``(status, payload)`` per row, in order: ``("ok", values)``,
        ``("error", message)`` or ``("timeout", message)``.
        """
        for worker in [w for w in self._workers.items if w.task is not None]:
            worker.task = None  # left busy by an interrupted run: its answer is stale
            self._replace(worker)
        self._ensure_started()
        payloads = deque((i, pickle.dumps((fn, c, cols))) for i, (c, cols) in enumerate(rows))
        results: list[tuple[str, Any] | None] = [None] * len(rows)
        while payloads or any(w.task is not None for w in self._workers.items):
            self._dispatch(payloads, timeout_s, results)
            self._collect(timeout_s, results)
            self._expire(timeout_s, results)
        return results  # type: ignore[return-value]

    def _dispatch(self, payloads: deque, timeout_s: float, results: list) -> None:
        for worker in list(self._workers.items):
            if not payloads or worker.task is not None:
                continue
            idx, data = payloads.popleft()
            try:
                worker.conn.send_bytes(data)
            except (OSError, ValueError):      # the worker died while idle: replace and retry
                self._replace(worker)
                payloads.appendleft((idx, data))
                continue
            worker.task, worker.started = idx, False
            worker.deadline = time.monotonic() + timeout_s + self.load_grace_s

    def _collect(self, timeout_s: float, results: list) -> None:
        busy = {w.conn: w for w in self._workers.items if w.task is not None}
        if not busy:
            return
        wait_s = max(0.0, min(w.deadline for w in busy.values()) - time.monotonic())
        for conn in mpc.wait(list(busy), timeout=wait_s):
            worker = busy[conn]
            try:
                status, payload = conn.recv()
            except (EOFError, OSError):
                code = worker.process.exitcode
                results[worker.task] = ("error", f"worker process died (exit code {code})")
                worker.task = None
                self._replace(worker)
                continue
            if status == "start":
                worker.started = True
                worker.deadline = time.monotonic() + timeout_s
                continue
            results[worker.task] = (status, payload)
            worker.task = None

    def _expire(self, timeout_s: float, results: list) -> None:
        now = time.monotonic()
        for worker in list(self._workers.items):
            if worker.task is None or now < worker.deadline:
                continue
            what = f"timed out after {timeout_s:g} s" if worker.started else \
                f"could not load the task within {timeout_s + self.load_grace_s:g} s"
            results[worker.task] = ("timeout", f"{what}; worker killed")
            worker.task = None
            self._replace(worker)

    def close(self) -> None:
        """Stop and reap all workers; the pool starts again on its next use."""
        _stop_all(self._workers)

    @property
    def pids(self) -> list[int]:
        """Process ids of the live workers (for tests and diagnostics)."""
        return [w.process.pid for w in self._workers.items]


def check_picklable(fn: Callable, name: str) -> None:
    """Raise TypeError with a clear message when ``fn`` cannot be sent to a worker process."""
    try:
        pickle.dumps(fn)
    except Exception as exc:  # noqa: BLE001 - pickling raises many types
        raise TypeError(
            f"reward component {name!r} has pool=True but its function {fn!r} cannot be pickled "
            f"({exc}); use a module-level function or a picklable callable object "
            "(lambdas, nested functions and bound methods of unpicklable objects do not work)"
        ) from exc
