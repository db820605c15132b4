"""Discoverability: `rlkit --help` and every command's help say what they do with an example;
`rlkit config show` prints the resolved config with defaults and each key's comment."""
from __future__ import annotations

import dataclasses

import pytest

from rlkit.cli import main
from rlkit.config import Config
from rlkit.config_show import field_comments


def test_help_lists_every_command_and_each_command_has_an_example(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    commands = ["train", "config", "plot", "train-rm", "serve", "train-prm", "eval", "reward-check", "prepare-model"]
    assert all(f"    {c} " in text or f"    {c}\n" in text for c in commands) and "examples:" in text
    for command in commands:
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "example:" in capsys.readouterr().out, command


def test_config_show_prints_every_key_its_comment_and_whether_it_is_the_default(capsys):
    assert main(["config", "show", "configs/grpo_arith.yaml", "rollout.num_samples=16"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "rollout:" in lines and "  num_samples: 16  # completions per prompt (the group size K)" in lines
    assert "  max_new_tokens: 48  # (default)" in lines                  # the config file's value is the default
    assert "  steps: 60" in lines                                        # set by the file, no comment
    assert "  top_k: -1  # (default) -1 (or 0): off" in lines
    top = [line.split(":")[0] for line in lines if line and not line.startswith(" ")]
    assert top == [f.name for f in dataclasses.fields(Config)]         # every section, in order


def test_field_comments_come_from_the_dataclass_source():
    comments = field_comments()
    assert comments[("RolloutConfig", "mode")].startswith("sync | one_step_off | async")
    assert comments[("RolloutConfig", "max_staleness")].startswith("async: rounds made ahead")
    assert comments[("DataConfig", "truncation")].startswith("a prompt over max_prompt_tokens")


def test_config_show_key_and_errors(capsys):
    assert main(["config", "show", "configs/grpo_arith.yaml", "train.output_dir=runs/x", "--key",
                 "train.output_dir"]) == 0
    assert capsys.readouterr().out == "runs/x\n"
    assert main(["config", "show", "train.steps=3", "--key", "train.steps"]) == 0   # no file: defaults
    assert capsys.readouterr().out == "3\n"
    assert main(["config", "show", "configs/grpo_arith.yaml", "train.stepz=3"]) == 2
    assert "train.stepz" in capsys.readouterr().err
