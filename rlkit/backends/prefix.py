"""Shared-prompt forward pass: each distinct prompt of a micro-batch runs through the model once.

GRPO samples K completions per prompt, so a plain forward pass over ``prompt + completion``
computes every prompt K times.  Here the distinct prompts run once with a KV cache, the cache
rows are gathered (``index_select``) for every completion, and the completions run on top of
it.  Gradients flow back through the gather into the single prompt pass, so log-probs and
gradients equal the plain pass up to floating-point rounding; the prompt's share of the compute
drops by a factor of K.  Works for decoder models whose forward accepts ``past_key_values`` and
``position_ids`` (Llama, Qwen2, Mistral, ...).
"""
from __future__ import annotations

import contextlib

import torch

from rlkit.backends.token_logprobs import token_logprobs


def _gathered_cache(cache, rows: torch.Tensor):
    """A DynamicCache whose row r holds the cache of prompt ``rows[r]``."""
    from transformers import DynamicCache

    out = DynamicCache()
    for layer_idx, layer in enumerate(cache.layers):
        out.update(layer.keys.index_select(0, rows), layer.values.index_select(0, rows), layer_idx)
    return out


def forward_logprobs_shared(model, micro, with_entropy: bool, autocast: bool, entropy_grad: bool = False,
                            temperature: float = 1.0):
    """Same contract as ``single.forward_logprobs``: ``(logp [b, T], entropy [b, T] | None)``
    of ``softmax(logits / temperature)``, aligned as in ``rlkit.batch`` and zero outside ``loss_mask``.
    """
    ids, mask, loss_mask = micro.input_ids, micro.attention_mask, micro.loss_mask
    b, T = ids.shape
    device = ids.device
    starts = loss_mask.float().argmax(dim=1)                       # [b] first completion column
    starts = torch.where(loss_mask.any(dim=1), starts, mask.sum(dim=1).clamp(max=T - 1))
    lengths = mask.sum(dim=1)                                      # [b] prompt + completion
    keys = [tuple(ids[r, : int(starts[r])].tolist()) for r in range(b)]
    unique: dict[tuple, int] = {}
    row_to_prompt = torch.tensor([unique.setdefault(k, len(unique)) for k in keys], device=device)
    prompts = list(unique)
    P = max(len(p) for p in prompts)
    prompt_ids = torch.zeros((len(prompts), P), dtype=torch.long, device=device)
    prompt_mask = torch.zeros((len(prompts), P), dtype=torch.long, device=device)
    for u, p in enumerate(prompts):  # left-padded, so every prompt ends at column P - 1
        prompt_ids[u, P - len(p):] = torch.tensor(p, device=device)
        prompt_mask[u, P - len(p):] = 1
    prompt_positions = (prompt_mask.cumsum(dim=1) - 1).clamp(min=0)
    L = int((lengths - starts).max().clamp(min=1))
    comp_ids = torch.zeros((b, L), dtype=torch.long, device=device)
    comp_mask = torch.zeros((b, L), dtype=torch.long, device=device)
    for r in range(b):
        n = int(lengths[r] - starts[r])
        comp_ids[r, :n] = ids[r, int(starts[r]): int(lengths[r])]
        comp_mask[r, :n] = 1
    ctx = torch.autocast(device.type, dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    with ctx:
        prompt_out = model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=prompt_positions,
                           use_cache=True, logits_to_keep=1)
        last_logits = prompt_out.logits[:, -1]                     # [U, V] predicts completion token 0
        cache = _gathered_cache(prompt_out.past_key_values, row_to_prompt)
        positions = starts.unsqueeze(1) + torch.arange(L, device=device).unsqueeze(0)     # [b, L]
        full_mask = torch.cat([prompt_mask.index_select(0, row_to_prompt), comp_mask], dim=1)
        comp_out = model(input_ids=comp_ids, attention_mask=full_mask, position_ids=positions,
                         past_key_values=cache, use_cache=False)
    # logits predicting completion token j: j == 0 from the prompt pass, else completion position
    # j-1; the last completion position predicts past the end (stand-in target, value dropped)
    first_lp, first_ent = token_logprobs(last_logits.index_select(0, row_to_prompt), comp_ids[:, 0],
                                         with_entropy, entropy_grad, temperature=temperature)  # [b]
    rest_targets = torch.cat([comp_ids[:, 1:], comp_ids[:, :1]], dim=1)             # [b, L]
    rest_lp, rest_ent = token_logprobs(comp_out.logits, rest_targets, with_entropy, entropy_grad,
                                       temperature=temperature)

    def joined(first: torch.Tensor, rest: torch.Tensor) -> torch.Tensor:            # [b, L] float32
        return torch.cat([first.unsqueeze(1), rest[:, :-1]], dim=1).float()

    # Columns are distinct within a row; the buffer is L wider so no index needs clamping.
    columns = starts.unsqueeze(1) + torch.arange(L, device=device).unsqueeze(0)       # [b, L]
    valid = comp_mask.bool()

    def place(values: torch.Tensor) -> torch.Tensor:
        wide = torch.zeros((b, T + L), dtype=torch.float32, device=device)
        wide = wide.scatter(1, columns, torch.where(valid, values, torch.zeros_like(values)))
        return torch.where(loss_mask, wide[:, :T], torch.zeros((), device=device))

    entropy = place(joined(first_ent, rest_ent)) if with_entropy else None
    return place(joined(first_lp, rest_lp)), entropy
