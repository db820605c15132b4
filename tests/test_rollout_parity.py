"""Rollout engines agree with the trainer: same greedy tokens, same per-token log-probs.

The vLLM check runs in a child process (tests/helpers/vllm_parity.py): vLLM on CPU needs a
guarded ``__main__`` and ``VLLM_ENABLE_V1_MULTIPROCESSING=0``.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from conftest import HELPERS, REPO_ROOT, subprocess_env

LOGPROB_TOL = 1e-3


def run_parity(model_dir: str, max_new_tokens: int = 16) -> dict:
    proc = subprocess.run(
        [sys.executable, str(HELPERS / "vllm_parity.py"), model_dir, "--max-new-tokens", str(max_new_tokens)],
        cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("PARITY_RESULT ")]
    assert proc.returncode == 0 and lines, (
        f"helper failed (exit {proc.returncode})\n{proc.stdout[-2000:]}\n{proc.stderr[-6000:]}")
    return json.loads(lines[-1].split(" ", 1)[1])


@pytest.fixture(scope="module")
def vllm_parity(tiny_model) -> dict:
    return run_parity(tiny_model)


def test_vllm_differs_from_the_perturbed_policy_before_the_update(vllm_parity):
    # Without this the checks below could pass with an engine that never reloads weights.
    assert not all(vllm_parity["ids_equal_before"]), vllm_parity["vllm_ids_before"]
    assert vllm_parity["logprob_max_abs_before"] > 0.05


def test_vllm_greedy_tokens_match_hf_after_update_weights(vllm_parity):
    assert all(n >= 12 for n in vllm_parity["num_tokens_after"]), vllm_parity["num_tokens_after"]
    assert vllm_parity["vllm_ids_after"] == vllm_parity["hf_ids"]


def test_vllm_logprobs_match_the_trainer_after_update_weights(vllm_parity):
    assert vllm_parity["logprob_max_abs_after"] < LOGPROB_TOL
    assert vllm_parity["sampled_num_tokens"] > 0
    assert vllm_parity["sampled_logprob_max_abs"] < LOGPROB_TOL     # temperature-1 samples too


def test_vllm_and_trainer_score_the_sampling_distribution_at_temperature_07(vllm_parity):
    """At T = 0.7 the engine's log-probs, the trainer's (rollout.temperature=0.7, policy and KL
    reference) and log_softmax(logits / 0.7) agree as closely as at T = 1."""
    assert vllm_parity["t07_num_tokens"] > 0
    assert vllm_parity["t07_vs_t1_max_abs"] > 0.1              # the temperature makes a difference
    assert vllm_parity["t07_engine_vs_sampling"] < LOGPROB_TOL
    assert vllm_parity["t07_trainer_vs_sampling"] < LOGPROB_TOL
    assert vllm_parity["t07_reference_vs_sampling"] < LOGPROB_TOL
    assert vllm_parity["t07_engine_vs_trainer"] < LOGPROB_TOL


def test_vllm_second_update_replaces_the_first(vllm_parity):
    assert vllm_parity["second_update_changed_ids"]               # the second perturbation mattered
    assert all(vllm_parity["second_update_ids_equal"])
    assert vllm_parity["second_update_logprob_max_abs"] < LOGPROB_TOL


# ---------------------------------------------------------------- HF rollout (in process)

def test_hf_rollout_matches_generate_and_trainer_logprobs(tiny_model, one_thread):
    """HFRollout (left-padded, batched) vs one-prompt greedy generate and forward_logprobs."""
    from rlkit.batch import build_batch
    from rlkit.backends.single import forward_logprobs
    from rlkit.models import load_causal_lm, load_tokenizer
    from rlkit.rollout import Sampling
    from rlkit.rollout.hf import HFRollout

    torch.manual_seed(0)
    tok = load_tokenizer(tiny_model)
    model = load_causal_lm(tiny_model, "float32", "cpu")
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    prompts = [tok(text)["input_ids"] for text in ("What is 1 + 2?", "hi", "a longer prompt here")]
    rollout = HFRollout(model, tok)

    greedy = rollout.generate(prompts, Sampling(n=1, max_new_tokens=12, temperature=0.0))
    for g, ids in zip(greedy, prompts):
        ref = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)[0, len(ids):]
        ref = ref.tolist()
        if tok.eos_token_id in ref:
            ref = ref[: ref.index(tok.eos_token_id) + 1]
        assert g.token_ids == ref
        assert g.text == tok.decode(g.token_ids, skip_special_tokens=True)

    torch.manual_seed(1)
    sampled = rollout.generate(prompts, Sampling(n=2, max_new_tokens=12, temperature=1.0))
    assert [g.prompt_index for g in sampled] == [0, 0, 1, 1, 2, 2]
    batch = build_batch([prompts[g.prompt_index] for g in sampled], [g.token_ids for g in sampled],
                        [g.prompt_index for g in sampled], [g.finished for g in sampled],
                        pad_token_id=tok.pad_token_id, rollout_logprobs=[g.logprobs for g in sampled])
    batch.validate()
    with torch.no_grad():
        logp, _ = forward_logprobs(model, batch, with_entropy=False, autocast=False)
    diff = (logp - batch.rollout_logprobs)[batch.loss_mask].abs().max().item()
    assert diff < LOGPROB_TOL
    for g in sampled:
        assert g.finished == (g.token_ids[-1] == tok.eos_token_id)
        assert len(g.token_ids) == 12 or g.finished


@pytest.mark.parametrize("top_p", [1.0, 0.8])
def test_hf_rollout_and_trainer_score_the_sampling_distribution_at_temperature_07(tiny_model, one_thread, top_p):
    """T = 0.7: HFRollout's log-probs and the trainer's (``backend.logprobs`` with
    rollout.temperature=0.7) are log_softmax(logits / 0.7), computed here by hand.  With top_p < 1
    the engine reports the truncated distribution it sampled from (renormalised over the kept
    tokens, so >= the trainer's) while the trainer scores the untruncated one."""
    from rlkit.batch import build_batch
    from rlkit.config import load_config
    from rlkit.backends.single import SingleBackend
    from rlkit.models import load_tokenizer
    from rlkit.rollout import Sampling
    from rlkit.rollout.hf import HFRollout

    T = 0.7
    cfg = load_config(None, [f"model.path={tiny_model}", "model.autocast_bf16=false", "backend.device=cpu",
                             f"rollout.temperature={T}", f"rollout.top_p={top_p}"])
    backend = SingleBackend(cfg, total_optimizer_steps=1)
    tok = load_tokenizer(tiny_model)
    prompts = [tok(text)["input_ids"] for text in ("What is 1 + 2?", "hi")]
    torch.manual_seed(2)
    sampled = HFRollout(backend.model, tok).generate(prompts, Sampling(n=3, max_new_tokens=10, temperature=T,
                                                                       top_p=top_p))
    batch = build_batch([prompts[g.prompt_index] for g in sampled], [g.token_ids for g in sampled],
                        [g.prompt_index for g in sampled], [g.finished for g in sampled],
                        pad_token_id=tok.pad_token_id, rollout_logprobs=[g.logprobs for g in sampled])
    trainer = backend.logprobs(batch, micro_batch_size=4)[batch.loss_mask]
    engine = batch.rollout_logprobs[batch.loss_mask]
    by_hand, by_hand_t1 = [], []
    with torch.no_grad():
        for g in sampled:
            prompt = prompts[g.prompt_index]
            logits = backend.model(torch.tensor([prompt + g.token_ids])).logits[0, len(prompt) - 1:-1].float()
            ids = torch.tensor(g.token_ids)[:, None]
            by_hand.append(torch.log_softmax(logits / T, -1).gather(1, ids)[:, 0])
            by_hand_t1.append(torch.log_softmax(logits, -1).gather(1, ids)[:, 0])
    by_hand, by_hand_t1 = torch.cat(by_hand), torch.cat(by_hand_t1)
    assert (by_hand - by_hand_t1).abs().max() > 0.1              # the temperature makes a difference
    assert (trainer - by_hand).abs().max() < LOGPROB_TOL
    if top_p == 1.0:
        assert (engine - trainer).abs().max() < LOGPROB_TOL
    else:
        assert (engine - trainer).min() > -LOGPROB_TOL           # renormalised over the kept tokens
        assert (engine - trainer).max() > 0.05                   # the truncation is visible
