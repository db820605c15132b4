"""Supervised warm start before RL (``rlkit sft``): fine-tune the policy on a task's reference answers.

RL learns only from what the policy already samples now and then.  A small model that never writes
a task's answer layout (a ```sql block, a ``<tool_call>`` block) gets equal rewards in every group
and no gradient; a short supervised pass on a few reference answers gives it the layout, and RL
takes it from there (DeepSeek-R1's "cold start", ToolRL's and Reasoning-SQL's SFT baselines).

What it trains on is what ``rlkit train`` will sample from: the same config (``--config`` plus
dotted overrides), so the same ``model.path``, the same training rows of ``data`` (the held-out
rows are never trained on) and the same prompt tokens (``rlkit.data.tokenize_prompts``: chat
template, system prompt, ``data.max_prompt_tokens`` and ``data.truncation``).  The target of each
row is its reference answer laid out as the task's reward reads it (``reference_answer``), or what
``--target-fn module:function`` makes of the row, then the tokenizer's end-of-sequence token; the
loss covers those tokens only.  A row whose target is longer than ``rollout.max_new_tokens`` (the
policy could never sample it) is skipped and counted.

Training is TRL's ``SFTTrainer`` on the pre-tokenized rows (``input_ids`` and ``completion_mask``,
completion-only loss): AdamW, linear decay from ``--lr``, the weights in ``model.dtype``, bf16
autocast when ``model.autocast_bf16`` is on, ``model.gradient_checkpointing`` as in RL.  It trains
all weights: a config with ``model.lora.r > 0`` is refused (the RL run may use LoRA on the result).
The rest of the config (algorithm, rewards, rollout other than ``max_new_tokens``) is RL's own.
The output folder (model, tokenizer, ``sft_metrics.json``) is written to a temporary sibling and
renamed when complete; point ``model.path`` at it to start RL from it.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import tempfile
from pathlib import Path
from typing import Callable

METRICS_FILE = "sft_metrics.json"


class SFTError(ValueError):
    """Why ``rlkit sft`` cannot run, in one line naming the option, key or row."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``rlkit sft``."""
    parser.add_argument("--config", "-c", required=True, help="the RL config whose model and data to warm-start")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, as for rlkit train")
    parser.add_argument("--output", required=True, help="folder for the fine-tuned model (written atomically)")
    parser.add_argument("--max-rows", type=int, default=None,
                        help="train on this many training rows (a seeded draw), not all of them")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--batch-size", type=int, default=8, help="rows per optimizer step")
    parser.add_argument("--target-column", default=None,
                        help="the column holding the target answer (file tasks; default: data.answer_column)")
    parser.add_argument("--target-fn", default=None,
                        help="module:function mapping a row to its target text, instead of the task's reference")
    parser.add_argument("--seed", type=int, default=0)


def main(args: argparse.Namespace) -> int:
    """``rlkit sft``: 0 when the model is saved, 2 on a bad config, data or option (one line)."""
    from rlkit.config import ConfigError, load_config
    from rlkit.data import DataError

    try:
        cfg = load_config(args.config, args.overrides)
        check_options(args)
        metrics = run_sft(cfg, args.output, max_rows=args.max_rows, epochs=args.epochs, lr=args.lr,
                          batch_size=args.batch_size, target_column=args.target_column, seed=args.seed,
                          target_fn=args.target_fn)
    except (ConfigError, DataError, SFTError) as exc:
        print(f"rlkit: sft: {exc}", file=sys.stderr)
        return 2
    print(f"sft: {metrics['rows_trained']} rows x {args.epochs} epoch(s), loss {metrics['first_loss']:.3f} -> "
          f"{metrics['last_loss']:.3f}; saved {args.output} (set model.path={args.output} to start RL from it)")
    return 0


def check_options(args: argparse.Namespace) -> None:
    """Refuse options that cannot train (each names its option)."""
    if args.epochs < 1:
        raise SFTError(f"--epochs must be >= 1, got {args.epochs}")
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise SFTError(f"--lr must be a positive number, got {args.lr}")
    if args.batch_size < 1:
        raise SFTError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.max_rows is not None and args.max_rows < 1:
        raise SFTError(f"--max-rows must be >= 1, got {args.max_rows}")
    if args.target_fn and args.target_column:
        raise SFTError("--target-fn and --target-column both name the target; give one")
    if args.target_fn:
        target_function(args.target_fn)
    from rlkit.models import may_replace

    if not may_replace(Path(args.output), METRICS_FILE):
        raise SFTError(f"--output {args.output} exists and is not an earlier sft output; choose a new folder")


def reference_answer(row: dict, task: str, target_column: str | None, index: int) -> str:
    """A row's reference answer as the task's reward reads it: the gold query in a ```sql block
    (rewards.sql's format), ToolRL's reference output verbatim (``<think>``, ``<tool_call>``,
    ``<response>`` blocks), the sum for arithmetic, else ``target_column``'s text."""
    if target_column is None:
        if task in ("spider", "sql_demo"):
            return f"```sql\n{row['gold_sql'].strip()}\n```"
        if task == "toolcall":
            return row["ground_truth"]
        if task == "arith":
            return str(row["answer"])
        target_column = "answer"
    value = row.get(target_column)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise SFTError(f"training row {index} has no target in column {target_column!r} "
                       f"(columns: {', '.join(map(str, row))}); name one with --target-column")
    return value if isinstance(value, str) else str(value)


def target_function(spec: str) -> Callable[[dict], str]:
    """The callable ``--target-fn`` names (``module:function``, taking a row, returning its target)."""
    from rewards.pool import load_callable

    try:
        fn = load_callable(spec)
    except (ImportError, AttributeError, ValueError) as exc:
        raise SFTError(f"--target-fn: {exc}") from exc
    if not callable(fn):
        raise SFTError(f"--target-fn: {spec} is not callable")
    return fn


