"""Glue between the reward modules (``rewards``) and a RolloutBatch.

``build_reward`` turns ``rewards.functions`` from the config into one ``CombinedReward``;
``score_batch`` calls it with the completions and every dataset column, and writes the
scores, per-component values and dense token rewards into the batch.
"""
from __future__ import annotations

import functools
import inspect
import logging

import torch

from rewards import Component, combine, load_callable
from rlkit.algorithms.credit import credit_step_rewards
from rlkit.batch import RolloutBatch
from rlkit.config import RewardSpec

logger = logging.getLogger("rlkit")
_WARNED: set[str] = set()  # components already warned about (score_batch)


def build_reward(cfg, agent=None):
    """One CombinedReward from a RewardsConfig; names default to the function's attribute name.
    With ``agent.env`` set (an AgentConfig), the environment's turn rewards join as the component
    ``turn`` (``rewards.agent:turn_rewards``) with ``agent.turn_credit`` as its step credit.

    ``fn`` may name a class: it is instantiated with ``kwargs`` (a stateful reward module gets
    one instance per run); a function gets ``kwargs`` bound with ``functools.partial``.
    """
    components = {}
    specs = list(cfg.functions)
    if agent is not None and agent.env is not None:
        specs.append(RewardSpec(fn="rewards.agent:turn_rewards", name="turn", weight=agent.turn_reward_weight,
                                step_credit=agent.turn_credit, step_credit_kwargs=dict(agent.turn_credit_kwargs)))
    for spec in specs:
        fn = load_callable(spec.fn)
        if inspect.isclass(fn):
            fn = fn(**spec.kwargs)
        elif spec.kwargs:
            fn = functools.partial(fn, **spec.kwargs)
        name = spec.name or spec.fn.rsplit(":", 1)[-1]
        if name in components:
            raise ValueError(f"rewards.functions: two components are named {name!r}; set `name:` on one")
        credit = None  # "sum" without arguments: the step values as they are
        if spec.step_credit != "sum" or spec.step_credit_kwargs:
            credit = functools.partial(credit_step_rewards, mode=spec.step_credit, **spec.step_credit_kwargs)
        components[name] = Component(fn=fn, weight=spec.weight, name=name, pool=spec.pool, step_credit=credit)
    return combine(fail_fast=cfg.fail_fast, num_workers=cfg.num_workers, timeout_s=cfg.timeout_s, **components)


def reward_columns(rows: list[dict]) -> dict[str, list]:
    """Per-row dataset columns as lists (a column missing from a row is None there)."""
    keys: list[str] = []
    for row in rows:
        keys.extend(k for k in row if k not in keys)
    return {k: [row.get(k) for row in rows] for k in keys if k not in ("completion", "completions")}


def token_columns(reward, tokenizer, completion_ids: list[list[int]]) -> dict:
    """Token-level columns for the components that ask for them: ``completion_offsets`` (the
    end character of every sampled token, rlkit/tokens.py) when a component's callable has
    ``wants_completion_offsets = True`` (process rewards cut steps with it)."""
    wanted = any(getattr(comp.fn, "wants_completion_offsets", False) for comp in reward.components.values())
    if not wanted or tokenizer is None:
        return {}
    from rlkit.tokens import token_char_ends

    return {"completion_offsets": [token_char_ends(tokenizer, ids) for ids in completion_ids]}


def score_batch(reward, batch: RolloutBatch, completion_ids: list[list[int]], tokenizer=None,
                token_rewards_read: bool = True):
    """Score ``batch.rows`` in place; returns the RewardResult (failures included).
    ``token_rewards_read`` False (the estimator reads only scores) makes step or token rewards a
    warning, once per component: they would not move the advantages."""
    completions = [row["completion"] for row in batch.rows]
    columns = reward_columns([{k: v for k, v in row.items() if k != "completion"} for row in batch.rows])
    columns["prompts"] = columns.pop("prompt", [None] * batch.size)
    columns.update(token_columns(reward, tokenizer, completion_ids))
    result = reward.score(completions, completion_ids=completion_ids, **columns)
    batch.scores = torch.tensor(result.scores, dtype=torch.float32)
    batch.reward_components = {
        name: torch.tensor(values, dtype=torch.float32) for name, values in result.components.items()
    }
    for name, totals in result.token_totals.items():  # a token-level component's per-completion value
        if not token_rewards_read and name not in _WARNED:
            _WARNED.add(name)
            logger.warning("reward component %r gives step or token rewards, but the advantage estimator "
                           "reads only scores: they do not move the advantages (use a token-level estimator "
                           "such as process_rloo, prime or gae)", name)
        values = batch.reward_components[name]
        batch.reward_components[name] = torch.where(torch.isnan(values), torch.tensor(totals), values)
    batch.token_terms = {"outcome": batch.outcome_token_rewards(batch.scores)}
    if any(result.token_rewards):  # the components' token and step rewards: the "process" term
        process = torch.zeros(batch.loss_mask.shape, dtype=torch.float32)
        for i, dense in enumerate(result.token_rewards):  # the k-th value on the k-th sampled token
            if dense:
                positions = batch.loss_mask[i].nonzero().flatten()
                n = min(len(dense), len(positions))
                process[i, positions[:n]] += torch.tensor(dense[:n])
        batch.add_token_term("process", process)
    return result


def scored_rows(batch: RolloutBatch) -> torch.Tensor:
    """[B] True where at least one reward component applies (is not NaN)."""
    if not batch.reward_components:
        return torch.ones(batch.size, dtype=torch.bool)
    values = torch.stack(list(batch.reward_components.values()))  # [C, B]
    return (~torch.isnan(values)).any(dim=0)


def isolate_unscored(group_ids: torch.Tensor, scored: torch.Tensor) -> torch.Tensor:
    """Give every unscored row a group of its own, so it gets no advantage and does not shift
    its prompt's group statistics (a failed or not-applicable reward is not a zero reward)."""
    if not group_ids.numel():  # a data-parallel rank whose groups dynamic sampling all dropped
        return group_ids
    fresh = group_ids.max() + 1 + torch.arange(group_ids.numel())
    return torch.where(scored, group_ids, fresh)


def add_length_penalty(batch: RolloutBatch, penalty: torch.Tensor, name: str = "overlong") -> None:
    """Add a per-row ``penalty`` [B] to the scores, as reward component ``name`` and as the token
    term ``name`` on each row's last token (so every consumer of the scores sees it)."""
    batch.scores = batch.scores + penalty
    batch.reward_components[name] = penalty.clone()
    batch.add_token_term(name, batch.outcome_token_rewards(penalty))


def unscore_failed_episodes(batch: RolloutBatch) -> None:
    """Rows whose environment failed (``env_error`` in the row) count as unscored: every reward
    component NaN, score and token terms 0, so they get no advantage (see ``isolate_unscored``)."""
    failed = torch.tensor([row.get("env_error") is not None for row in batch.rows], dtype=torch.bool)
    if not failed.any():
        return
    for name, values in batch.reward_components.items():
        batch.reward_components[name] = torch.where(failed, torch.tensor(float("nan")), values)
    batch.scores = torch.where(failed, torch.zeros(()), batch.scores)
    for name, term in batch.token_terms.items():
        batch.token_terms[name] = torch.where(failed[:, None], torch.zeros(()), term)
