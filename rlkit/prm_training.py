"""Training a token-classification process reward model (``rlkit train-prm``) and making
step-labelled data for the arithmetic task (``rlkit label-arith-steps``).

Data: JSONL rows ``{"prompt": str, "steps": [str, ...], "labels": [0|1, ...]}`` (1 = a good
step).  A row becomes the PRM's input with ``rewards.prm_models.prm_layout`` (the layout the
scorer reads) and one label at each step's last token; every other position is ignored by the
loss.  The model is ``AutoModelForTokenClassification`` with two labels (0 = bad, 1 = good)
on top of a causal-LM checkpoint's decoder (by default the embedded SmolLM2).  The output
folder is written to a temporary sibling and renamed when complete.
"""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path


class PRMDataError(ValueError):
    """A step-labelled JSONL file that cannot be used, with the file and row named."""


def read_step_rows(path: str | Path) -> list[dict]:
    """Rows of a step-labelled JSONL file, checked: non-empty ``steps`` of strings and one 0/1
    label per step."""
    path = Path(path)
    if not path.is_file():
        raise PRMDataError(f"{path}: no such file")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PRMDataError(f"{path}, row {number}: not JSON ({exc.msg})") from exc
        steps, labels = row.get("steps"), row.get("labels")
        if not isinstance(row.get("prompt", ""), str):
            raise PRMDataError(f"{path}, row {number}: 'prompt' must be a string")
        if not isinstance(steps, list) or not steps or not all(isinstance(s, str) for s in steps):
            raise PRMDataError(f"{path}, row {number}: 'steps' must be a non-empty list of strings")
        if not isinstance(labels, list) or len(labels) != len(steps) or any(v not in (0, 1) for v in labels):
            raise PRMDataError(f"{path}, row {number}: 'labels' must hold one 0 or 1 per step "
                               f"({len(steps)} steps, labels {labels!r})")
        rows.append({"prompt": row.get("prompt", ""), "steps": steps, "labels": labels})
    if not rows:
        raise PRMDataError(f"{path}: no rows")
    return rows


def encode_rows(rows: list[dict], tokenizer, max_length: int) -> list[tuple[list[int], list[int]]]:
    """(input ids, labels with -100 except at step ends) per row, cut to the last ``max_length``
    tokens (steps whose end falls off are dropped)."""
    from rewards.prm_models import encode_marked, prm_layout

    encoded = []
    for row in rows:
        text, marks = prm_layout(row["prompt"], row["steps"])
        ids, positions = encode_marked(tokenizer, text, marks, max_length)
        labels = [-100] * len(ids)
        for position, label in zip(positions, row["labels"]):
            if position is not None:
                labels[position] = int(label)
        encoded.append((ids, labels))
    return encoded


