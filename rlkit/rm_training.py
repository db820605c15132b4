"""Training an outcome reward model from preference pairs (``rlkit train-rm``).

Data: JSONL, one pair per line: ``{"prompt": str, "chosen": str, "rejected": str}``, or TRL's
conversational form (``chosen`` / ``rejected`` lists of ``{"role", "content"}`` messages, with
an optional ``prompt`` list of messages before them).

Layout: the text a pair's answer is scored in is the one ``rewards.rm.RewardModel`` builds
when it scores a completion, so the trained model sees at scoring time what it learned on.  With
a chat template the prompt is a user message (or its own messages), the answer an assistant
message, and the template is applied without a generation prompt; without one the text is
``prompt + answer + eos``.  Pairs go to TRL in its implicit-prompt form (the prompt inside
``chosen`` and ``rejected``), which TRL tokenizes the same way.

Training: TRL's ``RewardTrainer`` (``trl`` must be installed) fits ``--model`` as an
``AutoModelForSequenceClassification`` with one label (a new score head on a causal-LM
checkpoint) with the Bradley-Terry loss ``-log sigmoid(r(chosen) - r(rejected))``: AdamW, linear
decay from ``--lr``, no gradient checkpointing, bf16 mixed precision on a CUDA GPU that has it,
float32 elsewhere.  It fits the stack as it is: it reads plain JSON rows through ``datasets``,
applies the chat template, pads and trains on one device without extra setup, so nothing is
rewritten here.  TRL drops the pairs with a side longer than ``--max-length`` tokens (the
count is printed).  ``--eval-fraction`` of the pairs (shuffled with ``--seed``) are held out;
their pairwise accuracy, the share of pairs with r(chosen) > r(rejected) (a tie counts as
wrong), is printed before and after training.  The output folder (``save_pretrained`` model
and tokenizer, plus ``rm_metrics.json``) is written to a temporary sibling and renamed when
complete.
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
from typing import Any, Callable

DEFAULT_MODEL = "embedded:smollm2-135m-instruct"
METRICS_FILE = "rm_metrics.json"


class TrainRMError(ValueError):
    """Why ``train-rm`` cannot run, in one line: a preference-pair file (file and line named), a
    setting (option named) or a missing TRL."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``rlkit train-rm``."""
    parser.add_argument("--data", required=True,
                        help='JSONL preference pairs {"prompt", "chosen", "rejected"} (or TRL\'s conversational form)')
    parser.add_argument("--output", required=True, help="folder for the reward model (written atomically)")
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="checkpoint to start from; a causal LM gets a new one-label score head")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per optimizer step")
    parser.add_argument("--max-length", type=int, default=1024,
                        help="pairs with a side longer than this many tokens are dropped")
    parser.add_argument("--eval-fraction", type=float, default=0.1,
                        help="share of the pairs held out for the pairwise accuracy")
    parser.add_argument("--seed", type=int, default=0)


def main(args: argparse.Namespace) -> int:
    """``rlkit train-rm``: 0 when the model is saved, 2 on bad data or settings (one line naming them)."""
    try:
        check_settings(args)
        pairs = read_pairs(args.data)
        metrics = train_rm(pairs, args.data, args.output, model=args.model, epochs=args.epochs, lr=args.lr,
                           batch_size=args.batch_size, max_length=args.max_length,
                           eval_fraction=args.eval_fraction, seed=args.seed)
    except TrainRMError as exc:
        print(f"rlkit: train-rm: {exc}", file=sys.stderr)
        return 2
    before, after = metrics["eval_pairwise_accuracy_before"], metrics["eval_pairwise_accuracy_after"]
    if metrics["pairs_eval"]:
        print(f"train-rm: held-out pairwise accuracy {before:.1%} -> {after:.1%} "
              f"({metrics['pairs_eval']} pairs); saved {args.output}")
    else:
        print(f"train-rm: no held-out pairs to score (--eval-fraction {args.eval_fraction}); saved {args.output}")
    return 0


def check_settings(args: argparse.Namespace) -> None:
    """Refuse settings that cannot train (each names its option)."""
    if args.epochs < 1:
        raise TrainRMError(f"--epochs must be >= 1, got {args.epochs}")
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise TrainRMError(f"--lr must be a positive number, got {args.lr}")
    if args.batch_size < 1:
        raise TrainRMError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.max_length < 2:
        raise TrainRMError(f"--max-length must be >= 2 tokens, got {args.max_length}")
    if not 0 <= args.eval_fraction < 1:
        raise TrainRMError(f"--eval-fraction must be in [0, 1), got {args.eval_fraction}")
    from rlkit.models import may_replace

    if not may_replace(Path(args.output), METRICS_FILE):
        raise TrainRMError(f"--output {args.output} exists and is not an earlier train-rm output; choose a new folder")


