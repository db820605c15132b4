"""Multi-turn episodes on the real rollout backends, token in and token out, and the stop strings
that end a turn (the vLLM server's run is in tests/test_vllm_server.py, on its module's server).

Episodes: TalkEnv (a user message after each of 3 turns) on the tiny model, temperature 1, n=2,
through ``build_runner`` and a backend wrapped in a recorder (tests/helpers/agent_vllm.py).
``check_talk`` compares every turn's input with the ids so far, and the episode with the
recorded sampled ids and the environment ids written out for the character template.
Stop strings: greedy completions with strings taken from the unstopped greedy completion.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from conftest import HELPERS, REPO_ROOT, subprocess_env
from helpers.agent_vllm import check_stops, check_talk, eos_prone, run_stops, run_talk


@pytest.fixture(scope="module")
def tok(tiny_model):
    from rlkit.models import load_tokenizer

    return load_tokenizer(tiny_model)


@pytest.fixture(scope="module")
def models(tiny_model):
    """(the tiny model, its EOS-prone copy) in float32 on CPU."""
    from rlkit.models import load_causal_lm

    return load_causal_lm(tiny_model, "float32", "cpu"), eos_prone(load_causal_lm(tiny_model, "float32", "cpu"))


@pytest.fixture(scope="module")
def hf_stops(models, tok):
    from rlkit.rollout.hf import HFRollout

    return run_stops(HFRollout(models[0], tok), tok)


@pytest.fixture(scope="module")
def vllm_result(tiny_model, tmp_path_factory) -> dict:
    pytest.importorskip("vllm")
    out = tmp_path_factory.mktemp("agent_vllm") / "result.json"
    proc = subprocess.run([sys.executable, str(HELPERS / "agent_vllm.py"), tiny_model, str(out)], cwd=REPO_ROOT,
                          env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and out.exists(), f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-6000:]}"
    return json.loads(out.read_text())


def test_hf_episodes_are_token_in_token_out(models, tok, one_thread):
    from rlkit.rollout.hf import HFRollout

    torch.manual_seed(0)
    talk = run_talk(HFRollout(models[1], tok), tok)
    stats = check_talk(tok, talk, model=models[1])
    assert stats["logprob_max_abs"] < 1e-4


@pytest.mark.slow  # a vLLM engine in a child process; the hf tests check the same in-process
def test_vllm_episodes_are_token_in_token_out(vllm_result, models, tok, one_thread):
    """In the engine after ``update_weights`` with the EOS-prone weights; its log-probs are the
    trainer model's at temperature 1."""
    check_talk(tok, vllm_result["talk"], model=models[1])


def test_hf_stop_strings_end_the_completion_at_their_token(hf_stops, tok):
    check_stops(tok, hf_stops)


@pytest.mark.slow  # a vLLM engine in a child process; the hf tests check the same in-process
def test_vllm_stop_strings_end_the_completion_at_their_token(vllm_result, hf_stops, tok):
    check_stops(tok, vllm_result["stops"])
    # Same weights, same greedy tokens: the stopped completions agree token for token.
    for mine, theirs in zip(vllm_result["stops"]["greedy"], hf_stops["greedy"]):
        assert mine["token_ids"] == theirs["token_ids"]
        assert mine["logprobs"] == pytest.approx(theirs["logprobs"], abs=1e-3)
    for name, gens in vllm_result["stops"]["stopped"].items():
        assert [g["token_ids"] for g in gens] == [g["token_ids"] for g in hf_stops["stopped"][name]], name


def test_hf_stop_end_finds_the_first_prefix_that_completes_the_string(tok):
    """``_stop_end`` on ids whose stop string runs over several tokens, one of them a special
    token that decodes to nothing: a b c </s> d e f holds "cd" from its 5th token on (by hand)."""
    from rlkit.rollout.hf import HFRollout

    rollout = HFRollout(None, tok)
    ids = tok("abc", add_special_tokens=False)["input_ids"] + [tok.eos_token_id] + \
        tok("def", add_special_tokens=False)["input_ids"]
    assert rollout._stop_end(ids, ("cd",)) == ("cd", 5)
    assert rollout._stop_end(ids, ("bc",)) == ("bc", 3)
    assert rollout._stop_end(ids, ("ef", "bc")) == ("bc", 3)          # the earliest end wins
    assert rollout._stop_end(ids, ("c</s>",)) == (None, 0)             # special tokens are not text
    assert rollout._stop_end(ids, ("abcdef",)) == ("abcdef", 7)
