"""The policy objective handed to a training backend: policy loss + KL + entropy terms,
optionally weighted by a rollout importance correction.

Every term is normalised with ``aggregate_partial`` and the *global* counts of the whole
rollout batch, so summing micro-batch losses (and, under data parallelism, ranks) gives the
loss of the full batch.  When no ``old_logprobs`` were computed (one on-policy update per
rollout batch), ``logp.detach()`` stands in: the ratio is exactly 1 and the gradient equals
the PPO gradient at the start of the update, without an extra forward pass.
"""
from __future__ import annotations

import torch

from rlkit.algorithms.losses import aggregate_partial, get_loss, importance_correction, kl


def make_loss_fn(algo, num_seqs: int, num_tokens: int, max_len: int, metric_tokens: int):
    """``loss_fn(logp, entropy, micro) -> (loss, metrics)`` for ``SingleBackend.train_step``.

    ``metric_tokens`` normalises the logged token means (over the rows actually trained on).
    Metrics whose name ends in ``_max`` are maxima: backends and ``optimize`` combine them with
    ``max`` (``rlkit.backends.combine_metric``), all others by summing.
    """
    policy_loss = get_loss(algo.loss)
    denom = max(metric_tokens, 1)

    def agg(per_token: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return aggregate_partial(per_token, mask, algo.loss_agg, num_seqs, num_tokens, max_len)

    def loss_fn(logp: torch.Tensor, entropy: torch.Tensor | None, micro):
        mask = micro.loss_mask
        old = micro.old_logprobs if micro.old_logprobs is not None else logp.detach()
        per_token = policy_loss(logp, old, micro.advantages, mask, eps_low=algo.eps_low,
                                eps_high=algo.eps_high, dual_clip=algo.dual_clip)
        metrics: dict[str, float] = {
            # 0 when every sequence carries one value (GSPO's sequence-level loss; outcome advantages)
            "loss/seq_spread_max": seq_spread_max(per_token, mask),
            "advantage/seq_spread_max": seq_spread_max(micro.advantages, mask),
        }
        if micro.rollout_logprobs is not None:  # the engine's log-probs of the same tokens
            with torch.no_grad():
                gap = torch.where(mask, (old - micro.rollout_logprobs).abs(), 0.0)
                metrics["rollout/logp_gap_mean"] = float(gap.sum()) / denom
                metrics["rollout/logp_gap_max"] = float(gap.max()) if gap.numel() else 0.0
            if algo.rollout_correction != "none":
                weights = importance_correction(old, micro.rollout_logprobs, mask, algo.rollout_correction,
                                                algo.rollout_is_cap, tuple(algo.rollout_mask_band))
                per_token = per_token * weights
                metrics["rollout/is_weight"] = float(weights.sum()) / denom
        loss = agg(per_token, mask)
        metrics["loss/policy"] = float(loss.detach())
        with torch.no_grad():
            log_ratio = torch.where(mask, logp.detach() - old, torch.zeros_like(old))
            ratio = log_ratio.exp()
            if getattr(policy_loss, "ratio_level", "token") == "sequence":  # GSPO clips whole sequences
                lengths = mask.sum(dim=1, keepdim=True).clamp(min=1)
                ratio = (log_ratio.sum(dim=1, keepdim=True) / lengths).exp().expand_as(log_ratio)
            clipped = ((ratio < 1 - algo.eps_low) | (ratio > 1 + algo.eps_high)) & mask
            metrics["clip_frac"] = float(clipped.sum()) / denom
            metrics["approx_kl_old"] = float((torch.expm1(-log_ratio) + log_ratio)[mask].sum()) / denom
        if algo.kl_coef and algo.kl_mode == "loss":
            if micro.ref_logprobs is None:
                raise ValueError("algo.kl_coef > 0 but the batch has no ref_logprobs")
            kl_tok = kl(logp, micro.ref_logprobs, algo.kl_estimator)
            kl_term = agg(kl_tok, mask)
            loss = loss + algo.kl_coef * kl_term
            metrics["kl_ref"] = float(torch.where(mask, kl_tok.detach(), 0.0).sum()) / denom
        if entropy is not None:
            if algo.entropy_coef:
                loss = loss - algo.entropy_coef * agg(entropy, mask)
            metrics["entropy"] = float(torch.where(mask, entropy.detach(), 0.0).sum()) / denom
        return loss, metrics

    return loss_fn


def seq_spread_max(values: torch.Tensor, mask: torch.Tensor) -> float:
    """The largest max - min of ``values`` over one row's mask tokens (0.0 without any)."""
    with torch.no_grad():
        mask = mask.bool()
        rows = mask.any(dim=1)
        if not rows.any():
            return 0.0
        high = torch.where(mask, values, float("-inf")).amax(dim=1)
        low = torch.where(mask, values, float("inf")).amin(dim=1)
        return float((high - low)[rows].max())


def kl_shaped_scores(batch, algo) -> torch.Tensor:
    """The KL penalty in the reward (``algo.kl_mode: reward``), from the trainer's log-probs
    before the update: the token term ``kl`` is -beta kl_t on each token (what GAE reads),
    and the returned scores are R_i - beta sum_t kl_t (what outcome estimators read, as verl
    does with ``use_kl_in_reward``)."""
    if batch.old_logprobs is None or batch.ref_logprobs is None:
        raise ValueError("kl_mode=reward needs old_logprobs and ref_logprobs on the batch")
    penalty = algo.kl_coef * masked_kl(batch, algo)
    batch.add_token_term("kl", -penalty)
    return batch.scores - penalty.sum(dim=1)


def masked_kl(batch, algo) -> torch.Tensor:
    """[B, T] the estimator's KL(pi_old || pi_ref) per sampled token (0 elsewhere); its sum over
    the batch, divided by the sampled tokens of all ranks, is the ``kl_ref`` metric of
    ``kl_mode: reward`` (the loss mode logs it from the loss)."""
    kl_tok = kl(batch.old_logprobs, batch.ref_logprobs, algo.kl_estimator)
    return torch.where(batch.loss_mask, kl_tok, torch.zeros_like(kl_tok))
