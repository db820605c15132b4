"""Length shaping rewards.

``overlong_penalty`` is DAPO's soft overlong punishment (Yu et al. 2025, arXiv 2503.14476,
Eq. 13): completions longer than ``max_len - cache_len`` tokens lose reward linearly, down to
``-factor`` at ``max_len``, so that truncated answers stop looking like wrong ones at random.
Use it as one more entry of ``rewards.functions`` (``configs/algo/dapo.yaml``).
"""
from __future__ import annotations

from typing import Any


def overlong_shaping(length: int, max_len: int, cache_len: int, factor: float = 1.0) -> float:
    """min(-(length - (max_len - cache_len)) / cache_len, 0) * factor; spec section 2:
    lengths 16000, 18432, 20480 with max_len 20480 and cache_len 4096 give 0, -0.5, -1.0."""
    if cache_len <= 0 or cache_len > max_len:
        raise ValueError(f"overlong_shaping: cache_len must be in (0, max_len]; got {cache_len} with max_len {max_len}")
    return min(-(length - (max_len - cache_len)) / cache_len, 0.0) * factor


def overlong_penalty(completions: list[str], completion_ids: list[list[int]], *, max_len: int,
                     cache_len: int, factor: float = 1.0, **columns: Any) -> list[float]:
    """Reward function: ``overlong_shaping`` of each completion's token count.  ``max_len`` is
    normally ``rollout.max_new_tokens``; lengths beyond it count as ``max_len``."""
    return [overlong_shaping(min(len(ids), max_len), max_len, cache_len, factor) for ids in completion_ids]
