"""Reward-hacking monitors (rlkit/monitors.py, issue 13 item 4): the three ``monitor/...``
metrics on hand-computed examples, the ``monitor:`` config refused at load, and a real run on the
tiny model that logs them and carries the collapse state through a checkpoint."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from conftest import run_cli, tiny_overrides
from rlkit.config import ConfigError, load_config
from rlkit.monitors import (Monitor, collapse_share, final_answer, format_only_share, length_corr,
                            most_common)
from rlkit.trainer import merge_stats

NAN = float("nan")


# ---------------------------------------------------------------- length_corr

def test_length_corr_pools_within_group_deviations():
    # Group 0: scores 1,0,0 (mean 1/3), lengths 4,2,3 (mean 3): ds = 2/3,-1/3,-1/3; dl = 1,-1,0
    #   sum ds*dl = 1, sum ds^2 = 2/3, sum dl^2 = 2.
    # Group 1: scores 0,1 (mean 1/2), lengths 5,1 (mean 3): ds = -1/2,1/2; dl = 2,-2
    #   sum ds*dl = -2, sum ds^2 = 1/2, sum dl^2 = 8.
    # Pooled: -1 / sqrt((2/3 + 1/2) * 10) = -1 / sqrt(35/3).
    scores, lengths, groups = [1, 0, 0, 0, 1], [4, 2, 3, 5, 1], [0, 0, 0, 1, 1]
    assert length_corr(scores, lengths, groups) == pytest.approx(-1 / math.sqrt(35 / 3), abs=1e-12)
    # groups need not be contiguous, and their ids are only labels
    order = [3, 0, 4, 1, 2]
    assert length_corr([scores[i] for i in order], [lengths[i] for i in order],
                       [groups[i] + 7 for i in order]) == pytest.approx(-1 / math.sqrt(35 / 3), abs=1e-12)


def test_length_corr_ignores_groups_without_spread():
    scores, lengths, groups = [1, 0, 0, 0, 1], [4, 2, 3, 5, 1], [0, 0, 0, 1, 1]
    expected = -1 / math.sqrt(35 / 3)
    # + a group of constant reward with very different lengths, a group of constant length, a single row
    more = (scores + [0.1, 0.1, 0.1] + [0, 1] + [1],
            lengths + [1, 50, 9] + [6, 6] + [40],
            groups + [2, 2, 2] + [3, 3] + [4])
    assert length_corr(*more) == pytest.approx(expected, abs=1e-12)
    # a correlation over all rows would be something else: the pooling is within groups
    assert length_corr(more[0], more[1], [0] * len(more[0])) != pytest.approx(expected, abs=1e-3)
    assert length_corr([0.1, 0.1, 0.1], [1, 2, 3], [0, 0, 0]) is None  # nothing left: no fake 0
    assert length_corr([0, 1], [3, 3], [0, 0]) is None
    assert length_corr([], [], []) is None
    assert length_corr([0, 1, 0, 1], [1, 3, 5, 7], [0, 0, 1, 1]) == pytest.approx(1.0)
    # ds = -1/2, 1/2 in both groups; dl = -1/2, 1/2 and -2, 2: (1/2 + 2) / sqrt(1 * (1/2 + 8))
    assert length_corr([0, 1, 0, 1], [1, 2, 5, 9], [0, 0, 1, 1]) == pytest.approx(2.5 / math.sqrt(8.5))


# ---------------------------------------------------------------- collapse

def test_collapse_over_two_steps_by_hand():
    monitor = Monitor(accuracy="correctness")
    step1 = stats(answers=["7", "7", "3", "9", None, "3"], correctness=[1, 1, 1, 0, 1, 0])
    # rewarded answers: 7, 7, 3, None -> the most common is "7"; no previous step: nothing logged
    assert "monitor/collapse" not in monitor.update(step1)
    assert monitor.state_dict() == {"previous": "7"}
    step2 = stats(answers=["7", "3", "7", "5", "7"], correctness=[1, 1, 0, 1, NAN], scores=[1.5, 1.2, 0.2, 1, 0])
    # rewarded: 7, 3, 5 (the 7 without accuracy, though its score is > 0, and the unscored 7 do not
    # count) -> 1 of 3 is "7"
    assert monitor.update(step2)["monitor/collapse"] == pytest.approx(1 / 3)
    assert monitor.state_dict() == {"previous": "3"}  # 3, 5, 7 once each: the smallest string
    step3 = stats(answers=["3", "3", "4", "3"], correctness=[1, 1, 1, 0])
    assert monitor.update(step3)["monitor/collapse"] == pytest.approx(2 / 3)
    # a step without a rewarded completion logs nothing, and leaves nothing for the next step
    assert "monitor/collapse" not in monitor.update(stats(answers=["3", "3"], correctness=[0, 0]))
    assert "monitor/collapse" not in monitor.update(step3)


def test_collapse_without_accuracy_component_reads_the_total_score():
    monitor = Monitor(accuracy=None)
    monitor.load_state_dict({"previous": "a"})
    step = stats(answers=["a", "a", "b", "a"], scores=[0.5, 0.0, 2.0, -1.0])
    assert monitor.update(step)["monitor/collapse"] == pytest.approx(1 / 2)  # rewarded: a, b
    # an accuracy component that is not in the step (the default name on another task): the score
    monitor = Monitor(accuracy="correctness")
    monitor.load_state_dict({"previous": "a"})
    assert monitor.update(step)["monitor/collapse"] == pytest.approx(1 / 2)


def test_collapse_share_and_most_common():
    assert collapse_share(["x", "y"], [True, True], None) is None
    assert collapse_share(["x", "y"], [False, False], "x") is None
    assert collapse_share([None, "x"], [True, True], None) is None
    assert collapse_share([None, "x", "x"], [True, True, False], "x") == 0.5
    assert most_common([None, None]) is None and most_common(["b", "a", "b", "a"]) == "a"


def test_final_answer_default():
    assert final_answer("") is None and final_answer("  \n ") is None and final_answer(None) is None
    assert final_answer("Let me think.\n  12 +  3   = 15 \n\n") == "12 + 3 = 15"
    assert final_answer("so 1000 + 234\n#### 1,234\nthanks") == "1234"
    assert final_answer("first \\boxed{2}, then \\boxed{\\frac{1}{2}}\nok") == "\\frac{1}{2}"
    assert final_answer("#### \n  the end ") == "the end"  # nothing after ####: the last line


def test_answer_fn_raising_on_one_completion_gives_no_answer():
    def picky(text):
        if "boom" in text:
            raise RuntimeError("cannot read")
        return text.split()[-1]

    assert Monitor(answer_fn=picky).answers(["x = 3", "boom", "y 4"]) == ["3", None, "4"]


# ---------------------------------------------------------------- format only

def test_format_only_by_hand():
    # rows 0..3 scored by both: (1,0) yes, (1,1) no, (0,0) no, (0.5,0) yes -> 2/4; rows 4, 5 unscored
    assert format_only_share([1, 1, 0, 0.5, NAN, 1], [0, 1, 0, 0, 0, NAN]) == pytest.approx(0.5)
    assert format_only_share([NAN], [1]) is None
    monitor = Monitor(accuracy="correctness", format_name="fmt")
    step = stats(answers=["1"] * 4, correctness=[0, 1, 0, 0], fmt=[1, 1, 0, 1])
    assert monitor.update(step)["monitor/format_only"] == pytest.approx(0.5)
    assert "monitor/format_only" not in Monitor(accuracy="correctness").update(step)  # no format: nothing


def test_format_component_is_the_configured_one_or_one_named_format():
    cfg = load_config(None, [
        "rewards.functions=[{fn: 'rewards.math:correctness'}, {fn: 'rewards.math:format_reward', name: format}]"])
    assert Monitor.from_config(cfg).format_name == "format"
    cfg = load_config(None, [
        "rewards.functions=[{fn: 'rewards.math:correctness'}, {fn: 'rewards.math:format_reward'}]"])
    assert Monitor.from_config(cfg).format_name is None  # no guess from "format_reward"
    cfg = load_config(None, [
        "rewards.functions=[{fn: 'rewards.math:correctness'}, {fn: 'rewards.math:format_reward'}]",
        "monitor.format_component=format_reward", "monitor.answer_fn=rewards.math:extract_answer"])
    monitor = Monitor.from_config(cfg)
    assert monitor.format_name == "format_reward" and monitor.answers(["so 3 + 4 is 7."]) == ["7"]


def test_monitor_update_over_merged_ranks():
    """Two ranks' rollout stats merged: the unscored row is left out of length_corr."""
    rank0 = {**stats(answers=["1", "2"], correctness=[1, 0], lengths=[2, 4], groups=[0, 0]), "failures": 0,
             "unscored": 0, "truncated": 0}
    rank1 = {**stats(answers=["1", None], correctness=[0, NAN], lengths=[6, 100], groups=[0, 0]),
             "failures": 0, "unscored": 1, "truncated": 0}
    merged = merge_stats([rank0, rank1])
    assert merged["answers"] == ["1", "2", "1", None]
    # scored rows of group 0: scores 1,0,0 lengths 2,4,6 -> ds 2/3,-1/3,-1/3; dl -2,0,2 -> -2/sqrt(2/3*8)
    corr = Monitor(accuracy="correctness").update(merged)["monitor/length_corr"]
    assert corr == pytest.approx(-2 / math.sqrt(16 / 3))


