"""The RL loop, top to bottom (DESIGN.md section 2): every step runs the same named stages.

    sample + score (RolloutProducer) -> reward.update -> log-probs -> advantages -> optimize
            -> sync weights -> log -> checkpoint / evaluate

``Run`` (rlkit/run.py) holds the parts; the stages below are plain functions of it and the
step's ``RolloutBatch``.  Every branch is a named config switch; the loop never asks which
algorithm it runs or whether it is distributed.
"""
from __future__ import annotations

import functools
import math
import time

import torch

from rlkit.algorithms.advantages import estimate
from rlkit.batch import RolloutBatch
from rlkit.backends import combine_metric
from rlkit.config import Config, check_config
from rlkit.critic import make_value_loss_fn
from rlkit.eval.heldout import is_accuracy
from rlkit.logging import PhaseTimer
from rlkit.objective import kl_shaped_scores, make_loss_fn, masked_kl
from rlkit.producer import Produced
from rlkit.run import Run
from rlkit.scoring import isolate_unscored, scored_rows


def train(cfg: Config) -> dict:
    """Run ``cfg.train.steps`` RL steps; returns the run summary (eval included).

    With ``train.resume`` the run continues after the checkpoint's step (rlkit/checkpoint.py).
    SIGTERM ends it at the next step boundary with a checkpoint (``summary["preempted_at"]``).
    Under a data-parallel backend every rank runs this same loop on its share of the prompts
    (rlkit/backends/sharding.py); the main rank logs and writes the shared files.
    """
    check_config(cfg)  # as load_config does, for a Config built in Python
    run = Run.build(cfg)
    try:
        run.begin()
        if cfg.eval.before and run.start == 0:
            run.evaluate(0)
        last = run.start
        for step in range(run.start + 1, cfg.train.steps + 1):
            timer, started = PhaseTimer(), time.perf_counter()
            run.reward_context.step = step
            produced = run.producer.produce(timer, run.ahead)  # generate (or take made ahead), score, filter
            batch = produced.batch
            run.rollout.sleep()
            with timer("score"):
                metrics = dict(run.reward.update(batch) or {})  # rewards that learn (PRIME's PRM)
            with timer("logprobs"):
                compute_logprobs(run, batch)
            metrics.update(estimate_advantages(run, batch, produced.trainable))
            with timer("train"):
                metrics.update(train_models(run, batch))
            with timer("sync"):
                run.push_weights()
            metrics.update(rollout_metrics(run, produced, time.perf_counter() - started))
            run.log(step, {**metrics, **timer.metrics()})
            run.record_draws(step, produced)
            run.after_step(step)
            last = step
            if run.preemption.agreed(run.backend):  # SIGTERM: stop at this step boundary (rlkit/interrupts.py)
                break
        run.finish(last)
    finally:
        run.close()
    return run.summary


def compute_logprobs(run: Run, batch: RolloutBatch) -> None:
    """The log-probs the update needs before it starts: the policy's own (``old_logprobs``) when
    the batch is reused or the KL goes into the reward (one on-policy update uses ``logp.detach()``),
    the reference policy's for the KL, and the critic's values."""
    algo = run.cfg.algo
    size = run.cfg.train.micro_batch_size
    if algo.epochs > 1 or algo.mini_batches > 1 or (algo.kl_coef and algo.kl_mode == "reward"):
        batch.old_logprobs = run.backend.logprobs(batch, size)
    if algo.kl_coef:
        batch.ref_logprobs = run.backend.ref_logprobs(batch, size)
    if run.critic is not None:  # the critic backend's per-token output is V
        batch.values = run.critic.logprobs(batch, size)


