"""rlkit: reinforcement-learning fine-tuning of language models with token-level credit assignment.

Importing rlkit is light: torch loads with the first use of ``RolloutBatch`` (or any module that
needs it), vLLM and DeepSpeed inside their backends only, so a tool worker process that imports
an environment's tools (rlkit/agents) starts in a fraction of a second.
"""
from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["Config", "RolloutBatch", "load_config", "__version__"]


def __getattr__(name: str):
    if name == "RolloutBatch":
        from rlkit.batch import RolloutBatch

        return RolloutBatch
    if name in ("Config", "load_config"):
        from rlkit import config

        return getattr(config, name)
    raise AttributeError(f"module 'rlkit' has no attribute {name!r}")
