"""The ``deepspeed`` training backend: ZeRO stage 2 or 3, launched by the ``deepspeed`` launcher.

Each rank trains on its own rows.  The trainer's loss terms are normalised by *global* counts
(summed over ranks), so the gradient of the whole batch is the *sum* of the ranks' gradients;
DeepSpeed averages gradients over ranks, so each rank's loss is scaled by the world size.
Gradient accumulation is driven by the caller: the accumulation boundary is set by hand, True
only for the last micro-batch of a step, so ``engine.step()`` reduces and updates once however
many micro-batches there are.  Ranks may hold different numbers of rows; since forward and
backward passes are collective under ZeRO-3 (and the boundary reduction is under both stages),
every rank runs the same number of micro-batches, padding with zero-weighted ones.
"""
from __future__ import annotations

import math

from typing import Iterator

import torch

from rlkit.batch import RolloutBatch
from rlkit.backends import LossFn, at_sampling_temperature, combine_metric
from rlkit.backends.collectives import TorchCollectives
from rlkit.backends.lora import apply_lora, is_lora, merged_weights, save_adapter
from rlkit.backends.prefix import forward_logprobs_shared
from rlkit.backends.single import forward_logprobs, lr_lambda, training_forward
from rlkit.models import load_causal_lm, recompute_activations, resolve_model_path


def deepspeed_config(cfg) -> dict:
    """The DeepSpeed JSON config for a run config (optimizer and scheduler stay in rlkit)."""
    zero: dict = {"stage": cfg.backend.zero_stage, "overlap_comm": False}
    if cfg.backend.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu"}
    if cfg.backend.zero_stage == 3 and cfg.backend.offload_params:
        zero["offload_param"] = {"device": "cpu"}
    return {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": cfg.train.grad_clip,
        "bf16": {"enabled": cfg.model.dtype == "bfloat16"},
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }


def reference_config(cfg) -> dict:
    """The DeepSpeed config of the frozen KL reference under ZeRO-3: no optimizer, parameters
    partitioned (and offloaded with ``backend.offload_params``) like the policy's."""
    zero: dict = {"stage": 3, "overlap_comm": False}
    if cfg.backend.offload_params:
        zero["offload_param"] = {"device": "cpu"}
    return {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
            "bf16": {"enabled": cfg.model.dtype == "bfloat16"}, "zero_optimization": zero,
            "steps_per_print": 1 << 30, "wall_clock_breakdown": False}


