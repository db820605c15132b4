"""Experiment trackers beside ``metrics.jsonl``: ``log.report_to: [tensorboard, wandb, mlflow]``
(TRL's setting and names; an empty list, the default, writes only ``metrics.jsonl``).

Each tracker is a *sink* that the main rank's ``MetricsLogger`` calls: ``log(step, metrics, kind)``
(every numeric metric at its step; train metrics under their own names, eval metrics already
start with ``eval/`` or ``bench/``), ``log_config(config)`` (the resolved config, secrets already
redacted), ``log_table(name, rows, step)`` (eval rows) and ``close()``.  The packages are the
``tracking`` extra, imported only when named.  A tracker that fails mid-run (disk, network) warns
once on stderr and stops; training goes on (``Guarded``).

Where each one writes (``run_dir`` is ``train.output_dir``):

- tensorboard: ``<run_dir>/tensorboard`` (``tensorboard --logdir <run_dir>``);
- wandb: ``<run_dir>/wandb``, project ``log.project``, run ``log.run_name``; W&B reads
  ``WANDB_MODE`` itself (``offline`` keeps everything local; ``wandb sync`` uploads it later);
- mlflow: ``MLFLOW_TRACKING_URI`` when set, else a SQLite store ``<run_dir>/mlruns/mlflow.db`` with
  the artifacts beside it (``mlflow ui --backend-store-uri sqlite:///<run_dir>/mlruns/mlflow.db``).
  MLflow 3 refuses its old folder store unless told to allow it, so the local store is SQLite.

A resumed run (``resume_step``) goes on with the same W&B and MLflow runs (their ids are kept in
``<run_dir>/tracking.json``), and TensorBoard hides the earlier events after the checkpoint's step,
which the resumed run logs again.  This module imports nothing of rlkit (``rlkit.config`` calls
``check_report_to``), so its errors are ``ValueError`` naming the key.
"""
from __future__ import annotations

import importlib.util
import json
import numbers
import os
import re
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

# Tracker name -> the modules it imports (MLflow's local SQLite store needs SQLAlchemy and Alembic).
TRACKERS: dict[str, tuple[str, ...]] = {
    "tensorboard": ("tensorboard",),
    "wandb": ("wandb",),
    "mlflow": ("mlflow", "sqlalchemy", "alembic"),
}
DEFAULT_PROJECT = "rlkit"  # LogConfig.project's default: a project no tracker reads must stay unset
IDS_FILE = "tracking.json"  # the W&B and MLflow run ids, for a resumed run


def check_report_to(cfg: Any, error: Callable[[str, str], None]) -> None:
    """Config-load check of ``log.report_to``, ``log.project`` and ``log.run_name``: known tracker
    names, each once, their packages installed, and project and run name set only where a tracker
    reads them (W&B, MLflow).  ``error(key, message)`` raises."""
    log = cfg.log
    names = log.report_to
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        error("log.report_to", f"must be a list of tracker names, e.g. [tensorboard]; got {names!r}")
        return
    for name in names:
        if name not in TRACKERS:
            error("log.report_to", f"unknown tracker {name!r}; choose from {', '.join(TRACKERS)}")
        elif missing := [m for m in TRACKERS[name] if importlib.util.find_spec(m) is None]:
            error("log.report_to", f"{name} needs {', '.join(missing)}, which is not installed: "
                  "pip install -e '.[tracking]'")
    if len(set(names)) < len(names):
        error("log.report_to", f"names a tracker twice: {list(names)}")
    named = {"wandb", "mlflow"} & set(names)
    if not isinstance(log.project, str) or not log.project.strip():
        error("log.project", f"must be a non-empty name, got {log.project!r}")
    elif log.project != DEFAULT_PROJECT and not named:
        error("log.project", "names the W&B project or MLflow experiment: add wandb or mlflow to log.report_to")
    if log.run_name is not None and (not isinstance(log.run_name, str) or not log.run_name.strip()):
        error("log.run_name", f"must be a non-empty name or null (the run folder's name), got {log.run_name!r}")
    elif log.run_name is not None and not named:
        error("log.run_name", "names the W&B or MLflow run: add wandb or mlflow to log.report_to")


