"""``rlkit sft``: the supervised warm start trains on exactly the reference answers (prompt tokens
masked), logs the loss it computes, saves the trained model atomically, and refuses bad options
in one line.  Tiny random model; the SQL demo's references are checked against its reward."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from conftest import REPO_ROOT, subprocess_env, tiny_overrides


def _cfg(tiny_model, *extra):
    from rlkit.config import load_config

    return load_config("configs/grpo_arith.yaml", tiny_overrides(tiny_model, "hf", **{"data__num_train": "8"})
                       + list(extra))


def test_examples_are_the_rl_prompt_tokens_then_the_answer_and_eos_with_only_the_answer_in_the_loss(tiny_model):
    from rlkit.data import load_rows, tokenize_prompts
    from rlkit.models import load_tokenizer
    from rlkit.sft import sft_examples

    cfg = _cfg(tiny_model, "rollout.max_new_tokens=8")
    tokenizer = load_tokenizer(tiny_model)
    examples, skipped = sft_examples(cfg, tokenizer, max_rows=None, target_column=None, seed=0)
    rows, _ = load_rows(cfg.data, cfg.train.seed)
    prompts, _ = tokenize_prompts(rows, tokenizer, cfg.data)
    assert skipped == 0 and len(examples) == len(rows) == 8
    for example, row, prompt in zip(examples, rows, prompts):
        ids, mask = example["input_ids"], example["completion_mask"]
        assert ids[:len(prompt)] == prompt and mask[:len(prompt)] == [0] * len(prompt)
        target = [t for t, m in zip(ids, mask) if m]
        assert target[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(target[:-1]) == str(row["answer"])  # e.g. "58": the sum, nothing else
        assert len(target) == len(ids) - len(prompt)


def test_a_target_longer_than_max_new_tokens_is_skipped_and_none_left_is_an_error(tiny_model):
    from rlkit.models import load_tokenizer
    from rlkit.sft import SFTError, sft_examples

    tokenizer = load_tokenizer(tiny_model)
    cfg = _cfg(tiny_model, "rollout.max_new_tokens=2")  # sums of 2 or 3 digits, + eos: none fits in 2
    with pytest.raises(SFTError, match="rollout.max_new_tokens=2"):
        sft_examples(cfg, tokenizer, None, None, 0)
    cfg = _cfg(tiny_model, "rollout.max_new_tokens=3")  # two-digit sums + eos fit, three-digit ones do not
    examples, skipped = sft_examples(cfg, tokenizer, None, None, 0)
    assert skipped > 0 and len(examples) + skipped == 8
    assert all(sum(e["completion_mask"]) <= 3 for e in examples)


def test_first_logged_loss_is_the_mean_nll_of_the_answer_tokens_and_the_saved_model_learned(tiny_model, tmp_path,
                                                                                           one_thread):
    import torch

    from rlkit.models import load_causal_lm, load_tokenizer
    from rlkit.sft import run_sft, sft_examples

    cfg = _cfg(tiny_model)
    tokenizer = load_tokenizer(tiny_model)
    [example], _ = sft_examples(cfg, tokenizer, max_rows=1, target_column=None, seed=3)
    model = load_causal_lm(tiny_model)
    ids = torch.tensor([example["input_ids"]])
    with torch.no_grad():
        logits = model(ids).logits[0, :-1]
    mask = torch.tensor(example["completion_mask"][1:], dtype=torch.bool)
    by_hand = torch.nn.functional.cross_entropy(logits[mask], ids[0, 1:][mask]).item()

    out = tmp_path / "sft"
    metrics = run_sft(cfg, out, max_rows=1, epochs=40, lr=3e-3, batch_size=1, seed=3, log=lambda line: None)
    assert math.isclose(metrics["first_loss"], by_hand, rel_tol=1e-3), (metrics["first_loss"], by_hand)
    assert metrics["last_loss"] < 0.1 * metrics["first_loss"]
    assert json.loads((out / "sft_metrics.json").read_text())["rows_trained"] == 1
    assert not (tmp_path / ".tmp-sft").exists()
    trained = load_causal_lm(str(out))  # the folder holds the trained weights: it now completes the row
    prompt_len = len(example["input_ids"]) - sum(example["completion_mask"])
    with torch.no_grad():
        greedy = trained.generate(ids[:, :prompt_len], max_new_tokens=sum(example["completion_mask"]),
                                  do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert greedy[0, prompt_len:].tolist() == example["input_ids"][prompt_len:]


def test_sql_references_are_laid_out_as_the_sql_reward_reads_them():
    from rewards.sql import execution_accuracy, sql_format
    from rlkit.config import load_config
    from rlkit.data import load_rows
    from rlkit.sft import reference_answer

    cfg = load_config("configs/grpo_sql.yaml", [])
    train, held = load_rows(cfg.data, 0)
    rows = train[:20] + held[:5]
    answers = [reference_answer(r, "sql_demo", None, i) for i, r in enumerate(rows)]
    assert answers[0].startswith("```sql\n") and answers[0].endswith("\n```")
    assert sql_format(answers) == [1.0] * len(rows)
    assert execution_accuracy(answers, [r["gold_sql"] for r in rows], [r["db_path"] for r in rows]) == [1.0] * len(rows)


def test_bad_options_and_a_missing_target_column_are_one_line_errors(tiny_model, tmp_path, capsys):
    from rlkit.cli import main

    (tmp_path / "not_sft").mkdir()
    (tmp_path / "not_sft" / "weights.bin").write_text("x")
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"prompt": f"q{i}", "solution": str(i)}) + "\n" for i in range(10)))
    tiny = tiny_overrides(tiny_model, "hf")
    cases = [
        (["--epochs", "0"], "--epochs must be >= 1"),
        (["--output", str(tmp_path / "not_sft")], "is not an earlier sft output"),
        (["data.task=jsonl", f"data.path={rows}", "data.num_eval=2"], "no target in column 'answer'"),
        (["train.nonsense=1"], "train.nonsense"),
        (["model.lora.r=8"], "model.lora.r=8: rlkit sft trains all weights"),
    ]
    for extra, message in cases:
        code = main(["sft", "--config", "configs/grpo_arith.yaml", *tiny, "--output", str(tmp_path / "out"), *extra])
        err = capsys.readouterr().err.strip()
        assert code == 2 and message in err and "\n" not in err, (extra, err)
    assert not (tmp_path / "out").exists()
    # the same through the installed entry point: exit code 2, one line, no traceback
    done = subprocess.run([sys.executable, "-m", "rlkit.cli", "sft", "--config", "configs/grpo_arith.yaml", *tiny,
                           "--output", str(tmp_path / "out"), "--lr", "-1"], cwd=REPO_ROOT, env=subprocess_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.strip() == "rlkit: sft: --lr must be a positive number, got -1.0"


def test_short_think_target_keeps_the_first_sentence_and_the_calls_and_scores_the_maximum():
    from rewards.toolrl import ToolRLReward
    from rlkit.tasks.toolcall import short_think_target

    call = '<tool_call>\n{"name": "add", "parameters": {"a": 2, "b": 3}}\n</tool_call>'
    row = {"ground_truth": "<think> The user wants a sum. I will call add. Then reply. </think>\n" + call}
    short = short_think_target(row)
    assert short == "<think> The user wants a sum. </think>\n" + call
    assert short_think_target(row, sentences=2) == "<think> The user wants a sum. I will call add. </think>\n" + call
    assert short_think_target({"ground_truth": call}) == call  # no think block: unchanged
    scores = ToolRLReward()([short, row["ground_truth"]], ground_truth=[row["ground_truth"]] * 2)
    assert scores[0] == scores[1] == 4.0  # format 1 + correctness 3: the shortened target loses nothing


def tagged_answer(row: dict) -> str:  # a --target-fn for the test below
    return f"Q{row['answer']}"


def test_target_fn_replaces_the_reference_and_a_bad_one_is_named(tiny_model, capsys):
    from rlkit.cli import main
    from rlkit.data import load_rows
    from rlkit.models import load_tokenizer
    from rlkit.sft import SFTError, sft_examples

    cfg = _cfg(tiny_model)
    tokenizer = load_tokenizer(tiny_model)
    examples, _ = sft_examples(cfg, tokenizer, None, None, 0, target_fn="test_sft:tagged_answer")
    rows_text = [tokenizer.decode([t for t, m in zip(e["input_ids"], e["completion_mask"]) if m][:-1]) for e in examples]
    rows, _ = load_rows(cfg.data, cfg.train.seed)
    assert rows_text == [f"Q{row['answer']}" for row in rows]
    with pytest.raises(SFTError, match="--target-fn: .*has no attribute 'nope'"):
        sft_examples(cfg, tokenizer, None, None, 0, target_fn="test_sft:nope")
    code = main(["sft", "--config", "configs/grpo_arith.yaml", *tiny_overrides(tiny_model, "hf"), "--output", "x",
                 "--target-fn", "test_sft:tagged_answer", "--target-column", "answer"])
    assert code == 2 and "give one" in capsys.readouterr().err
