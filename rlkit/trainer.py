"""The RL loop, top to bottom (DESIGN.md section 2).

    prompts -> rollout.generate -> RolloutBatch -> rewards -> reward.update -> log-probs
            -> advantages -> backend.train_step -> rollout.update_weights

Every branch below is a named config switch; the loop never asks which algorithm it runs.
"""
from __future__ import annotations

import functools
import json
import math
import os
import random
import time
from pathlib import Path

import torch

from rewards.shaping import overlong_shaping
from rlkit.algorithms.advantages import estimator_inputs, get_advantage
from rlkit.batch import RolloutBatch, build_batch, concat_batches
from rlkit.checkpoint import resume, save_checkpoint, should_save, start_point
from rlkit.config import Config, check_config, overlong_tokens, save_config
from rlkit.critic import critic_config, make_value_loss_fn
from rlkit.data import PromptSampler, load_rows, tokenize_prompts
from rlkit.backends import combine_metric, make_backend
from rlkit.backends.sharding import RankShare
from rlkit.eval.heldout import heldout_records, is_accuracy, summarize_heldout
from rlkit.eval.runner import BestCheckpoint, evaluate_benchmarks
from rlkit.logging import MetricsLogger, PhaseTimer
from rlkit.models import load_tokenizer
from rlkit.objective import kl_shaped_scores, make_loss_fn, masked_kl
from rlkit.rollout import Sampling, make_rollout
from rlkit.sampling import first_groups, kept_group_rows
from rlkit.scoring import (RewardContext, add_length_penalty, build_reward, isolate_unscored, score_batch,
                           scored_rows)


