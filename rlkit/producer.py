"""The sample stage of a step: prompts -> completions -> a scored RolloutBatch.

``RolloutProducer.produce(timer)`` draws ``train.prompts_per_step`` prompts, has this rank's
engine generate its share (rlkit/backends/sharding.py), scores the completions and, with
``algo.dynamic_sampling`` or ``algo.accuracy_band``, draws further rounds until enough groups
pass the filters (rlkit/sampling.py).  It owns the group ids: a prompt's group id is its draw
index in the ``PromptSampler`` (epoch x rows + position), so ids grow in draw order, are the
same on every rank, and continue exactly after a resume.

This is the one place a different way of producing rollouts plugs in: a multi-turn episode
runner, or a producer that generates ahead of training, returns the same ``Produced``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from rewards.shaping import overlong_shaping
from rlkit.agents import episode_metrics, episode_rows
from rlkit.batch import RolloutBatch, build_batch, concat_batches
from rlkit.config import overlong_tokens
from rlkit.data import tokenize_prompts
from rlkit.rollout import Sampling
from rlkit.sampling import first_groups, kept_group_rows
from rlkit.scoring import add_length_penalty, score_batch, unscore_failed_episodes


@dataclass
class Produced:
    """One step's rollouts on this rank: the batch (possibly empty on a data-parallel rank whose
    groups were all dropped), failed reward rows, truncated prompts, and sampling metrics.
    ``trainable`` is False when no group passed the filters in any round: the batch then only
    keeps the ranks in step and must not move the weights."""

    batch: RolloutBatch
    failures: int = 0
    truncated: int = 0
    metrics: dict = field(default_factory=dict)
    trainable: bool = True
    draws: list = field(default_factory=list)          # draw indices consumed (trained or filtered out)
    dropped_stale: list = field(default_factory=list)  # draw indices dropped as too stale (async modes)


class RolloutProducer:
    def __init__(self, cfg, sampler, rollout, reward, tokenizer, share, collectives, token_rewards_read: bool,
                 runner=None):
        self.cfg, self.sampler, self.rollout, self.reward = cfg, sampler, rollout, reward
        self.runner = runner  # an EpisodeRunner (rlkit/agents) with agent.env, else None: single-turn
        self.tokenizer, self.share, self.collectives = tokenizer, share, collectives
        self.token_rewards_read = token_rewards_read
        self.sampling = Sampling(n=cfg.rollout.num_samples, max_new_tokens=cfg.rollout.max_new_tokens,
                                 temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
                                 top_k=cfg.rollout.top_k, min_p=cfg.rollout.min_p,
                                 repetition_penalty=cfg.rollout.repetition_penalty, stop=tuple(cfg.rollout.stop))
        self.overlong = overlong_tokens(cfg.algo, cfg.rollout.max_new_tokens)

    def produce(self, timer, ahead=None) -> Produced:
        """One round of ``prompts_per_step`` prompts, or with the filters rounds until
        ``prompts_per_step`` groups are kept or ``algo.max_sampling_rounds`` rounds are done.

        ``ahead`` (rlkit/async_rollout.py, ``rollout.mode`` one_step_off / async) hands over rounds
        its thread generated and scored earlier with ``make_round``; without it each round is
        drawn and generated now.  Either way the cross-rank steps (the filters' agreement on the
        kept groups) run here, in the trainer's thread."""
        cfg, target = self.cfg, self.cfg.train.prompts_per_step
        filtering = cfg.algo.dynamic_sampling or cfg.algo.accuracy_band is not None
        rounds = cfg.algo.max_sampling_rounds if filtering else 1
        out, parts, kept = Produced(batch=None), [], 0  # type: ignore[arg-type]
        for round_index in range(rounds):
            if ahead is None:
                drawn = self.sampler.next_with_ids(target)
                out.draws.extend(i for i, _ in drawn)
                out.batch = self.make_round(drawn, timer, out)
            else:
                out.batch = ahead.take(timer, out)
            if not filtering:
                return _averaged(out)
            keep = kept_group_rows(out.batch, cfg.algo.dynamic_sampling, cfg.algo.accuracy_band,
                                   cfg.rewards.accuracy_component)
            parts.append(out.batch.select(torch.nonzero(keep).flatten()))
            kept += int(self.collectives.all_reduce([len(set(parts[-1].group_ids.tolist()))])[0])
            if kept >= target:
                break
        out.metrics.update({"sampling/rounds": round_index + 1, "sampling/prompts_drawn": (round_index + 1) * target,
                            "sampling/kept_groups": min(kept, target),
                            "sampling/drawn_per_kept": (round_index + 1) * target / max(min(kept, target), 1)})
        if kept == 0:  # no group passed in any round: the last round keeps the ranks in step
            out.trainable = False
            return _averaged(out)
        out.batch = first_groups(concat_batches(parts, self.tokenizer.pad_token_id), target, self.collectives)
        return _averaged(out)

    def make_round(self, drawn: list[tuple[int, dict]], timer, out: Produced) -> RolloutBatch:
        """Generate this rank's share of the ``(draw index, row)`` prompts and score it (no
        collectives: a producer thread may call it while the trainer trains)."""
        indices = self.share.generation_indices(len(drawn))
        ids, rows = [drawn[i][0] for i in indices], [drawn[i][1] for i in indices]
        with timer("generate"):
            if self.runner is None:
                batch, sampled, truncated = self._single_turn(ids, rows)
            else:
                batch, sampled, truncated = self._episodes(ids, rows, out)
        with timer("score"):
            result = score_batch(self.reward, batch, sampled, self.tokenizer,
                                 token_rewards_read=self.token_rewards_read)
            if self.overlong:  # DAPO's soft overlong punishment, before any filter sees the scores
                limit = self.cfg.rollout.max_new_tokens
                penalty = [overlong_shaping(min(len(t), limit), limit, self.overlong,
                                            self.cfg.algo.overlong_factor) for t in sampled]
                add_length_penalty(batch, torch.tensor(penalty, dtype=torch.float32))
            if self.runner is not None:
                unscore_failed_episodes(batch)
        out.failures += len(result.failures)
        out.truncated += truncated if self.share.tp_rank == 0 else 0  # tp ranks share their prompts
        return batch

    def _single_turn(self, ids: list[int], rows: list[dict]) -> tuple[RolloutBatch, list[list[int]], int]:
        prompts, truncated = tokenize_prompts(rows, self.tokenizer, self.cfg.data)
        gens = self.rollout.generate(prompts, self.sampling)
        gens = [g for g in gens if self.share.trains_on(g.prompt_index)]
        batch = build_batch(
            prompt_ids=[prompts[g.prompt_index] for g in gens],
            completion_ids=[g.token_ids for g in gens],
            group_ids=[ids[g.prompt_index] for g in gens],
            finished=[g.finished for g in gens],
            pad_token_id=self.tokenizer.pad_token_id,
            rollout_logprobs=[g.logprobs for g in gens] if gens and gens[0].logprobs is not None else None,
            rows=[{**rows[g.prompt_index], "completion": g.text} for g in gens],
        )
        return batch, [g.token_ids for g in gens], truncated

    def _episodes(self, ids: list[int], rows: list[dict], out: Produced):
        """Multi-turn episodes (rlkit/agents): the environment's tokens get ``loss_mask`` False;
        the rewards see the model's tokens only (token and turn rewards index those)."""
        episodes = [e for e in self.runner.run(rows, self.sampling) if self.share.trains_on(e.prompt_index)]
        for name, value in episode_metrics(episodes).items():
            out.metrics.setdefault(name, []).append(value)
        batch = build_batch(
            prompt_ids=[e.prompt_ids for e in episodes],
            completion_ids=[e.token_ids for e in episodes],
            group_ids=[ids[e.prompt_index] for e in episodes],
            finished=[not e.truncated for e in episodes],
            pad_token_id=self.tokenizer.pad_token_id,
            rollout_logprobs=[e.logprobs for e in episodes],
            rows=episode_rows(episodes, rows),
            completion_masks=[e.model_mask for e in episodes],
        )
        return batch, [e.model_token_ids for e in episodes], 0


def _averaged(out: Produced) -> Produced:
    """Metrics gathered per round (lists) as their mean over the rounds."""
    out.metrics = {k: sum(v) / len(v) if isinstance(v, list) else v for k, v in out.metrics.items()}
    return out
