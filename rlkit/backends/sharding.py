"""Which prompts a rank generates for and which rows it trains on.

Ranks form data-parallel (DP) groups of ``tensor_parallel_size`` consecutive ranks; the ranks of
one group share a tensor-parallel vLLM engine, so they all generate for the same prompts (the
engine is deterministic across them: same seed, same inputs) and then each keeps every
``tp``-th prompt of the group for training.  With ``tp = 1`` every rank is its own group.
Every prompt's K completions stay on one rank, so a group is scored and normalised together.
"""
from __future__ import annotations

from dataclasses import dataclass

from rlkit.config import ConfigError


@dataclass(frozen=True)
class RankShare:
    rank: int = 0
    world_size: int = 1
    tensor_parallel_size: int = 1

    def __post_init__(self):
        if self.tensor_parallel_size < 1 or self.world_size % self.tensor_parallel_size:
            raise ConfigError(f"rollout.tensor_parallel_size={self.tensor_parallel_size} must divide the "
                             f"number of ranks ({self.world_size})")

    @property
    def dp_rank(self) -> int:
        return self.rank // self.tensor_parallel_size

    @property
    def dp_size(self) -> int:
        return self.world_size // self.tensor_parallel_size

    @property
    def tp_rank(self) -> int:
        return self.rank % self.tensor_parallel_size

    def generation_indices(self, n: int) -> list[int]:
        """Indices (into the step's ``n`` prompts) this rank's engine generates for."""
        return list(range(self.dp_rank, n, self.dp_size))

    def trains_on(self, local_index: int) -> bool:
        """Whether this rank trains on the ``local_index``-th prompt it generated for."""
        return local_index % self.tensor_parallel_size == self.tp_rank

    def check(self, prompts_per_step: int) -> None:
        if prompts_per_step < self.world_size:
            raise ConfigError(f"train.prompts_per_step={prompts_per_step} is smaller than the number of ranks "
                             f"({self.world_size}); every rank needs at least one prompt a step")
