"""Dynamic sampling: keep only the groups that teach something, draw more prompts to fill the step.

Two filters, alone or together: DAPO's and PRIME's accuracy band (``accuracy_band_rows``).

DAPO (Yu et al. 2025, arXiv 2503.14476, Eq. 11 and Algorithm 1) drops every group whose K
scores are all equal (all right or all wrong: zero advantage, no gradient) and keeps sampling
until the batch holds ``prompts_per_step`` groups, here with a cap on the number of rounds.
The trainer calls these helpers; they are pure functions of a batch plus the backend's
collectives, so data-parallel ranks agree on which groups train.
"""
from __future__ import annotations

import torch

from rlkit.batch import RolloutBatch


def varied_group_rows(batch: RolloutBatch) -> torch.Tensor:
    """[B] True for the rows of groups whose scores are not all equal."""
    keep = torch.zeros(batch.size, dtype=torch.bool)
    for g in batch.group_ids.unique():
        rows = batch.group_ids == g
        scores = batch.scores[rows]
        keep[rows] = bool(rows.sum() > 1 and (scores != scores[0]).any())
    return keep


def first_groups(batch: RolloutBatch, limit: int, collectives) -> RolloutBatch:
    """The rows of the ``limit`` lowest global group ids over all ranks (group ids grow with
    the order in which prompts were drawn, so this keeps the earliest draws)."""
    mine = sorted(set(batch.group_ids.tolist()))
    everyone = sorted(g for part in collectives.all_gather_object(mine) for g in part)
    chosen = torch.tensor(everyone[:limit], dtype=torch.long)
    return batch.select(torch.nonzero(torch.isin(batch.group_ids, chosen)).flatten())


def accuracy_band_rows(batch: RolloutBatch, component: str, low: float, high: float) -> torch.Tensor:
    """[B] True for the rows of groups whose mean ``component`` value (the accuracy; NaN rows
    left out) lies in ``[low, high]``: PRIME's online prompt filter (arXiv 2502.01456, Sec. 3.4),
    which keeps prompts that are neither too easy nor too hard.  A group with no value is dropped."""
    values = batch.reward_components.get(component)
    if values is None:
        raise KeyError(f"algo.accuracy_band: no reward component {component!r} in the batch "
                       f"(components: {sorted(batch.reward_components)}); set rewards.accuracy_component")
    keep = torch.zeros(batch.size, dtype=torch.bool)
    for g in batch.group_ids.unique():
        rows = batch.group_ids == g
        valid = values[rows][~torch.isnan(values[rows])]
        keep[rows] = bool(valid.numel() and low <= float(valid.float().mean()) <= high)
    return keep


def kept_group_rows(batch: RolloutBatch, dynamic_sampling: bool, accuracy_band, accuracy_component) -> torch.Tensor:
    """[B] rows that pass the configured filters: DAPO's (scores not all equal) and/or PRIME's
    accuracy band."""
    keep = varied_group_rows(batch) if dynamic_sampling else torch.ones(batch.size, dtype=torch.bool)
    if accuracy_band is not None:
        keep &= accuracy_band_rows(batch, accuracy_component, *accuracy_band)
    return keep
