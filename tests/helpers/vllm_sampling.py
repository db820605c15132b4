"""The sampling options on a colocated vLLM engine, run as a child process by
tests/test_sampling_options.py (vLLM on CPU needs a guarded ``__main__`` and
``VLLM_ENABLE_V1_MULTIPROCESSING=0``):

    python tests/helpers/vllm_sampling.py MODEL_DIR OUT_JSON

One engine (float32) on the tiny model generates each case of ``cases()`` for ``PROMPTS``, and
greedy completions with the ``stop_strings`` of its greedy ones; the parent compares the
completions with ``HFRollout`` and with log-probs it computes by hand.
``server_params`` turns each case into vLLM's ``SamplingParams`` twice, as the colocated engine
builds it and as the OpenAI server builds it from rlkit's ``/v1/completions`` body with a model
whose ``generation_config.json`` sets every option (``MODEL_DEFAULTS``): the two must agree.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

PROMPTS = ["What is 12 + 30?", "hi", "Count: 1 2 3 4"]
TOKENS = 12
T = 0.7
# Sampled cases (n = 3 at temperature T) and greedy ones (n = 1).
SAMPLED = {
    "top_k_1": dict(top_k=1),
    "top_k_2": dict(top_k=2),
    "min_p": dict(min_p=0.9),
    "penalty": dict(repetition_penalty=1.8),
    "all": dict(top_k=6, min_p=0.8, top_p=0.5, repetition_penalty=1.3),
}
GREEDY = {"greedy": {}, "greedy_penalty": dict(repetition_penalty=1.8)}
# What a checkpoint's generation_config.json may set; vLLM's server uses it for every field a
# request leaves out.
MODEL_DEFAULTS = {"temperature": 0.6, "top_p": 0.8, "top_k": 20, "min_p": 0.05, "repetition_penalty": 1.05,
                  "presence_penalty": 0.5, "frequency_penalty": 0.5}
PARAM_FIELDS = ("n", "temperature", "top_p", "top_k", "min_p", "repetition_penalty", "presence_penalty",
                "frequency_penalty", "max_tokens", "logprobs", "stop", "include_stop_str_in_output")


def cases() -> dict:
    """name -> Sampling for every case the engine runs."""
    from rlkit.rollout import Sampling

    out = {name: Sampling(n=3, max_new_tokens=TOKENS, temperature=T, **opts) for name, opts in SAMPLED.items()}
    out.update({name: Sampling(n=1, max_new_tokens=TOKENS, temperature=0.0, **opts) for name, opts in GREEDY.items()})
    return out


def stop_strings(greedy: list[dict]) -> tuple[str, ...]:
    """Two characters from the middle of the first and of the last greedy completion."""
    return greedy[0]["text"][3:5], greedy[-1]["text"][4:6]


def record(g) -> dict:
    return {"prompt_index": g.prompt_index, "token_ids": list(g.token_ids), "logprobs": g.logprobs, "text": g.text,
            "finished": g.finished, "stop_reason": g.stop_reason}


def server_params(sampling) -> dict:
    """{"engine": fields, "server": fields} of the SamplingParams each vLLM backend builds."""
    from vllm import SamplingParams
    from vllm.entrypoints.openai.completion.protocol import CompletionRequest

    from rlkit.rollout import vllm_sampling_args

    args = vllm_sampling_args(sampling)
    request = CompletionRequest(model="m", prompt=[[1, 2, 3]], return_token_ids=True, **args)
    sides = {"engine": SamplingParams(**args),
             "server": request.to_sampling_params(sampling.max_new_tokens, default_sampling_params=MODEL_DEFAULTS)}
    return {side: {f: getattr(p, f) for f in PARAM_FIELDS} for side, p in sides.items()}


def main() -> int:
    model_dir, out_path = sys.argv[1], Path(sys.argv[2])

    from rlkit.config import RolloutConfig
    from rlkit.models import load_tokenizer
    from rlkit.rollout import Sampling
    from rlkit.rollout.vllm import VLLMRollout

    tokenizer = load_tokenizer(model_dir)
    prompts = [tokenizer(p)["input_ids"] for p in PROMPTS]
    engine = VLLMRollout(model_dir, tokenizer, RolloutConfig(backend="vllm", dtype="float32", max_model_len=128,
                                                            gpu_memory_utilization=0.2, enforce_eager=True), seed=0)
    result = {"prompts": prompts, "gens": {}, "params": {}}
    for name, sampling in cases().items():
        result["gens"][name] = [record(g) for g in engine.generate(prompts, sampling)]
        result["params"][name] = server_params(sampling)
    stop = Sampling(n=1, max_new_tokens=TOKENS, temperature=0.0, stop=stop_strings(result["gens"]["greedy"]))
    result["stop"] = {"stop": list(stop.stop), "gens": [record(g) for g in engine.generate(prompts, stop)]}
    result["params"]["stop"] = server_params(stop)
    engine.close()
    out_path.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    sys.exit(main())
