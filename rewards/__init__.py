"""Reward modules for rlkit: the reward contract, ``combine()`` and task rewards.

Importing this package is light (no torch, vLLM or DeepSpeed); task modules such as
``rewards.math`` are imported explicitly by the user.  Stateful rewards implement
``StatefulReward`` (or subclass ``RewardModule``); the rewards that build on a model reach rlkit
only through ``rlkit.reward_api``.
"""

from rewards.core import (
    CombinedReward,
    Component,
    RewardError,
    RewardOutput,
    RewardModule,
    RewardResult,
    RowFailure,
    StatefulReward,
    combine,
    load_callable,
)

__all__ = [
    "CombinedReward",
    "Component",
    "RewardError",
    "RewardOutput",
    "RewardModule",
    "RewardResult",
    "RowFailure",
    "StatefulReward",
    "combine",
    "load_callable",
]
