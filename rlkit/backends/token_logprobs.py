"""Log-probabilities of chosen tokens (and entropies) from LM-head logits, in vocabulary-sized chunks.

The textbook way, ``logits.float().gather(...) - logits.float().logsumexp(-1)``, materialises
several ``[N, V]`` float32 tensors in the forward pass (the upcast copy, the log-sum-exp's
shifted exponentials) and more in the backward pass (the gather's zero-filled scatter, the
softmax, the cast back to the logits' dtype).  With a 49k vocabulary and a few thousand tokens
each of them is hundreds of MB, which on a CPU costs more in memory traffic and page faults
than the arithmetic; the entropy metric doubles it.

``token_logprobs`` computes the same values with one custom autograd function that walks the
logits a block of positions at a time (a few MB of float32 per block, so it stays in cache):

* forward:  ``lse = log sum_v exp z_v``; ``logp = z_y - lse``; ``H = -sum_v p_v log p_v`` with
  ``p = exp(z - lse)`` (computed only when asked; 0 for ``-inf`` logits).
* backward: ``dlogp/dz = onehot(y) - p`` and ``dH/dz = -p * (log p + H)``, so
  ``dL/dz = g_logp * (onehot(y) - p) - g_H * p * (log p + H)``, written straight into a
  gradient in the logits' own dtype (bf16 under autocast), recomputing ``p`` block by block
  from the saved logits and ``lse`` instead of keeping it.

Nothing is saved beyond the logits autograd already keeps alive, plus ``[N]`` vectors.

``temperature`` T scores the sampling distribution ``softmax(z / T)`` instead (the rollout
engines sample from it and report its log-probs): each float32 block is divided by T as it is
read, and the gradient picks up the chain rule's ``1 / T``, so ``z / T`` is never materialised.
"""
from __future__ import annotations

import torch
from torch import Tensor

CPU_BLOCK_ELEMENTS = 1 << 20     # 4 MB of float32 per block: fits the caches of a CPU core
CUDA_BLOCK_ELEMENTS = 1 << 26    # 256 MB: few kernel launches, bounded extra memory


def token_logprobs(logits: Tensor, targets: Tensor, with_entropy: bool = False, entropy_grad: bool = False,
                   block_elements: int | None = None, temperature: float = 1.0) -> tuple[Tensor, Tensor | None]:
    """``(logp, entropy)`` of ``targets`` under ``softmax(logits / temperature)``, both of
    ``targets``' shape (float32, or float64 for float64 logits); ``entropy`` is None unless
    ``with_entropy`` (the entropy of that same distribution).

    ``logits``: ``[..., V]`` in any float dtype (2-D and 3-D ones, strided views included, are not
    copied);
    ``targets``: integer ids of ``logits.shape[:-1]``.  Gradients reach ``logits`` through
    ``logp`` always and through ``entropy`` only with ``entropy_grad`` (otherwise the entropy is
    a detached metric).  ``block_elements`` overrides the block size (tests use it to force
    several blocks).
    """
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"targets shape {tuple(targets.shape)} does not match logits {tuple(logits.shape)}")
    if not temperature > 0:
        raise ValueError(f"token_logprobs: temperature must be > 0, got {temperature}")
    if block_elements is None:
        block_elements = CUDA_BLOCK_ELEMENTS if logits.is_cuda else CPU_BLOCK_ELEMENTS
    lead = targets.shape
    z3 = logits.reshape(-1, *logits.shape[-2:]) if logits.dim() >= 2 else logits.reshape(1, 1, -1)
    t2 = targets.reshape(z3.shape[:2])
    logp, entropy = _TokenLogProbs.apply(z3, t2, bool(with_entropy), bool(entropy_grad), int(block_elements),
                                         float(temperature))
    return logp.reshape(lead), entropy.reshape(lead) if with_entropy else None


def _compute_dtype(z: Tensor) -> torch.dtype:
    """float32 for half-precision and float32 logits, float64 for float64 ones."""
    return torch.promote_types(z.dtype, torch.float32)