def sft_examples(cfg, tokenizer, max_rows: int | None, target_column: str | None, seed: int,
                 target_fn: str | None = None) -> tuple[list[dict], int]:
    """(pre-tokenized examples ``{"input_ids", "completion_mask"}``, rows skipped as too long)."""
    from rlkit.data import load_rows, tokenize_prompts

    rows, _held_out = load_rows(cfg.data, cfg.train.seed)
    if max_rows is not None and max_rows < len(rows):
        rows = random.Random(seed).sample(rows, max_rows)
    column = target_column or (None if cfg.data.task in ("spider", "sql_demo", "toolcall", "arith")
                               else cfg.data.answer_column)
    prompts, _truncated = tokenize_prompts(rows, tokenizer, cfg.data)
    examples, skipped = [], 0
    make_target = target_function(target_fn) if target_fn else None
    for i, (row, prompt_ids) in enumerate(zip(rows, prompts)):
        try:
            text = make_target(row) if make_target else reference_answer(row, cfg.data.task, column, i)
        except (KeyError, TypeError, ValueError) as exc:
            raise SFTError(f"training row {i}: {target_fn or 'the reference answer'} failed "
                           f"({type(exc).__name__}: {exc})") from exc
        if not isinstance(text, str) or not text.strip():
            raise SFTError(f"--target-fn {target_fn} gave {text!r} for training row {i}, not a text")
        target = tokenizer(text, add_special_tokens=False)["input_ids"]
        target = target + [tokenizer.eos_token_id]
        if len(target) > cfg.rollout.max_new_tokens:
            skipped += 1
            continue
        examples.append({"input_ids": prompt_ids + target,
                         "completion_mask": [0] * len(prompt_ids) + [1] * len(target)})
    if not examples:
        raise SFTError(f"none of the {len(rows)} training rows has a target of at most rollout.max_new_tokens="
                       f"{cfg.rollout.max_new_tokens} tokens")
    return examples, skipped


def _loss_lines(log: Callable[[str], None], losses: list[float]):
    from transformers import TrainerCallback

    class LossLines(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))
                log(f"sft: step {state.global_step}/{state.max_steps} (epoch {state.epoch:.2f}), loss {logs['loss']:.4f}")

    return LossLines()


def run_sft(cfg, output: str | Path, max_rows: int | None = None, epochs: int = 1, lr: float = 2e-5,
            batch_size: int = 8, target_column: str | None = None, seed: int = 0, target_fn: str | None = None,
            log: Callable[[str], None] | None = None) -> dict:
    """Fine-tune ``cfg.model.path`` on the reference answers of ``cfg.data``'s training rows and save
    it to ``output``; returns the metrics written to ``output/sft_metrics.json``."""
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    try:
        from trl import SFTConfig, SFTTrainer
    except ImportError as exc:
        raise SFTError(f"needs TRL ({exc}); install it with `pip install -e .[sft]` (or `pip install trl`)") from exc
    import datasets
    import torch
    from transformers.trainer_callback import PrinterCallback
    from transformers.utils import logging as hf_logging

    from rlkit.data import use_chat_template
    from rlkit.models import load_causal_lm, load_tokenizer, resolve_model_path, save_atomically

    if cfg.model.lora.r:
        raise SFTError(f"model.lora.r={cfg.model.lora.r}: rlkit sft trains all weights and would ignore it; run it "
                       "with model.lora.r=0 (the RL run may still put LoRA adapters on the result)")
    path = resolve_model_path(cfg.model.path)
    tokenizer = load_tokenizer(path)
    use_chat_template(tokenizer, cfg.data)
    examples, skipped = sft_examples(cfg, tokenizer, max_rows, target_column, seed, target_fn)
    log(f"sft: {len(examples)} training rows" + (f", {skipped} skipped (target over rollout.max_new_tokens)"
                                                 if skipped else ""))
    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()
    model = load_causal_lm(path, dtype=cfg.model.dtype)
    model.train()
    steps = epochs * math.ceil(len(examples) / batch_size)
    losses: list[float] = []
    longest = max(len(e["input_ids"]) for e in examples)
    with tempfile.TemporaryDirectory(prefix="rlkit-sft-") as scratch:
        config = SFTConfig(output_dir=scratch, num_train_epochs=epochs, learning_rate=lr,
                           per_device_train_batch_size=batch_size, max_length=longest, seed=seed, data_seed=seed,
                           bf16=bool(cfg.model.autocast_bf16), use_cpu=not torch.cuda.is_available(),
                           gradient_checkpointing=bool(cfg.model.gradient_checkpointing),
                           completion_only_loss=True, packing=False, report_to="none", save_strategy="no",
                           eval_strategy="no", logging_steps=max(1, min(20, steps // 10)), logging_first_step=True,
                           disable_tqdm=True, dataset_num_proc=None)
        trainer = SFTTrainer(model=model, args=config, train_dataset=datasets.Dataset.from_list(examples),
                             processing_class=tokenizer)
        trainer.remove_callback(PrinterCallback)
        trainer.add_callback(_loss_lines(log, losses))
        result = trainer.train()
    metrics = {"model": cfg.model.path, "task": cfg.data.task, "target_fn": target_fn,
               "rows_trained": len(examples),
               "rows_skipped": skipped, "epochs": epochs, "lr": lr, "batch_size": batch_size, "seed": seed,
               "train_loss": result.training_loss, "first_loss": losses[0] if losses else result.training_loss,
               "last_loss": losses[-1] if losses else result.training_loss}
    model.eval()
    save_atomically(model, tokenizer, Path(output), {METRICS_FILE: json.dumps(metrics, indent=2)})
    return metrics