def estimate_advantages(run: Run, batch: RolloutBatch, trainable: bool) -> dict:
    """``batch.advantages`` (and ``returns``) from the configured estimator.  Unscored rows get
    groups of their own; with ``algo.kl_mode: reward`` the KL penalty comes off the rewards
    first; a batch no group of which passed the filters gets zero advantages."""
    algo, metrics = run.cfg.algo, {}
    scores = batch.scores
    if algo.kl_coef and algo.kl_mode == "reward":
        scores = kl_shaped_scores(batch, algo)
        kl_sum, kl_tokens = run.backend.all_reduce([float(masked_kl(batch, algo).sum()), int(batch.loss_mask.sum())])
        metrics["kl_ref"] = kl_sum / max(kl_tokens, 1)
    available = {"input_ids": batch.input_ids, "all_reduce": run.backend.all_reduce, "values": batch.values,
                 "token_rewards": batch.token_rewards, "token_terms": batch.token_terms}
    groups = isolate_unscored(batch.group_ids, scored_rows(batch))
    batch.advantages, batch.returns = estimate(run.estimator, scores, groups, batch.loss_mask, available,
                                               algo.advantage_kwargs)
    if not trainable:
        batch.advantages = torch.zeros_like(batch.advantages)
    batch.validate()
    return metrics


def train_models(run: Run, batch: RolloutBatch) -> dict:
    """The policy's update, then the critic's on the same mini-batches (``critic/...``)."""
    metrics = optimize(run.backend, batch, run.cfg)
    if run.critic is not None:
        value_loss = functools.partial(make_value_loss_fn, clip=run.cfg.critic.value_clip)
        for k, v in optimize(run.critic, batch, run.critic_cfg, make_loss=value_loss).items():
            metrics[k if k.startswith("critic/") else f"critic/{k}"] = v
    return metrics


def rollout_metrics(run: Run, produced: Produced, seconds: float) -> dict:
    """The step's rollout metrics over all ranks, with the sampling metrics and the hacking
    monitors (``monitor/...``, rlkit/monitors.py; every rank updates its ``run.monitor`` alike)."""
    batch = produced.batch
    answers = run.monitor.answers([row["completion"] for row in batch.rows])
    stats = rollout_stats(batch, produced.failures, int((~scored_rows(batch)).sum()), produced.truncated, answers)
    merged = merge_stats(run.backend.all_gather_object(stats))
    metrics = step_metrics(merged, run.cfg, seconds)
    metrics.update(run.monitor.update(merged))
    metrics.update(produced.metrics)
    if run.ahead is not None:  # staleness/..., the producer thread's waits and work
        metrics.update(run.ahead.step_metrics())
    return metrics


def optimize(backend, batch: RolloutBatch, cfg: Config, make_loss=make_loss_fn) -> dict:
    """``algo.epochs`` passes of ``algo.mini_batches`` optimizer steps over the rollout batch.

    Loss denominators are the counts over all ranks, so N ranks make the update one process
    would make on the whole batch.  With ``train.skip_zero_advantage`` (and no KL or entropy
    term) rows whose advantages are all zero are left out of the forward/backward: their loss
    and gradient are exactly zero, while the denominators still count them.
    """
    algo = cfg.algo
    order = torch.randperm(batch.size) if algo.mini_batches > 1 else torch.arange(batch.size)
    minis = torch.tensor_split(order, algo.mini_batches)  # the same number on every rank, some maybe empty
    totals: dict[str, float] = {}
    for _ in range(algo.epochs):
        for mini in minis:
            sub = batch.select(mini)
            keep = torch.arange(sub.size)
            kl_loss = algo.kl_coef and algo.kl_mode == "loss"
            if cfg.train.skip_zero_advantage and not kl_loss and not algo.entropy_coef:
                keep = torch.nonzero((sub.advantages != 0).any(dim=1)).flatten()
            trained = sub.select(keep)
            num_seqs, num_tokens, metric_tokens, trained_rows = backend.all_reduce(
                [sub.size, int(sub.loss_mask.sum()), int(trained.loss_mask.sum()), trained.size])
            if trained_rows == 0:  # no rank has a row that moves the weights
                continue
            loss_fn = make_loss(algo, int(num_seqs), int(num_tokens), cfg.rollout.max_new_tokens,
                                metric_tokens=int(metric_tokens))
            # Rows sorted by length fill each micro-batch with similar lengths: little padding.
            by_length = torch.argsort(trained.completion_lengths, stable=True)
            micro = [trained.select(idx) for idx in by_length.split(cfg.train.micro_batch_size) if idx.numel()]
            for k, v in backend.train_step(micro, loss_fn).items():  # a rank without rows: the backend's business
                combine_metric(totals, k, v, weight=1 / (algo.epochs * len(minis)))
            totals["trained_rows"] = totals.get("trained_rows", 0.0) + trained_rows / algo.epochs
    return totals


