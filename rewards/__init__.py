"""Reward modules for rlkit: the reward contract, ``combine()`` and task rewards.

Importing this package is light (no torch, vLLM or DeepSpeed); task modules such as
``rewards.math`` are imported explicitly by the user.
"""

from rewards.core import (
    CombinedReward,
    Component,
    RewardError,
    RewardOutput,
    RewardResult,
    RowFailure,
    combine,
    load_callable,
)

__all__ = [
    "CombinedReward",
    "Component",
    "RewardError",
    "RewardOutput",
    "RewardResult",
    "RowFailure",
    "combine",
    "load_callable",
]
