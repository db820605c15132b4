"""Greedy accuracy on the held-out split, scored by the same reward modules as training."""
from __future__ import annotations

import math
from collections import defaultdict

from rlkit.data import prompt_token_ids
from rlkit.rollout import Sampling
from rlkit.scoring import reward_columns


def evaluate_heldout(rollout, tokenizer, rows: list[dict], reward, data_cfg, max_new_tokens: int,
                     accuracy_component: str | None) -> tuple[dict[str, float], list[dict]]:
    """(metrics, per-row predictions).  ``eval/accuracy`` is the mean of ``accuracy_component``
    (the reward total when None); rows with a ``level`` column also get ``eval/accuracy_level<k>``.
    """
    if not rows:
        return {}, []
    prompts = prompt_token_ids(rows, tokenizer, data_cfg)
    gens = rollout.generate(prompts, Sampling(n=1, max_new_tokens=max_new_tokens, temperature=0.0))
    completions = [g.text for g in gens]
    columns = reward_columns(rows)
    columns["prompts"] = columns.pop("prompt")
    result = reward.score(completions, completion_ids=[g.token_ids for g in gens], **columns)
    if accuracy_component and accuracy_component in result.components:
        values = result.components[accuracy_component]
    else:
        values = result.scores
    by_level: dict[str, list[float]] = defaultdict(list)
    records = []
    for row, gen, value, score in zip(rows, gens, values, result.scores):
        ok = 0.0 if (value is None or math.isnan(value)) else float(value)
        if "level" in row:
            by_level[f"eval/accuracy_level{row['level']}"].append(ok)
        records.append({"prompt": row["prompt"], "answer": row.get("answer"), "completion": gen.text,
                        "correct": ok, "score": score})
    metrics = {"eval/accuracy": sum(r["correct"] for r in records) / len(records),
               "eval/reward": sum(result.scores) / len(result.scores),
               "eval/response_length": sum(len(g.token_ids) for g in gens) / len(gens)}
    if len(by_level) > 1:
        metrics.update({k: sum(v) / len(v) for k, v in sorted(by_level.items())})
    return metrics, records
