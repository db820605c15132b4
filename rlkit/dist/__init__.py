"""Training backends behind one Protocol: ``single`` (one process) and, later, ``deepspeed``.

A backend owns the policy's forward pass, the optimizer and the LR schedule.  The trainer
hands it micro-batches and a loss function ``loss_fn(logp, entropy, micro) -> (loss, metrics)``
whose losses are already normalised by *global* counts (see ``aggregate_partial``), so the
backend only sums gradients over micro-batches (and, for DeepSpeed, over ranks).
"""
from __future__ import annotations

from typing import Callable, Iterator, Protocol

import torch

from rlkit.batch import RolloutBatch

LossFn = Callable[[torch.Tensor, "torch.Tensor | None", RolloutBatch], "tuple[torch.Tensor, dict[str, float]]"]


class TrainBackend(Protocol):
    device: torch.device

    def logprobs(self, batch: RolloutBatch, micro_batch_size: int) -> torch.Tensor:
        """[B, T] log-probs of ``input_ids`` under the current policy (no gradient)."""

    def train_step(self, micro_batches: list[RolloutBatch], loss_fn: LossFn) -> dict[str, float]:
        """One optimizer step over the micro-batches; returns grad_norm, lr and loss metrics."""

    def named_parameters(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Full (unsharded) parameters with Hugging Face names, for weight sync and export."""

    def state_dict(self) -> dict:
        """Everything a checkpoint needs: ``model`` (full HF-named tensors) plus the backend's
        own picklable state (``optimizer``, ``scheduler``); see rlkit/checkpoint.py."""

    def load_state_dict(self, state: dict) -> None:
        """Restore what ``state_dict()`` returned (hyper-parameters follow the current config)."""

    def save_pretrained(self, path: str, tokenizer) -> None: ...


def make_backend(cfg, total_optimizer_steps: int) -> TrainBackend:
    if cfg.backend.name == "single":
        from rlkit.dist.single import SingleBackend

        return SingleBackend(cfg, total_optimizer_steps)
    if cfg.backend.name == "deepspeed":
        from rlkit.dist.deepspeed import DeepSpeedBackend

        return DeepSpeedBackend(cfg, total_optimizer_steps)
    raise ValueError(f"unknown training backend {cfg.backend.name!r}; choose single or deepspeed")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
