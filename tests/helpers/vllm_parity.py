"""vLLM <-> trainer parity check, run as a child process by tests/test_rollout_parity.py.

    python tests/helpers/vllm_parity.py MODEL_DIR [--max-new-tokens 16] [--noise 0.05]

Loads the tiny model twice: as the trainer's policy (``SingleBackend``, float32, no autocast)
and in a colocated vLLM engine (float32).  The trainer's weights are perturbed (seeded noise),
so they differ from the checkpoint vLLM started from.  Before ``update_weights`` vLLM's greedy
completions must differ from the perturbed policy; after ``update_weights(backend.named_parameters())``
vLLM's greedy token ids must equal HF ``generate`` and the log-probs vLLM reports (greedy and
temperature-1 samples) must match ``forward_logprobs`` on a ``build_batch`` batch (and
``backend.logprobs``, the trainer's own path).  Samples at temperature 0.7 are scored three
ways: the engine's log-probs, ``backend.logprobs`` of a trainer configured with
``rollout.temperature=0.7``, and a plain forward pass with ``log_softmax(logits / 0.7)`` (the
sampling distribution); all three must agree.  A second perturbation + update checks that
weights reload more than once.

vLLM on CPU needs the entry point guarded by ``if __name__ == "__main__"`` and
``VLLM_ENABLE_V1_MULTIPROCESSING=0`` (set here before vLLM is imported).
The last stdout line is ``PARITY_RESULT {json}``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

PROMPTS = ["What is 12 + 30?", "Hello there", "7 x 8 = ?", "Count: 1 2 3"]


def hf_greedy(model, prompt_ids: list[list[int]], max_new_tokens: int, eos_id: int, pad_id: int):
    """Greedy continuation of each prompt with transformers' generate (one prompt at a time)."""
    import torch

    out = []
    with torch.no_grad():
        for ids in prompt_ids:
            seq = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos_id,
                                 pad_token_id=pad_id)[0, len(ids):].tolist()
            if eos_id in seq:
                seq = seq[: seq.index(eos_id) + 1]
            out.append(seq)
    return out


def sampling_logprobs(model, prompt_ids, gens, temperature: float):
    """Log-probs of the generated tokens under ``softmax(logits / temperature)``: one plain
    forward pass per completion, independent of rlkit's forward passes (flattened)."""
    import torch

    out = []
    with torch.no_grad():
        for prompt, g in zip(prompt_ids, gens):
            logits = model(torch.tensor([prompt + g.token_ids])).logits[0, len(prompt) - 1:-1].float()
            lp = torch.log_softmax(logits / temperature, dim=-1)
            out.append(lp.gather(1, torch.tensor(g.token_ids)[:, None])[:, 0])
    return torch.cat(out)