def _blocks(z: Tensor, block_elements: int):
    """(row, start, stop) blocks of a ``[B, L, V]`` tensor, each at most ``block_elements`` values."""
    B, L, V = z.shape
    step = max(1, block_elements // max(1, V))
    for b in range(B):
        for start in range(0, L, step):
            yield b, start, min(L, start + step)


def _scaled(z: Tensor, temperature: float) -> Tensor:
    """A float block divided by the temperature (a new tensor; the block may be a view of the logits)."""
    return z if temperature == 1.0 else z / temperature


def _block_terms(z: Tensor, lse: Tensor) -> tuple[Tensor, Tensor]:
    """``(log p, p)`` of one float32 block ``z [n, V]`` given its ``lse [n]``; ``p`` is exactly 0
    where ``z`` is ``-inf``."""
    logq = z - lse.unsqueeze(-1)
    return logq, logq.exp()


def _plogp(p: Tensor, logq: Tensor) -> Tensor:
    """``p * log p`` with 0 where ``p`` is 0 (``-inf`` logits), in place of ``logq``."""
    return logq.mul_(p).masked_fill_(p == 0, 0.0)


class _TokenLogProbs(torch.autograd.Function):
    """See the module docstring; inputs ``z [B, L, V]``, ``targets [B, L]``."""

    @staticmethod
    def forward(ctx, z: Tensor, targets: Tensor, with_entropy: bool, entropy_grad: bool, block_elements: int,
                temperature: float = 1.0):
        B, L, _ = z.shape
        dtype = _compute_dtype(z)
        logp = torch.empty((B, L), dtype=dtype, device=z.device)
        lse = torch.empty((B, L), dtype=dtype, device=z.device)
        entropy = torch.empty((B, L), dtype=dtype, device=z.device) if with_entropy else None
        for b, s, e in _blocks(z, block_elements):
            zb = _scaled(z[b, s:e].to(dtype), temperature)           # [n, V] float32 block (z / T)
            lse_b = torch.logsumexp(zb, dim=-1)
            lse[b, s:e] = lse_b
            logp[b, s:e] = zb.gather(-1, targets[b, s:e].unsqueeze(-1)).squeeze(-1) - lse_b
            if with_entropy:
                logq, p = _block_terms(zb, lse_b)
                entropy[b, s:e] = -_plogp(p, logq).sum(dim=-1)
        ctx.save_for_backward(z, targets, lse, entropy if entropy_grad else None)
        ctx.block_elements = block_elements
        ctx.temperature = temperature
        if entropy is None:
            entropy = torch.zeros((), device=z.device)               # autograd needs a tensor
        if not (with_entropy and entropy_grad):
            ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    def backward(ctx, g_logp: Tensor | None, g_entropy: Tensor | None):
        z, targets, lse, entropy = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None, None
        use_entropy = entropy is not None and g_entropy is not None  # saved only with entropy_grad
        grad = torch.empty(z.shape, dtype=z.dtype, device=z.device)
        for b, s, e in _blocks(z, ctx.block_elements):
            logq, p = _block_terms(_scaled(z[b, s:e].to(lse.dtype), ctx.temperature), lse[b, s:e])
            if g_logp is None:
                gz = torch.zeros_like(p)
            else:
                g = g_logp[b, s:e].unsqueeze(-1)                     # [n, 1]
                gz = p * -g
                gz.scatter_add_(-1, targets[b, s:e].unsqueeze(-1), g)
            if use_entropy:
                h = entropy[b, s:e].unsqueeze(-1)
                # dH/dz = -p (log p + H); 0 where p is 0
                term = logq.add_(h).mul_(p).masked_fill_(p == 0, 0.0)
                gz.sub_(term.mul_(g_entropy[b, s:e].unsqueeze(-1)))
            if ctx.temperature != 1.0:
                gz.div_(ctx.temperature)                             # d(z / T) / dz
            grad[b, s:e] = gz
        return grad, None, None, None, None, None
