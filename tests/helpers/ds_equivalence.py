"""One training step on a fixed batch, split over ranks; prints loss, grad norm and a weight checksum.
Each rank computes the advantages of its own rows (``--advantage``), so estimators with batch
statistics (REINFORCE++'s and process_rloo's whitening) must reduce them over all ranks.

    python ds_equivalence.py --model DIR --out FILE --single          # the `single` backend, all rows
    DS_ACCELERATOR=cpu deepspeed --num_gpus 2 ds_equivalence.py --model DIR --out FILE --stage 2
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from rlkit.algorithms.advantages import estimator_inputs, get_advantage  # noqa: E402
from rlkit.batch import build_batch  # noqa: E402
from rlkit.config import load_config  # noqa: E402
from rlkit.dist import make_backend  # noqa: E402
from rlkit.objective import make_loss_fn  # noqa: E402

GROUPS, K = 5, 3


def fixed_batch():
    g = torch.Generator().manual_seed(0)
    prompts, completions, groups, scores = [], [], [], []
    for gi in range(GROUPS):
        prompt = torch.randint(4, 90, (int(torch.randint(3, 8, (1,), generator=g)),), generator=g).tolist()
        for _ in range(K):
            n = int(torch.randint(1, 9, (1,), generator=g))
            prompts.append(prompt)
            completions.append(torch.randint(4, 90, (n,), generator=g).tolist())
            groups.append(gi)
            scores.append(float(torch.rand(1, generator=g)))
    batch = build_batch(prompts, completions, groups, [True] * len(prompts), pad_token_id=0)
    batch.scores = torch.tensor(scores)
    return batch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--single", action="store_true")
    parser.add_argument("--stage", type=int, default=2)
    parser.add_argument("--micro", type=int, default=4)
    parser.add_argument("--idle-rank", action="store_true", help="rank 0 takes every row; the others none")
    parser.add_argument("--advantage", default="grpo",
                        help="estimator run on each rank's own rows (batch statistics over all ranks)")
    parser.add_argument("--local_rank", type=int, default=0)  # set by the deepspeed launcher
    args = parser.parse_args()
    cfg = load_config(None, [
        f"model.path={args.model}", "model.autocast_bf16=false", "train.lr=1e-2", "train.grad_clip=1e9",
        "train.threads=1", f"train.micro_batch_size={args.micro}", "algo.loss_agg=token_mean",
        f"backend.name={'single' if args.single else 'deepspeed'}", f"backend.zero_stage={args.stage}"])
    torch.manual_seed(0)
    backend = make_backend(cfg, total_optimizer_steps=10)
    rank = getattr(backend, "rank", 0)
    world = getattr(backend, "world_size", 1)
    batch = fixed_batch()
    mine = [i for i in range(batch.size) if int(batch.group_ids[i]) % world == rank]
    if args.idle_rank:
        mine = list(range(batch.size)) if rank == 0 else []
    local = batch.select(mine)
    estimator = get_advantage(args.advantage)
    inputs = estimator_inputs(estimator, {"all_reduce": backend.all_reduce, "input_ids": local.input_ids,
                                          "token_rewards": local.outcome_token_rewards(local.scores)})
    local.advantages = estimator(local.scores, local.group_ids, local.loss_mask, **inputs)
    counts = [local.size, int(local.loss_mask.sum())]
    seqs, tokens = backend.all_reduce(counts) if world > 1 else counts
    loss_fn = make_loss_fn(cfg.algo, int(seqs), int(tokens), max_len=8, metric_tokens=int(tokens))
    micro = [local.select(idx) for idx in torch.arange(local.size).split(cfg.train.micro_batch_size) if idx.numel()]
    filler = batch.select(torch.arange(1))
    filler.advantages = torch.zeros(filler.loss_mask.shape)
    metrics = backend.train_step(micro, loss_fn, filler=filler)
    checksum = 0.0
    first = None
    for name, tensor in backend.named_parameters():
        checksum += float(tensor.double().abs().sum())
        if first is None:
            first = tensor.detach().flatten()[:5].tolist()
    if rank == 0:
        Path(args.out).write_text(json.dumps({
            "loss": metrics["loss/policy"], "grad_norm": metrics["grad_norm"], "checksum": checksum,
            "first": first, "world": world, "micro_batches": len(micro)}))
    backend.close()  # leave the process group before exit (gloo threads can abort a late exit)


if __name__ == "__main__":
    from rlkit.cli import _leave_distributed

    main()
    sys.exit(_leave_distributed(0))  # as `rlkit train` ends a launched rank: no late C++ abort at exit
