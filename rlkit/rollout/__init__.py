"""Generation backends behind one Protocol.

``hf`` generates with transformers in the training process; ``vllm`` runs a vLLM engine in the
training process and reloads the trainer's weights in place after every optimizer step;
``vllm_server`` sends prompts to a separate vLLM server and pushes weights to it.
Heavy imports (vllm) happen inside the backend modules only: ``ROLLOUT_BACKENDS`` maps each
name to the import path of its factory (``build(setup: RolloutSetup)`` in the backend's module),
imported the first time the backend is built.

Every backend reports each sampled token's log-prob under the distribution it was sampled
from: ``softmax(logits / temperature)``, truncated to the top-p set and renormalised when
``top_p < 1`` (``softmax(logits)`` for greedy decoding).  The trainer scores
``softmax(logits / temperature)`` with the same ``rollout.temperature``
(``rlkit.backends.at_sampling_temperature``), so the two agree up to rounding at ``top_p = 1``;
with ``top_p < 1`` each engine log-prob is higher by minus the log of the kept probability mass
(the trainer's is the untruncated policy, the engine's the distribution actually sampled), which
``rollout/logp_gap_mean`` shows and ``algo.rollout_correction`` weights by.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Protocol

import torch

from rlkit.lazy_registry import LazyRegistry

LOGPROBS_MODE = "processed_logprobs"  # vLLM: log-probs after temperature and top-p (engine and `rlkit serve`)


@dataclass(frozen=True)
class Sampling:
    n: int = 1                  # completions per prompt
    max_new_tokens: int = 48
    temperature: float = 1.0    # 0 = greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()  # strings that end a completion (kept in it): a tool-call end tag


@dataclass
class Generation:
    """One completion: sampled token ids, their log-probs under the engine's sampling
    distribution (see the module docstring), and the text."""

    prompt_index: int
    token_ids: list[int]
    logprobs: list[float] | None
    text: str
    finished: bool              # ended on an end-of-sequence token or a stop string (not cut at max_new_tokens)
    stop_reason: str | None = None  # the stop string it ended on (None: EOS or cut)


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


@dataclass(frozen=True)
class RolloutSetup:
    """What ``make_rollout`` hands a backend's factory (each backend uses what it needs)."""

    model: Any                  # the trainer's policy (hf generates with it)
    tokenizer: Any
    model_path: str             # where the engine loads the weights from (vllm)
    cfg: Any                    # the RolloutConfig (hf ignores it: may be None)
    seed: int = 0
    world_size: int = 1
    rank: int = 0
    collectives: Any = None


# name -> "module:factory"; a factory takes a RolloutSetup and returns a RolloutBackend.
ROLLOUT_BACKENDS = LazyRegistry("rollout backend")
ROLLOUT_BACKENDS.register_path("hf", "rlkit.rollout.hf:build")
ROLLOUT_BACKENDS.register_path("vllm", "rlkit.rollout.vllm:build")
ROLLOUT_BACKENDS.register_path("vllm_server", "rlkit.rollout.vllm_server:build")
# Backends that generate on a separate server (started with ``rlkit serve``) rather than in
# this process: ``rlkit eval`` and ``rlkit label-arith-steps`` offer the others.
SERVER_BACKENDS = frozenset({"vllm_server"})


def local_backends() -> list[str]:
    """The registered backends that run in this process (for command-line choices)."""
    return sorted(name for name in ROLLOUT_BACKENDS if name not in SERVER_BACKENDS)


def make_rollout(name: str, model, tokenizer, model_path: str, cfg, seed: int = 0,
                 world_size: int = 1, rank: int = 0, collectives=None) -> RolloutBackend:
    """Build the backend named by ``rollout.backend`` (a name in ``ROLLOUT_BACKENDS``);
    ``model`` is the trainer's policy.

    ``seed`` seeds the vLLM engine when it starts (a resumed run passes ``train.seed + step``;
    what a resume restores for vLLM is described in rlkit/checkpoint.py).  ``world_size > 1``:
    one engine per rank (or per tensor-parallel group) inside the launcher's process group.
    ``vllm_server`` talks to a separate vLLM server; ``collectives`` (the backend) lets its ranks
    wait for rank 0's weight transfer.
    """
    factory = ROLLOUT_BACKENDS.resolve(name)
    return factory(RolloutSetup(model, tokenizer, model_path, cfg, seed=seed, world_size=world_size, rank=rank,
                                collectives=collectives))


def engine_dtype(name: str) -> str:
    """``rollout.dtype`` resolved: ``auto`` is bfloat16 on CUDA and on CPUs with AVX512-BF16 /
    AMX (where it pays off), float32 elsewhere.  ``rlkit serve --dtype auto`` uses the same rule,
    so a trainer pushes weights in the dtype its server holds."""
    if name != "auto":
        return name
    if torch.cuda.is_available():
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return "float32"
    return "bfloat16" if "avx512_bf16" in flags or "amx_bf16" in flags else "float32"
