"""rollout.top_k, min_p, repetition_penalty and stop: HFRollout and the vLLM engine apply them the
same way (vLLM's order: penalty, temperature, min-p, top-k, top-p) and report each token's
log-prob under the distribution it was drawn from, which ``by_hand`` computes here from the
model's logits; a stop string ends the completion and stays in it; what no engine can apply is
refused when the config loads.

The vLLM side runs in a child process (tests/helpers/vllm_sampling.py: one engine for the
module, about 45 s on this machine), so its tests are marked slow; the hf tests check the same
cases in process.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from conftest import HELPERS, REPO_ROOT, subprocess_env
from helpers.vllm_sampling import GREEDY, PROMPTS, SAMPLED, cases, record, stop_strings

HF_TOL = 1e-4       # float32 engine against float64 by hand
VLLM_TOL = 1e-3     # as tests/test_rollout_parity.py


def by_hand(model, prompt: list[int], completion: list[int], sampling) -> torch.Tensor:
    """Each completion token's log-prob under the distribution it was sampled from, written out
    from vLLM's definitions in float64: the repetition penalty over the prompt and the tokens
    before it, then (sampling) logits / T, min-p against the most likely token, the k largest
    logits, and the most likely tokens until the mass ranked above a token reaches top_p."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt + completion])).logits[0, len(prompt) - 1:-1].double()
    out = []
    for j, token in enumerate(completion):
        z = logits[j].clone()
        for t in set(prompt) | set(completion[:j]):
            z[t] = z[t] / sampling.repetition_penalty if z[t] > 0 else z[t] * sampling.repetition_penalty
        if sampling.temperature > 0:
            z = z / sampling.temperature
            keep = torch.ones_like(z, dtype=torch.bool)
            if sampling.min_p > 0:
                p = z.softmax(-1)
                keep &= p >= sampling.min_p * p.max()
            if sampling.top_k > 0:
                keep &= z >= z[keep].sort(descending=True).values[min(sampling.top_k, int(keep.sum())) - 1]
            if sampling.top_p < 1:
                q = z.masked_fill(~keep, float("-inf")).softmax(-1)
                order = q.argsort(descending=True)
                above = q[order].cumsum(0) - q[order]
                keep[order[above >= sampling.top_p]] = False
            z = z.masked_fill(~keep, float("-inf"))
        out.append(z.log_softmax(-1)[token])
    return torch.stack(out)


def plain(model, prompt: list[int], completion: list[int], temperature: float) -> torch.Tensor:
    """log_softmax(logits / T) of the completion tokens: what the options must change."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt + completion])).logits[0, len(prompt) - 1:-1].double()
    return (logits / (temperature or 1.0)).log_softmax(-1).gather(1, torch.tensor(completion)[:, None])[:, 0]


@pytest.fixture(scope="module")
def tok(tiny_model):
    from rlkit.models import load_tokenizer

    return load_tokenizer(tiny_model)


@pytest.fixture(scope="module")
def model(tiny_model):
    from rlkit.models import load_causal_lm

    return load_causal_lm(tiny_model, "float32", "cpu")


@pytest.fixture(scope="module")
def prompts(tok) -> list[list[int]]:
    return [tok(p)["input_ids"] for p in PROMPTS]   # three lengths: hf left-pads two of them


def hf_generate(model, tok, prompts, sampling, seed: int = 0) -> list[dict]:
    from rlkit.rollout.hf import HFRollout

    torch.manual_seed(seed)
    return [record(g) for g in HFRollout(model, tok).generate(prompts, sampling)]


@pytest.fixture(scope="module")
def hf_gens(model, tok, prompts) -> dict:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {name: hf_generate(model, tok, prompts, sampling) for name, sampling in cases().items()}
    finally:
        torch.set_num_threads(before)


def check_logprobs(model, prompts, gens: list[dict], sampling, tol: float) -> None:
    """The engine's log-probs equal ``by_hand``, and differ from ``plain`` (the options acted)."""
    gap, effect = 0.0, 0.0
    for g in gens:
        prompt, ids = prompts[g["prompt_index"]], g["token_ids"]
        expected = by_hand(model, prompt, ids, sampling)
        assert torch.isfinite(expected).all(), "a token outside the kept set was sampled"
        gap = max(gap, float((torch.tensor(g["logprobs"], dtype=torch.float64) - expected).abs().max()))
        effect = max(effect, float((expected - plain(model, prompt, ids, sampling.temperature)).abs().max()))
    assert gap < tol
    assert effect > 0.01


# ------------------------------------------------------------------ hf (in process)