def train(cfg: Config) -> dict:
    """Run ``cfg.train.steps`` RL steps; returns the final metrics (eval included).

    With ``train.resume`` the run continues after the checkpoint's step (rlkit/checkpoint.py).
    Under a data-parallel backend every rank runs this same loop on its share of the prompts
    (rlkit/backends/sharding.py); the main rank logs and writes the shared files.
    """
    check_config(cfg)  # as load_config does, for a Config built in Python
    run_dir = Path(cfg.train.output_dir)
    # (None, 0) for a fresh run; checked before anything is written.  RANK is set by the launcher.
    checkpoint, start = start_point(cfg, is_main=int(os.environ.get("RANK", "0")) == 0)

    optimizer_steps = cfg.train.steps * cfg.algo.epochs * cfg.algo.mini_batches
    backend = make_backend(cfg, optimizer_steps)
    server = cfg.rollout.backend == "vllm_server"  # tensor parallelism is then the server's business
    share = RankShare(backend.rank, backend.world_size, 1 if server else cfg.rollout.tensor_parallel_size)
    share.check(cfg.train.prompts_per_step)
    if backend.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    backend.barrier()
    random.seed(cfg.train.seed)
    torch.manual_seed(cfg.train.seed + backend.rank)  # hf sampling differs between ranks

    tokenizer = load_tokenizer(backend.model_path)
    train_rows, eval_rows = load_rows(cfg.data, cfg.train.seed)
    if cfg.data.truncation == "error":  # a prompt over the limit fails now, not at the step that draws it
        tokenize_prompts(train_rows + eval_rows, tokenizer, cfg.data)
    sampler = PromptSampler(train_rows, cfg.train.seed)  # the same draws on every rank
    reward = build_reward(cfg.rewards)
    reward.attach(RewardContext(cfg))  # stateful modules that train (PRIME's PRM) build on the run
    # A resumed engine does not replay step 0's seed; each data-parallel group samples its own.
    rollout = make_rollout(cfg.rollout.backend, backend.model, tokenizer, backend.model_path, cfg.rollout,
                           seed=cfg.train.seed + start + 1_000_003 * share.dp_rank, world_size=backend.world_size,
                           rank=backend.rank, collectives=backend)
    estimator = get_advantage(cfg.algo.advantage)
    critic_cfg = critic_config(cfg)
    # PPO: an estimator that reads values gets a critic, trained by a backend of its own.
    critic = make_backend(critic_cfg, optimizer_steps, role="critic") if "values" in getattr(
        estimator, "inputs", ()) else None
    sampling = Sampling(n=cfg.rollout.num_samples, max_new_tokens=cfg.rollout.max_new_tokens,
                        temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p)
    logger = MetricsLogger(run_dir, cfg.train.steps, cfg.log.progress, cfg.log.console_every,
                           append=checkpoint is not None, start_step=start) if backend.is_main else None
    summary: dict = {}

    def log(step: int, metrics: dict, kind: str = "train") -> None:
        if logger is not None:
            logger.log(step, metrics, kind=kind)

    best = BestCheckpoint(cfg.eval.best_metric, cfg.eval.best_mode) if cfg.eval.best_metric else None

    def run_eval(step: int) -> None:
        mine = [eval_rows[i] for i in share.generation_indices(len(eval_rows))]
        records = heldout_records(rollout, tokenizer, mine, reward, cfg.data, cfg.eval.max_new_tokens,
                                  cfg.rewards.accuracy_component)
        gathered = backend.all_gather_object(records if share.tp_rank == 0 else [])
        metrics: dict = {}
        if backend.is_main:
            records = [r for part in gathered for r in part]
            metrics = summarize_heldout(records)
            (run_dir / f"eval_step{step}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
            summary["eval_before" if step == 0 else "eval_after"] = metrics
        if cfg.eval.benchmarks:  # each engine generates its share of the rows; records gathered
            bench = evaluate_benchmarks(rollout, tokenizer, cfg.eval.benchmarks, step,
                                        output_dir=run_dir / "bench" if backend.is_main else None,
                                        max_model_len=cfg.rollout.max_model_len, share=share,
                                        gather=backend.all_gather_object)
            metrics.update(bench if backend.is_main else {})
        log(step, metrics, kind="eval")
        if best is not None and step > 0:
            keep_best(step, metrics)

    def keep_best(step: int, metrics: dict) -> None:
        """Save the policy to ``<output_dir>/best`` when ``eval.best_metric`` improved (decided on
        the main rank; every rank joins the save, which gathers ZeRO-3 shards)."""
        improved = backend.broadcast_object(best.update(metrics, step) if backend.is_main else False)
        if improved:  # best.json goes into the same atomic export as the weights
            backend.save_pretrained(str(run_dir / "best"), tokenizer,
                                    extra_files={"best.json": json.dumps(best.state_dict(), indent=2)})
        summary["best"] = best.state_dict()

    overlong = overlong_tokens(cfg.algo, cfg.rollout.max_new_tokens)

    def sample_round(step_rows: list[dict], first_group_id: int, timer: PhaseTimer) -> tuple[RolloutBatch, int, int]:
        """Generate this rank's share of ``step_rows`` and score it: (batch, failed rows, truncated prompts)."""
        global_index = share.generation_indices(len(step_rows))
        rows = [step_rows[i] for i in global_index]
        with timer("generate"):
            prompts, truncated = tokenize_prompts(rows, tokenizer, cfg.data)
            gens = rollout.generate(prompts, sampling)
            gens = [g for g in gens if share.trains_on(g.prompt_index)]
        batch = build_batch(
            prompt_ids=[prompts[g.prompt_index] for g in gens],
            completion_ids=[g.token_ids for g in gens],
            group_ids=[first_group_id + global_index[g.prompt_index] for g in gens],
            finished=[g.finished for g in gens],
            pad_token_id=tokenizer.pad_token_id,
            rollout_logprobs=[g.logprobs for g in gens] if gens and gens[0].logprobs is not None else None,
            rows=[{**rows[g.prompt_index], "completion": g.text} for g in gens],
        )
        with timer("score"):
            result = score_batch(reward, batch, [g.token_ids for g in gens], tokenizer,
                                 token_rewards_read="token_rewards" in getattr(estimator, "inputs", ()))
            if overlong:  # DAPO's soft overlong punishment, before any filtering sees the scores
                limit = cfg.rollout.max_new_tokens
                penalty = [overlong_shaping(min(len(g.token_ids), limit), limit, overlong, cfg.algo.overlong_factor)
                           for g in gens]
                add_length_penalty(batch, torch.tensor(penalty, dtype=torch.float32))
        return batch, len(result.failures), truncated if share.tp_rank == 0 else 0  # tp ranks share prompts

    def sample_step(step: int, timer: PhaseTimer) -> tuple[RolloutBatch, RolloutBatch, int, int, dict]:
        """(batch, spare row, failed rows, truncated prompts, metrics) for one step: one round of
        ``prompts_per_step`` prompts, or with ``algo.dynamic_sampling`` (DAPO: drop the groups
        with equal scores) and/or ``algo.accuracy_band`` (PRIME: keep the groups whose accuracy
        is in the band) rounds until ``prompts_per_step`` groups are kept or
        ``algo.max_sampling_rounds`` rounds are done.  The spare row lets a rank that kept no
        group still join the collective forward passes of the others."""
        target = cfg.train.prompts_per_step
        filtering = cfg.algo.dynamic_sampling or cfg.algo.accuracy_band is not None
        rounds = cfg.algo.max_sampling_rounds if filtering else 1
        parts, failures, drawn, kept, truncated = [], 0, 0, 0, 0
        for round_index in range(rounds):
            part, failed, cut = sample_round(sampler.next(target), ((step - 1) * rounds + round_index) * target,
                                             timer)
            spare = part.select(torch.arange(min(part.size, 1)))
            failures += failed
            truncated += cut
            drawn += target
            if not filtering:
                return part, spare, failures, truncated, {}
            keep = kept_group_rows(part, cfg.algo.dynamic_sampling, cfg.algo.accuracy_band,
                                   cfg.rewards.accuracy_component)
            kept_part = part.select(torch.nonzero(keep).flatten())
            parts.append(kept_part)
            kept += int(backend.all_reduce([len(set(kept_part.group_ids.tolist()))])[0])
            if kept >= target:
                break
        metrics = {"sampling/rounds": round_index + 1, "sampling/prompts_drawn": drawn,
                   "sampling/kept_groups": min(kept, target),
                   "sampling/drawn_per_kept": drawn / max(min(kept, target), 1)}
        if kept == 0:  # no group passed in any round: the last round keeps the ranks in step, advantages zeroed
            return part, spare, failures, truncated, metrics
        return (first_groups(concat_batches(parts, tokenizer.pad_token_id), target, backend), spare, failures,
                truncated, metrics)

    try:
        if checkpoint:  # weights, optimizer, data position, reward state, RNGs; weights pushed to the rollout
            summary.update(resume(checkpoint, cfg, backend, sampler, reward, rollout, logger, critic))
            if best is not None:
                best.load_state_dict(summary.get("best", {}))
        elif server:  # the server may have started from other weights than the trainer's
            rollout.update_weights(backend.named_parameters())
        if cfg.eval.before and start == 0:
            run_eval(0)
        for step in range(start + 1, cfg.train.steps + 1):
            timer = PhaseTimer()
            started = time.perf_counter()
            batch, spare, failures, truncated, sampling_metrics = sample_step(step, timer)
            rollout.sleep()
            with timer("score"):
                reward_metrics = reward.update(batch) or {}

            with timer("logprobs"):
                kl_in_reward = bool(cfg.algo.kl_coef) and cfg.algo.kl_mode == "reward"
                if cfg.algo.epochs > 1 or cfg.algo.mini_batches > 1 or kl_in_reward:
                    batch.old_logprobs = logprobs_or_filler(backend.logprobs, batch, spare, cfg)
                if cfg.algo.kl_coef:
                    batch.ref_logprobs = logprobs_or_filler(backend.ref_logprobs, batch, spare, cfg)
                if critic is not None:  # the critic backend's per-token output is V
                    batch.values = logprobs_or_filler(critic.logprobs, batch, spare, cfg)

            scored = scored_rows(batch)
            scores, kl_metrics = batch.scores, {}
            if kl_in_reward:
                scores = kl_shaped_scores(batch, cfg.algo)
                kl_sum, kl_tokens = backend.all_reduce([float(masked_kl(batch, cfg.algo).sum()),
                                                        int(batch.loss_mask.sum())])
                kl_metrics["kl_ref"] = kl_sum / max(kl_tokens, 1)
            inputs = estimator_inputs(estimator, {"input_ids": batch.input_ids, "all_reduce": backend.all_reduce,
                                                  "values": batch.values, "token_rewards": batch.token_rewards})
            out = estimator(scores, isolate_unscored(batch.group_ids, scored), batch.loss_mask, **inputs,
                            **cfg.algo.advantage_kwargs)
            batch.advantages, batch.returns = out if isinstance(out, tuple) else (out, None)
            if sampling_metrics.get("sampling/kept_groups") == 0:  # no group passed the filters: train none
                batch.advantages = torch.zeros_like(batch.advantages)
            batch.validate()

            spare = zero_filler(spare, batch)
            with timer("train"):
                train_metrics = optimize(backend, batch, cfg, filler=spare)
                if critic is not None:
                    value_loss = functools.partial(make_value_loss_fn, clip=cfg.critic.value_clip)
                    for k, v in optimize(critic, batch, critic_cfg, filler=spare, make_loss=value_loss).items():
                        train_metrics[k if k.startswith("critic/") else f"critic/{k}"] = v

            with timer("sync"):
                rollout.wake()
                rollout.update_weights(backend.sync_weights())

            step_seconds = time.perf_counter() - started
            parts = backend.all_gather_object(rollout_stats(batch, failures, int((~scored).sum()), truncated))
            metrics = step_metrics(merge_stats(parts), cfg, step_seconds)
            metrics.update(sampling_metrics)
            metrics.update(train_metrics)
            metrics.update(kl_metrics)
            metrics.update(reward_metrics)
            metrics.update(timer.metrics())
            log(step, metrics)
            summary["last_train"] = metrics
            if should_save(cfg, step):
                save_checkpoint(run_dir, step, backend, sampler, reward, cfg, extra={"summary": summary},
                                critic=critic)
            if cfg.eval.every and step % cfg.eval.every == 0 and step != cfg.train.steps:
                run_eval(step)
        if cfg.eval.after:
            run_eval(cfg.train.steps)
        if cfg.train.save_final:
            backend.save_pretrained(str(run_dir / "final"), tokenizer)
        if backend.is_main:
            (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    finally:
        if logger is not None:
            logger.close()
        reward.close()
        rollout.close()  # before the backend: vLLM's shutdown leaves the process group too
        backend.close()
    return summary


def logprobs_or_filler(fn, batch: RolloutBatch, spare: RolloutBatch, cfg: Config) -> torch.Tensor:
    """``fn(batch)``; a rank left without rows (dynamic sampling) runs ``fn`` on its spare row
    instead, so that it still makes the collective forward passes of ZeRO-3."""
    if batch.size or not spare.size:
        return fn(batch, cfg.train.micro_batch_size)
    fn(spare, cfg.train.micro_batch_size)
    return torch.zeros(batch.input_ids.shape, dtype=torch.float32)


def zero_filler(spare: RolloutBatch, batch: RolloutBatch) -> RolloutBatch:
    """The spare row with zero advantages (and zero values and returns where the batch has
    them), for a rank that trains nothing: its passes are weighted 0 but must run the loss."""
    for name in ("advantages", "values", "returns"):
        if getattr(batch, name) is not None:
            setattr(spare, name, torch.zeros(spare.loss_mask.shape, dtype=torch.float32))
    return spare


def optimize(backend, batch: RolloutBatch, cfg: Config, filler: RolloutBatch | None = None,
             make_loss=make_loss_fn) -> dict:
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
            if batch.size:  # a row for a rank with nothing to train in this mini-batch
                filler = batch.select(torch.arange(1))
            for k, v in backend.train_step(micro, loss_fn, filler=filler).items():
                combine_metric(totals, k, v, weight=1 / (algo.epochs * len(minis)))
            totals["trained_rows"] = totals.get("trained_rows", 0.0) + trained_rows / algo.epochs
    return totals


def rollout_stats(batch: RolloutBatch, failures: int, unscored: int, truncated: int = 0) -> dict:
    """What ``step_metrics`` needs from one rank's batch, small enough to gather."""
    return {"scores": batch.scores.tolist(), "lengths": batch.completion_lengths.tolist(),
            "finished": batch.finished.tolist(), "group_ids": batch.group_ids.tolist(),
            "components": {k: v.tolist() for k, v in batch.reward_components.items()},
            "failures": failures, "unscored": unscored, "truncated": truncated}


def merge_stats(parts: list[dict]) -> dict:
    """The ranks' ``rollout_stats`` concatenated (one part when training alone)."""
    merged = {"scores": [], "lengths": [], "finished": [], "group_ids": [], "components": {},
              "failures": 0, "unscored": 0, "truncated": 0}
    for part in parts:
        for key in ("scores", "lengths", "finished", "group_ids"):
            merged[key].extend(part[key])
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