def _messages(value: Any) -> list[dict] | None:
    """``value`` as a list of ``{"role", "content"}`` messages (only those keys), None if it is not one."""
    if not isinstance(value, list) or not value:
        return None
    if not all(isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
               for m in value):
        return None
    return [{"role": m["role"], "content": m["content"]} for m in value]


def read_pairs(path: str | Path) -> list[dict]:
    """The checked pairs of a JSONL file: ``{"line", "prompt", "chosen", "rejected"}`` with text
    sides (``prompt`` a string) or message sides (``prompt`` a possibly empty message list)."""
    path = Path(path)
    if not path.is_file():
        raise TrainRMError(f"{path}: no such file")
    pairs = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TrainRMError(f"{where}: not JSON ({exc.msg})") from exc
        if not isinstance(row, dict):
            raise TrainRMError(f"{where}: expected an object with prompt, chosen and rejected")
        for key in ("chosen", "rejected"):
            if key not in row:
                raise TrainRMError(f"{where}: missing {key!r}")
        chosen, rejected = row["chosen"], row["rejected"]
        if isinstance(chosen, str) and isinstance(rejected, str):
            if "prompt" not in row:
                raise TrainRMError(f"{where}: missing 'prompt'")
            if not isinstance(row["prompt"], str):
                raise TrainRMError(f"{where}: 'prompt' must be text when chosen and rejected are text")
            pairs.append({"line": number, "prompt": row["prompt"], "chosen": chosen, "rejected": rejected})
            continue
        if isinstance(chosen, str) or isinstance(rejected, str):
            raise TrainRMError(f"{where}: 'chosen' and 'rejected' must both be text or both chat messages")
        sides = {key: _messages(row[key]) for key in ("chosen", "rejected")}
        for key, messages in sides.items():
            if messages is None:
                raise TrainRMError(f"{where}: {key!r} must be text or a non-empty list of {{role, content}} messages")
        prompt = _messages(row["prompt"]) if row.get("prompt") not in (None, []) else []
        if prompt is None:
            raise TrainRMError(f"{where}: 'prompt' must be a list of {{role, content}} messages "
                               "when chosen and rejected are messages")
        pairs.append({"line": number, "prompt": prompt, **sides})
    if not pairs:
        raise TrainRMError(f"{path}: no preference pairs (empty file)")
    return pairs


def split_pairs(pairs: list[dict], eval_fraction: float, seed: int, source: str) -> tuple[list[dict], list[dict]]:
    """(train, held out): the pairs shuffled with ``seed``, ``eval_fraction`` of them (at least
    one when it is above 0) held out; at least one pair must be left to train on."""
    order = list(pairs)
    random.Random(seed).shuffle(order)
    n_eval = max(1, round(len(order) * eval_fraction)) if eval_fraction > 0 else 0
    if n_eval >= len(order):
        raise TrainRMError(f"{source}: {len(order)} pair(s) are too few to hold out {eval_fraction:.0%} "
                           "and train on the rest; add pairs or lower --eval-fraction")
    return order[n_eval:], order[:n_eval]


def trl_rows(pairs: list[dict], chat: bool, source: str) -> list[dict]:
    """The pairs in TRL's implicit-prompt form, laid out as ``rewards.rm.RewardModel`` scores:
    with a chat template, messages (a text prompt is one user message, an empty one none); without,
    ``prompt + answer`` (TRL appends the eos token)."""
    rows = []
    for pair in pairs:
        prompt = pair["prompt"]
        if isinstance(prompt, list) and not chat:
            raise TrainRMError(f"{source}, line {pair['line']}: chat messages, but the model's tokenizer "
                               "has no chat template")
        if not chat:
            rows.append({"chosen": prompt + pair["chosen"], "rejected": prompt + pair["rejected"]})
            continue
        head = prompt if isinstance(prompt, list) else ([{"role": "user", "content": prompt}] if prompt else [])
        sides = {key: pair[key] if isinstance(pair[key], list) else [{"role": "assistant", "content": pair[key]}]
                 for key in ("chosen", "rejected")}
        rows.append({key: head + messages for key, messages in sides.items()})
    return rows


def pairwise_accuracy(model, dataset, pad_token_id: int, batch_size: int, bf16: bool) -> float:
    """Share of the tokenized pairs (``chosen_ids`` / ``rejected_ids``) that ``model`` scores
    r(chosen) > r(rejected); NaN for none.  Padded as TRL pads them in training."""
    import torch
    from trl.trainer.reward_trainer import DataCollatorForPreference

    if len(dataset) == 0:
        return math.nan
    collate = DataCollatorForPreference(pad_token_id=pad_token_id)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    right = 0
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        for start in range(0, len(dataset), batch_size):
            chunk = dataset.select(range(start, min(start + batch_size, len(dataset))))
            batch = collate([{"chosen_ids": r["chosen_ids"], "rejected_ids": r["rejected_ids"]} for r in chunk])
            logits = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                           use_cache=False).logits.float().squeeze(-1)
            chosen, rejected = logits.chunk(2)
            right += int((chosen > rejected).sum())
    model.train(was_training)
    return right / len(dataset)


