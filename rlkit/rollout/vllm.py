"""Colocated vLLM rollouts: the engine lives in the training process and reloads weights in place.

The engine runs with ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` so its model sits in this process and
``update_weights`` hands tensors over without serialising them (vLLM's ``reload_weights`` on the
worker, which loads checkpoint-format names through the model's own ``load_weights`` mapping).
On CPU, vLLM reads ``gpu_memory_utilization`` as a share of host memory for its KV cache.

Log-probs: the engine runs with ``logprobs_mode="processed_logprobs"``, so each sampled token's
log-prob is taken from the distribution it was drawn from (repetition penalty, logits /
temperature, then min-p, top-k and top-p truncated and renormalised: rlkit/rollout/__init__.py);
vLLM's default, ``raw_logprobs``, would report ``softmax(logits)`` whatever the options.
Greedy requests report ``softmax(logits)`` after the penalty.  On CUDA this mode makes vLLM
sample top-k / top-p in PyTorch instead of with FlashInfer's kernel (which cannot return the
log-probs).  The options are ``vllm_sampling_args``, the same fields ``vllm_server`` sends.

Under a launcher (``world_size > 1``) every rank builds its engine with vLLM's
``external_launcher`` executor: the engine joins the launcher's process group instead of
spawning workers, ``tensor_parallel_size`` consecutive ranks form one tensor-parallel engine and
the others are independent data-parallel copies (checked on CPU with 2 gloo ranks and TP 1).
"""
from __future__ import annotations

import logging
import os
import time
from typing import Iterable

import torch

from rlkit.rollout import LOGPROBS_MODE, Generation, RolloutSetup, Sampling, engine_dtype, vllm_sampling_args


class VLLMRollout:
    def __init__(self, model_path: str, tokenizer, cfg, seed: int = 0, world_size: int = 1):
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        from vllm import LLM

        if os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] != "0":
            raise RuntimeError("the colocated vLLM backend needs VLLM_ENABLE_V1_MULTIPROCESSING=0")
        self.tokenizer = tokenizer
        dtype = engine_dtype(cfg.dtype)
        extra = {}
        if world_size > 1:
            extra = {"distributed_executor_backend": "external_launcher",
                     "tensor_parallel_size": cfg.tensor_parallel_size}
        elif cfg.tensor_parallel_size > 1:
            raise ValueError("rollout.tensor_parallel_size > 1 needs a launcher with that many ranks per engine "
                             "(scripts/train.sh); one process drives a single-device engine")
        self.sleep_mode = bool(cfg.sleep)
        if self.sleep_mode:
            if not torch.cuda.is_available():
                raise ValueError("rollout.sleep=true frees GPU memory between steps; it needs CUDA")
            extra["enable_sleep_mode"] = True
        self.asleep = False
        started = time.perf_counter()
        self.llm = LLM(
            model=model_path,
            tokenizer=model_path,
            dtype=dtype,
            seed=seed,
            gpu_memory_utilization=cfg.gpu_memory_utilization,
            max_model_len=cfg.max_model_len,
            enforce_eager=cfg.enforce_eager,
            enable_prefix_caching=True,
            logprobs_mode=LOGPROBS_MODE,
            **extra,
        )
        self.start_seconds = time.perf_counter() - started
        # vLLM warns on every in-place reload that the rotary embedding has no weights to load.
        logging.getLogger("vllm.model_executor.model_loader.reload.layerwise").setLevel(logging.ERROR)
        self.torch_dtype = getattr(torch, dtype)

    def generate(self, prompt_ids: list[list[int]], sampling: Sampling) -> list[Generation]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(**vllm_sampling_args(sampling))
        prompts = [TokensPrompt(prompt_token_ids=list(p)) for p in prompt_ids]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        gens: list[Generation] = []
        for index, out in enumerate(outputs):
            for comp in out.outputs:
                ids = list(comp.token_ids)
                lps = None
                if comp.logprobs is not None:
                    lps = [float(step[tok].logprob) for step, tok in zip(comp.logprobs, ids)]
                gens.append(Generation(
                    prompt_index=index, token_ids=ids, logprobs=lps,
                    text=self.tokenizer.decode(ids, skip_special_tokens=True),
                    finished=comp.finish_reason == "stop",
                    stop_reason=comp.stop_reason if isinstance(comp.stop_reason, str) else None))
        return gens

    def _worker(self):
        executor = self.llm.llm_engine.model_executor
        return executor.driver_worker.worker

    @torch.no_grad()
    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Reload the trainer's weights into the engine in place; clears the prefix cache."""
        weights = ((name, t.detach().to(self.torch_dtype)) for name, t in named_tensors)
        self._worker().reload_weights(weights_iterator=weights)
        self.llm.reset_prefix_cache()

    def sleep(self) -> None:
        """With ``rollout.sleep`` (CUDA): level 1 moves the weights to host memory and drops the
        KV cache, so training gets the engine's GPU memory.  (Level 2 would drop the weights too;
        a LoRA sync sends only the changed layers, so the others must survive.)"""
        if self.sleep_mode and not self.asleep:
            self.llm.sleep(level=1)
            self.asleep = True

    def wake(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False

    def close(self) -> None:
        """Shut the in-process engine down (this also tears down the process groups vLLM joined)."""
        engine = getattr(self, "llm", None)
        if engine is not None:
            engine.llm_engine.engine_core.shutdown()
            self.llm = None


def build(setup: RolloutSetup) -> VLLMRollout:
    """The ``vllm`` entry of ``rlkit.rollout.ROLLOUT_BACKENDS``."""
    return VLLMRollout(setup.model_path, setup.tokenizer, setup.cfg, seed=setup.seed, world_size=setup.world_size)
