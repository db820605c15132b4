"""Greedy accuracy on the held-out split, scored by the same reward modules as training."""
from __future__ import annotations

import math
from collections import defaultdict

from rlkit.data import prompt_token_ids
from rlkit.eval.metrics import episode_summary
from rlkit.rollout import Sampling
from rlkit.scoring import reward_columns, token_columns


def evaluate_heldout(rollout, tokenizer, rows: list[dict], reward, data_cfg, max_new_tokens: int,
                     accuracy_component: str | None, runner=None, repetition_penalty: float = 1.0,
                     stop: tuple[str, ...] = ()) -> tuple[dict[str, float], list[dict]]:
    """(metrics, per-row predictions) of ``heldout_records`` and ``summarize_heldout``."""
    records = heldout_records(rollout, tokenizer, rows, reward, data_cfg, max_new_tokens, accuracy_component,
                              runner=runner, repetition_penalty=repetition_penalty, stop=stop)
    return summarize_heldout(records), records


def heldout_records(rollout, tokenizer, rows: list[dict], reward, data_cfg, max_new_tokens: int,
                    accuracy_component: str | None, runner=None, repetition_penalty: float = 1.0,
                    stop: tuple[str, ...] = ()) -> list[dict]:
    """One record per row: prompt, answer, greedy completion, ``correct`` (the value of
    ``accuracy_component``, 0 where it does not apply; None without an accuracy component), ``score``,
    ``tokens`` and the row's ``level`` when it has one.  Data-parallel ranks each run their share
    and the main rank summarises the records of all.  With ``runner`` (an EpisodeRunner) each
    row is a greedy multi-turn episode, and the records add ``turns``, ``tool_calls``,
    ``tool_errors``, ``truncated`` and the ``transcript``.  Decoding is greedy with the training's
    ``rollout.repetition_penalty`` and ``rollout.stop`` (top-k, top-p and min-p change nothing
    greedy), as verl validates."""
    if not rows:
        return []
    sampling = Sampling(n=1, max_new_tokens=max_new_tokens, temperature=0.0,
                        repetition_penalty=repetition_penalty, stop=tuple(stop))
    if runner is None:
        gens = rollout.generate(prompt_token_ids(rows, tokenizer, data_cfg), sampling)
        texts, ids, scored = [g.text for g in gens], [g.token_ids for g in gens], rows
        extras, failed = [{} for _ in gens], [False] * len(gens)
    else:
        from rlkit.agents import episode_rows

        episodes = runner.run(rows, sampling)
        texts, ids = [e.text for e in episodes], [e.model_token_ids for e in episodes]
        scored = episode_rows(episodes, rows)
        extras = [{k: r[k] for k in ("turns", "tool_calls", "tool_errors", "truncated", "transcript")} for r in scored]
        failed = [e.env_error is not None for e in episodes]  # the environment ended it: not the model's answer
    columns = reward_columns(scored)
    columns["prompts"] = columns.pop("prompt")
    result = reward.score(texts, completion_ids=ids, **columns, **token_columns(reward, tokenizer, ids))
    values = result.components.get(accuracy_component) if accuracy_component else None
    values = values if values is not None else [None] * len(rows)
    records = []
    for row, text, tokens, extra, bad, value, score in zip(rows, texts, ids, extras, failed, values, result.scores):
        ok = None if not accuracy_component else 0.0 if (value is None or math.isnan(value) or bad) else float(value)
        record = {"prompt": row["prompt"], "answer": row.get("answer"), "completion": text, "correct": ok,
                  "score": score, "tokens": len(tokens), **extra}
        if "level" in row:
            record["level"] = row["level"]
        records.append(record)
    return records


def summarize_heldout(records: list[dict]) -> dict[str, float]:
    """``eval/reward``, ``eval/response_length`` and, when the accuracy component is 0/1 on every
    row (``is_accuracy``), ``eval/accuracy`` and, when the rows span several levels,
    ``eval/accuracy_level<k>``.  A component on another scale (a judge's 0-10) is no accuracy: its
    mean is ``eval/reward``'s business."""
    if not records:
        return {}
    n = len(records)
    metrics = {"eval/reward": sum(r["score"] for r in records) / n,
               "eval/response_length": sum(r["tokens"] for r in records) / n}
    if "turns" in records[0]:  # multi-turn episodes: the names of rlkit eval's episode metrics
        metrics.update({f"eval/{k}": v for k, v in episode_summary([{"samples": records}]).items()})
    if not is_accuracy([r["correct"] for r in records]):
        return metrics
    metrics["eval/accuracy"] = sum(r["correct"] for r in records) / n
    by_level: dict[str, list[float]] = defaultdict(list)
    for r in records:
        if "level" in r:
            by_level[f"eval/accuracy_level{r['level']}"].append(r["correct"])
    if len(by_level) > 1:
        metrics.update({k: sum(v) / len(v) for k, v in sorted(by_level.items())})
    return metrics


def is_accuracy(values: list) -> bool:
    """True when every value is 0 or 1 (NaN, a row the component does not apply to, allowed):
    only then is a component's mean an accuracy."""
    present = [v for v in values if v is not None and not math.isnan(v)]
    return bool(present) and all(v in (0.0, 1.0) for v in present)