def stats(answers, scores=None, lengths=None, groups=None, **components):
    n = len(answers)
    first = next(iter(components.values()), None)
    if scores is None:
        scores = [0.0 if math.isnan(v) else float(v) for v in first]
    return {"scores": scores, "lengths": lengths or list(range(1, n + 1)), "group_ids": groups or [0] * n,
            "finished": [True] * n, "answers": answers,
            "components": {k: [float(v) for v in vals] for k, vals in components.items()}}


# ---------------------------------------------------------------- config refused at load

@pytest.mark.parametrize("overrides, words", [
    (["monitor.answer_fn=rlkit.nowhere:answer"], "cannot import"),
    (["monitor.answer_fn=rlkit.monitors:nothing"], "cannot import"),
    (["monitor.answer_fn=rlkit.monitors:PREFIX"], "one argument"),
    (["monitor.answer_fn=rlkit.monitors:length_corr"], "one argument"),
    (["monitor.format_component=format"], "not a reward component"),
    (["rewards.functions=[{fn: 'rewards.math:correctness'}, {fn: 'rewards.math:format_reward', name: format}]",
      "monitor.format_component=correctness"], "accuracy"),
    (["rewards.functions=[{fn: 'rewards.math:correctness'}, {fn: 'rewards.math:format_reward', name: format}]",
      "monitor.format_component=format", "rewards.accuracy_component=null"], "accuracy"),
])
def test_monitor_config_refused_at_load(overrides, words):
    key = "monitor.answer_fn" if "answer_fn" in overrides[-1] else "monitor.format_component"
    with pytest.raises(ConfigError, match=key) as exc:
        load_config(None, overrides)
    assert words in str(exc.value) and "\n" not in str(exc.value)


