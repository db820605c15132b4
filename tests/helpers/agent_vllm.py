"""Multi-turn episodes and stop strings on the real rollout backends (tests/test_agent_backends.py,
tests/test_vllm_server.py).  The shared pieces live here; run as a script this is the child
process of the in-process vLLM check (vLLM on CPU needs a guarded ``__main__`` and
``VLLM_ENABLE_V1_MULTIPROCESSING=0``):

    python tests/helpers/agent_vllm.py MODEL_DIR OUT_JSON

It starts a colocated vLLM engine on the tiny model, records its greedy completions with and
without the stop strings of ``stop_cases``, then loads ``eos_prone`` weights into the engine
with ``update_weights`` and runs ``run_talk``.  The parent asserts on the JSON it writes.

``eos_prone`` makes the random tiny model end a turn with ``</s>`` about every other turn of six
tokens (an EOS logit near 2.5 against ~0 for the other 98 tokens), so episodes show both kinds
of environment tokens: after a sampled ``</s>`` and after a turn cut at its token limit.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
for _p in (str(TESTS.parent), str(TESTS)):  # rlkit and helpers.* importable in the child
    if _p not in sys.path:
        sys.path.insert(0, _p)

TALK_ROWS = [{"prompt": "hello"}, {"prompt": "2+3?"}, {"prompt": "go"}]
TALK_TURNS, TALK_N, TALK_TOKENS = 3, 2, 6
STOP_PROMPTS = ["hello", "hi there"]
STOP_TOKENS = 20


def eos_prone(model, target_logit: float = 2.5):
    """Point the EOS row of ``lm_head`` along the mean final hidden state, scaled so that the
    EOS logit averages ``target_logit`` (the tiny model's other logits are ~0 +- 0.16)."""
    import torch

    from rlkit.testing import EOS_ID, make_char_tokenizer

    tok = make_char_tokenizer()
    ids = tok.apply_chat_template([{"role": "user", "content": "a fixed probe text, 123 + 456?"}],
                                  add_generation_prompt=True, return_dict=False)
    with torch.no_grad():
        hidden = model.model(torch.tensor([ids])).last_hidden_state[0].mean(0)
        model.lm_head.weight[EOS_ID] = target_logit * hidden / hidden.dot(hidden)
    return model


class Recorder:
    """A rollout backend that records each ``generate`` call: the prompts and the Generations."""

    def __init__(self, backend):
        self.backend, self.calls = backend, []

    def generate(self, prompt_ids, sampling):
        gens = self.backend.generate(prompt_ids, sampling)
        self.calls.append({"prompts": [list(p) for p in prompt_ids], "n": sampling.n, "stop": list(sampling.stop),
                           "gens": [gen_record(g) for g in gens]})
        return gens

    def __getattr__(self, name):
        return getattr(self.backend, name)


def gen_record(g) -> dict:
    return {"prompt_index": g.prompt_index, "token_ids": list(g.token_ids), "logprobs": g.logprobs,
            "text": g.text, "finished": g.finished, "stop_reason": g.stop_reason}


def run_talk(backend, tokenizer) -> dict:
    """``TALK_N`` TalkEnv episodes (a user message after each turn, ``TALK_TURNS`` turns) per row
    of ``TALK_ROWS`` at temperature 1: the episodes and the recorded generate calls."""
    from rlkit.agents import build_runner
    from rlkit.config import AgentConfig
    from rlkit.rollout import Sampling

    recorder = Recorder(backend)
    agent = AgentConfig(env="helpers.agent_kit:TalkEnv", env_kwargs={"turns": TALK_TURNS})
    runner = build_runner(agent, recorder, tokenizer)
    episodes = runner.run(TALK_ROWS, Sampling(n=TALK_N, max_new_tokens=TALK_TOKENS, temperature=1.0))
    runner.executor.close()
    return {"calls": recorder.calls, "episodes": [
        {"prompt_index": e.prompt_index, "prompt_ids": e.prompt_ids, "token_ids": e.token_ids,
         "model_mask": e.model_mask, "logprobs": e.logprobs, "stops": [t.stop for t in e.turns],
         "texts": [t.text for t in e.turns], "done": e.done, "truncated": e.truncated} for e in episodes]}


def stop_prompts(tokenizer) -> list[list[int]]:
    from rlkit.agents.render import ChatRenderer

    renderer = ChatRenderer(tokenizer)
    return [renderer.prompt_ids([{"role": "user", "content": p}], []) for p in STOP_PROMPTS]


def stop_cases(tokenizer, greedy: list[int]) -> dict[str, list[str]]:
    """Stop strings taken from the greedy completion of ``STOP_PROMPTS[0]`` (character tokens):

    - ``middle``: its characters 5..7 (three tokens);
    - ``special``: the characters either side of a special token it sampled mid-text (``<s>``):
      two characters of text over three tokens;
    - ``token_text``: the character before that token and ``"<s"``, which only the raw token
      strings contain (text is decoded with special tokens skipped): never a stop;
    - ``boundary``: the prompt's last character and the completion's first: only a match that
      runs into the prompt, never a stop;
    - ``two``: a late and an early stop string: the early one ends the completion.
    """
    from rlkit.testing import SPECIAL_TOKENS

    chars = [tokenizer.decode([t], skip_special_tokens=True) for t in greedy]
    text = "".join(chars)
    j = next(i for i in range(1, len(greedy) - 1) if chars[i] == "" and chars[i - 1] and chars[i + 1])
    assert tokenizer.convert_ids_to_tokens(greedy[j]) in SPECIAL_TOKENS
    return {"middle": [text[5:8]], "special": [chars[j - 1] + chars[j + 1]],
            "token_text": [chars[j - 1] + "<s"], "boundary": [" " + text[0]],
            "two": [text[12:15], text[2:4]]}


def expected_cut(tokenizer, ids: list[int], stops: list[str]) -> tuple[int, str | None]:
    """Where a completion that ``ids`` continues greedily ends with ``stops``: the first token
    whose text reaches the end of the earliest-ending stop string (None: no stop in the text)."""
    ends, text = [], ""
    for t in ids:
        text += tokenizer.decode([t], skip_special_tokens=True)
        ends.append(len(text))
    hits = [(text.find(s) + len(s), s) for s in stops if s in text]
    if not hits:
        return len(ids), None
    end, stop = min(hits)
    return next(i + 1 for i, e in enumerate(ends) if e >= end), stop


def run_stops(backend, tokenizer) -> dict:
    """Greedy completions of ``STOP_PROMPTS`` without and with each case of ``stop_cases``."""
    from rlkit.rollout import Sampling

    prompts = stop_prompts(tokenizer)
    greedy = [gen_record(g) for g in backend.generate(prompts, Sampling(max_new_tokens=STOP_TOKENS, temperature=0))]
    cases = stop_cases(tokenizer, greedy[0]["token_ids"])
    stopped = {name: [gen_record(g) for g in backend.generate(
        prompts, Sampling(max_new_tokens=STOP_TOKENS, temperature=0, stop=tuple(stops)))]
        for name, stops in cases.items()}
    return {"greedy": greedy, "cases": cases, "stopped": stopped}


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def check_talk(tokenizer, talk: dict, model=None, logprob_tol: float = 1e-3) -> dict:
    """Token in, token out, per episode of ``run_talk``: turn k's input is the prompt and every id
    before it; the episode's ids are the sampled ids exactly as generated with the environment's
    ids between them (written out by hand for the character template); ``model_mask`` and the
    batch's ``loss_mask`` are False exactly on environment ids; the log-probs are the engine's
    (and, given ``model``, ``log_softmax`` of its logits at temperature 1)."""
    import torch

    from rlkit.agents.render import ChatRenderer
    from rlkit.batch import build_batch

    calls, episodes = talk["calls"], talk["episodes"]
    renderer, eos = ChatRenderer(tokenizer), tokenizer.eos_token_id
    assert len(calls) == TALK_TURNS, [len(c["prompts"]) for c in calls]
    assert [e["prompt_index"] for e in episodes] == [i for i in range(len(TALK_ROWS)) for _ in range(TALK_N)]
    for call in calls:  # one call per turn: every live episode once, n=1, the tool-call stop added
        assert call["n"] == 1 and "</tool_call>" in call["stop"]
        assert len(call["prompts"]) == len(call["gens"]) == len(episodes)
    after_eos = set()
    for j, ep in enumerate(episodes):
        user = TALK_ROWS[ep["prompt_index"]]["prompt"]
        assert ep["prompt_ids"] == _ids(tokenizer, f"<s>user: {user}</s>\n<s>assistant: ")
        ids, mask, lps = [], [], []
        for k, call in enumerate(calls):
            assert call["prompts"][j] == ep["prompt_ids"] + ids, (j, k)          # token in
            gen = call["gens"][j]
            sampled = gen["token_ids"]
            assert 1 <= len(sampled) <= TALK_TOKENS and len(gen["logprobs"]) == len(sampled)
            ended = sampled[-1] == eos
            assert gen["finished"] == ended and gen["stop_reason"] is None and (ended or len(sampled) == TALK_TOKENS)
            assert ep["stops"][k] == ("eos" if ended else "length")
            assert ep["texts"][k] == gen["text"] == tokenizer.decode(sampled, skip_special_tokens=True)
            ids, mask, lps = ids + sampled, mask + [True] * len(sampled), lps + gen["logprobs"]
            if k + 1 < TALK_TURNS:  # the environment's ids: close the message (unless </s> was sampled), user, header
                env = _ids(tokenizer, ("\n" if ended else "</s>\n") + f"<s>user: go on {k}</s>\n<s>assistant: ")
                assert env == renderer.observation_ids([{"role": "user", "content": f"go on {k}"}], ended)
                after_eos.add(ended)
                ids, mask, lps = ids + env, mask + [False] * len(env), lps + [0.0] * len(env)
        assert ep["token_ids"] == ids and ep["model_mask"] == mask and ep["logprobs"] == lps, j   # token out
        assert ep["done"] and not ep["truncated"]
    assert after_eos == {True, False}, "want turns that sampled </s> and turns cut at the limit"

    batch = build_batch([e["prompt_ids"] for e in episodes], [e["token_ids"] for e in episodes],
                        [e["prompt_index"] for e in episodes], [True] * len(episodes), tokenizer.pad_token_id,
                        rollout_logprobs=[e["logprobs"] for e in episodes],
                        completion_masks=[e["model_mask"] for e in episodes])
    batch.validate()
    width, worst = batch.input_ids.shape[1], 0.0
    for r, ep in enumerate(episodes):
        p, n = len(ep["prompt_ids"]), len(ep["token_ids"])
        assert batch.input_ids[r, :p + n].tolist() == ep["prompt_ids"] + ep["token_ids"]
        assert batch.loss_mask[r].tolist() == [False] * p + ep["model_mask"] + [False] * (width - p - n)
        sampled_lps = [x for x, m in zip(ep["logprobs"], ep["model_mask"]) if m]
        got = batch.rollout_logprobs[r, p:p + n][torch.tensor(ep["model_mask"])].tolist()
        assert got == sampled_lps
        if model is not None:
            with torch.no_grad():
                logits = model(torch.tensor([ep["prompt_ids"] + ep["token_ids"]])).logits[0, p - 1:-1].float()
            mine = torch.log_softmax(logits, -1).gather(1, torch.tensor(ep["token_ids"])[:, None])[:, 0]
            mine = mine[torch.tensor(ep["model_mask"])]
            worst = max(worst, float((mine - torch.tensor(sampled_lps)).abs().max()))
    assert worst < logprob_tol, worst
    return {"episodes": len(episodes), "logprob_max_abs": worst,
            "model_tokens": sum(sum(e["model_mask"]) for e in episodes),
            "env_tokens": sum(len(e["model_mask"]) - sum(e["model_mask"]) for e in episodes)}


def check_stops(tokenizer, result: dict) -> None:
    """Each stopped completion is the greedy one up to the token that completes the earliest
    stop string (kept), ``finished`` with ``stop_reason`` that string; where the text never
    contains one, the whole greedy completion, unfinished, without padding."""
    greedy = [g["token_ids"] for g in result["greedy"]]
    assert all(len(g) == STOP_TOKENS and tokenizer.eos_token_id not in g for g in greedy)
    cases = stop_cases(tokenizer, greedy[0])
    assert result["cases"] == cases
    for name, stops in cases.items():
        for i, gen in enumerate(result["stopped"][name]):
            n, stop = expected_cut(tokenizer, greedy[i], stops)
            where = (name, stops, i, tokenizer.decode(greedy[i]))
            assert gen["token_ids"] == greedy[i][:n], where
            assert gen["stop_reason"] == stop and gen["finished"] == (stop is not None), (where, gen)
            assert gen["text"] == tokenizer.decode(gen["token_ids"], skip_special_tokens=True)
            assert len(gen["logprobs"]) == n
            if stop is not None:
                assert gen["text"].endswith(stop), where
    first = {name: result["stopped"][name][0] for name in cases}
    assert first["special"]["stop_reason"] and len(first["special"]["token_ids"]) >= 3
    assert tokenizer.decode(first["special"]["token_ids"][-3:], skip_special_tokens=True) == cases["special"][0]
    assert first["middle"]["stop_reason"] == cases["middle"][0]
    assert first["two"]["stop_reason"] == cases["two"][1]
    assert first["token_text"]["stop_reason"] is None and first["boundary"]["stop_reason"] is None


def main() -> int:
    import torch

    from rlkit.config import RolloutConfig
    from rlkit.models import load_causal_lm, load_tokenizer
    from rlkit.rollout.vllm import VLLMRollout

    model_dir, out = sys.argv[1], sys.argv[2]
    torch.set_num_threads(1)
    tokenizer = load_tokenizer(model_dir)
    cfg = RolloutConfig(backend="vllm", dtype="float32", gpu_memory_utilization=0.05, max_model_len=512,
                        enforce_eager=True)
    engine = VLLMRollout(model_dir, tokenizer, cfg, seed=0)
    result = {"stops": run_stops(engine, tokenizer)}
    engine.update_weights(eos_prone(load_causal_lm(model_dir, "float32", "cpu")).named_parameters())
    result["talk"] = run_talk(engine, tokenizer)
    engine.close()
    Path(out).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    sys.exit(main())
