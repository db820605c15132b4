"""Training steps on a fixed batch, split over ranks; writes loss, grad norm and a weight checksum.
Each rank computes the advantages of its own rows (``--advantage``), so estimators with batch
statistics (REINFORCE++'s and process_rloo's whitening) must reduce them over all ranks.
``--kl-mode loss|reward`` adds the KL penalty against the reference (``--reference DIR``, else the
starting policy; with ``--lora R`` the policy with its adapters off), whose log-probs each rank
computes for its own rows as the trainer does.  ``--save DIR`` then writes a checkpoint and
reports the files in it that no rank fsynced.  ``--gc``: gradient checkpointing.

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
from rlkit.backends import make_backend  # noqa: E402
from rlkit.objective import kl_shaped_scores, make_loss_fn  # noqa: E402

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


def multi_turn_batch(model_dir: str):
    """GROUPS x K two-turn episodes run by rlkit's EpisodeRunner: a policy that samples random
    characters (tests/helpers/agent_kit.py's ``RandomPolicy``), ``TalkEnv``'s user message between
    the turns (environment tokens, loss_mask False) and its turn rewards 0 and 1, plus an outcome
    score per row, all scored as the trainer does (token terms ``outcome`` and ``process``)."""
    from agent_kit import RandomPolicy

    from rlkit.agents import build_runner, episode_rows
    from rlkit.config import AgentConfig, RewardsConfig, RewardSpec
    from rlkit.models import load_tokenizer
    from rlkit.rollout import Sampling
    from rlkit.scoring import build_reward, score_batch

    tok = load_tokenizer(model_dir)
    agent = AgentConfig(env="agent_kit:TalkEnv", env_kwargs={"turns": 2})
    rows = [{"prompt": f"question {g}", "score": float(torch.rand(1, generator=torch.Generator().manual_seed(g)))}
            for g in range(GROUPS)]
    episodes = build_runner(agent, RandomPolicy(), tok).run(rows, Sampling(n=K, max_new_tokens=6))
    batch = build_batch([e.prompt_ids for e in episodes], [e.token_ids for e in episodes],
                        [e.prompt_index for e in episodes], [True] * len(episodes), tok.pad_token_id,
                        rows=episode_rows(episodes, rows), completion_masks=[e.model_mask for e in episodes])
    reward = build_reward(RewardsConfig(functions=(RewardSpec(fn="agent_kit:row_score"),)), agent)
    score_batch(reward, batch, [e.model_token_ids for e in episodes], tok)
    batch.scores = batch.scores + torch.arange(batch.size) * 0.01  # distinct outcomes within a group
    assert (~batch.loss_mask & batch.attention_mask).sum() > 0 and "process" in batch.token_terms
    return batch


def step(backend, cfg, batch, mine, args) -> tuple[dict, float]:
    """One optimizer step on this rank's rows; the KL summed over all rows (``kl_mode=reward``)."""
    world = getattr(backend, "world_size", 1)
    local = batch.select(mine)
    scores, kl_sum = local.scores, 0.0
    if args.kl_mode != "none":  # as the trainer does: old log-probs for the reward mode, then the reference's
        if args.kl_mode == "reward":
            local.old_logprobs = backend.logprobs(local, cfg.train.micro_batch_size)
        local.ref_logprobs = backend.ref_logprobs(local, cfg.train.micro_batch_size)
        if args.kl_mode == "reward":
            scores = kl_shaped_scores(local, cfg.algo)
            kl_sum = backend.all_reduce([float((local.scores - scores).sum()) / cfg.algo.kl_coef])[0]
    estimator = get_advantage(args.advantage)
    inputs = estimator_inputs(estimator, {"all_reduce": backend.all_reduce, "input_ids": local.input_ids,
                                          "token_rewards": local.token_rewards if args.multi_turn
                                          else local.outcome_token_rewards(scores)})
    local.advantages = estimator(scores, local.group_ids, local.loss_mask, **inputs)
    counts = [local.size, int(local.loss_mask.sum())]
    seqs, tokens = backend.all_reduce(counts) if world > 1 else counts
    loss_fn = make_loss_fn(cfg.algo, int(seqs), int(tokens), max_len=8, metric_tokens=int(tokens))
    micro = [local.select(idx) for idx in torch.arange(local.size).split(cfg.train.micro_batch_size) if idx.numel()]
    return backend.train_step(micro, loss_fn), kl_sum  # a rank without rows: the backend fills in


def count_recomputed_layers(backend) -> list[int]:
    """A counter of decoder-layer calls made inside ``engine.backward`` (gradient checkpointing's
    recomputation); stays 0 for the single backend, which has no engine."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    calls, inside, recomputed = [0], [False], [0]
    for layer in [m for m in backend.model.modules() if isinstance(m, GradientCheckpointingLayer)]:
        layer.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + inside[0]))
    engine = getattr(backend, "engine", None)
    if engine is not None:
        backward = engine.backward

        def counted(*a, **k):
            inside[0], calls[0] = True, 0
            try:
                return backward(*a, **k)
            finally:
                inside[0] = False
                recomputed[0] += calls[0]

        engine.backward = counted
    return recomputed


def save_and_check(backend, cfg, run_dir: str) -> list[str]:
    """``save_checkpoint`` with ``os.fsync`` recording what it syncs; the files of the checkpoint
    that no rank fsynced (relative paths, on rank 0)."""
    import os

    from rlkit.checkpoint import save_checkpoint
    from rlkit.data import PromptSampler
    from rlkit.scoring import build_reward

    synced, real_fsync = set(), os.fsync

    def fsync(fd):
        st = os.fstat(fd)
        synced.add((st.st_dev, st.st_ino))
        return real_fsync(fd)

    os.fsync = fsync
    try:
        final = save_checkpoint(run_dir, 1, backend, PromptSampler([{"prompt": "1+1", "answer": "2"}], 0),
                                build_reward(cfg.rewards), cfg)
    finally:
        os.fsync = real_fsync
    everyone = set().union(*backend.all_gather_object(synced))
    files = [p for p in Path(final).rglob("*") if p.is_file()]
    assert any("deepspeed" in p.parts for p in files) or backend.world_size == 1
    return sorted(str(p.relative_to(final)) for p in files if (p.stat().st_dev, p.stat().st_ino) not in everyone)


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
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--kl-mode", default="none", choices=["none", "loss", "reward"])
    parser.add_argument("--reference", default=None, help="model.reference (default: the starting policy)")
    parser.add_argument("--lora", type=int, default=0, help="model.lora.r")
    parser.add_argument("--gc", action="store_true", help="model.gradient_checkpointing")
    parser.add_argument("--save", default=None, help="write a checkpoint into this run folder after the steps")
    parser.add_argument("--multi-turn", action="store_true", help="two-turn episodes with environment tokens")
    parser.add_argument("--local_rank", type=int, default=0)  # set by the deepspeed launcher
    args = parser.parse_args()
    overrides = [
        f"model.path={args.model}", "model.autocast_bf16=false", "train.lr=1e-2", "train.grad_clip=1e9",
        "train.threads=1", f"train.micro_batch_size={args.micro}", "algo.loss_agg=token_mean",
        f"backend.name={'single' if args.single else 'deepspeed'}", f"backend.zero_stage={args.stage}",
        f"model.lora.r={args.lora}", f"model.gradient_checkpointing={str(args.gc).lower()}"]
    if args.kl_mode != "none":
        overrides += ["algo.kl_coef=0.5", f"algo.kl_mode={args.kl_mode}", "algo.kl_estimator=k3"]
    if args.reference:
        overrides.append(f"model.reference={args.reference}")
    cfg = load_config(None, overrides)
    torch.manual_seed(0)
    backend = make_backend(cfg, total_optimizer_steps=10)
    rank = getattr(backend, "rank", 0)
    world = getattr(backend, "world_size", 1)
    batch = multi_turn_batch(args.model) if args.multi_turn else fixed_batch()
    mine = [i for i in range(batch.size) if int(batch.group_ids[i]) % world == rank]
    if args.idle_rank:
        mine = list(range(batch.size)) if rank == 0 else []
    recomputed = count_recomputed_layers(backend)
    losses, norms, kls = [], [], []
    for _ in range(args.steps):
        metrics, kl_sum = step(backend, cfg, batch, mine, args)
        losses.append(metrics["loss/policy"])
        norms.append(metrics["grad_norm"])
        kls.append(metrics["kl_ref"] if args.kl_mode == "loss" else kl_sum)
    checksum = 0.0
    first = None
    for name, tensor in backend.named_parameters():
        checksum += float(tensor.double().abs().sum())
        if first is None:
            first = tensor.detach().flatten()[:5].tolist()
    unsynced = save_and_check(backend, cfg, args.save) if args.save else None
    if rank == 0:
        Path(args.out).write_text(json.dumps({
            "loss": losses[-1], "grad_norm": norms[-1], "checksum": checksum, "losses": losses,
            "grad_norms": norms, "kls": kls, "first": first, "world": world, "unsynced": unsynced,
            "recomputed_layer_calls": recomputed[0]}))
    backend.close()  # leave the process group before exit (gloo threads can abort a late exit)


if __name__ == "__main__":
    from rlkit.cli import _leave_distributed

    main()
    sys.exit(_leave_distributed(0))  # as `rlkit train` ends a launched rank: no late C++ abort at exit