def rollout_stats(batch: RolloutBatch, failures: int, unscored: int, truncated: int = 0,
                  answers: list | None = None) -> dict:
    """What ``step_metrics`` and the monitors need from one rank's batch, small enough to gather
    (``answers``: the completions' final answers, text or None, for ``monitor/collapse``)."""
    return {"scores": batch.scores.tolist(), "lengths": batch.completion_lengths.tolist(),
            "finished": batch.finished.tolist(), "group_ids": batch.group_ids.tolist(),
            "answers": list(answers) if answers is not None else [None] * batch.size,
            "components": {k: v.tolist() for k, v in batch.reward_components.items()},
            "failures": failures, "unscored": unscored, "truncated": truncated}


def merge_stats(parts: list[dict]) -> dict:
    """The ranks' ``rollout_stats`` concatenated (one part when training alone)."""
    merged = {"scores": [], "lengths": [], "finished": [], "group_ids": [], "answers": [], "components": {},
              "failures": 0, "unscored": 0, "truncated": 0}
    for part in parts:
        for key in ("scores", "lengths", "finished", "group_ids"):
            merged[key].extend(part[key])
        merged["answers"].extend(part.get("answers") or [None] * len(part["scores"]))
        for name, values in part["components"].items():
            merged["components"].setdefault(name, []).extend(values)
        merged["failures"] += part["failures"]
        merged["unscored"] += part["unscored"]
        merged["truncated"] += part.get("truncated", 0)
    return merged


def step_metrics(stats: dict, cfg: Config, seconds: float) -> dict:
    """Rollout metrics of a step from ``merge_stats`` (all ranks' rows)."""
    lengths = torch.tensor(stats["lengths"], dtype=torch.float32)
    scores = torch.tensor(stats["scores"], dtype=torch.float32)
    group_ids = torch.tensor(stats["group_ids"])
    groups = group_ids.unique()
    solved = [float(scores[group_ids == g].std()) == 0.0 if (group_ids == g).sum() > 1 else True
              for g in groups]
    metrics = {
        "reward/mean": float(scores.mean()),
        "reward/std": float(scores.std()) if scores.numel() > 1 else 0.0,
        "response_length": float(lengths.mean()),
        "response_length_max": float(lengths.max()),
        "finished_frac": sum(stats["finished"]) / len(stats["finished"]),
        "zero_std_group_frac": sum(solved) / len(solved),
        "reward/failures": float(stats["failures"]),
        "reward/unscored_rows": float(stats["unscored"]),
        "tokens_per_s": float(lengths.sum()) / max(seconds, 1e-9),
        "time/step": seconds,
    }
    if cfg.data.truncation != "error":
        metrics["data/truncated_prompts"] = float(stats["truncated"])
    for name, values in stats["components"].items():
        valid = [v for v in values if not math.isnan(v)]
        if valid:  # a component that scored no row (a token-level one: PRM, PRIME) logs no mean
            metrics[f"reward/{name}"] = sum(valid) / len(valid)
    acc = cfg.rewards.accuracy_component
    if acc and f"reward/{acc}" in metrics and is_accuracy(stats["components"][acc]):
        metrics["accuracy"] = metrics[f"reward/{acc}"]
    return metrics
