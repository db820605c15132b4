"""PRIME implicit process rewards (Cui et al. 2025, arXiv 2502.01456; spec section 5).

The implicit PRM pi_phi is a causal LM; with a frozen reference pi_ref (both start from the
same weights, by default the policy's), every completion token gets the reward

    q_t = beta * (log pi_phi(y_t | y_<t) - log pi_ref(y_t | y_<t))            (PRIME Eq. 3)

and the PRM learns online from the outcome labels o in {0, 1} with the cross-entropy

    L = -[o log sigma(sum_t q_t) + (1 - o) log(1 - sigma(sum_t q_t))]          (PRIME Eq. 4)

once per training step, on the step's rollouts, with its own AdamW (lr 1e-6, gradient clip 10)
in a training backend of its own (a second DeepSpeed engine in a distributed run).

``ImplicitPRM`` is a stateful reward module.  Scoring (``__call__``) gives nothing: the token
rewards depend on the PRM's update, which needs the outcome labels of the other components,
so ``update(batch)`` does the work after the batch is scored: with ``update="before"`` it first
trains on the batch and then scores it, with ``"after"`` the other way round; either way q is
the batch's token term ``prime`` (times ``coef``), where the ``prime`` advantage estimator
(rlkit/algorithms/advantages.py) finds it.  The PRM's weights and optimizer are saved with
every checkpoint (``save_state`` / ``load_state``).  The backend and the reference come from the
run through ``rlkit.reward_api.RewardContext`` (``attach``).
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from rlkit.reward_api import RewardModule


class ImplicitPRM(RewardModule):
    """Keyword arguments (``rewards.functions[].kwargs``): ``model`` (default: the policy's
    starting weights), ``beta`` (0.05), ``lr`` (1e-6), ``grad_clip`` (10), ``update``
    (``before`` | ``after``), ``label_component`` (the reward component whose value is the
    outcome label; rows where it is NaN do not train the PRM), ``coef`` (scale of q in the
    token rewards), ``micro_batch_size`` (default: the run's)."""

    def __init__(self, model: str | None = None, beta: float = 0.05, lr: float = 1e-6, grad_clip: float = 10.0,
                 update: str = "before", label_component: str = "correctness", coef: float = 1.0,
                 micro_batch_size: int | None = None):
        if update not in ("before", "after"):
            raise ValueError(f"ImplicitPRM: update must be 'before' or 'after', not {update!r}")
        if beta <= 0:
            raise ValueError(f"ImplicitPRM: beta must be positive, got {beta}")
        self.model, self.beta, self.lr, self.grad_clip = model, beta, lr, grad_clip
        self.when, self.label_component, self.coef = update, label_component, coef
        self.micro_batch_size = micro_batch_size
        self.backend = self.reference = None
        self.updates = 0

    def __call__(self, completions: list[str], **columns: Any) -> list[None]:
        return [None] * len(completions)  # q is written by update(), once the labels are known

    # ------------------------------------------------------------------ set-up

    def attach(self, context) -> None:
        """Build the PRM's training backend (``context.make_trainable``: the policy's backend kind,
        device, dtype and autocast; this module's model, lr and gradient clip; no LoRA, KL or
        entropy; temperature 1) and its frozen reference (``context.make_frozen``)."""
        self.backend = context.make_trainable(self.model, lr=self.lr, grad_clip=self.grad_clip, temperature=1.0)
        # the implicit PRM scores softmax(logits) like its frozen reference, whatever the sampling temperature
        self.reference = context.make_frozen(self.backend.model_path, device=self.backend.device)
        self.micro_batch_size = self.micro_batch_size or context.micro_batch_size

    # ------------------------------------------------------------------ the step

    def update(self, batch) -> dict[str, float]:
        """Train the PRM on the labelled rows and add q as the token term ``prime`` (order per
        ``update``).  Metrics: ``loss`` and ``accuracy`` (sign of sum_t q_t against the label,
        before this update), ``reward_mean`` / ``reward_std`` (per-row sums of q),
        ``labelled_rows``."""
        if self.backend is None:
            raise RuntimeError("ImplicitPRM.update before attach(): the trainer attaches it to the run")
        ref = self._ref_logprobs(batch)
        if self.when == "after":
            q = self._token_rewards(batch, ref)
        metrics = self._train(batch, ref)
        if self.when == "before":
            q = self._token_rewards(batch, ref)
        batch.add_token_term("prime", self.coef * q)
        sums = q.sum(dim=1)
        count, total, square = self.backend.all_reduce([float(sums.numel()), float(sums.sum()),
                                                        float((sums * sums).sum())])
        mean = total / max(count, 1)
        metrics["reward_mean"] = mean
        metrics["reward_std"] = math.sqrt(max(square / max(count, 1) - mean * mean, 0.0))
        return metrics

    def _ref_logprobs(self, batch):
        return self.reference.logprobs(batch, self.micro_batch_size)

    def _token_rewards(self, batch, ref):
        """[B, T] q = beta (log pi_phi - log pi_ref) on the completion tokens, 0 elsewhere."""
        import torch

        logp = self.backend.logprobs(batch, self.micro_batch_size)
        return torch.where(batch.loss_mask, self.beta * (logp - ref), torch.zeros(()))

    def _train(self, batch, ref) -> dict[str, float]:
        """One optimizer step of the PRM's cross-entropy over this rank's labelled rows; the loss
        is normalised by the labelled rows of all ranks."""
        import torch

        labels = batch.reward_components.get(self.label_component)
        if labels is None:
            raise KeyError(f"ImplicitPRM: no reward component {self.label_component!r} to take outcome labels "
                           f"from; components are {sorted(batch.reward_components)} (set label_component)")
        labelled = torch.nonzero(~torch.isnan(labels)).flatten()
        sub = dataclasses.replace(batch.select(labelled), ref_logprobs=ref[labelled], scores=labels[labelled].float())
        rows = int(self.backend.all_reduce([float(sub.size)])[0])
        if rows == 0:
            return {"labelled_rows": 0.0}
        order = torch.argsort(sub.completion_lengths, stable=True)
        micro = [sub.select(idx) for idx in order.split(self.micro_batch_size) if idx.numel()]
        out = self.backend.train_step(micro, prm_loss_fn(self.beta, rows))
        self.updates += 1
        return {"loss": out.get("prm_loss", math.nan), "accuracy": out.get("prm_accuracy", math.nan),
                "grad_norm": out.get("grad_norm", math.nan), "labelled_rows": float(rows)}

    # ------------------------------------------------------------------ state

    def save_state(self, folder) -> None:
        """The PRM backend's weights and optimizer into ``folder`` (every rank: collective)."""
        Path(folder).mkdir(parents=True, exist_ok=True)
        self.backend.save_state(folder)

    def load_state(self, folder) -> None:
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"ImplicitPRM: no saved PRM state at {folder}")
        self.backend.load_state(folder)

    def state_dict(self) -> dict[str, Any]:
        return {"updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.updates = int(state.get("updates", 0))

    def close(self) -> None:
        """Drop the PRM and its reference.  The backend is not closed: a distributed one shares
        the policy's process group, which the trainer leaves last."""
        self.backend = self.reference = None


def prm_loss_fn(beta: float, num_rows: int):
    """``loss_fn(logp, _, micro)`` for the PRM backend's ``train_step``: the cross-entropy of
    sigma(beta * sum_t (logp_t - ref_t)) against ``micro.scores`` (the labels; NaN = weight 0),
    summed over the micro-batch and divided by ``num_rows``, the labelled rows of all ranks."""
    import torch

    def loss_fn(logp, _entropy, micro):
        mask = micro.loss_mask
        implicit = beta * torch.where(mask, logp - micro.ref_logprobs.to(logp.dtype), torch.zeros(())).sum(dim=1)
        labels = micro.scores.to(implicit.dtype)
        weight = (~torch.isnan(labels)).to(implicit.dtype)
        target = torch.nan_to_num(labels, nan=0.0)
        per_row = torch.nn.functional.binary_cross_entropy_with_logits(implicit, target, reduction="none")
        loss = (per_row * weight).sum() / max(num_rows, 1)
        with torch.no_grad():
            right = (((implicit > 0).to(target.dtype) == (target > 0.5).to(target.dtype)).to(weight.dtype) * weight)
        return loss, {"prm_loss": float(loss.detach()), "prm_accuracy": float(right.sum()) / max(num_rows, 1)}

    return loss_fn
