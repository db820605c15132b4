"""Generation backends behind one Protocol.

``hf`` generates with transformers in the training process; ``vllm`` runs a vLLM engine in the
training process and reloads the trainer's weights in place after every optimizer step;
``vllm_server`` sends prompts to a separate vLLM server and pushes weights to it.
Heavy imports (vllm) happen inside the backend modules only: ``ROLLOUT_BACKENDS`` maps each
name to the import path of its factory (``build(setup: RolloutSetup)`` in the backend's module),
imported the first time the backend is built.

Every backend draws each token the way vLLM does, in vLLM's order (``vllm/v1/sample/sampler.py``):
the repetition penalty on the logits (a logit of a token already in the prompt or in the
completion so far is divided by the penalty when positive, multiplied when negative), then for
greedy decoding the most likely token; otherwise the logits divided by the temperature, then
min-p (drop tokens under ``min_p`` times the most likely token's probability), top-k, top-p
(each renormalising over what it keeps), then a draw.  Each sampled token's log-prob is
reported under that same processed distribution (vLLM's ``processed_logprobs``; transformers'
``output_scores`` after rlkit's processors, rlkit/rollout/hf.py): the distribution the token
was actually sampled from.

The trainer scores ``softmax(logits / temperature)`` (``softmax(logits)`` for greedy) with the
same ``rollout.temperature`` (``rlkit.backends.at_sampling_temperature``): no truncation and no
penalty.  With the defaults (``top_p = 1``, ``top_k`` off, ``min_p = 0``,
``repetition_penalty = 1``) the two agree up to rounding.  Otherwise they differ by design:
truncation (top-p, top-k, min-p) makes each engine log-prob higher by minus the log of the
kept probability mass, and the repetition penalty moves mass between tokens (either sign).
The engine's numbers are the true behaviour policy; ``rollout/logp_gap_mean`` shows the gap
and ``algo.rollout_correction`` weights the loss by it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Protocol

import torch

from rlkit.lazy_registry import LazyRegistry

# vLLM (engine and `rlkit serve`): log-probs after the penalty, temperature, min-p, top-k and top-p
LOGPROBS_MODE = "processed_logprobs"


@dataclass(frozen=True)
class Sampling:
    """How completions are drawn (applied as the module docstring says, by every backend).

    A completion that ends on a ``stop`` string keeps it, with the whole token that completed
    it: the tokens trained on are the tokens sampled, and a reward can read the closing tag."""

    n: int = 1                  # completions per prompt
    max_new_tokens: int = 48
    temperature: float = 1.0    # 0 = greedy
    top_p: float = 1.0
    top_k: int = -1             # keep the k most likely tokens; -1 or 0: off
    min_p: float = 0.0          # drop tokens under min_p x the most likely token's probability; 0: off
    repetition_penalty: float = 1.0  # > 1 discourages tokens already in the prompt or completion; 1: off
    stop: tuple[str, ...] = ()  # strings that end a completion (kept in it): "</answer>", a tool-call end tag

    def __post_init__(self) -> None:
        from rlkit.sampling_checks import sampling_problems

        problems = sampling_problems(self.top_k, self.min_p, self.repetition_penalty, self.stop)
        if problems:
            raise ValueError("; ".join(f"Sampling.{option}: {message}" for option, message in problems))


def vllm_sampling_args(sampling: Sampling) -> dict[str, Any]:
    """The options as vLLM's ``SamplingParams`` fields, which are also the names of the
    ``/v1/completions`` body: both vLLM backends send exactly these.  Every option is explicit,
    so a server never falls back to the defaults in the model's ``generation_config.json``
    (a Qwen checkpoint's ``repetition_penalty: 1.05``, ``top_k: 20``, ...).  Greedy requests
    turn the truncations off, as vLLM itself does."""
    greedy = sampling.temperature <= 0
    return {
        "n": sampling.n,
        "max_tokens": sampling.max_new_tokens,
        "temperature": max(sampling.temperature, 0.0),
        "top_p": 1.0 if greedy else sampling.top_p,
        "top_k": 0 if greedy else max(sampling.top_k, 0),  # vLLM: 0 = off
        "min_p": 0.0 if greedy else float(sampling.min_p),
        "repetition_penalty": float(sampling.repetition_penalty),
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "logprobs": 0,  # the log-prob of each sampled token, under the sampling distribution
        "stop": list(sampling.stop),
        "include_stop_str_in_output": True,
    }


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
