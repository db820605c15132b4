"""Generation backends behind one Protocol.

``hf`` generates with transformers in the training process; ``vllm`` runs a vLLM engine in the
training process and reloads the trainer's weights in place after every optimizer step.
Heavy imports (vllm) happen inside the backend modules only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Protocol

import torch


@dataclass(frozen=True)
class Sampling:
    n: int = 1                  # completions per prompt
    max_new_tokens: int = 48
    temperature: float = 1.0    # 0 = greedy
    top_p: float = 1.0


@dataclass
class Generation:
    """One completion: sampled token ids, their log-probs under the engine, and the text."""

    prompt_index: int
    token_ids: list[int]
    logprobs: list[float] | None
    text: str
    finished: bool              # ended on an end-of-sequence token (not cut at max_new_tokens)


class RolloutBackend(Protocol):
    def generate(self, prompt_ids: list[list[int]], sampling: Sampling) -> list[Generation]:
        """``n`` completions per prompt, grouped: prompt 0's n first, then prompt 1's, ..."""

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load new policy weights (HF parameter names)."""

    def sleep(self) -> None:
        """Give accelerator memory back while the trainer trains (no-op where unsupported)."""

    def wake(self) -> None:
        """Take it again before the next ``update_weights``."""

    def close(self) -> None:
        """Shut the engine down (the trainer calls it last, before leaving the process group)."""


def make_rollout(name: str, model, tokenizer, model_path: str, cfg, seed: int = 0,
                 world_size: int = 1) -> RolloutBackend:
    """Build the backend named by ``rollout.backend``; ``model`` is the trainer's policy.

    ``seed`` seeds the vLLM engine when it starts (a resumed run passes ``train.seed + step``;
    what a resume restores for vLLM is described in rlkit/checkpoint.py).  ``world_size > 1``:
    one engine per rank (or per tensor-parallel group) inside the launcher's process group.
    """
    if name == "hf":
        from rlkit.rollout.hf import HFRollout

        return HFRollout(model, tokenizer)
    if name == "vllm":
        from rlkit.rollout.vllm import VLLMRollout

        return VLLMRollout(model_path, tokenizer, cfg, seed=seed, world_size=world_size)
    raise ValueError(f"unknown rollout backend {name!r}; choose hf or vllm")
