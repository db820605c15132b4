"""Server mode: a real ``rlkit serve`` process (vLLM's API server on CPU) that training sends
prompts to and pushes weights into through vLLM's weight-transfer API (rlkit's gloo backend).

One server is started for the module; the last test kills it and checks the clear error.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
import torch

from conftest import REPO_ROOT, free_port, run_cli, run_deepspeed_cli, subprocess_env, tiny_overrides

pytest.importorskip("vllm")
COUNTING = "rewards.functions=[{fn: 'rlkit.testing_rewards:CountingReward', name: digits}]"


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    """``rlkit serve TINY --dtype float32 --enforce-eager`` on a free port; yields (url, process)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("server") / "server.log"
    env = subprocess_env()
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING")  # the server runs vLLM's usual engine process
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "rlkit.cli", "serve", tiny_model, "--port", str(port),
                                 "--dtype", "float32", "--max-model-len", "512", "--gpu-memory-utilization",
                                 "0.05", "--enforce-eager"], cwd=REPO_ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 240
    while not _healthy(url):
        if proc.poll() is not None or time.time() > deadline:
            _kill_server(proc)
            pytest.fail(f"rlkit serve did not come up:\n{log.read_text()[-4000:]}")
        time.sleep(1)
    yield url, proc
    _kill_server(proc)