class DeepSpeedBackend(TorchCollectives):
    name = "deepspeed"

    def __init__(self, cfg, total_optimizer_steps: int, role: str = "policy"):
        """``role="critic"``: a ``rlkit.critic.ValueModel`` whose per-token output is values."""
        import deepspeed

        self.cfg = cfg
        if not torch.distributed.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            deepspeed.init_distributed(dist_backend=backend)
        self.rank = torch.distributed.get_rank()
        self.world_size = torch.distributed.get_world_size()
        if torch.cuda.is_available():
            local = self.rank % torch.cuda.device_count()
            torch.cuda.set_device(local)
            self.device = torch.device("cuda", local)
        else:
            self.device = torch.device("cpu")
        if cfg.train.threads and self.device.type == "cpu":
            torch.set_num_threads(cfg.train.threads)
        self.model_path = resolve_model_path(cfg.model.path) if self.rank == 0 else None
        self.model_path = self.broadcast_object(self.model_path)
        if role == "critic":
            from rlkit.critic import load_value_model

            model = load_value_model(self.model_path, str(self.device), cfg.model.gradient_checkpointing)
        else:
            model = load_causal_lm(self.model_path, "float32", str(self.device), cfg.model.gradient_checkpointing)
        if cfg.model.lora.r:
            model = apply_lora(model, cfg.model.lora, cfg.model.gradient_checkpointing)
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=cfg.train.lr, betas=tuple(cfg.train.betas),
                                      weight_decay=cfg.train.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lr_lambda(cfg.train.lr_schedule, cfg.train.warmup_steps, total_optimizer_steps))
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=deepspeed_config(cfg))
        self.model = self.engine.module
        self.zero_stage = cfg.backend.zero_stage
        self.autocast = cfg.model.autocast_bf16 and cfg.model.dtype == "float32"
        self.forward = at_sampling_temperature(
            forward_logprobs_shared if cfg.train.share_prompt_prefix else forward_logprobs, cfg)
        if role == "critic":
            from rlkit.critic import forward_values

            self.forward = forward_values
        self.train_forward = training_forward(self.forward, cfg, role)
        self.ref_model = self._load_reference(deepspeed) if cfg.algo.kl_coef else None

    def _load_reference(self, deepspeed):
        """The frozen KL reference: ``model.reference``, else the starting policy (with LoRA:
        ``"base"``, the policy with its adapters switched off, as in the single backend).

        ZeRO-2 keeps every parameter whole on every rank, so there the reference is a plain
        frozen copy on each rank (as large as the policy's own weights).  Under ZeRO-3 it is a
        DeepSpeed engine without an optimizer: its parameters are partitioned over the ranks
        like the policy's and gathered layer by layer in each forward pass (collective, like
        the policy's), so it costs each rank 1/N of a copy; a whole copy per rank would undo
        what ZeRO-3 is chosen for, a model that does not fit on one rank.
        """
        if is_lora(self.model) and not self.cfg.model.reference:
            return "base"
        path = self.model_path
        if self.cfg.model.reference:  # an embedded name is prepared once, by rank 0
            path = self.broadcast_object(resolve_model_path(self.cfg.model.reference) if self.is_main else None)
        if self.zero_stage != 3:
            ref = load_causal_lm(path, self.cfg.model.dtype, str(self.device))
            return ref.requires_grad_(False)
        ref = load_causal_lm(path, "float32", str(self.device)).requires_grad_(False)
        engine, *_ = deepspeed.initialize(model=ref, config=reference_config(self.cfg))
        return engine

    @torch.no_grad()
    def logprobs(self, batch: RolloutBatch, micro_batch_size: int) -> torch.Tensor:
        return self._logprobs(self.engine, batch, micro_batch_size)

    @torch.no_grad()
    def ref_logprobs(self, batch: RolloutBatch, micro_batch_size: int) -> torch.Tensor:
        """[B, T] log-probs under the frozen reference (``algo.kl_coef > 0``); collective."""
        if self.ref_model is None:
            raise RuntimeError("no reference model: set algo.kl_coef > 0 to load one")
        if self.ref_model == "base":
            with self.model.disable_adapter():
                return self._logprobs(self.engine, batch, micro_batch_size)
        return self._logprobs(self.ref_model, batch, micro_batch_size)

    def _logprobs(self, model, batch: RolloutBatch, micro_batch_size: int) -> torch.Tensor:
        out = torch.zeros(batch.input_ids.shape, dtype=torch.float32)
        chunks = [c for c in torch.arange(batch.size).split(micro_batch_size) if c.numel()]
        total = int(self.all_reduce([len(chunks)], "max")[0])
        for i in range(total):  # every rank runs the same number of forward passes (ZeRO-3)
            micro = (batch.select(chunks[i]) if i < len(chunks) else filler_row()).trimmed().to(self.device)
            lp, _ = self.forward(model, micro, with_entropy=False, autocast=self.autocast)
            if i < len(chunks):
                out[chunks[i], : lp.shape[1]] = lp.float().cpu()
        return out

    def train_step(self, micro_batches: list[RolloutBatch], loss_fn: LossFn) -> dict[str, float]:
        """One optimizer step; ranks with fewer micro-batches (or none) run zero-weighted passes
        of a filler (one of their rows, or ``filler_row()``) so that every rank makes the same
        collective calls.  Metrics come from real micro-batches only; the ranks agree on the
        metric names before reducing them."""
        totals: dict[str, float] = {}
        count = int(self.all_reduce([len(micro_batches)], "max")[0])
        filler = micro_batches[0] if micro_batches else filler_row()
        for i in range(count):
            real = i < len(micro_batches)
            micro = (micro_batches[i] if real else filler).trimmed().to(self.device)
            self.engine.set_gradient_accumulation_boundary(i == count - 1)
            # through the engine: its forward advances ZeRO's micro-step so gradients accumulate
            with recompute_activations(self.model):  # gradient checkpointing acts here, if on
                logp, entropy = self.train_forward(self.engine, micro, with_entropy=True, autocast=self.autocast,
                                                   entropy_grad=self.cfg.algo.entropy_coef != 0)
                loss, metrics = loss_fn(logp, entropy, micro)
                self.engine.backward(loss * (self.world_size if real else 0.0), scale_wrt_gas=False)
            for k, v in (metrics.items() if real else ()):
                combine_metric(totals, k, float(v))
        lr = self.scheduler.get_last_lr()[0]
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        names = sorted({k for part in self.all_gather_object(sorted(totals)) for k in part})
        sums = [k for k in names if not k.endswith("_max")]
        maxima = [k for k in names if k.endswith("_max")]
        out = dict(zip(sums, self.all_reduce([totals.get(k, 0.0) for k in sums]) if sums else []))  # partial sums
        out.update(zip(maxima, self.all_reduce([totals.get(k, -math.inf) for k in maxima], "max") if maxima else []))
        out["grad_norm"] = float(norm) if norm is not None else float("nan")
        out["lr"] = lr
        return out

    def named_parameters(self, bucket_numel: int = 50_000_000) -> Iterator[tuple[str, torch.Tensor]]:
        """Full parameters by Hugging Face name (LoRA merged in); under ZeRO-3 gathered a bucket
        of about ``bucket_numel`` elements (or, with LoRA, one module) at a time, on every rank."""
        if is_lora(self.model):
            yield from merged_weights(self.model, gather=self._gather_context)
            return
        if self.zero_stage != 3:
            yield from self.model.state_dict().items()
            return
        import deepspeed

        bucket: list[tuple[str, torch.nn.Parameter]] = []
        size = 0
        for name, param in self.model.named_parameters():
            bucket.append((name, param))
            size += param.ds_numel
            if size >= bucket_numel:
                yield from _gathered(deepspeed, bucket)
                bucket, size = [], 0
        if bucket:
            yield from _gathered(deepspeed, bucket)

    def sync_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """For the rollout engine: everything, or with LoRA the layers training can change."""
        if is_lora(self.model):
            return merged_weights(self.model, changed_only=self.cfg.model.lora.bias == "none",
                                  gather=self._gather_context)
        return self.named_parameters()

    def _gather_context(self, params):
        if self.zero_stage != 3:
            import contextlib

            return contextlib.nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters(params, modifier_rank=None)

    def _full_state_on_main(self) -> dict[str, torch.Tensor]:
        """CPU copies of the full weights on rank 0 (empty elsewhere); every rank must call it,
        since ZeRO-3 gathers are collective."""
        state = {}
        for name, tensor in self.named_parameters():
            if self.is_main:
                state[name] = tensor.detach().cpu().clone()
        return state

    def save_pretrained(self, path: str, tokenizer, extra_files: dict[str, str] | None = None) -> None:
        """Rank 0 writes the Hugging Face folder (with LoRA: merged weights plus ``adapter/``;
        ``extra_files``, name -> text, in the same atomic export)."""
        import os

        from rlkit.backends.single import atomic_save_pretrained

        state = self._full_state_on_main()
        model, also, adapters = self.model, None, []
        if is_lora(self.model):
            model = self.model.get_base_model()
            also = lambda tmp: save_adapter(self.model, os.path.join(tmp, "adapter"))  # noqa: E731
            adapters = [p for n, p in self.model.named_parameters() if "lora_" in n]
        with self._gather_context(adapters):  # whole adapter tensors under ZeRO-3
            if self.is_main:
                atomic_save_pretrained(model, path, tokenizer, state_dict=state, also=also, extra_files=extra_files)
        self.barrier()

    def save_state(self, folder) -> None:
        """Checkpoint files: ``model.safetensors`` (full weights, from rank 0) and DeepSpeed's
        own sharded checkpoint under ``deepspeed/`` (every rank writes its optimizer shard)."""
        from rlkit.checkpoint import WEIGHTS, save_weights

        weights = self._full_state_on_main()
        if self.is_main:
            save_weights(folder / WEIGHTS, weights)
        self.engine.save_checkpoint(str(folder / "deepspeed"), tag="state", save_latest=False)

    def load_state(self, folder) -> None:
        """Weights, ZeRO optimizer shards and the LR-scheduler position from ``save_state``.

        As in the single backend the learning rate follows the current config: the schedule's
        function is rebuilt by ``__init__`` and only its position comes from the checkpoint.
        """
        path, _ = self.engine.load_checkpoint(str(folder / "deepspeed"), tag="state", load_optimizer_states=True,
                                              load_lr_scheduler_states=True)
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint under {folder / 'deepspeed'}")
        self.scheduler.base_lrs = [self.cfg.train.lr for _ in self.scheduler.base_lrs]
        for group, lr in zip(self.optimizer.param_groups, self.scheduler.base_lrs):
            group["initial_lr"] = lr
            group["lr"] = lr * self.scheduler.lr_lambdas[0](self.scheduler.last_epoch)
        self.scheduler._last_lr = [g["lr"] for g in self.optimizer.param_groups]


def filler_row() -> RolloutBatch:
    """A one-row batch (two tokens of id 0, the second "sampled") with every per-token field at
    zero: what a rank without rows of its own runs, weighted 0, to join the collective forward and
    backward passes of ZeRO-3.  The loop never sees it."""
    zeros = torch.zeros(1, 2)
    return RolloutBatch(input_ids=torch.zeros(1, 2, dtype=torch.long), attention_mask=torch.ones(1, 2, dtype=torch.bool),
                        loss_mask=torch.tensor([[False, True]]), group_ids=torch.zeros(1, dtype=torch.long),
                        finished=torch.ones(1, dtype=torch.bool), ref_logprobs=zeros, values=zeros,
                        advantages=zeros, returns=zeros, scores=torch.zeros(1))


def _gathered(deepspeed, bucket):
    with deepspeed.zero.GatheredParameters([p for _, p in bucket], modifier_rank=None):
        for name, param in bucket:
            yield name, param.data