def make_sinks(cfg: Any, run_dir: str | Path, resume_step: int | None = None) -> list:
    """One ``Guarded`` sink per name in ``cfg.log.report_to``, in that order.  ``resume_step``:
    the step of the checkpoint a resumed run starts after (None for a fresh run).  Raises
    ``ValueError`` naming ``log.report_to`` for an unknown name, a missing package or a tracker
    that cannot start (W&B without a login and without ``WANDB_MODE=offline``, a bad MLflow URI)."""
    def refuse(key: str, message: str) -> None:
        raise ValueError(f"{key}: {message}")

    check_report_to(cfg, refuse)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    ids = _read_ids(run_dir) if resume_step is not None else {}
    name = cfg.log.run_name or run_dir.resolve().name
    sinks: list[Guarded] = []
    for tracker in cfg.log.report_to:
        try:
            if tracker == "tensorboard":
                sink = TensorBoardSink(run_dir, purge_step=None if resume_step is None else resume_step + 1)
            elif tracker == "wandb":
                sink = WandbSink(run_dir, cfg.log.project, name, run_id=ids.get("wandb"))
            else:
                sink = MLflowSink(run_dir, cfg.log.project, name, run_id=ids.get("mlflow"))
        except Exception as exc:  # noqa: BLE001 - any failure to start is the setting's problem
            for started in sinks:
                started.close()
            raise ValueError(f"log.report_to: {tracker} could not start ({type(exc).__name__}: "
                             f"{' '.join(str(exc).split())})") from exc
        sinks.append(Guarded(tracker, sink))
        if getattr(sink, "run_id", None):
            ids[tracker] = sink.run_id
    if ids:
        (run_dir / IDS_FILE).write_text(json.dumps(ids, indent=2) + "\n")
    return sinks


def _read_ids(run_dir: Path) -> dict[str, str]:
    path = run_dir / IDS_FILE
    return json.loads(path.read_text()) if path.exists() else {}


class Guarded:
    """A sink that turns itself off, with one line on stderr, the first time it fails: a
    tracker's disk or network trouble must not end a training run."""

    def __init__(self, name: str, sink: Any):
        self.name = name
        self.sink = sink

    def _call(self, method: str, *args) -> None:
        if self.sink is None:
            return
        try:
            getattr(self.sink, method)(*args)
        except Exception as exc:  # noqa: BLE001 - whatever the tracker raises, training goes on
            sink, self.sink = self.sink, None
            print(f"rlkit: {self.name} logging failed ({type(exc).__name__}: {' '.join(str(exc).split())}); "
                  f"{self.name} is off for the rest of this run", file=sys.stderr, flush=True)
            if method != "close":
                try:
                    sink.close()
                except Exception:  # noqa: BLE001 - already reported; the sink is off either way
                    pass

    def log(self, step: int, metrics: dict, kind: str = "train") -> None:
        self._call("log", step, metrics, kind)

    def log_config(self, config: dict) -> None:
        self._call("log_config", config)

    def log_table(self, name: str, rows: list[dict], step: int) -> None:
        self._call("log_table", name, rows, step)

    def close(self) -> None:
        self._call("close")
        self.sink = None


