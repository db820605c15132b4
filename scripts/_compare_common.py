"""Shared parts of the comparison scripts: run one variant as a child process, read its
metrics, plot per-step curves."""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_variant(name: str, config_text: str, runs: Path, overrides: list[str]) -> Path:
    """``rlkit train`` with a generated config in ``runs/<name>.yaml``; a finished run (with a
    summary.json) is reused.  The log goes to ``runs/<name>.log``."""
    run_dir = runs / name
    if (run_dir / "summary.json").exists():
        return run_dir
    runs.mkdir(parents=True, exist_ok=True)
    config = runs / f"{name}.yaml"
    config.write_text(config_text)
    cmd = [sys.executable, "-m", "rlkit.cli", "train", "--config", str(config), f"train.output_dir={run_dir}",
           "log.progress=false", "train.save_final=false", *overrides]
    started = time.perf_counter()
    with open(runs / f"{name}.log", "w") as log:
        code = subprocess.call(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    print(f"{name}: exit {code} after {(time.perf_counter() - started) / 60:.1f} min", flush=True)
    return run_dir


def read_run(run_dir: Path) -> dict:
    """Held-out accuracy per eval step and per-step training curves of one run."""
    lines = [json.loads(s) for s in (run_dir / "metrics.jsonl").read_text().splitlines() if s.strip()]
    train = [m for m in lines if m["kind"] == "train"]
    return {"evals": {m["step"]: m["eval/accuracy"] for m in lines if m["kind"] == "eval"},
            "train": train, "drawn": sum(m.get("sampling/prompts_drawn", 0) for m in train)}


def smooth(values: list[float], window: int = 5) -> list[float]:
    return [statistics.mean(values[max(0, i - window + 1):i + 1]) for i in range(len(values))]


def plot_panels(results: dict, panels: list[tuple[str, str]], path: Path) -> None:
    """One panel per (metric, title): ``eval/accuracy`` from the eval records, any other key as
    a 5-step moving average of the training records."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4))
    axes = axes if len(panels) > 1 else [axes]
    for ax, (key, title) in zip(axes, panels):
        for name, r in results.items():
            if key == "eval/accuracy":
                steps = sorted(r["evals"])
                ax.plot(steps, [100 * r["evals"][s] for s in steps], marker="o", label=name)
            else:
                values = [m.get(key, float("nan")) for m in r["train"]]
                ax.plot(range(1, len(values) + 1), smooth(values), label=name)
        ax.set(xlabel="training step", title=title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def project_path(arg: str) -> Path:
    """A path argument: absolute as given, relative ones under the repository root."""
    return Path(arg) if Path(arg).is_absolute() else ROOT / arg


def run_all(variants: dict[str, str], runs: Path, overrides: list[str]) -> dict[str, dict]:
    """``run_variant`` for every (name, config text), then ``read_run`` of those that logged."""
    results = {}
    for name, config_text in variants.items():
        run_dir = run_variant(name, config_text, runs, overrides)
        if (run_dir / "metrics.jsonl").exists():
            results[name] = read_run(run_dir)
    return results


def page_paths(doc_arg: str) -> tuple[Path, Path]:
    """(the markdown page, its PNG beside it), the folder created."""
    doc = project_path(doc_arg)
    doc.parent.mkdir(parents=True, exist_ok=True)
    return doc, doc.with_suffix(".png")


def eval_steps(results: dict) -> list[int]:
    """The steps the runs were evaluated at (those of the first run)."""
    return sorted(next(iter(results.values()))["evals"]) if results else []


def eval_cells(result: dict, steps: list[int]) -> str:
    """Held-out accuracies in percent as markdown table cells."""
    return " | ".join(f"{100 * result['evals'][s]:.1f}" for s in steps)


def last_mean(result: dict, key: str, n: int = 5) -> float | None:
    """Mean of ``key`` over the last ``n`` training records that have it (None if none do)."""
    values = [m[key] for m in result["train"][-n:] if m.get(key) is not None]
    return sum(values) / len(values) if values else None


def write_page(doc: Path, title: str, intro: str, command: str, image: Path, caption: str,
               columns: list[str], rows: list[str], notes: list[str] = ()) -> None:
    """The markdown page of a comparison: title, intro, the command that regenerates it, the
    plot, a table (``columns`` headers, ``rows`` already formatted as ``| ... |``), notes."""
    lines = [f"# {title}", "", f"{intro} Regenerate with:", "", f"    {command}", "",
             f"![{caption}]({image.name})", "",
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns), *rows, ""]
    for note in notes:
        lines += [note, ""]
    doc.write_text("\n".join(lines) + "\n")
    print(f"wrote {doc} and {image}")