def test_monitor_config_error_exits_2(cli, tiny_model):
    res = cli(tiny_overrides(tiny_model) + ["monitor.answer_fn=rlkit.nowhere:answer"], timeout=120)
    assert res.returncode == 2, res.describe()
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert "monitor.answer_fn" in lines[-1] and "Traceback" not in res.stderr
    assert not res.run_dir.exists()


# ---------------------------------------------------------------- a real run

def train_lines(run_dir: Path) -> dict[int, dict]:
    lines = [json.loads(s) for s in (run_dir / "metrics.jsonl").read_text().splitlines() if s.strip()]
    return {m["step"]: m for m in lines if m["kind"] == "train"}


@pytest.mark.slow  # two training processes; the default suite's short runs check the monitor keys' ranges
def test_run_logs_monitors_and_resumes_the_collapse_state(tiny_model, tmp_path):
    """2 steps (checkpoint at step 2), then resumed to 3: every step logs format_only (from the
    component named "format"), collapse from step 2 on, step 3 included (the previous answer
    came from the checkpoint); length_corr where a group's lengths vary (the random model ends
    about a quarter of its completions before the limit)."""
    overrides = tiny_overrides(tiny_model, "hf", rollout__max_new_tokens=16, rollout__num_samples=8,
                               eval__before="false", eval__after="false", train__save_final="false") + [
        "rewards.functions=[{fn: 'rlkit.testing_rewards:digit_fraction', name: digits},"
        " {fn: 'rlkit.testing_rewards:char_fraction', name: format, weight: 0,"
        " kwargs: {chars: 'abcdefghijklmnopqrstuvwxyz'}}]",
        "rewards.accuracy_component=digits", "monitor.answer_fn=builtins:len"]
    first = run_cli(overrides + ["train.steps=2"], tmp_path / "run", timeout=300)
    assert first.returncode == 0, first.describe()
    second = run_cli(overrides + ["train.steps=3", "train.resume=auto"], tmp_path / "run", timeout=300)
    assert second.returncode == 0, second.describe()
    lines = train_lines(tmp_path / "run")
    assert sorted(lines) == [1, 2, 3]
    assert any("monitor/length_corr" in m for m in lines.values()), lines
    for step, m in lines.items():
        print(step, {k: v for k, v in m.items() if k.startswith("monitor/")})
        assert -1 <= m.get("monitor/length_corr", 0) <= 1
        assert 0 <= m["monitor/format_only"] <= 1
        assert ("monitor/collapse" in m) == (step > 1), m
        if step > 1:
            assert 0 <= m["monitor/collapse"] <= 1
