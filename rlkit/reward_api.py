"""The public interface between rlkit and the rewards that build on a model (the contract for
reward authors).

A reward module that needs more than ``fn(completions, **columns)`` (a learned process reward,
an LLM judge, PRIME's implicit PRM, MPO's meta model) imports from rlkit *only this module*:

- ``StatefulReward`` / ``RewardModule`` (from ``rewards.core``): the methods ``CombinedReward``
  calls on a stateful component (``attach``, ``update``, ``state_dict`` / ``load_state_dict``,
  ``save_state`` / ``load_state``, ``close``);
- ``RewardContext``: what the trainer hands to ``attach``: run facts (run folder, seed, policy
  path, sampling temperature, micro-batch size, resume mode, the current ``step``), the
  ``collectives`` of the run and builders: ``make_trainable`` (a training backend like the
  policy's), ``make_frozen`` (a frozen causal LM that scores log-probs), ``make_generator``;
- ``make_generator`` (a tokenizer plus an HF model or an in-process vLLM engine, with the run's
  global RNGs untouched), ``load_tokenizer``, ``max_positions``, ``preserved_rng``;
- re-exports: ``credit_step_rewards``, ``CREDIT_MODES``, ``MIN_FORMS`` (step credit
  assignment), ``atomic_write_text``.

Never the root config, environment variables or ``torch.distributed``: a distributed reward asks
``context.collectives`` (identities in one process).
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, NamedTuple, Protocol

from rewards.core import RewardModule, StatefulReward
from rlkit.algorithms.credit import CREDIT_MODES, MIN_FORMS, credit_step_rewards
from rlkit.backends.collectives import LocalCollectives
from rlkit.eval.report import atomic_write_text

__all__ = ["CREDIT_MODES", "MIN_FORMS", "Collectives", "FrozenModel", "Generator", "RewardContext", "RewardModule",
           "StatefulReward", "atomic_write_text", "credit_step_rewards", "load_tokenizer", "make_generator",
           "max_positions", "preserved_rng", "trainable_config"]


class Collectives(Protocol):
    """The run's collective operations (every rank must make the same calls in the same order);
    a training backend is one (``rlkit.backends.collectives``)."""

    rank: int
    world_size: int
    is_main: bool

    def all_reduce(self, values: list[float], op: str = "sum") -> list[float]: ...

    def broadcast_object(self, obj: Any) -> Any: ...

    def barrier(self) -> None: ...


@dataclass
class RewardContext:
    """What ``CombinedReward.attach`` hands to stateful rewards.  A reward's own settings are its
    constructor's keyword arguments; this holds what it needs from the run.

    ``run_dir``: the run's output folder (None outside a run); ``seed``: ``train.seed``;
    ``model_path``: the policy's starting weights (``model.path``); ``temperature``: the rollout
    sampling temperature; ``micro_batch_size``: the trainer's; ``resume``: ``train.resume``
    (``never`` = certainly a fresh run); ``step``: the current training step (the trainer sets it
    before scoring each step; 0 before the first); ``device``: the policy's device;
    ``collectives``: the run's (``LocalCollectives`` in one process).
    """

    run_dir: Path | None = None
    seed: int = 0
    model_path: str | None = None
    temperature: float = 1.0
    micro_batch_size: int = 1
    resume: str = "never"
    step: int = 0
    device: str = "cpu"
    collectives: Collectives = field(default_factory=LocalCollectives)
    _cfg: Any = field(default=None, repr=False, compare=False)  # the run config: only the builders read it

    @classmethod
    def for_run(cls, cfg, collectives: Collectives | None = None) -> RewardContext:
        """The context of a training run from its config; ``collectives``: the policy's backend
        (its device is the context's), else one process on ``backend.device``."""
        from rlkit.backends import resolve_device

        device = getattr(collectives, "device", None) or resolve_device(cfg.backend.device)
        return cls(run_dir=Path(cfg.train.output_dir) if cfg.train.output_dir else None, seed=cfg.train.seed,
                   model_path=cfg.model.path, temperature=float(cfg.rollout.temperature),
                   micro_batch_size=cfg.train.micro_batch_size, resume=str(cfg.train.resume), device=str(device),
                   collectives=collectives if collectives is not None else LocalCollectives(), _cfg=cfg)

    def _run_config(self, what: str):
        if self._cfg is None:
            raise RuntimeError(f"RewardContext.{what} needs a training run's context (RewardContext.for_run)")
        return self._cfg

    def make_trainable(self, path: str | None = None, *, lr: float, grad_clip: float, temperature: float = 1.0):
        """A training backend like the policy's (its kind, device, dtype, autocast, micro-batch
        machinery; collective when the policy's is) for the causal LM at ``path`` (default: the
        policy's starting weights), with its own AdamW at a constant ``lr``, gradient clip
        ``grad_clip``, no LoRA, KL or entropy bonus, scoring ``softmax(logits / temperature)``."""
        from rlkit.backends import make_backend

        cfg = self._run_config("make_trainable")
        return make_backend(trainable_config(cfg, path, lr=lr, grad_clip=grad_clip, temperature=temperature),
                            cfg.train.steps)

    def make_frozen(self, path: str | None = None, device: Any = None) -> FrozenModel:
        """A frozen causal LM (default: the policy's starting weights) in the run's dtype and
        autocast, on ``device`` (default: the context's), that scores ``softmax(logits)``."""
        cfg = self._run_config("make_frozen")
        return FrozenModel(path or cfg.model.path, cfg.model.dtype, str(device or self.device),
                           cfg.model.autocast_bf16 and cfg.model.dtype == "float32")

    def make_generator(self, model: str | None = None, engine: str = "hf", **options: Any) -> Generator:
        """``make_generator`` for ``model`` (default: the policy's starting weights) on the
        context's device, seeded with the run's seed unless ``options`` say otherwise."""
        if engine == "hf":
            options.setdefault("device", self.device)
        options.setdefault("seed", self.seed)
        return make_generator(model or self.model_path, engine, **options)


def trainable_config(cfg, path: str | None = None, *, lr: float, grad_clip: float, temperature: float = 1.0):
    """The run config ``make_trainable`` builds its backend from: the policy's, with ``path``'s
    weights, no LoRA or reference, ``lr`` constant (no warm-up), ``grad_clip``, every row trained,
    no KL or entropy term, scoring at ``temperature``."""
    replace = dataclasses.replace
    model = replace(cfg.model, path=path or cfg.model.path, lora=replace(cfg.model.lora, r=0), reference=None)
    train = replace(cfg.train, lr=lr, grad_clip=grad_clip, lr_schedule="constant", warmup_steps=0,
                    skip_zero_advantage=False)
    algo = replace(cfg.algo, kl_coef=0.0, entropy_coef=0.0)
    rollout = replace(cfg.rollout, temperature=temperature)
    return replace(cfg, model=model, train=train, algo=algo, rollout=rollout)


class FrozenModel:
    """A causal LM without gradients; ``logprobs(batch, micro_batch_size)`` -> [B, T] float32
    CPU log-probs of ``batch.input_ids`` under ``softmax(logits)``."""

    def __init__(self, path: str, dtype: str, device: str, autocast: bool):
        from rlkit.models import load_causal_lm, resolve_model_path

        self.model_path = resolve_model_path(path)
        self.model = load_causal_lm(self.model_path, dtype, device).requires_grad_(False)
        self.device, self.autocast = device, autocast

    def logprobs(self, batch, micro_batch_size: int):
        from rlkit.backends.single import batched_logprobs

        return batched_logprobs(self.model, batch, micro_batch_size, self.device, self.autocast)


class Generator(NamedTuple):
    """What ``make_generator`` returns: the resolved model path, its tokenizer, the model (a
    transformers causal LM in eval mode, or a ``vllm.LLM``) and the longest sequence it takes."""

    path: str
    tokenizer: Any
    model: Any
    max_model_len: int


def make_generator(model: str, engine: str = "hf", *, dtype: str = "float32", device: str = "cpu",
                   max_model_len: int | None = None, **engine_options: Any) -> Generator:
    """A text generator for a reward's own model (a path, hub id or ``embedded:NAME``).

    ``engine="hf"``: a frozen transformers causal LM on ``device`` in ``dtype``.  ``engine="vllm"``:
    a vLLM engine of its own in this process (``dtype`` ``auto`` follows rlkit's rule,
    ``rlkit.rollout.engine_dtype``; ``max_model_len`` capped at the model's positions;
    ``engine_options`` go to ``vllm.LLM``, ``seed`` included); on CPU in-process vLLM needs
    ``VLLM_ENABLE_V1_MULTIPROCESSING=0``, set here when unset.  The global RNGs, which creating
    an engine reseeds, are restored afterwards."""
    from rlkit.models import load_causal_lm, resolve_model_path

    if engine == "hf":
        engine_options.pop("seed", None)  # sampling is seeded per call by the caller
        if engine_options:
            raise ValueError(f"make_generator(engine='hf'): unknown options {sorted(engine_options)}")
        path = resolve_model_path(model)
        tokenizer = load_tokenizer(path)
        lm = load_causal_lm(path, dtype, device).requires_grad_(False)
        limit = max_positions(lm.config)
        return Generator(path, tokenizer, lm, min(limit, max_model_len or limit))
    if engine != "vllm":
        raise ValueError(f"make_generator: engine must be 'hf' or 'vllm', not {engine!r}")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    from transformers import AutoConfig
    from vllm import LLM

    from rlkit.rollout import engine_dtype

    path = resolve_model_path(model)
    limit = max_positions(AutoConfig.from_pretrained(path))
    length = min(limit, max_model_len or limit)
    with preserved_rng():  # an in-process engine seeds the global RNGs; the trainer's must not move
        llm = LLM(model=path, tokenizer=path, dtype=engine_dtype(dtype), max_model_len=length, **engine_options)
    return Generator(path, llm.get_tokenizer(), llm, length)


def load_tokenizer(model: str):
    """The tokenizer of ``model`` (a path, hub id or ``embedded:NAME``), loaded as rlkit loads the policy's."""
    from rlkit.models import load_tokenizer as load, resolve_model_path

    return load(resolve_model_path(model))


def max_positions(config: Any) -> int:
    """The longest sequence a transformers config allows (a generous default when it says nothing)."""
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return 4096


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Run the block, then put every global RNG (Python, torch, CUDA, numpy) back as it was:
    a reward's sampling must not move the trainer's random state."""
    from rlkit.rng import rng_state, set_rng_state

    saved = rng_state()
    try:
        yield
    finally:
        set_rng_state(saved)