def _log_callback(log: Callable[[str], None]):
    """A ``TrainerCallback`` that writes each training log as one ``train-rm:`` line."""
    from transformers import TrainerCallback

    class LogLines(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                log(f"train-rm: step {state.global_step}/{state.max_steps} (epoch {state.epoch:.2f}), "
                    f"loss {logs['loss']:.4f}, training accuracy {logs.get('accuracy', math.nan):.1%}")

    return LogLines()


def train_rm(pairs: list[dict], source: str, output: str | Path, model: str = DEFAULT_MODEL, epochs: int = 1,
             lr: float = 1e-5, batch_size: int = 8, max_length: int = 1024, eval_fraction: float = 0.1,
             seed: int = 0, log: Callable[[str], None] | None = None) -> dict:
    """Train a one-label sequence classifier on ``pairs`` (from ``read_pairs``; ``source`` names
    their file in messages) with TRL's ``RewardTrainer`` and save it to ``output``; returns the
    metrics written to ``output/rm_metrics.json``."""
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    train_pairs, eval_pairs = split_pairs(pairs, eval_fraction, seed, source)
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")  # TRL reports each trainer start unless told not to
    try:
        from trl import RewardConfig, RewardTrainer
    except ImportError as exc:
        raise TrainRMError(f"needs TRL ({exc}); install it with `pip install trl`") from exc
    import datasets
    import torch
    from transformers.trainer_callback import PrinterCallback
    from transformers.utils import logging as hf_logging

    from rlkit.models import load_tokenizer, resolve_model_path

    path = resolve_model_path(model)
    tokenizer = load_tokenizer(path)
    chat = bool(tokenizer.chat_template)
    train_set = datasets.Dataset.from_list(trl_rows(train_pairs, chat, source))
    eval_set = datasets.Dataset.from_list(trl_rows(eval_pairs, chat, source)) if eval_pairs else None
    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    datasets.disable_progress_bars()  # one line per log instead of progress bars
    hf_logging.disable_progress_bar()
    steps = epochs * math.ceil(len(train_pairs) / batch_size)  # about ten log lines, at most 100 steps apart
    with tempfile.TemporaryDirectory(prefix="rlkit-train-rm-") as scratch:
        config = RewardConfig(output_dir=scratch, num_train_epochs=epochs, learning_rate=lr,
                              per_device_train_batch_size=batch_size, per_device_eval_batch_size=batch_size,
                              max_length=max_length, seed=seed, data_seed=seed, bf16=bf16,
                              use_cpu=not torch.cuda.is_available(), gradient_checkpointing=False,
                              report_to="none", save_strategy="no", eval_strategy="no",
                              logging_steps=max(1, min(100, steps // 10)), disable_tqdm=True)
        trainer = RewardTrainer(model=path, args=config, train_dataset=train_set, eval_dataset=eval_set,
                                processing_class=tokenizer)
        trainer.remove_callback(PrinterCallback)
        trainer.add_callback(_log_callback(log))
        kept_train, kept_eval = len(trainer.train_dataset), len(trainer.eval_dataset) if eval_set else 0
        if kept_train == 0:
            raise TrainRMError(f"{source}: every training pair has a side longer than --max-length "
                               f"{max_length} tokens")
        net, pad = trainer.model, tokenizer.pad_token_id
        before = pairwise_accuracy(net, trainer.eval_dataset, pad, batch_size, bf16) if kept_eval else math.nan
        dropped = len(pairs) - kept_train - kept_eval
        log(f"train-rm: {kept_train} training pairs, {kept_eval} held out"
            + (f", {dropped} dropped (a side longer than {max_length} tokens)" if dropped else "")
            + (f"; held-out pairwise accuracy before training {before:.1%}" if kept_eval else ""))
        result = trainer.train()
        after = pairwise_accuracy(net, trainer.eval_dataset, pad, batch_size, bf16) if kept_eval else math.nan
    metrics = {"pairs_train": kept_train, "pairs_eval": kept_eval, "pairs_dropped": dropped,
               "eval_pairwise_accuracy_before": before, "eval_pairwise_accuracy_after": after,
               "train_loss": result.training_loss, "model": model, "max_length": max_length}
    _save(net, tokenizer, metrics, Path(output))
    return metrics


def _save(net, tokenizer, metrics: dict, output: Path) -> None:
    """Model, tokenizer and metrics (NaN as null), written atomically."""
    from rlkit.models import save_atomically

    clean = {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in metrics.items()}
    save_atomically(net, tokenizer, output, {METRICS_FILE: json.dumps(clean, indent=2)})
