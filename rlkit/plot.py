"""``rlkit plot RUN [RUN ...]``: the training curves of one or more runs as one PNG.

Reads each run's ``metrics.jsonl`` (resumed runs resolved by :func:`read_metrics`) and draws a grid
of panels with the runs overlaid: rewards, accuracy (train and held-out eval), response length,
entropy, KL to the reference, clip fraction and the step time by phase. matplotlib is imported only
when a picture is drawn, so ``rlkit --help`` stays fast.
"""
from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from rlkit.records import json_lines_numbered

# reward/<name> keys that are statistics of the total reward, not reward components
REWARD_STATS = frozenset({"mean", "std", "failures", "unscored_rows"})
PHASES = ("generate", "score", "logprobs", "train", "sync", "wait_for_samples")
SCALARS = ("response_length", "entropy", "kl_ref", "clip_frac")
TIME_TITLE = "time by phase (s)"
LINESTYLES = ("-", "--", ":", "-.")


@dataclass(frozen=True)
class Panel:
    """One axes of the figure: its title and the metric keys drawn in it."""
    title: str
    keys: tuple[str, ...]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``rlkit plot`` arguments: run folders, ``--output`` and ``--labels``."""
    parser.add_argument("runs", nargs="+", help="run folders (each with a metrics.jsonl)")
    parser.add_argument("--output", "-o", default=None, help="PNG to write (default: <first run>/curves.png)")
    parser.add_argument("--labels", nargs="+", default=None,
                        help="legend label per run, in order (default: each run folder's name)")


def main(args: argparse.Namespace) -> int:
    """Draw the curves of ``args.runs``; prints the PNG's path. Exit 2 with one line on bad input."""
    try:
        path = plot_runs(args.runs, args.output, args.labels)
    except (ValueError, ImportError) as exc:
        print(f"rlkit plot: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


def read_metrics(path: str | Path) -> list[dict]:
    """The rows of a ``metrics.jsonl`` as a resumed run means them, in file order.

    A ``{"kind": "resume", "step": N}`` marker (rlkit/checkpoint.py ``resume``) says the run went
    back to step N: every train/eval row with step > N written before it is dropped, and a row
    after it replaces an earlier (pre-marker) row with the same (kind, step). Markers are not
    returned. Raises ValueError naming the file and line of a row that is not a JSON object with
    ``step`` and ``kind``."""
    path = Path(path)
    rows: list[dict] = []
    settled = 0  # rows[:settled] were written before the latest marker
    for number, row in json_lines_numbered(path.read_text(), path):  # DataError (a ValueError) names the line
        if not isinstance(row, dict) or not isinstance(row.get("step"), int) or "kind" not in row:
            raise ValueError(f"{path}, line {number}: a row needs an integer 'step' and a 'kind'")
        if row["kind"] == "resume":
            rows = [r for r in rows if r["kind"] not in ("train", "eval") or r["step"] <= row["step"]]
            settled = len(rows)
            continue
        key = (row["kind"], row["step"])
        old = [i for i in range(settled) if (rows[i]["kind"], rows[i]["step"]) == key]
        for i in reversed(old):
            del rows[i]
        settled -= len(old)
        rows.append(row)
    return rows


def load_runs(run_dirs: list[str | Path], labels: list[str] | None = None) -> list[tuple[str, list[dict]]]:
    """``[(label, rows)]`` per run folder; the label defaults to the folder's name."""
    if not run_dirs:
        raise ValueError("no run folder given")
    if labels is not None and len(labels) != len(run_dirs):
        raise ValueError(f"--labels gives {len(labels)} labels for {len(run_dirs)} runs")
    runs = []
    for i, run_dir in enumerate(run_dirs):
        path = Path(run_dir) / "metrics.jsonl"
        if not path.is_file():
            raise ValueError(f"{path} not found (is {run_dir} a run folder?)")
        label = labels[i] if labels is not None else Path(run_dir).resolve().name
        runs.append((label, read_metrics(path)))
    return runs


def series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of ``key`` over the rows that hold a finite number for it, by step."""
    points = sorted((r["step"], float(r[key])) for r in rows
                    if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)
                    and math.isfinite(r[key]))
    return [s for s, _ in points], [v for _, v in points]


def panels(runs: list[tuple[str, list[dict]]]) -> list[Panel]:
    """The panels to draw, in order; a panel whose metrics no run has is left out."""
    present = {k for _, rows in runs for r in rows for k in r if series([r], k)[0]}
    components = sorted(k for k in present if k.startswith("reward/") and k[7:] not in REWARD_STATS)
    wanted = [Panel("reward/mean", ("reward/mean",))]
    wanted += [Panel(k, (k,)) for k in components]
    wanted.append(Panel("accuracy", ("accuracy", "eval/accuracy")))
    wanted += [Panel(k, (k,)) for k in SCALARS]
    wanted.append(Panel(TIME_TITLE, tuple(f"time/{p}" for p in PHASES)))
    return [Panel(p.title, tuple(k for k in p.keys if k in present)) for p in wanted
            if any(k in present for k in p.keys)]


def build_figure(runs: list[tuple[str, list[dict]]]):
    """A matplotlib Figure (Agg canvas) with one axes per :func:`panels` entry, runs overlaid."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    chosen = panels(runs)
    if not chosen:
        raise ValueError("no metrics to plot in " + ", ".join(label for label, _ in runs))
    ncols = min(3, len(chosen))
    nrows = math.ceil(len(chosen) / ncols)
    fig = Figure(figsize=(5 * ncols, 3.3 * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    colors = [f"C{i % 10}" for i in range(max(len(runs), len(PHASES)))]
    for n, panel in enumerate(chosen):
        ax = fig.add_subplot(nrows, ncols, n + 1)
        ax.set_title(panel.title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        for r, (label, rows) in enumerate(runs):
            for key in panel.keys:
                steps, values = series(rows, key)
                if not steps:
                    continue
                if panel.title == TIME_TITLE:  # colour per phase, line style per run
                    ax.plot(steps, values, color=colors[PHASES.index(key[5:])], linestyle=LINESTYLES[r % 4])
                elif key.startswith("eval/"):  # held-out: a marker at each eval step
                    ax.plot(steps, values, color=colors[r], linestyle="--", marker="o", markersize=4,
                            label=f"{label} (held-out)")
                else:
                    ax.plot(steps, values, color=colors[r], label=label if len(panel.keys) == 1
                            else f"{label} (train)")
        if panel.title == TIME_TITLE:
            ax.legend(handles=_time_legend(panel, [label for label, _ in runs], colors), fontsize="small")
        else:
            ax.legend(fontsize="small")
    return fig


def _time_legend(panel: Panel, labels: list[str], colors: list[str]) -> list:
    """Legend entries of the time panel: one per phase (its colour) and, for several runs, one per
    run (its line style), instead of one per phase and run."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=colors[PHASES.index(k[5:])], label=k[5:]) for k in panel.keys]
    if len(labels) > 1:
        handles += [Line2D([], [], color="grey", linestyle=LINESTYLES[r % 4], label=label)
                    for r, label in enumerate(labels)]
    return handles


def panel_titles(fig) -> list[str]:
    """The title of each panel of a figure from :func:`build_figure`, in drawing order."""
    return [ax.get_title() for ax in fig.axes]


def plot_runs(run_dirs: list[str | Path], output: str | Path | None = None,
              labels: list[str] | None = None) -> Path:
    """Write the curves of ``run_dirs`` to ``output`` (default ``<first run>/curves.png``); returns the
    path. Raises ValueError (one line) on a missing or malformed metrics.jsonl."""
    runs = load_runs(run_dirs, labels)
    try:
        fig = build_figure(runs)
    except ModuleNotFoundError as exc:
        raise ImportError(f"rlkit plot needs matplotlib ({exc.msg}): pip install matplotlib") from None
    path = Path(output) if output is not None else Path(run_dirs[0]) / "curves.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
