"""The ``single`` training backend: one process, CPU or one GPU.

Micro-batching with gradient accumulation, AdamW, gradient clipping, a warm-up + constant /
cosine / linear LR schedule and optional bf16 autocast.
"""
from __future__ import annotations

import contextlib
import math
import os
from typing import Iterator

import torch

from rlkit.batch import RolloutBatch
from rlkit.backends import LossFn, at_sampling_temperature, combine_metric, resolve_device
from rlkit.backends.collectives import LocalCollectives
from rlkit.backends.lora import apply_lora, is_lora, merged_weights, save_adapter
from rlkit.backends.prefix import forward_logprobs_shared
from rlkit.backends.token_logprobs import token_logprobs
from rlkit.models import load_causal_lm, recompute_activations


def lr_lambda(schedule: str, warmup: int, total: int):
    """Multiplier of the base LR at optimizer step ``s`` (0-based)."""
    def fn(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0 - progress  # linear
    return fn


def forward_logprobs(model, micro: RolloutBatch, with_entropy: bool, autocast: bool, entropy_grad: bool = False,
                     temperature: float = 1.0):
    """Per-token log-probs ``[b, T]`` (aligned as in batch.py, 0 outside ``loss_mask``) and
    optionally entropies, of ``softmax(logits / temperature)`` (the backends pass the sampling
    temperature: ``rlkit.backends.policy_forward``).  One forward pass over every row's prompt +
    completion.

    The LM head only runs on the positions that predict completion tokens (``logits_to_keep``),
    which skips most of the prompt's share of the vocabulary projection, and the log-probs and
    entropies come from ``token_logprobs`` (block-wise, no full-vocabulary float32 copies).
    """
    ids = micro.input_ids
    T = ids.shape[1]
    has_tokens = micro.loss_mask.any(dim=1)  # rows without completion tokens do not set `first`
    first = int(micro.loss_mask[has_tokens].float().argmax(dim=1).min()) if has_tokens.any() else T - 1
    keep = T - first + 1  # logits at positions first-1 .. T-1 predict tokens first .. T
    device_type = ids.device.type
    ctx = torch.autocast(device_type, dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    with ctx:
        logits = model(input_ids=ids, attention_mask=micro.attention_mask.long(), logits_to_keep=keep,
                       use_cache=False).logits                 # [b, keep, V]
    # The last position predicts past the end: give it a stand-in target and drop its values
    # (cheaper than slicing the logits, whose backward would copy them whole).
    targets = torch.cat([ids[:, first:], ids[:, -1:]], dim=1)  # [b, keep]
    token_lp, ent = token_logprobs(logits, targets, with_entropy, entropy_grad, temperature=temperature)
    zero = torch.zeros((), device=ids.device)

    def place(values: torch.Tensor) -> torch.Tensor:  # [b, keep] -> [b, T]: stand-in dropped, 0 outside loss_mask
        padded = torch.cat([torch.zeros((ids.shape[0], first), device=ids.device), values[:, :-1].float()], dim=1)
        return torch.where(micro.loss_mask, padded, zero)

    return place(token_lp), place(ent) if with_entropy else None


def training_forward(forward, cfg, role: str = "policy"):
    """The per-token forward pass of ``train_step``: ``forward``, except that with
    ``model.gradient_checkpointing`` the policy trains with the plain pass, since checkpointed
    layers drop the KV cache the shared-prompt pass (``train.share_prompt_prefix``) builds on.
    The no-grad passes (``logprobs``) run no checkpointing and keep sharing prompts."""
    if cfg.model.gradient_checkpointing and role != "critic":
        return at_sampling_temperature(forward_logprobs, cfg)
    return forward


@torch.no_grad()
def batched_logprobs(model, batch: RolloutBatch, micro_batch_size: int, device, autocast: bool,
                     forward=forward_logprobs) -> torch.Tensor:
    """[B, T] float32 CPU log-probs of ``batch`` under ``model`` (no gradient), computed on
    ``device`` in micro-batches of ``micro_batch_size`` rows, each trimmed of shared padding."""
    out = torch.zeros(batch.input_ids.shape, dtype=torch.float32)
    for start in range(0, batch.size, micro_batch_size):
        idx = list(range(start, min(start + micro_batch_size, batch.size)))
        micro = batch.select(idx).trimmed().to(device)
        lp, _ = forward(model, micro, with_entropy=False, autocast=autocast)
        out[start:start + len(idx), : lp.shape[1]] = lp.float().cpu()
    return out


class SingleBackend(LocalCollectives):
    """One process on one device; the collective calls of ``LocalCollectives`` are identities."""

    name = "single"

    def __init__(self, cfg, total_optimizer_steps: int, role: str = "policy"):
        """``role="critic"``: the model is a ``rlkit.critic.ValueModel`` and the per-token
        forward output (``logprobs``, ``train_step``'s first loss argument) is its values."""
        from rlkit.models import resolve_model_path

        self.cfg = cfg
        self.device = resolve_device(cfg.backend.device)
        if cfg.train.threads and self.device.type == "cpu":
            torch.set_num_threads(cfg.train.threads)
        self.model_path = resolve_model_path(cfg.model.path)
        if role == "critic":
            from rlkit.critic import forward_values, load_value_model

            self.model = load_value_model(self.model_path, str(self.device), cfg.model.gradient_checkpointing)
            self.forward = forward_values
        else:
            self.model = load_causal_lm(self.model_path, cfg.model.dtype, str(self.device),
                                        cfg.model.gradient_checkpointing)
            self.forward = at_sampling_temperature(
                forward_logprobs_shared if cfg.train.share_prompt_prefix else forward_logprobs, cfg)
        if cfg.model.lora.r:
            self.model = apply_lora(self.model, cfg.model.lora, cfg.model.gradient_checkpointing)
        self.autocast = cfg.model.autocast_bf16 and cfg.model.dtype == "float32"
        self.train_forward = training_forward(self.forward, cfg, role)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, betas=tuple(cfg.train.betas),
                                           weight_decay=cfg.train.weight_decay)
        self._lr_fn = lr_lambda(cfg.train.lr_schedule, cfg.train.warmup_steps, total_optimizer_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_fn)
        self.ref_model = None
        if cfg.algo.kl_coef and is_lora(self.model) and not cfg.model.reference:
            self.ref_model = "base"  # the policy with its adapters switched off
        elif cfg.algo.kl_coef:
            ref_path = resolve_model_path(cfg.model.reference or cfg.model.path)
            self.ref_model = load_causal_lm(ref_path, cfg.model.dtype, str(self.device))
            self.ref_model.requires_grad_(False)

    def logprobs(self, batch: RolloutBatch, micro_batch_size: int) -> torch.Tensor:
        return self._logprobs(self.model, batch, micro_batch_size)

    def ref_logprobs(self, batch: RolloutBatch, micro_batch_size: int) -> torch.Tensor:
        if self.ref_model is None:
            raise RuntimeError("no reference model: set algo.kl_coef > 0 to load one")
        if self.ref_model == "base":
            with self.model.disable_adapter():
                return self._logprobs(self.model, batch, micro_batch_size)
        return self._logprobs(self.ref_model, batch, micro_batch_size)

    def _logprobs(self, model, batch: RolloutBatch, micro_batch_size: int) -> torch.Tensor:
        return batched_logprobs(model, batch, micro_batch_size, self.device, self.autocast, self.forward)

    def train_step(self, micro_batches: list[RolloutBatch], loss_fn: LossFn) -> dict[str, float]:
        """One optimizer step over the micro-batches (gradients accumulated)."""
        self.optimizer.zero_grad(set_to_none=True)
        totals: dict[str, float] = {}
        for micro in micro_batches:
            micro = micro.trimmed().to(self.device)
            with recompute_activations(self.model):  # gradient checkpointing acts here, if on
                logp, entropy = self.train_forward(self.model, micro, with_entropy=True, autocast=self.autocast,
                                                   entropy_grad=self.cfg.algo.entropy_coef != 0)
                loss, metrics = loss_fn(logp, entropy, micro)
                loss.backward()
            for k, v in metrics.items():
                combine_metric(totals, k, v)
        params = [p for p in self.model.parameters() if p.grad is not None]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.train.grad_clip) if params else torch.tensor(0.0)
        totals["grad_norm"] = float(grad_norm)
        totals["lr"] = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        return totals

    def named_parameters(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Full weights by Hugging Face name (LoRA merged in)."""
        if is_lora(self.model):
            yield from merged_weights(self.model)
            return
        # state_dict keeps tied weights under both names, which is what checkpoint loaders expect
        yield from self.model.state_dict().items()

    def sync_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """What the rollout engine needs after a step: everything, or with LoRA only the merged
        layers that training can change (rlkit/backends/lora.py)."""
        if is_lora(self.model):
            return merged_weights(self.model, changed_only=self.cfg.model.lora.bias == "none")
        return self.named_parameters()

    def state_dict(self) -> dict:
        """``model`` (HF-named tensors, live references), ``optimizer`` and ``scheduler`` states."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Restore weights, optimizer moments and the position in the LR schedule.

        Hyper-parameters (lr, betas, weight decay and the schedule's shape) follow the current
        config, not the checkpoint: a resumed run that raised ``train.steps`` continues on the
        schedule it now has (with an unchanged config this is exactly the saved state).
        """
        self.model.load_state_dict(state["model"])
        configured = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
        self.optimizer.load_state_dict(state["optimizer"])
        for group, hyper in zip(self.optimizer.param_groups, configured):
            group.update(hyper)
        done = int(state["scheduler"]["last_epoch"])  # optimizer steps taken so far
        # A scheduler built at last_epoch=done-1 steps once on creation: lr = initial_lr * fn(done).
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_fn, last_epoch=done - 1)

    def save_state(self, folder) -> None:
        """Checkpoint files (rlkit/checkpoint.py): ``model.safetensors`` and ``optimizer.pt``."""
        from rlkit.checkpoint import WEIGHTS, save_weights, write_file

        state = self.state_dict()
        save_weights(folder / WEIGHTS, state.pop("model"))
        write_file(folder / "optimizer.pt", state)

    def load_state(self, folder) -> None:
        from rlkit.checkpoint import WEIGHTS, load_torch, load_weights

        self.load_state_dict({**load_torch(folder / "optimizer.pt"), "model": load_weights(folder / WEIGHTS)})

    def save_pretrained(self, path: str, tokenizer, extra_files: dict[str, str] | None = None) -> None:
        """A Hugging Face model folder; with LoRA the merged model plus ``adapter/`` (PEFT format).
        ``extra_files`` (name -> text) are written into the same atomic export."""
        if is_lora(self.model):
            merged = {name: t.detach().cpu().clone() for name, t in merged_weights(self.model)}
            atomic_save_pretrained(self.model.get_base_model(), path, tokenizer, state_dict=merged,
                                   also=lambda tmp: save_adapter(self.model, os.path.join(tmp, "adapter")),
                                   extra_files=extra_files)
            return
        atomic_save_pretrained(self.model, path, tokenizer, extra_files=extra_files)


def atomic_save_pretrained(model, path: str, tokenizer, state_dict: dict | None = None, also=None,
                           extra_files: dict[str, str] | None = None) -> None:
    """Write a Hugging Face model folder as checkpoints are written (``rlkit.checkpoint.atomic_folder``:
    a temporary sibling, every file fsynced, then swapped in; a failed or killed write leaves the
    previous ``path`` as it was).  ``also(tmp_folder)`` writes more files into it first, and
    ``extra_files`` (name -> text) too."""
    from rlkit.checkpoint import atomic_folder

    with atomic_folder(path) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True, state_dict=state_dict)
        tokenizer.save_pretrained(str(tmp))
        if also is not None:
            also(str(tmp))
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
