"""Training backends behind one Protocol: ``single`` (one process) and ``deepspeed`` (N ranks).

A backend owns the policy's forward pass, the optimizer and the LR schedule.  The trainer
hands it micro-batches and a loss function ``loss_fn(logp, entropy, micro) -> (loss, metrics)``
whose losses are already normalised by *global* counts (see ``aggregate_partial``), so the
backend only sums gradients over micro-batches (and, for DeepSpeed, over ranks).
"""
from __future__ import annotations

from typing import Callable, Iterator, Protocol

import torch

from rlkit.batch import RolloutBatch
from rlkit.lazy_registry import LazyRegistry

LossFn = Callable[[torch.Tensor, "torch.Tensor | None", RolloutBatch], "tuple[torch.Tensor, dict[str, float]]"]


class TrainBackend(Protocol):
    device: torch.device

    def logprobs(self, batch: RolloutBatch, micro_batch_size: int) -> torch.Tensor:
        """[B, T] log-probs of ``input_ids`` under the current policy (no gradient)."""

    def train_step(self, micro_batches: list[RolloutBatch], loss_fn: LossFn) -> dict[str, float]:
        """One optimizer step over the micro-batches; returns grad_norm, lr and loss metrics."""

    def named_parameters(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Full (unsharded) parameters with Hugging Face names (LoRA merged in), for export."""

    def sync_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """What the rollout engine needs after a step (with LoRA only the layers that changed)."""

    def save_state(self, folder) -> None:
        """Write this rank's part of a checkpoint into ``folder`` (see rlkit/checkpoint.py)."""

    def load_state(self, folder) -> None:
        """Restore weights, optimizer and LR-schedule position (hyper-parameters follow the config)."""

    def save_pretrained(self, path: str, tokenizer, extra_files: dict[str, str] | None = None) -> None: ...

    # collectives (rlkit/backends/collectives.py): identities in one process
    rank: int
    world_size: int
    is_main: bool

    def all_reduce(self, values: list[float], op: str = "sum") -> list[float]: ...

    def all_gather_object(self, obj) -> list: ...

    def broadcast_object(self, obj): ...

    def barrier(self) -> None: ...

    def close(self) -> None: ...


def combine_metric(totals: dict[str, float], key: str, value: float, weight: float = 1.0) -> None:
    """Fold one micro-batch's (or mini-batch's) metric into ``totals``: names ending in
    ``_max`` keep the maximum, all others add ``weight * value`` (loss metrics are partial
    sums over a batch with global denominators)."""
    if key.endswith("_max"):
        totals[key] = max(totals.get(key, float("-inf")), float(value))
    else:
        totals[key] = totals.get(key, 0.0) + weight * float(value)


def sampling_temperature(cfg) -> float:
    """The temperature T of the distribution the trainer scores: ``rollout.temperature``, the one
    rollouts are sampled at (1 when that is 0, greedy: the engines then report ``softmax(logits)``).
    Greedy evaluation uses its own temperature and never reaches the trainer's log-probs."""
    t = float(cfg.rollout.temperature)
    return t if t > 0 else 1.0


def at_sampling_temperature(forward, cfg):
    """The policy's per-token forward pass scoring ``softmax(logits / T)`` with T =
    ``sampling_temperature(cfg)``: the distribution the rollout engines sample from and report
    log-probs of, so the PPO ratio, the rollout correction and the KL to the reference (scored
    by the same pass) compare like with like.  The critic's forward pass (values) is not wrapped."""
    import functools

    t = sampling_temperature(cfg)
    return forward if t == 1.0 else functools.partial(forward, temperature=t)


# name -> "module:class"; a factory takes (cfg, total_optimizer_steps, role) and returns a TrainBackend.
TRAIN_BACKENDS = LazyRegistry("training backend")
TRAIN_BACKENDS.register_path("single", "rlkit.backends.single:SingleBackend")
TRAIN_BACKENDS.register_path("deepspeed", "rlkit.backends.deepspeed:DeepSpeedBackend")


def make_backend(cfg, total_optimizer_steps: int, role: str = "policy") -> TrainBackend:
    """The training backend named by ``backend.name`` (a name in ``TRAIN_BACKENDS``, imported
    only now); ``role="critic"`` trains a value model (rlkit/critic.py) with the same machinery."""
    return TRAIN_BACKENDS.resolve(cfg.backend.name)(cfg, total_optimizer_steps, role)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