def train_prm(data: str | Path, output: str | Path, model: str = "embedded:smollm2-135m-instruct",
              epochs: int = 2, lr: float = 2e-5, batch_size: int = 8, max_length: int = 1024, seed: int = 0,
              eval_fraction: float = 0.1, device: str = "cpu", autocast_bf16: bool = False, log=print) -> dict:
    """Fine-tune a two-label token classifier on step labels; returns metrics (held-out step
    accuracy before and after, final loss) and writes them to ``output/prm_metrics.json``."""
    import torch
    from transformers import AutoModelForTokenClassification

    from rewards.prm_models import pad_rows
    from rlkit.models import load_tokenizer, resolve_model_path

    rows = read_step_rows(data)
    rng = random.Random(seed)
    rng.shuffle(rows)
    n_eval = max(1, int(len(rows) * eval_fraction)) if len(rows) > 1 else 0
    eval_rows, train_rows = rows[:n_eval], rows[n_eval:] or rows
    path = resolve_model_path(model)
    tokenizer = load_tokenizer(path)
    torch.manual_seed(seed)
    net = AutoModelForTokenClassification.from_pretrained(path, num_labels=2).to(device)
    net.config.id2label, net.config.label2id = {0: "bad", 1: "good"}, {"bad": 0, "good": 1}
    train_set = encode_rows(train_rows, tokenizer, max_length)
    eval_set = encode_rows(eval_rows, tokenizer, max_length)
    labels_all = [v for _, labels in train_set for v in labels if v >= 0]
    share_good = sum(labels_all) / max(len(labels_all), 1)
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def batches(items, shuffle):
        order = list(range(len(items)))
        if shuffle:
            rng.shuffle(order)
        for start in range(0, len(order), batch_size):
            chunk = [items[i] for i in order[start:start + batch_size]]
            ids = pad_rows([row_ids for row_ids, _ in chunk], pad)
            mask = pad_rows([[1] * len(row_ids) for row_ids, _ in chunk], 0)
            labels = pad_rows([row_labels for _, row_labels in chunk], -100)
            yield ids.to(device), mask.to(device), labels.to(device)

    @torch.no_grad()
    def accuracy(items) -> float:
        net.eval()
        right = total = 0
        for ids, mask, labels in batches(items, shuffle=False):
            with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=autocast_bf16):
                guess = net(input_ids=ids, attention_mask=mask).logits.argmax(-1)
            keep = labels >= 0
            right += int((guess[keep] == labels[keep]).sum())
            total += int(keep.sum())
        net.train()
        return right / max(total, 1)

    before = accuracy(eval_set) if eval_set else float("nan")
    log(f"train-prm: {len(train_set)} train rows, {len(eval_set)} held out, {share_good:.1%} good steps; "
        f"held-out step accuracy before {before:.1%}")
    net.train()
    loss_value = float("nan")
    for epoch in range(epochs):
        for ids, mask, labels in batches(train_set, shuffle=True):
            with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=autocast_bf16):
                loss = net(input_ids=ids, attention_mask=mask, labels=labels).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            optimizer.step()
            loss_value = float(loss.detach())
        log(f"train-prm: epoch {epoch + 1}/{epochs}, last loss {loss_value:.4f}")
    after = accuracy(eval_set) if eval_set else float("nan")
    metrics = {"rows_train": len(train_set), "rows_eval": len(eval_set), "share_good_steps": share_good,
               "eval_step_accuracy_before": before, "eval_step_accuracy_after": after, "last_loss": loss_value}
    output = Path(output)
    tmp = output.with_name(f".tmp-{output.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    net.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "prm_metrics.json").write_text(json.dumps(metrics, indent=2))
    if output.exists():
        shutil.rmtree(output)
    tmp.rename(output)
    log(f"train-prm: held-out step accuracy {before:.1%} -> {after:.1%}; saved {output}")
    return metrics


def label_arith_steps(output: str | Path, model: str = "embedded:smollm2-135m-instruct", num_prompts: int = 256,
                      samples: int = 4, levels: tuple[int, ...] = (4, 5), max_new_tokens: int = 160,
                      temperature: float = 1.0, seed: int = 0, separator: str = "\n\n",
                      instruction: str | None = None, backend: str = "vllm") -> dict:
    """Sample completions of the policy on arithmetic word problems, cut them into steps and
    label each with ``rewards.prm.arithmetic_step_label``; write step-labelled JSONL."""
    from dataclasses import replace

    from rewards.prm import arithmetic_step_label, split_steps, step_texts
    from rlkit.config import load_config
    from rlkit.data import load_rows, prompt_token_ids
    from rlkit.models import load_tokenizer, resolve_model_path
    from rlkit.rollout import Sampling, make_rollout
    from rlkit.tokens import token_char_ends

    cfg = load_config(None, [f"model.path={model}", "data.task=arith", f"data.levels=[{','.join(map(str, levels))}]",
                             f"data.num_train={num_prompts}", f"rollout.max_new_tokens={max_new_tokens}"])
    if instruction is not None:
        cfg = replace(cfg, data=replace(cfg.data, instruction=instruction))
    path = resolve_model_path(model)
    tokenizer = load_tokenizer(path)
    rows, _ = load_rows(cfg.data, seed)
    rows = rows[:num_prompts]
    policy = None
    if backend == "hf":
        from rlkit.models import load_causal_lm

        policy = load_causal_lm(path)
    rollout = make_rollout(backend, policy, tokenizer, path, cfg.rollout, seed=seed)
    try:
        gens = rollout.generate(prompt_token_ids(rows, tokenizer, cfg.data),
                                Sampling(n=samples, max_new_tokens=max_new_tokens, temperature=temperature))
    finally:
        rollout.close()
    written = good = steps_total = 0
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".tmp-{output.name}")
    with open(tmp, "w") as out:
        for gen in gens:
            ends = token_char_ends(tokenizer, gen.token_ids)
            texts = [t for t in step_texts(gen.text, ends, split_steps(gen.text, ends, separator)) if t.strip()]
            if not texts:
                continue
            labels = [arithmetic_step_label(t) for t in texts]
            out.write(json.dumps({"prompt": rows[gen.prompt_index]["prompt"], "steps": texts, "labels": labels}) + "\n")
            written += 1
            good += sum(labels)
            steps_total += len(labels)
    tmp.replace(output)
    return {"rows": written, "steps": steps_total, "good_steps": good}
