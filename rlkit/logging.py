"""Metrics: one JSON line per step in ``metrics.jsonl``, a console summary and a progress bar."""
from __future__ import annotations

import json
import math
import sys
import time
from contextlib import contextmanager
from pathlib import Path

CONSOLE_KEYS = ("reward/mean", "accuracy", "kl_ref", "entropy", "clip_frac", "response_length",
                "tokens_per_s", "time/step")


class PhaseTimer:
    """Wall time per named phase of a step: ``with timer("generate"): ...``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start

    def metrics(self) -> dict[str, float]:
        return {f"time/{k}": round(v, 4) for k, v in self.seconds.items()}


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsLogger:
    """Appends records to ``metrics.jsonl``. A fresh run moves an existing file aside
    (``metrics.<mtime>.jsonl``); a resumed run (``append=True``) continues the file after the
    ``resume`` row that rlkit/checkpoint.py logs (the rows it writes for later steps replace the ones
    before it: ``rlkit.plot.read_metrics``), and its progress bar starts at ``start_step``.
    ``sinks`` (rlkit/tracking.py: TensorBoard, W&B, MLflow) receive every record, the resolved
    config and the evaluation tables."""

    def __init__(self, run_dir: str | Path, total_steps: int, progress: bool = True, console_every: int = 1,
                 append: bool = False, start_step: int = 0, sinks: list | None = None):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.sinks = list(sinks or [])
        if self.path.exists() and not append:  # a previous run in the same folder: keep its metrics aside
            self.path.rename(self.path.with_name(f"metrics.{int(self.path.stat().st_mtime)}.jsonl"))
        self.console_every = max(1, console_every)
        self.bar = None
        if progress and total_steps > 0:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True,
                            file=sys.stderr)

    def log(self, step: int, metrics: dict, kind: str = "train") -> None:
        record = {"step": step, "kind": kind, **{k: _clean(v) for k, v in metrics.items()}}
        with self.path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        for sink in self.sinks:
            sink.log(step, metrics, kind)
        if kind == "train" and self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix({k.split("/")[-1]: f"{metrics[k]:.3g}" for k in ("reward/mean", "accuracy")
                                  if isinstance(metrics.get(k), float)}, refresh=False)
        if kind != "train" or step % self.console_every == 0:
            self.message(f"[{kind} {step}] " + format_metrics(metrics, kind))

    def message(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def log_config(self, config: dict) -> None:
        """The resolved config (secrets already redacted) for the sinks."""
        for sink in self.sinks:
            sink.log_config(config)

    def log_table(self, name: str, rows: list[dict], step: int) -> None:
        """An evaluation table (one dict per row) for the sinks."""
        for sink in self.sinks:
            sink.log_table(name, rows, step)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        for sink in self.sinks:
            sink.close()


def format_metrics(metrics: dict, kind: str) -> str:
    keys = CONSOLE_KEYS if kind == "train" else sorted(metrics)
    keys = list(keys) + [k for k in metrics if k.startswith("reward/") and k not in keys and kind == "train"]
    parts = []
    for k in keys:
        v = metrics.get(k)
        if isinstance(v, float):
            parts.append(f"{k}={v:.4g}")
        elif isinstance(v, (int, str)):
            parts.append(f"{k}={v}")
        elif isinstance(v, list) and v:
            parts.append(f"{k}=[{'; '.join(map(str, v))}]")
    return " ".join(parts)