def _kill_server(proc: subprocess.Popen) -> None:
    """SIGKILL the server's whole process group (API server and its engine process)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(30)


def _rollout(tiny_model: str, url: str, **extra):
    from rlkit.config import load_config
    from rlkit.models import load_tokenizer
    from rlkit.rollout import make_rollout

    overrides = ["rollout.backend=vllm_server", f"rollout.server_url={url}", "rollout.dtype=float32",
                 *[f"rollout.{k}={v}" for k, v in extra.items()]]
    cfg = load_config(None, overrides)
    tokenizer = load_tokenizer(tiny_model)
    return make_rollout("vllm_server", None, tokenizer, tiny_model, cfg.rollout), tokenizer


def test_buckets_pack_consecutive_tensors_up_to_the_limit():
    from rlkit.rollout.weight_transfer import plan_buckets

    assert plan_buckets([4, 4, 4, 10, 1, 1], 8) == [[0, 1], [2], [3], [4, 5]]
    assert plan_buckets([], 8) == []
    assert plan_buckets([9], 8) == [[0]]


def test_generation_and_weight_push_match_transformers(server, tiny_model, one_thread):
    """After a push of perturbed weights (in small buckets) the server's greedy tokens equal
    transformers' on the perturbed model, and its sampled log-probs equal the trainer's."""
    from rlkit.models import load_causal_lm
    from rlkit.rollout import Sampling

    url, _ = server
    rollout, tokenizer = _rollout(tiny_model, url, weight_bucket_mb=0.05)  # ~12 buckets, some 1-tensor
    model = load_causal_lm(tiny_model, "float32", "cpu")
    prompts = [tokenizer.encode("12+34="), tokenizer.encode("7*8="), tokenizer.encode("hello")]
    before = rollout.generate(prompts, Sampling(n=1, max_new_tokens=10, temperature=0))
    with torch.no_grad():
        generator = torch.Generator().manual_seed(0)
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.05)
    rollout.update_weights(model.named_parameters())
    greedy = rollout.generate(prompts, Sampling(n=1, max_new_tokens=10, temperature=0))
    assert [g.token_ids for g in greedy] != [g.token_ids for g in before]  # the push changed the server
    for prompt, gen in zip(prompts, greedy):
        expected = model.generate(torch.tensor([prompt]), max_new_tokens=10, do_sample=False)[0, len(prompt):]
        assert gen.token_ids == expected.tolist()[:len(gen.token_ids)]

    for temperature in (1.0, 0.7):  # log-probs of the sampling distribution softmax(logits / T)
        sampled = rollout.generate(prompts, Sampling(n=4, max_new_tokens=6, temperature=temperature))
        assert [g.prompt_index for g in sampled] == [0] * 4 + [1] * 4 + [2] * 4
        for gen in sampled:
            ids = torch.tensor([prompts[gen.prompt_index] + gen.token_ids])
            with torch.no_grad():
                logits = model(ids).logits[0, len(prompts[gen.prompt_index]) - 1:-1].float()
            mine = torch.log_softmax(logits / temperature, -1).gather(1, torch.tensor(gen.token_ids)[:, None])[:, 0]
            assert torch.allclose(mine, torch.tensor(gen.logprobs), atol=1e-4), temperature
    rollout.close()


def test_serve_command_asks_for_the_sampling_distributions_logprobs():
    from rlkit.rollout.vllm_server import serve_command

    argv, _ = serve_command("MODEL", extra=["--enforce-eager"])
    assert argv[argv.index("--logprobs-mode") + 1] == "processed_logprobs"
    assert argv[-1] == "--enforce-eager"
    for extra in (["--logprobs-mode", "raw_logprobs"], ["--logprobs-mode=raw_logprobs"]):
        with pytest.raises(ValueError, match="--logprobs-mode processed_logprobs"):
            serve_command("MODEL", extra=extra)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_training_run_pushes_weights_to_the_server(server, tiny_model, tmp_path, lora):
    """A short run with rollout.backend=vllm_server: metrics carry sync times, and the server's
    held-out answers after training are the exported model's greedy answers (with LoRA the
    pushes after the first carry only the merged layers that the adapters change)."""
    from conftest import assert_engine_matches_export

    url, _ = server
    overrides = tiny_overrides(tiny_model, "vllm_server", rollout__server_url=url, train__lr="3e-3") + [
        COUNTING, "rewards.accuracy_component=digits", "train.steps=3"]
    if lora:
        overrides += ["model.lora.r=4", "model.lora.target_modules=[q_proj,v_proj]", "train.lr=5e-2"]
    res = run_cli(overrides, tmp_path / "run")
    assert res.returncode == 0, res.describe()
    train = [json.loads(s) for s in (res.run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [m for m in train if m["kind"] == "train"]
    assert len(train) == 3 and all(m["time/sync"] > 0 for m in train)
    assert_engine_matches_export(res.run_dir, step=3)


def test_two_deepspeed_ranks_share_one_server(server, tiny_model, tmp_path):
    """ZeRO-3 on 2 ranks: both ranks generate through the server, rank 0 pushes the gathered
    weights, and the server ends up serving the exported model."""
    from conftest import assert_engine_matches_export

    url, _ = server
    overrides = tiny_overrides(tiny_model, "vllm_server", rollout__server_url=url, train__lr="3e-3",
                               train__prompts_per_step=4, backend__zero_stage=3) + [
        COUNTING, "rewards.accuracy_component=digits", "train.steps=2"]
    res = run_deepspeed_cli(overrides, tmp_path / "run")
    assert res.returncode == 0, res.describe()
    assert_engine_matches_export(res.run_dir, step=2)


def test_agent_episodes_and_stop_strings_through_the_server(server, tiny_model, one_thread):
    """Token in, token out on the server (tests/helpers/agent_vllm.py): stop strings on the tiny
    model's weights (pushed back: the runs above changed them), then TalkEnv episodes after a push
    of EOS-prone weights, with the pushed model's log-probs."""
    from helpers.agent_vllm import check_stops, check_talk, eos_prone, run_stops, run_talk
    from rlkit.models import load_causal_lm
    from rlkit.rollout.hf import HFRollout

    url, _ = server
    rollout, tokenizer = _rollout(tiny_model, url)
    model = load_causal_lm(tiny_model, "float32", "cpu")
    rollout.update_weights(model.named_parameters())
    stops = run_stops(rollout, tokenizer)
    check_stops(tokenizer, stops)
    hf = run_stops(HFRollout(model, tokenizer), tokenizer)
    assert [g["token_ids"] for g in stops["greedy"]] == [g["token_ids"] for g in hf["greedy"]]
    rollout.update_weights(eos_prone(model).named_parameters())
    check_talk(tokenizer, run_talk(rollout, tokenizer), model=model)
    rollout.close()


def test_a_server_that_is_gone_raises_a_clear_error(server, tiny_model):
    """Connection refused at start, and a server killed between steps: RolloutServerError naming
    the URL, promptly (no hang in the weight broadcast)."""
    from rlkit.models import load_causal_lm
    from rlkit.rollout import Sampling
    from rlkit.rollout.vllm_server import RolloutServerError

    nowhere = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(RolloutServerError, match=f"{nowhere} is not reachable"):
        _rollout(tiny_model, nowhere)

    url, proc = server
    rollout, tokenizer = _rollout(tiny_model, url, server_timeout_s=20)
    model = load_causal_lm(tiny_model, "float32", "cpu")
    rollout.update_weights(model.named_parameters())  # connected and synced once
    _kill_server(proc)  # as if its machine went away
    started = time.perf_counter()
    with pytest.raises(RolloutServerError, match=url):
        rollout.generate([tokenizer.encode("1+1=")], Sampling(n=1, max_new_tokens=4))
    with pytest.raises(RolloutServerError, match=url):
        rollout.update_weights(model.named_parameters())
    assert time.perf_counter() - started < 20
    rollout.close()
