"""Reports of a benchmark run: ``predictions.json``, ``metrics.json``, ``summary.md`` and a PNG bar chart.

- ``predictions.json``: one record per problem (id, category, breakdown groups, question, gold
  answer, per-problem accuracy and maj@n verdict) with every sample (completion, extracted
  answer, verdict, reason, tokens; for multi-turn episodes, ``rlkit eval --env``, also turns,
  tool calls, tool errors, truncated and the transcript);
- ``metrics.json``: the metrics of ``rlkit.eval.metrics.summarize`` and the run's settings;
- ``summary.md``: the settings, a table of the metrics (with the episode metrics when there are
  episodes) and one table per breakdown field (with maj@n and, for Spider, the strict reading
  ``accuracy_strict`` as further columns; values in their natural order, Spider hardness as
  easy, medium, hard, extra);
- ``<benchmark>.png``: bars of the overall metrics and of the accuracy per category
  (matplotlib, Agg backend, imported only when a chart is drawn).
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rlkit.eval.metrics import breakdown

HEADLINE = ("accuracy", "pass@", "maj@")
EPISODE_ROWS = (("turns_mean", "turns per episode"), ("tool_calls_per_episode", "tool calls per episode"),
                ("tool_errors_per_episode", "tool errors per episode"), ("truncated_frac", "episodes truncated"))


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, fsync it, then rename it over ``path``:
    a reader sees the old file or the whole new one, never a part."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def headline_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """accuracy, pass@k and maj@k (the bars of the chart's first panel), in that order."""
    return {k: v for prefix in HEADLINE for k, v in metrics.items() if k.startswith(prefix) and "/" not in k}


def breakdown_fields(records: Sequence[dict]) -> list[str]:
    """Breakdown fields with more than one value among the scored records."""
    fields = sorted({f for r in records for f in (r.get("groups") or {})})
    return [f for f in fields if len(breakdown(records, f)) > 1]


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def summary_markdown(benchmark: str, metrics: dict[str, float], records: Sequence[dict],
                     settings: dict[str, Any] | None = None) -> str:
    """The ``summary.md`` text (module docstring)."""
    lines = [f"# rlkit eval: {benchmark}", ""]
    if settings:
        lines += ["| setting | value |", "|---|---|"]
        lines += [f"| {k} | {_cell(v)} |" for k, v in settings.items()]
        lines.append("")
    lines += ["## Metrics", "", "| metric | value |", "|---|---|"]
    for key, value in headline_metrics(metrics).items():
        lines.append(f"| {key} | {_pct(value)} |")
    for key in ("n", "skipped"):
        if key in metrics:
            lines.append(f"| problems {'scored' if key == 'n' else 'not scored'} | {int(metrics[key])} |")
    if "response_tokens" in metrics:
        lines.append(f"| mean response tokens | {metrics['response_tokens']:.1f} |")
    for key, label in EPISODE_ROWS:
        if key in metrics:
            value = _pct(metrics[key]) if key == "truncated_frac" else f"{metrics[key]:.2f}"
            lines.append(f"| {label} | {value} |")
    for field in breakdown_fields(records):
        parts = breakdown(records, field)
        majority = breakdown(records, field, key="majority")
        strict = breakdown(records, field, key="accuracy_strict")
        maj = next((k for k in metrics if k.startswith("maj@")), None)
        extra = ([maj] if maj is not None else []) + (["accuracy_strict"] if strict else [])
        lines += ["", f"## Accuracy by {field}", "",
                  f"| {field} | problems | accuracy |" + "".join(f" {k} |" for k in extra),
                  "|---|---|---|" + "---|" * len(extra)]
        for value, (count, acc) in parts.items():
            row = f"| {_cell(value)} | {count} | {_pct(acc)} |"
            for key in extra:
                row += f" {_pct((majority if key == maj else strict).get(value, (0, None))[1])} |"
            lines.append(row)
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def plot_metrics(path: str | Path, benchmark: str, metrics: dict[str, float], records: Sequence[dict]) -> Path:
    """A PNG: the headline metrics, then accuracy per value of each breakdown field."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    headline = headline_metrics(metrics)
    headline.pop("pass@1", None)  # the same number as accuracy
    panels = [("metrics", headline)]
    for field in breakdown_fields(records):
        panels.append((f"accuracy by {field}", {v: acc for v, (_, acc) in breakdown(records, field).items()}))
    widths = [max(2.5, 0.55 * len(values) + 1.0) for _, values in panels]
    fig, axes = plt.subplots(1, len(panels), figsize=(sum(widths) + 0.5, 3.8),
                             gridspec_kw={"width_ratios": widths}, squeeze=False)
    for ax, (title, values) in zip(axes[0], panels):
        names = list(values) or ["(none)"]
        heights = [100 * v for v in values.values()] or [0.0]
        bars = ax.bar(range(len(names)), heights, color="#4C72B0")
        ax.set_xticks(range(len(names)), names, rotation=45 if len(names) > 3 else 0, ha="right" if len(names) > 3
                      else "center", fontsize=8)
        ax.set_ylim(0, 105)
        ax.set_ylabel("%")
        ax.set_title(title, fontsize=10)
        for bar, height in zip(bars, heights):
            ax.text(bar.get_x() + bar.get_width() / 2, height + 1, f"{height:.0f}", ha="center", fontsize=7)
    fig.suptitle(f"{benchmark} (n={int(metrics.get('n', 0))})", fontsize=11)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def write_report(folder: str | Path, benchmark: str, metrics: dict[str, float], records: Sequence[dict],
                 settings: dict[str, Any] | None = None, plot: bool = True) -> dict[str, Path]:
    """Write the files of the module docstring into ``folder`` (created); returns their paths."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"predictions": out / "predictions.json", "metrics": out / "metrics.json",
             "summary": out / "summary.md"}
    atomic_write_text(paths["predictions"], json.dumps(_jsonable(list(records)), indent=1, ensure_ascii=False) + "\n")
    atomic_write_text(paths["metrics"], json.dumps(_jsonable({"benchmark": benchmark, "metrics": metrics,
                                                          "settings": settings or {}}), indent=2) + "\n")
    atomic_write_text(paths["summary"], summary_markdown(benchmark, metrics, records, settings))
    if plot:
        paths["chart"] = plot_metrics(out / f"{benchmark}.png", benchmark, metrics, records)
    return paths
