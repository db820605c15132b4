"""Advantage estimators, policy losses and loss aggregation as pure tensor functions.

Formulas, defaults and worked examples: ``shared/specs/algorithms.md`` sections 1 and 2.
"""
from rlkit.algorithms.advantages import (
    ADVANTAGE_ESTIMATORS,
    broadcast_to_tokens,
    gae,
    get_advantage,
    group_advantages,
    register_advantage,
    whiten,
)
from rlkit.algorithms.losses import (
    AGGREGATION_MODES,
    KL_ESTIMATORS,
    POLICY_LOSSES,
    aggregate,
    aggregate_partial,
    entropy_from_logits,
    get_loss,
    kl,
    ppo_clip,
    register_loss,
)

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "AGGREGATION_MODES",
    "KL_ESTIMATORS",
    "POLICY_LOSSES",
    "aggregate",
    "aggregate_partial",
    "broadcast_to_tokens",
    "entropy_from_logits",
    "gae",
    "get_advantage",
    "get_loss",
    "group_advantages",
    "kl",
    "ppo_clip",
    "register_advantage",
    "register_loss",
    "whiten",
]
