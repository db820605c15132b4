"""RolloutBatch: the one object that flows through a training step.

Shapes: ``B`` sequences (prompt + completion, right-padded to ``T`` tokens).

Mask polarity: every mask is ``True`` = include.

Alignment rule (the only place it is written down): ``logprobs[:, t]`` is the
log-probability of ``input_ids[:, t]`` given ``input_ids[:, :t]``.  Position 0
therefore has no log-probability and holds 0.  ``loss_mask[:, t]`` is True
exactly where ``input_ids[:, t]`` was sampled by the policy, so per-token
quantities (log-probs, advantages, token rewards, values) line up with
``loss_mask`` without any shifting.  An outcome reward sits on the last
``loss_mask`` token of its row.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

PER_TOKEN = (
    "input_ids", "attention_mask", "loss_mask", "rollout_logprobs", "old_logprobs",
    "ref_logprobs", "values", "advantages", "returns",
)
TOKEN_TERMS = ("outcome", "process", "overlong", "kl", "prime")  # the names rlkit writes
PER_SEQUENCE = ("group_ids", "finished", "scores")


@dataclass
class RolloutBatch:
    """Per-token ``[B, T]`` tensors, per-sequence ``[B]`` tensors and per-row dicts."""

    input_ids: torch.Tensor                      # [B, T] long
    attention_mask: torch.Tensor                 # [B, T] bool
    loss_mask: torch.Tensor                      # [B, T] bool, sampled completion tokens
    group_ids: torch.Tensor                      # [B] long, same prompt -> same id
    finished: torch.Tensor                       # [B] bool, ended on EOS
    rollout_logprobs: torch.Tensor | None = None  # [B, T] from the rollout engine
    old_logprobs: torch.Tensor | None = None     # [B, T] trainer, before the update
    ref_logprobs: torch.Tensor | None = None     # [B, T] frozen reference policy
    values: torch.Tensor | None = None           # [B, T] critic
    token_terms: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> [B, T] per-token reward terms
    advantages: torch.Tensor | None = None       # [B, T]
    returns: torch.Tensor | None = None          # [B, T]
    scores: torch.Tensor | None = None           # [B] total outcome score
    reward_components: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> [B], NaN = n/a
    rows: list[dict[str, Any]] = field(default_factory=list)  # prompt, completion, dataset columns

    @property
    def token_rewards(self) -> torch.Tensor | None:
        """[B, T] the per-token reward: the sum of ``token_terms`` (None before scoring).

        Each contribution is a named term, so a consumer reads the ones it needs: ``outcome``
        (the reward score on each row's last sampled token), ``process`` (token and step rewards
        of the reward components), ``overlong`` (DAPO's length shaping), ``kl`` (the KL penalty
        with ``algo.kl_mode: reward``, negative) and ``prime`` (PRIME's implicit rewards)."""
        if not self.token_terms:
            return None
        return torch.stack(list(self.token_terms.values())).sum(dim=0)

    def add_token_term(self, name: str, values: torch.Tensor) -> None:
        """Add ``values`` [B, T] to the term ``name`` (created at zero)."""
        if tuple(values.shape) != tuple(self.loss_mask.shape):
            raise ValueError(f"token term {name!r} has shape {tuple(values.shape)}, expected "
                             f"{tuple(self.loss_mask.shape)}")
        values = values.to(torch.float32)
        self.token_terms[name] = self.token_terms[name] + values if name in self.token_terms else values

    @property
    def size(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def completion_lengths(self) -> torch.Tensor:
        """[B] number of sampled tokens per row."""
        return self.loss_mask.sum(dim=1)

    def last_token_index(self) -> torch.Tensor:
        """[B] index of the last ``loss_mask`` token (where an outcome reward sits); -1 if none."""
        positions = torch.arange(self.input_ids.shape[1], device=self.input_ids.device)
        masked = torch.where(self.loss_mask, positions, torch.full_like(positions, -1))
        return masked.max(dim=1).values

    def outcome_token_rewards(self, scores: torch.Tensor) -> torch.Tensor:
        """[B, T] zeros with ``scores[i]`` on row i's last sampled token."""
        rewards = torch.zeros(self.loss_mask.shape, dtype=torch.float32, device=self.input_ids.device)
        last = self.last_token_index()
        rows = torch.nonzero(last >= 0).flatten()
        rewards[rows, last[rows]] = scores[rows].to(rewards.dtype)
        return rewards

    def select(self, index: torch.Tensor | list[int]) -> "RolloutBatch":
        """A new batch with the rows in ``index`` (tensors are indexed, not copied twice)."""
        idx = torch.as_tensor(index, dtype=torch.long)
        values: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                values[f.name] = v[idx.to(v.device)]
            elif f.name in ("reward_components", "token_terms"):
                values[f.name] = {k: t[idx.to(t.device)] for k, t in v.items()}
            elif f.name == "rows":
                values[f.name] = [v[i] for i in idx.tolist()] if v else []
        return RolloutBatch(**values)

    def trimmed(self) -> "RolloutBatch":
        """Drop trailing columns that are padding in every row (saves compute per micro-batch)."""
        keep = int(self.attention_mask.any(dim=0).nonzero().max().item()) + 1 if self.attention_mask.any() else 1
        if keep == self.input_ids.shape[1]:
            return self
        values: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name == "token_terms":
                v = {k: t[:, :keep] for k, t in v.items()}
            values[f.name] = v[:, :keep] if f.name in PER_TOKEN and v is not None else v
        return RolloutBatch(**values)

    def to(self, device: torch.device | str) -> "RolloutBatch":
        values: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                v = v.to(device)
            elif f.name in ("reward_components", "token_terms"):
                v = {k: t.to(device) for k, t in v.items()}
            values[f.name] = v
        return RolloutBatch(**values)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field when shapes, dtypes or masks are inconsistent."""
        if self.input_ids.dim() != 2:
            raise ValueError(f"RolloutBatch.input_ids must be [B, T], got shape {tuple(self.input_ids.shape)}")
        B, T = self.input_ids.shape
        for name in PER_TOKEN:
            v = getattr(self, name)
            if v is not None and tuple(v.shape) != (B, T):
                raise ValueError(f"RolloutBatch.{name} has shape {tuple(v.shape)}, expected {(B, T)}")
        for name in PER_SEQUENCE:
            v = getattr(self, name)
            if v is not None and tuple(v.shape) != (B,):
                raise ValueError(f"RolloutBatch.{name} has shape {tuple(v.shape)}, expected {(B,)}")
        for name, v in self.reward_components.items():
            if tuple(v.shape) != (B,):
                raise ValueError(f"RolloutBatch.reward_components[{name!r}] has shape {tuple(v.shape)}, expected {(B,)}")
        for name, v in self.token_terms.items():
            if tuple(v.shape) != (B, T):
                raise ValueError(f"RolloutBatch.token_terms[{name!r}] has shape {tuple(v.shape)}, expected {(B, T)}")
        for name in ("attention_mask", "loss_mask", "finished"):
            if getattr(self, name).dtype != torch.bool:
                raise ValueError(f"RolloutBatch.{name} must be bool (True = include), got {getattr(self, name).dtype}")
        if (self.loss_mask & ~self.attention_mask).any():
            raise ValueError("RolloutBatch.loss_mask is True where attention_mask is False (padding)")
        if self.loss_mask[:, 0].any():
            raise ValueError("RolloutBatch.loss_mask[:, 0] must be False: position 0 has no log-probability")
        if self.rows and len(self.rows) != B:
            raise ValueError(f"RolloutBatch.rows has {len(self.rows)} entries, expected {B}")


def build_batch(
    prompt_ids: list[list[int]],
    completion_ids: list[list[int]],
    group_ids: list[int],
    finished: list[bool],
    pad_token_id: int,
    rollout_logprobs: list[list[float]] | None = None,
    rows: list[dict[str, Any]] | None = None,
    completion_masks: list[list[bool]] | None = None,
) -> RolloutBatch:
    """Concatenate prompt and completion token ids row by row and right-pad them.

    ``rollout_logprobs[i][j]`` is the engine's log-prob of ``completion_ids[i][j]`` and lands
    at the column of that token, following the alignment rule above.  ``completion_masks[i][j]``
    False marks a completion token the policy did not sample (a multi-turn episode's
    environment tokens): its ``loss_mask`` is False (default: every completion token is sampled).
    """
    if not (len(prompt_ids) == len(completion_ids) == len(group_ids) == len(finished)):
        raise ValueError("build_batch: prompt_ids, completion_ids, group_ids and finished differ in length")
    B = len(prompt_ids)
    T = max(len(p) + len(c) for p, c in zip(prompt_ids, completion_ids))
    input_ids = torch.full((B, T), pad_token_id, dtype=torch.long)
    attention = torch.zeros((B, T), dtype=torch.bool)
    loss_mask = torch.zeros((B, T), dtype=torch.bool)
    logprobs = torch.zeros((B, T), dtype=torch.float32) if rollout_logprobs is not None else None
    for i, (p, c) in enumerate(zip(prompt_ids, completion_ids)):
        if not p:
            raise ValueError(f"build_batch: row {i} has an empty prompt")
        n = len(p) + len(c)
        input_ids[i, :n] = torch.tensor(list(p) + list(c), dtype=torch.long)
        attention[i, :n] = True
        if completion_masks is None:
            loss_mask[i, len(p):n] = True
        else:
            if len(completion_masks[i]) != len(c):
                raise ValueError(f"build_batch: row {i} has {len(c)} completion tokens but "
                                 f"{len(completion_masks[i])} mask entries")
            loss_mask[i, len(p):n] = torch.tensor(list(completion_masks[i]), dtype=torch.bool)
        if logprobs is not None and c:
            logprobs[i, len(p):n] = torch.tensor(rollout_logprobs[i][: len(c)], dtype=torch.float32)
    return RolloutBatch(
        input_ids=input_ids,
        attention_mask=attention,
        loss_mask=loss_mask,
        group_ids=torch.tensor(group_ids, dtype=torch.long),
        finished=torch.tensor(finished, dtype=torch.bool),
        rollout_logprobs=logprobs,
        rows=list(rows) if rows is not None else [],
    )


def concat_batches(batches: list[RolloutBatch], pad_token_id: int) -> RolloutBatch:
    """Rows of several batches in order, right-padded to the widest (``input_ids`` with
    ``pad_token_id``, other per-token fields with 0 / False).  A per-token field or reward
    component that some batch lacks is dropped (fields) or NaN for its rows (components)."""
    if not batches:
        raise ValueError("concat_batches: no batches")
    if len(batches) == 1:
        return batches[0]
    width = max(b.input_ids.shape[1] for b in batches)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(RolloutBatch):
        parts = [getattr(b, f.name) for b in batches]
        if f.name == "rows":
            values[f.name] = [row for part in parts for row in part] if all(parts) else []
        elif f.name == "reward_components":
            names = sorted({k for part in parts for k in part})
            values[f.name] = {k: torch.cat([part[k] if k in part else torch.full((b.size,), float("nan"))
                                            for part, b in zip(parts, batches)]) for k in names}
        elif f.name == "token_terms":  # a term some batch lacks is 0 on its rows
            names = [k for k in dict.fromkeys(k for part in parts for k in part)]
            values[f.name] = {k: _pad_cat([part.get(k, torch.zeros(b.loss_mask.shape)) for part, b in
                                           zip(parts, batches)], width, 0) for k in names}
        elif any(p is None for p in parts):
            values[f.name] = None
        elif f.name in PER_TOKEN:
            values[f.name] = _pad_cat(parts, width, pad_token_id if f.name == "input_ids" else 0)
        else:
            values[f.name] = torch.cat(parts)
    return RolloutBatch(**values)


def _pad_cat(parts: list[torch.Tensor], width: int, fill) -> torch.Tensor:
    """``[b_i, T_i]`` tensors stacked by rows, right-padded with ``fill`` to ``width`` columns."""
    out = torch.full((sum(p.shape[0] for p in parts), width), fill, dtype=parts[0].dtype)
    row = 0
    for p in parts:
        out[row:row + p.shape[0], :p.shape[1]] = p
        row += p.shape[0]
    return out