@pytest.mark.parametrize("name", [*SAMPLED, "greedy_penalty"])
def test_hf_logprobs_are_those_of_the_processed_distribution(name, hf_gens, model, prompts):
    check_logprobs(model, prompts, hf_gens[name], cases()[name], HF_TOL)


def test_hf_top_k_1_sampling_is_greedy(hf_gens):
    greedy = {g["prompt_index"]: g["token_ids"] for g in hf_gens["greedy"]}
    assert [g["token_ids"] for g in hf_gens["top_k_1"]] == [greedy[g["prompt_index"]] for g in hf_gens["top_k_1"]]
    assert all(lp == 0.0 for g in hf_gens["top_k_1"] for lp in g["logprobs"])


def test_hf_repetition_penalty_changes_greedy_decoding(hf_gens):
    assert [g["token_ids"] for g in hf_gens["greedy_penalty"]] != [g["token_ids"] for g in hf_gens["greedy"]]


def test_hf_ignores_the_models_generation_config(model, tok, prompts, one_thread):
    """A checkpoint's generation_config.json options act on neither vLLM backend (rlkit passes
    every option), so they must not act on hf either."""
    import copy

    expected = {name: hf_generate(model, tok, prompts, cases()[name], seed=3) for name in ("all", "greedy")}
    saved = copy.deepcopy(model.generation_config)
    model.generation_config.update(top_k=1, top_p=0.1, min_p=0.5, temperature=0.2, repetition_penalty=3.0,
                                   no_repeat_ngram_size=1)
    try:
        for name, gens in expected.items():
            assert hf_generate(model, tok, prompts, cases()[name], seed=3) == gens, name
    finally:
        model.generation_config = saved


# ------------------------------------------------------------------ options and config checks

def test_vllm_args_name_every_option():
    """Both vLLM backends send these fields (the server fills any missing one from the model)."""
    from rlkit.rollout import Sampling, vllm_sampling_args

    sampled = Sampling(n=4, max_new_tokens=9, temperature=0.5, top_p=0.9, top_k=7, min_p=0.1,
                       repetition_penalty=1.2, stop=("</answer>",))
    assert vllm_sampling_args(sampled) == {
        "n": 4, "max_tokens": 9, "temperature": 0.5, "top_p": 0.9, "top_k": 7, "min_p": 0.1,
        "repetition_penalty": 1.2, "presence_penalty": 0.0, "frequency_penalty": 0.0, "logprobs": 0,
        "stop": ["</answer>"], "include_stop_str_in_output": True}
    greedy = vllm_sampling_args(Sampling(temperature=0.0, top_k=-1, repetition_penalty=1.5))
    assert (greedy["temperature"], greedy["top_k"], greedy["top_p"], greedy["min_p"]) == (0.0, 0, 1.0, 0.0)
    assert greedy["repetition_penalty"] == 1.5 and greedy["stop"] == []


@pytest.mark.parametrize("overrides,key", [
    (["rollout.top_k=-2"], "rollout.top_k"),
    (["rollout.min_p=1.0"], "rollout.min_p"),
    (["rollout.min_p=-0.1"], "rollout.min_p"),
    (["rollout.repetition_penalty=0"], "rollout.repetition_penalty"),
    (["rollout.repetition_penalty=-1.0"], "rollout.repetition_penalty"),
    (["rollout.stop=['</a>', '']"], "rollout.stop"),
    (["rollout.stop=</a>"], "rollout.stop"),
    (["rollout.stop=[1]"], "rollout.stop"),
    (["rollout.top_k=5", "rollout.temperature=0"], "rollout.top_k"),
    (["rollout.min_p=0.1", "rollout.temperature=0"], "rollout.min_p"),
])
def test_config_refuses_what_no_engine_can_apply(overrides, key):
    from rlkit.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=f"^{key}: "):
        load_config(None, overrides)


def test_config_accepts_the_options():
    from rlkit.config import load_config

    cfg = load_config(None, ["rollout.top_k=0", "rollout.min_p=0.05", "rollout.repetition_penalty=1.1",
                             "rollout.stop=['</answer>', '\\n\\n']", "rollout.temperature=0.8"])
    assert (cfg.rollout.top_k, cfg.rollout.min_p, cfg.rollout.repetition_penalty) == (0, 0.05, 1.1)
    greedy = load_config(None, ["rollout.temperature=0", "rollout.repetition_penalty=1.1", "rollout.stop=['x']"])
    assert greedy.rollout.repetition_penalty == 1.1


@pytest.mark.parametrize("kwargs,option", [(dict(top_k=-3), "top_k"), (dict(min_p=1.5), "min_p"),
                                           (dict(repetition_penalty=0.0), "repetition_penalty"),
                                           (dict(stop=("",)), "stop"), (dict(stop="</a>"), "stop")])