def trainer_logprobs(backend, prompt_ids, gens, pad_id: int):
    """(trainer log-probs, engine log-probs) of the generated tokens, flattened.

    The trainer side is ``forward_logprobs`` (autocast off); ``backend.logprobs`` (the
    trainer's own path, whatever forward it selects) must give the same numbers.
    """
    import torch

    from rlkit.batch import build_batch
    from rlkit.backends.single import forward_logprobs

    batch = build_batch(prompt_ids=prompt_ids, completion_ids=[g.token_ids for g in gens],
                        group_ids=list(range(len(gens))), finished=[g.finished for g in gens],
                        pad_token_id=pad_id, rollout_logprobs=[g.logprobs for g in gens])
    batch.validate()
    with torch.no_grad():
        logp, _ = forward_logprobs(backend.model, batch, with_entropy=False, autocast=False)
    via_backend = backend.logprobs(batch, micro_batch_size=4)
    gap = float((via_backend - logp)[batch.loss_mask].abs().max())
    if gap > 1e-4:
        raise AssertionError(f"backend.logprobs differs from forward_logprobs by {gap}")
    return logp[batch.loss_mask], batch.rollout_logprobs[batch.loss_mask]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--noise", type=float, default=0.05)
    args = parser.parse_args()

    import torch

    from rlkit.batch import build_batch
    from rlkit.config import DataConfig, RolloutConfig, load_config
    from rlkit.data import prompt_token_ids
    from rlkit.backends.single import SingleBackend
    from rlkit.models import load_tokenizer
    from rlkit.rollout import Sampling
    from rlkit.rollout.vllm import VLLMRollout

    torch.manual_seed(0)
    tokenizer = load_tokenizer(args.model_dir)
    train_cfg = load_config(None, [f"model.path={args.model_dir}", "model.autocast_bf16=false",
                                   "backend.device=cpu"])
    backend = SingleBackend(train_cfg, total_optimizer_steps=1)   # the trainer's policy
    model = backend.model
    cfg = RolloutConfig(backend="vllm", dtype="float32", gpu_memory_utilization=0.2, max_model_len=512,
                        enforce_eager=True)
    engine = VLLMRollout(args.model_dir, tokenizer, cfg, seed=0)

    # Perturb every trainer parameter with seeded noise: the engine still holds the checkpoint.
    gen = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * args.noise)

    prompt_ids = prompt_token_ids([{"prompt": p} for p in PROMPTS], tokenizer, DataConfig())  # chat template
    greedy = Sampling(n=1, max_new_tokens=args.max_new_tokens, temperature=0.0)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    hf_ids = hf_greedy(model, prompt_ids, args.max_new_tokens, eos, pad)

    before = engine.generate(prompt_ids, greedy)
    lp_trainer_b, lp_engine_b = trainer_logprobs(backend, prompt_ids, before, pad)

    engine.update_weights(backend.named_parameters())
    after = engine.generate(prompt_ids, greedy)
    lp_trainer, lp_engine = trainer_logprobs(backend, prompt_ids, after, pad)

    # Sampled rollouts (temperature 1): the engine's log-probs are what the trainer's ratio uses.
    sampled = engine.generate(prompt_ids[:2], Sampling(n=3, max_new_tokens=args.max_new_tokens, temperature=1.0))
    lp_trainer_s, lp_engine_s = trainer_logprobs(backend, [prompt_ids[g.prompt_index] for g in sampled],
                                                 sampled, pad)

    # Temperature 0.7: the engine reports log-probs of the sampling distribution softmax(logits / T),
    # and so does a trainer whose config says rollout.temperature=0.7 (its policy and reference).
    T = 0.7
    cfg_t = load_config(None, [f"model.path={args.model_dir}", "model.autocast_bf16=false", "backend.device=cpu",
                               f"rollout.temperature={T}", "algo.kl_coef=0.1"])
    backend_t = SingleBackend(cfg_t, total_optimizer_steps=1)
    backend_t.model.load_state_dict(model.state_dict())
    backend_t.ref_model.load_state_dict(model.state_dict())
    sampled_t = engine.generate(prompt_ids[:2], Sampling(n=3, max_new_tokens=args.max_new_tokens, temperature=T))
    prompts_t = [prompt_ids[g.prompt_index] for g in sampled_t]
    batch_t = build_batch(prompt_ids=prompts_t, completion_ids=[g.token_ids for g in sampled_t],
                          group_ids=list(range(len(sampled_t))), finished=[g.finished for g in sampled_t],
                          pad_token_id=pad, rollout_logprobs=[g.logprobs for g in sampled_t])
    lp_trainer_t = backend_t.logprobs(batch_t, micro_batch_size=4)[batch_t.loss_mask]
    lp_ref_t = backend_t.ref_logprobs(batch_t, micro_batch_size=4)[batch_t.loss_mask]
    lp_engine_t = batch_t.rollout_logprobs[batch_t.loss_mask]
    lp_sampling_t = sampling_logprobs(model, prompts_t, sampled_t, T)

    # A second, different update must replace the first one (weights reload more than once).
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * args.noise)
    hf_ids_2 = hf_greedy(model, prompt_ids, args.max_new_tokens, eos, pad)
    engine.update_weights(backend.named_parameters())
    second = engine.generate(prompt_ids, greedy)
    lp_trainer_2, lp_engine_2 = trainer_logprobs(backend, prompt_ids, second, pad)

    result = {
        "second_update_ids_equal": [g.token_ids == h for g, h in zip(second, hf_ids_2)],
        "second_update_changed_ids": hf_ids_2 != hf_ids,
        "second_update_logprob_max_abs": float((lp_trainer_2 - lp_engine_2).abs().max()),
        "sampled_num_tokens": int(lp_engine_s.numel()),
        "sampled_logprob_max_abs": float((lp_trainer_s - lp_engine_s).abs().max()),
        "t07_num_tokens": int(lp_engine_t.numel()),
        "t07_engine_vs_sampling": float((lp_engine_t - lp_sampling_t).abs().max()),
        "t07_trainer_vs_sampling": float((lp_trainer_t - lp_sampling_t).abs().max()),
        "t07_reference_vs_sampling": float((lp_ref_t - lp_sampling_t).abs().max()),
        "t07_engine_vs_trainer": float((lp_engine_t - lp_trainer_t).abs().max()),
        "t07_vs_t1_max_abs": float((lp_sampling_t - sampling_logprobs(model, prompts_t, sampled_t, 1.0)).abs().max()),
        "hf_ids": hf_ids,
        "vllm_ids_before": [g.token_ids for g in before],
        "vllm_ids_after": [g.token_ids for g in after],
        "ids_equal_before": [g.token_ids == h for g, h in zip(before, hf_ids)],
        "ids_equal_after": [g.token_ids == h for g, h in zip(after, hf_ids)],
        "logprob_max_abs_before": float((lp_trainer_b - lp_engine_b).abs().max()),
        "logprob_max_abs_after": float((lp_trainer - lp_engine).abs().max()),
        "num_tokens_after": [len(g.token_ids) for g in after],
        "mean_logprob_after": float(lp_engine.mean()),
    }
    print("PARITY_RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    sys.exit(main())
