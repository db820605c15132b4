"""The RL loop, top to bottom (DESIGN.md section 2).

    prompts -> rollout.generate -> RolloutBatch -> rewards -> reward.update -> log-probs
            -> advantages -> backend.train_step -> rollout.update_weights

Every branch below is a named config switch; the loop never asks which algorithm it runs.
"""
from __future__ import annotations

import json
import random
import time
from pathlib import Path

import torch

from rlkit.algorithms.advantages import get_advantage
from rlkit.batch import RolloutBatch, build_batch
from rlkit.checkpoint import resume, save_checkpoint, should_save, start_point
from rlkit.config import Config, save_config
from rlkit.data import PromptSampler, load_rows, prompt_token_ids
from rlkit.dist import make_backend
from rlkit.eval.heldout import evaluate_heldout
from rlkit.logging import MetricsLogger, PhaseTimer
from rlkit.models import load_tokenizer
from rlkit.objective import make_loss_fn
from rlkit.rollout import Sampling, make_rollout
from rlkit.scoring import build_reward, component_means, isolate_unscored, score_batch, scored_rows


def train(cfg: Config) -> dict:
    """Run ``cfg.train.steps`` RL steps; returns the final metrics (eval included).

    With ``train.resume`` the run continues after the checkpoint's step (rlkit/checkpoint.py).
    """
    if cfg.backend.name != "single":
        raise NotImplementedError(
            f"backend.name={cfg.backend.name!r}: the training loop drives only the 'single' backend so far; "
            "rlkit.dist.deepspeed.DeepSpeedBackend is tested step by step, but data-parallel rollouts "
            "and ZeRO checkpoints in the loop are open work")
    run_dir = Path(cfg.train.output_dir)
    checkpoint, start = start_point(cfg)  # (None, 0) for a fresh run; checked before anything is written
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    random.seed(cfg.train.seed)
    torch.manual_seed(cfg.train.seed)

    optimizer_steps = cfg.train.steps * cfg.algo.epochs * cfg.algo.mini_batches
    backend = make_backend(cfg, optimizer_steps)
    tokenizer = load_tokenizer(backend.model_path)
    train_rows, eval_rows = load_rows(cfg.data, cfg.train.seed)
    sampler = PromptSampler(train_rows, cfg.train.seed)
    reward = build_reward(cfg.rewards)
    rollout = make_rollout(cfg.rollout.backend, backend.model, tokenizer, backend.model_path, cfg.rollout,
                           seed=cfg.train.seed + start)  # a resumed engine does not replay step 0's seed
    estimator = get_advantage(cfg.algo.advantage)
    sampling = Sampling(n=cfg.rollout.num_samples, max_new_tokens=cfg.rollout.max_new_tokens,
                        temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p)
    logger = MetricsLogger(run_dir, cfg.train.steps, cfg.log.progress, cfg.log.console_every,
                           append=checkpoint is not None, start_step=start)
    summary: dict = {}

    def run_eval(step: int) -> None:
        metrics, records = evaluate_heldout(rollout, tokenizer, eval_rows, reward, cfg.data,
                                            cfg.eval.max_new_tokens, cfg.rewards.accuracy_component)
        logger.log(step, metrics, kind="eval")
        (run_dir / f"eval_step{step}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        summary["eval_before" if step == 0 else "eval_after"] = metrics

    try:
        if checkpoint:  # weights, optimizer, data position, reward state, RNGs; weights pushed to the rollout
            summary.update(resume(checkpoint, cfg, backend, sampler, reward, rollout, logger))
        if cfg.eval.before and start == 0:
            run_eval(0)
        for step in range(start + 1, cfg.train.steps + 1):
            timer = PhaseTimer()
            started = time.perf_counter()
            rows = sampler.next(cfg.train.prompts_per_step)

            with timer("generate"):
                prompts = prompt_token_ids(rows, tokenizer, cfg.data)
                gens = rollout.generate(prompts, sampling)
            batch = build_batch(
                prompt_ids=[prompts[g.prompt_index] for g in gens],
                completion_ids=[g.token_ids for g in gens],
                group_ids=[(step - 1) * len(rows) + g.prompt_index for g in gens],
                finished=[g.finished for g in gens],
                pad_token_id=tokenizer.pad_token_id,
                rollout_logprobs=[g.logprobs for g in gens] if gens and gens[0].logprobs is not None else None,
                rows=[{**rows[g.prompt_index], "completion": g.text} for g in gens],
            )

            with timer("score"):
                result = score_batch(reward, batch, [g.token_ids for g in gens])
                reward_metrics = reward.update(batch) or {}

            with timer("logprobs"):
                if cfg.algo.epochs > 1 or cfg.algo.mini_batches > 1:
                    batch.old_logprobs = backend.logprobs(batch, cfg.train.micro_batch_size)
                if cfg.algo.kl_coef:
                    batch.ref_logprobs = backend.ref_logprobs(batch, cfg.train.micro_batch_size)

            scored = scored_rows(batch)
            batch.advantages = estimator(batch.scores, isolate_unscored(batch.group_ids, scored),
                                         batch.loss_mask, **cfg.algo.advantage_kwargs)
            batch.validate()

            with timer("train"):
                train_metrics = optimize(backend, batch, cfg)

            with timer("sync"):
                rollout.update_weights(backend.named_parameters())

            step_seconds = time.perf_counter() - started
            metrics = step_metrics(batch, result, cfg, step_seconds)
            metrics["reward/unscored_rows"] = float((~scored).sum())
            metrics.update(train_metrics)
            metrics.update(reward_metrics)
            metrics.update(timer.metrics())
            logger.log(step, metrics)
            summary["last_train"] = metrics
            if should_save(cfg, step):
                save_checkpoint(run_dir, step, backend, sampler, reward, cfg, extra={"summary": summary})
            if cfg.eval.every and step % cfg.eval.every == 0 and step != cfg.train.steps:
                run_eval(step)
        if cfg.eval.after:
            run_eval(cfg.train.steps)
        if cfg.train.save_final:
            backend.save_pretrained(str(run_dir / "final"), tokenizer)
    finally:
        logger.close()
        reward.close()
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def optimize(backend, batch: RolloutBatch, cfg: Config) -> dict:
    """``algo.epochs`` passes of ``algo.mini_batches`` optimizer steps over the rollout batch.

    With ``train.skip_zero_advantage`` (and no KL or entropy term) rows whose advantages are all
    zero are left out of the forward/backward: their loss and gradient are exactly zero, while
    the loss denominators still count them, so the update is unchanged.
    """
    algo = cfg.algo
    order = torch.randperm(batch.size) if algo.mini_batches > 1 else torch.arange(batch.size)
    minis = order.chunk(algo.mini_batches)
    totals: dict[str, float] = {}
    for _ in range(algo.epochs):
        for mini in minis:
            sub = batch.select(mini)
            num_seqs, num_tokens = sub.size, int(sub.loss_mask.sum())
            keep = torch.arange(sub.size)
            if cfg.train.skip_zero_advantage and not algo.kl_coef and not algo.entropy_coef:
                keep = torch.nonzero((sub.advantages != 0).any(dim=1)).flatten()
            if keep.numel() == 0:
                continue
            trained = sub.select(keep)
            loss_fn = make_loss_fn(algo, num_seqs, num_tokens, cfg.rollout.max_new_tokens,
                                   metric_tokens=int(trained.loss_mask.sum()))
            # Rows sorted by length fill each micro-batch with similar lengths: little padding.
            by_length = torch.argsort(trained.completion_lengths, stable=True)
            micro = [trained.select(idx) for idx in by_length.split(cfg.train.micro_batch_size)]
            for k, v in backend.train_step(micro, loss_fn).items():
                totals[k] = totals.get(k, 0.0) + v / (algo.epochs * len(minis))
            totals["trained_rows"] = totals.get("trained_rows", 0.0) + trained.size / algo.epochs
    return totals


def step_metrics(batch: RolloutBatch, result, cfg: Config, seconds: float) -> dict:
    lengths = batch.completion_lengths.float()
    scores = batch.scores
    groups = batch.group_ids.unique()
    solved = [float(scores[batch.group_ids == g].std()) == 0.0 if (batch.group_ids == g).sum() > 1 else True
              for g in groups]
    metrics = {
        "reward/mean": float(scores.mean()),
        "reward/std": float(scores.std()) if batch.size > 1 else 0.0,
        "response_length": float(lengths.mean()),
        "response_length_max": float(lengths.max()),
        "finished_frac": float(batch.finished.float().mean()),
        "zero_std_group_frac": sum(solved) / len(solved),
        "reward/failures": float(len(result.failures)),
        "tokens_per_s": float(lengths.sum()) / max(seconds, 1e-9),
        "time/step": seconds,
    }
    metrics.update(component_means(batch))
    acc = cfg.rewards.accuracy_component
    if acc and f"reward/{acc}" in metrics:
        metrics["accuracy"] = metrics[f"reward/{acc}"]
    return metrics