def test_sampling_refuses_what_no_engine_can_apply(kwargs, option):
    from rlkit.rollout import Sampling

    with pytest.raises(ValueError, match=f"Sampling.{option}: "):
        Sampling(**kwargs)


def test_the_producer_samples_with_the_configured_options(tiny_model):
    from rlkit.config import load_config
    from rlkit.producer import RolloutProducer
    from rlkit.rollout import Sampling

    cfg = load_config(None, [f"model.path={tiny_model}", "rollout.num_samples=2", "rollout.max_new_tokens=9",
                             "rollout.temperature=0.8", "rollout.top_p=0.9", "rollout.top_k=5", "rollout.min_p=0.1",
                             "rollout.repetition_penalty=1.2", "rollout.stop=['</answer>']"])
    producer = RolloutProducer(cfg, None, None, None, None, None, None, token_rewards_read=False)
    assert producer.sampling == Sampling(n=2, max_new_tokens=9, temperature=0.8, top_p=0.9, top_k=5, min_p=0.1,
                                         repetition_penalty=1.2, stop=("</answer>",))


# ------------------------------------------------------------------ vLLM (child process)

@pytest.fixture(scope="module")
def vllm_result(tiny_model, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("vllm_sampling") / "result.json"
    proc = subprocess.run([sys.executable, str(HELPERS / "vllm_sampling.py"), tiny_model, str(out)], cwd=REPO_ROOT,
                          env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and out.exists(), f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-6000:]}"
    return json.loads(out.read_text())


@pytest.mark.slow
@pytest.mark.parametrize("name", [*SAMPLED, "greedy_penalty"])
def test_vllm_logprobs_are_those_of_the_processed_distribution(name, vllm_result, model, prompts):
    assert vllm_result["prompts"] == prompts
    check_logprobs(model, prompts, vllm_result["gens"][name], cases()[name], VLLM_TOL)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(GREEDY))
def test_vllm_and_hf_greedy_agree(name, vllm_result, hf_gens):
    """Same weights, same greedy tokens, with and without the repetition penalty."""
    for mine, theirs in zip(vllm_result["gens"][name], hf_gens[name]):
        assert mine["token_ids"] == theirs["token_ids"]
        assert mine["logprobs"] == pytest.approx(theirs["logprobs"], abs=VLLM_TOL)


@pytest.mark.slow
def test_vllm_top_k_1_sampling_is_greedy(vllm_result, hf_gens):
    greedy = {g["prompt_index"]: g["token_ids"] for g in hf_gens["greedy"]}
    gens = vllm_result["gens"]["top_k_1"]
    assert [g["token_ids"] for g in gens] == [greedy[g["prompt_index"]] for g in gens]
    assert all(lp == 0.0 for g in gens for lp in g["logprobs"])


@pytest.mark.slow
def test_stop_strings_end_completions_in_both_backends(vllm_result, hf_gens, model, tok, prompts):
    """Both backends end a greedy completion at the token that completes a stop string, keep
    the string in it, and say which one ended it."""
    from rlkit.rollout import Sampling

    stops = stop_strings(hf_gens["greedy"])
    assert vllm_result["stop"]["stop"] == list(stops)
    hf = hf_generate(model, tok, prompts, Sampling(n=1, max_new_tokens=12, temperature=0.0, stop=stops))
    assert [g["token_ids"] for g in vllm_result["stop"]["gens"]] == [g["token_ids"] for g in hf]
    stopped = 0
    for g, full, vllm in zip(hf, hf_gens["greedy"], vllm_result["stop"]["gens"]):
        assert (vllm["stop_reason"], vllm["finished"], vllm["text"]) == (g["stop_reason"], g["finished"], g["text"])
        assert full["token_ids"][: len(g["token_ids"])] == g["token_ids"]
        if g["stop_reason"] is not None:
            stopped += 1
            assert g["finished"] and g["text"].endswith(g["stop_reason"])
            assert g["stop_reason"] not in tok.decode(g["token_ids"][:-1], skip_special_tokens=True)
    assert stopped == 2


@pytest.mark.slow
@pytest.mark.parametrize("name", [*SAMPLED, *GREEDY, "stop"])
def test_the_server_request_builds_the_engines_sampling_params(name, vllm_result):
    """vLLM's OpenAI server turns rlkit's /v1/completions body into the SamplingParams the
    colocated engine gets, although the model's generation_config sets every option."""
    params = vllm_result["params"][name]
    assert params["server"] == params["engine"]
