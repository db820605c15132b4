"""rlkit: reinforcement-learning fine-tuning of language models with token-level credit assignment.

Importing rlkit is light: vLLM and DeepSpeed load inside their backends only.
"""
from rlkit.batch import RolloutBatch
from rlkit.config import Config, load_config

__version__ = "0.1.0"
__all__ = ["Config", "RolloutBatch", "load_config", "__version__"]
