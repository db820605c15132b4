"""``rlkit plot``: the resume rule of ``read_metrics``, the PNG and its panels, runs overlaid, bad input.

The metrics files are written by hand (no training); the figure is drawn by real matplotlib."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from rlkit.plot import add_arguments, build_figure, load_runs, main, panel_titles, plot_runs, read_metrics


def write_metrics(run_dir: Path, rows: list[dict]) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run_dir


def train_row(step: int, reward: float, **extra) -> dict:
    return {"step": step, "kind": "train", "reward/mean": reward, **extra}


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_resume_marker_replaces_relogged_steps_and_drops_steps_past_it(tmp_path):
    # A run reached step 4 (eval at 2 and 4), crashed, resumed from the step-2 checkpoint and
    # re-logged steps 3 and 4: the later rows win, and the old step-4 eval (never re-logged) goes.
    path = write_metrics(tmp_path / "run", [
        train_row(1, 0.1), train_row(2, 0.2), {"step": 2, "kind": "eval", "eval/accuracy": 0.5},
        train_row(3, 0.3), train_row(4, 0.4), {"step": 4, "kind": "eval", "eval/accuracy": 0.6},
        {"step": 2, "kind": "resume", "checkpoint": "ckpt/step2", "config_changes": []},
        train_row(3, 0.33), {"step": 3, "kind": "eval", "eval/accuracy": 0.7}, train_row(4, 0.44),
    ]) / "metrics.jsonl"
    rows = read_metrics(path)
    assert [(r["kind"], r["step"], r.get("reward/mean", r.get("eval/accuracy"))) for r in rows] == [
        ("train", 1, 0.1), ("train", 2, 0.2), ("eval", 2, 0.5),
        ("train", 3, 0.33), ("eval", 3, 0.7), ("train", 4, 0.44)]


def test_row_relogged_at_the_marker_step_replaces_the_old_one_and_a_second_resume_applies_again(tmp_path):
    path = write_metrics(tmp_path / "run", [
        train_row(1, 0.1), train_row(2, 0.2), {"step": 2, "kind": "eval", "eval/accuracy": 0.5}, train_row(3, 0.3),
        {"step": 2, "kind": "resume"}, {"step": 2, "kind": "eval", "eval/accuracy": 0.55}, train_row(3, 0.33),
    ]) / "metrics.jsonl"
    assert [(r["kind"], r["step"], r.get("reward/mean", r.get("eval/accuracy"))) for r in read_metrics(path)] == [
        ("train", 1, 0.1), ("train", 2, 0.2), ("eval", 2, 0.55), ("train", 3, 0.33)]
    with path.open("a") as fh:  # resumed again, from step 1
        fh.write(json.dumps({"step": 1, "kind": "resume"}) + "\n" + json.dumps(train_row(2, 0.222)) + "\n")
    assert [(r["step"], r["reward/mean"]) for r in read_metrics(path)] == [(1, 0.1), (2, 0.222)]


def test_without_a_marker_no_row_is_replaced(tmp_path):
    # two eval rows at one step in one stretch of the run are both data, not a re-log
    rows = [train_row(1, 0.1), {"step": 1, "kind": "eval", "eval/accuracy": 0.5},
            {"step": 1, "kind": "eval", "eval/accuracy": 0.6}]
    assert read_metrics(write_metrics(tmp_path / "run", rows) / "metrics.jsonl") == rows


def test_bad_row_names_file_and_line(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps(train_row(1, 0.1)) + "\n{\"step\": 2, \"kin\n")
    with pytest.raises(ValueError, match=r"metrics.jsonl, line 2: invalid JSON"):
        read_metrics(run / "metrics.jsonl")


def full_rows(scale: float) -> list[dict]:
    """Every metric the plot knows, over three train steps and an eval at steps 0 and 3."""
    rows = [{"step": 0, "kind": "eval", "eval/accuracy": 0.1 * scale}]
    for step in (1, 2, 3):
        rows.append(train_row(step, 0.2 * step * scale, **{
            "reward/std": 0.1, "reward/failures": 0.0, "reward/unscored_rows": 0.0,
            "reward/correctness": 0.1 * step, "reward/format": 1.0, "accuracy": 0.1 * step,
            "response_length": 20.0, "entropy": 1.5, "kl_ref": 0.01, "clip_frac": 0.0,
            "time/generate": 2.0, "time/score": 0.1, "time/logprobs": 0.3, "time/train": 1.0,
            "time/sync": 0.2, "time/wait_for_samples": 0.05, "lr": 1e-5}))
    rows.append({"step": 3, "kind": "eval", "eval/accuracy": 0.4 * scale})
    return rows


def test_png_is_written_readable_with_one_panel_per_metric_group(tmp_path, capsys):
    run = write_metrics(tmp_path / "grpo_arith", full_rows(1.0))
    assert main(parse([str(run)])) == 0
    png = run / "curves.png"
    assert capsys.readouterr().out.strip() == str(png)
    import matplotlib.image

    pixels = matplotlib.image.imread(png)  # a valid PNG, as big as the 3 x 3 grid at 100 dpi
    assert pixels.shape[:2] == (990, 1500)
    # reward/std, failures and unscored_rows are statistics, not components; lr has no panel
    assert panel_titles(build_figure(load_runs([run]))) == [
        "reward/mean", "reward/correctness", "reward/format", "accuracy", "response_length", "entropy",
        "kl_ref", "clip_frac", "time by phase (s)"]


def test_panels_of_missing_metrics_are_left_out(tmp_path):
    run = write_metrics(tmp_path / "run", [train_row(1, 0.5, entropy=1.0, kl_ref=None)])
    assert panel_titles(build_figure(load_runs([run]))) == ["reward/mean", "entropy"]


def test_two_runs_overlaid_with_labels_and_held_out_markers(tmp_path):
    a = write_metrics(tmp_path / "a", full_rows(1.0))
    b = write_metrics(tmp_path / "b", full_rows(2.0))
    fig = build_figure(load_runs([a, b], labels=["base", "tuned"]))
    axes = dict(zip(panel_titles(fig), fig.axes))
    reward = axes["reward/mean"]
    assert [line.get_label() for line in reward.get_lines()] == ["base", "tuned"]
    assert [list(line.get_ydata()) for line in reward.get_lines()] == [
        pytest.approx([0.2, 0.4, 0.6]), pytest.approx([0.4, 0.8, 1.2])]
    assert [t.get_text() for t in reward.get_legend().get_texts()] == ["base", "tuned"]
    held_out = [line for line in axes["accuracy"].get_lines() if line.get_label().endswith("(held-out)")]
    assert [(list(line.get_xdata()), line.get_marker()) for line in held_out] == [([0, 3], "o")] * 2
    assert len(axes["time by phase (s)"].get_lines()) == 12  # six phases of two runs


def test_default_label_is_folder_name_and_output_goes_where_asked(tmp_path):
    run = write_metrics(tmp_path / "seed_7", [train_row(1, 0.5), train_row(2, 0.7)])
    assert load_runs([run])[0][0] == "seed_7"
    out = plot_runs([run], tmp_path / "pics" / "c.png")
    assert out == tmp_path / "pics" / "c.png" and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (run / "curves.png").exists()


def test_folder_without_metrics_exits_2_with_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = subprocess.run([sys.executable, "-c", "import sys, argparse; from rlkit import plot; "
                           "p = argparse.ArgumentParser(); plot.add_arguments(p); "
                           "sys.exit(plot.main(p.parse_args(sys.argv[1:])))", str(tmp_path / "empty")],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "empty/metrics.jsonl not found" in proc.stderr


def test_label_count_mismatch_exits_2(tmp_path, capsys):
    run = write_metrics(tmp_path / "run", [train_row(1, 0.5)])
    assert main(parse([str(run), "--labels", "a", "b"])) == 2
    assert capsys.readouterr().err.strip() == "rlkit plot: --labels gives 2 labels for 1 runs"


def test_module_imports_without_matplotlib():
    code = "import sys, rlkit.plot; print(sorted(m for m in ('matplotlib', 'torch') if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.stdout.strip() == "[]", proc.stderr
