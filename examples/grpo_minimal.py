"""GRPO in one file: rlkit's own pieces, wired by hand, on the built-in arithmetic task.

    python examples/grpo_minimal.py                           # SmolLM2-135M (embedded), HF generation
    python examples/grpo_minimal.py --backend vllm --steps 60 # vLLM generation: faster steps

Read this before rlkit/trainer.py: it is the same algorithm without the machinery (no config
files, checkpoints, DeepSpeed, filters or metrics).  One step:

  1. draw prompts; the rollout engine samples a group of completions for each, with the
     log-prob of every sampled token under the distribution it sampled from
  2. score each completion (reward 1 when its answer after '####' is right, else 0)
  3. GRPO advantages: (reward - group mean) / group std, on every completion token
  4. PPO-clip loss against the engine's log-probs, token mean per sequence, mean over sequences
  5. one AdamW step, then push the new weights into the rollout engine
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer

import rewards
from rlkit.algorithms.advantages import grpo_advantages
from rlkit.algorithms.losses import aggregate, ppo_clip
from rlkit.backends.token_logprobs import token_logprobs
from rlkit.batch import RolloutBatch, build_batch
from rlkit.config import DataConfig, RolloutConfig
from rlkit.data import PromptSampler, load_rows, prompt_token_ids
from rlkit.models import resolve_model_path
from rlkit.rollout import Sampling, make_rollout


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="embedded:smollm2-135m-instruct", help="model folder or embedded:NAME")
    p.add_argument("--backend", default="hf", choices=("hf", "vllm"), help="rollout engine")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--prompts", type=int, default=8, help="prompts per step")
    p.add_argument("--group", type=int, default=8, help="completions per prompt (the GRPO group)")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--micro-batch", type=int, default=16, help="rows per forward/backward pass")
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--eval", type=int, default=20, help="held-out problems for the greedy accuracy")
    p.add_argument("--reward", default="rewards.math:correctness", help="reward function, module:name")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save", help="write the trained model (and tokenizer) to this folder")
    return p.parse_args()


def token_logps(model, batch: RolloutBatch) -> torch.Tensor:
    """[B, T] log-prob of each token given the ones before it (rlkit/batch.py's alignment rule:
    column t holds the log-prob of input_ids[:, t]; column 0 has none and holds 0)."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask.long()).logits  # [B, T, V]
    # logits[:, t - 1] predict token t.  token_logprobs = log_softmax + gather, in memory-light blocks.
    logp, _ = token_logprobs(logits[:, :-1], batch.input_ids[:, 1:])  # [B, T - 1]
    return F.pad(logp, (1, 0))


def greedy_accuracy(rollout, reward, tokenizer, rows: list[dict], data_cfg: DataConfig, max_new_tokens: int) -> float:
    gens = rollout.generate(prompt_token_ids(rows, tokenizer, data_cfg),
                            Sampling(n=1, max_new_tokens=max_new_tokens, temperature=0.0))
    scores = reward.score([g.text for g in gens], answer=[rows[g.prompt_index]["answer"] for g in gens]).scores
    return sum(scores) / max(len(scores), 1)


def main() -> None:
    args = parse_args()
    torch.manual_seed(args.seed)
    path = resolve_model_path(args.model)  # embedded:NAME -> a local checkpoint, prepared once
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.eval()  # dropout off: the log-probs must be the policy's exact ones (gradients still flow)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)

    # The data: level-1 additions, a training stream in shuffled epochs and a held-out slice.
    data_cfg = DataConfig(task="arith", levels=(1,), num_train=2000, num_eval=args.eval,
                          instruction="Give the final answer as a number after '####'.")
    train_rows, eval_rows = load_rows(data_cfg, seed=args.seed)
    sampler = PromptSampler(train_rows, seed=args.seed)

    # hf generates with this very model (its update_weights does nothing); vllm runs an engine
    # in this process, loaded from `path`, whose weights update_weights overwrites in place.
    rollout = make_rollout(args.backend, model, tokenizer, path,
                           RolloutConfig(backend=args.backend, max_new_tokens=args.max_new_tokens), seed=args.seed)
    reward = rewards.combine(score=args.reward)  # one component; combine() also weighs several
    sampling = Sampling(n=args.group, max_new_tokens=args.max_new_tokens, temperature=1.0)
    try:
        accuracy = greedy_accuracy(rollout, reward, tokenizer, eval_rows, data_cfg, args.max_new_tokens)
        print(f"before training: greedy accuracy {accuracy:.2f} on {len(eval_rows)} held-out problems", flush=True)
        for step in range(1, args.steps + 1):
            started = time.perf_counter()
            # 1. sample: prompt i's `group` completions come together, so group id = prompt index
            rows = sampler.next(args.prompts)
            prompts = prompt_token_ids(rows, tokenizer, data_cfg)
            gens = rollout.generate(prompts, sampling)
            batch = build_batch([prompts[g.prompt_index] for g in gens], [g.token_ids for g in gens],
                                group_ids=[g.prompt_index for g in gens], finished=[g.finished for g in gens],
                                pad_token_id=tokenizer.pad_token_id, rollout_logprobs=[g.logprobs for g in gens])
            # 2. score
            scores = reward.score([g.text for g in gens], answer=[rows[g.prompt_index]["answer"] for g in gens]).scores
            scores = torch.tensor(scores, dtype=torch.float32)  # [B]
            # 3. advantages: [B, T], the row's normalised reward on each of its completion tokens
            batch.advantages = grpo_advantages(scores, batch.group_ids, batch.loss_mask)
            # 4. loss, in micro-batches whose gradients add up to the whole batch's
            optimizer.zero_grad()
            total = 0.0
            for index in torch.arange(batch.size).split(args.micro_batch):
                mb = batch.select(index).trimmed()
                logp = token_logps(model, mb)
                # rho = exp(logp - engine logp): about 1 here (one update per batch), and the clip
                # keeps it within [0.8, 1.2] when the engine lags or rounds differently (vLLM bf16).
                per_token = ppo_clip(logp, mb.rollout_logprobs, mb.advantages, mb.loss_mask, eps_low=0.2, eps_high=0.2)
                loss = aggregate(per_token, mb.loss_mask, "seq_mean_token_mean") * len(index) / batch.size
                loss.backward()
                total += loss.item()
            # 5. optimizer step, then the rollout engine gets the new weights (HF names -> tensors)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            rollout.update_weights(model.state_dict().items())  # state_dict: tied weights under both names
            print(f"step {step:3d}  reward {scores.mean().item():.3f}  loss {total:+.4f}  "
                  f"{time.perf_counter() - started:.1f} s", flush=True)
        accuracy = greedy_accuracy(rollout, reward, tokenizer, eval_rows, data_cfg, args.max_new_tokens)
        print(f"after training: greedy accuracy {accuracy:.2f} on {len(eval_rows)} held-out problems", flush=True)
    finally:
        reward.close()
        rollout.close()
    if args.save:
        model.save_pretrained(args.save, safe_serialization=True)
        tokenizer.save_pretrained(args.save)
        print(f"saved to {args.save}")


if __name__ == "__main__":  # vLLM on CPU starts worker processes: the entry point must be guarded
    main()