def numeric(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The metrics that are numbers (strings, lists and None are for metrics.jsonl only)."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, numbers.Real)}


def table_columns(rows: list[dict]) -> list[str]:
    """Every key of the rows, in the order of first appearance."""
    return list(dict.fromkeys(k for row in rows for k in row))


def cell(value: Any) -> Any:
    """A table cell: scalars as they are, anything nested as JSON text."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return json.dumps(value, default=str)


def markdown_table(rows: list[dict]) -> str:
    """The rows as a Markdown table (TensorBoard's text tab renders it)."""
    columns = table_columns(rows)

    def text(value: Any) -> str:
        return "<br>".join(("" if value is None else str(cell(value))).replace("|", "\\|").splitlines())

    lines = ["| " + " | ".join(map(text, columns)) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(text(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


class TensorBoardSink:
    """Scalars, the config and eval tables (as text) in ``<run_dir>/tensorboard``.  A fresh run in
    a used folder moves the earlier events aside (``tensorboard.<mtime>``), as the logger does with
    ``metrics.jsonl``; ``purge_step`` (a resumed run's first step) hides earlier events from there on."""

    def __init__(self, run_dir: str | Path, purge_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter

        log_dir = Path(run_dir) / "tensorboard"
        if purge_step is None and log_dir.exists():
            log_dir.rename(log_dir.with_name(f"tensorboard.{int(log_dir.stat().st_mtime)}"))
        self.writer = SummaryWriter(str(log_dir), purge_step=purge_step)

    def log(self, step: int, metrics: dict, kind: str = "train") -> None:
        for key, value in numeric(metrics).items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()  # a crashed run keeps its curves; TensorBoard shows them as they come

    def log_config(self, config: dict) -> None:
        text = json.dumps(config, indent=2, default=str)
        self.writer.add_text("config", "\n".join("    " + line for line in text.splitlines()))  # a code block
        self.writer.flush()

    def log_table(self, name: str, rows: list[dict], step: int) -> None:
        self.writer.add_text(name, markdown_table(rows), step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    """A W&B run in ``<run_dir>/wandb``: metrics at their step, the config, eval tables as
    ``wandb.Table``.  ``run_id`` continues an earlier run (a resumed training run)."""

    def __init__(self, run_dir: str | Path, project: str, name: str, run_id: str | None = None):
        import wandb

        self.wandb = wandb
        self.run = wandb.init(project=project, name=name, dir=str(run_dir), id=run_id,
                              resume="allow" if run_id else None, reinit="create_new")
        self.run_id = self.run.id

    def log(self, step: int, metrics: dict, kind: str = "train") -> None:
        values = numeric(metrics)
        if values:
            self.run.log(values, step=step)

    def log_config(self, config: dict) -> None:
        self.run.config.update(config, allow_val_change=True)

    def log_table(self, name: str, rows: list[dict], step: int) -> None:
        columns = table_columns(rows)
        data = [[cell(row.get(c)) for c in columns] for row in rows]
        self.run.log({name: self.wandb.Table(columns=columns, data=data, allow_mixed_types=True)}, step=step)

    def close(self) -> None:
        self.run.finish()


def mlflow_name(key: str) -> str:
    """A metric or parameter name MLflow accepts (letters, digits, ``_ - . / space``)."""
    return re.sub(r"[^\w\-. /]", "_", key)


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


class MLflowSink:
    """An MLflow run in experiment ``project``: metrics by step, the flattened config as params
    (MLflow cuts values to its limit), eval tables as JSON artifacts (``<name>_step<N>.json``)."""

    def __init__(self, run_dir: str | Path, project: str, name: str, run_id: str | None = None):
        from mlflow.tracking import MlflowClient

        artifacts = None
        if os.environ.get("MLFLOW_TRACKING_URI"):
            self.client = MlflowClient()
        else:
            store = (Path(run_dir) / "mlruns").resolve()
            store.mkdir(parents=True, exist_ok=True)
            self.client = MlflowClient(tracking_uri=f"sqlite:///{store / 'mlflow.db'}")
            artifacts = (store / "artifacts").as_uri()
        experiment = self.client.get_experiment_by_name(project)
        experiment_id = (experiment.experiment_id if experiment is not None
                         else self.client.create_experiment(project, artifact_location=artifacts))
        self.run_id = run_id or self.client.create_run(experiment_id, run_name=name).info.run_id

    def log(self, step: int, metrics: dict, kind: str = "train") -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        values = [Metric(mlflow_name(k), v, now, step) for k, v in numeric(metrics).items()]
        if values:
            self.client.log_batch(self.run_id, metrics=values)

    def log_config(self, config: dict) -> None:
        from mlflow.entities import Param
        from mlflow.utils.validation import MAX_PARAMS_TAGS_PER_BATCH

        known = self.client.get_run(self.run_id).data.params  # a resumed run's params stay (MLflow's are fixed)
        params = [Param(key, str(cell(value))) for key, value in  # MLflow cuts long values itself
                  ((mlflow_name(k), v) for k, v in flatten(config).items()) if key not in known]
        for start in range(0, len(params), MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(self.run_id, params=params[start:start + MAX_PARAMS_TAGS_PER_BATCH])

    def log_table(self, name: str, rows: list[dict], step: int) -> None:
        columns = table_columns(rows)
        data = {c: [cell(row.get(c)) for row in rows] for c in columns}
        self.client.log_table(self.run_id, data, f"{mlflow_name(name)}_step{step}.json")

    def close(self) -> None:
        self.client.set_terminated(self.run_id)
