"""The judge's clients: how ``RubricJudge`` and MPO's meta model reach a model
(rewards/judge.py gives the overview).

A client is any object with ``generate(prompts, max_tokens, temperature) -> list[str | None]``
(each prompt a list of chat messages; None marks a row whose request failed); the ones with
``supports_regex`` also take ``regex=``.  Built in: ``HFClient`` (transformers in this process),
``VLLMClient`` (a vLLM engine of its own in this process), ``HTTPClient`` (an OpenAI-compatible
endpoint) and ``FunctionClient``; ``make_client`` builds one from the config.  The local models
are loaded through ``rlkit.reward_api`` (``make_generator``, ``load_tokenizer``,
``preserved_rng``), the only rlkit module imported here, lazily.
"""
from __future__ import annotations

import http.client
import json
import logging
import os
import random
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from rewards.judge_rubric import JudgeError, Messages, render_prompt
from rewards.pool import load_callable

logger = logging.getLogger("rewards.judge")


class HFClient:
    """transformers ``generate`` in this process; the model loads on the first call."""

    def __init__(self, model: str, dtype: str = "float32", device: str = "cpu", batch_size: int = 8, seed: int = 0):
        if not model:
            raise ValueError("judge client 'hf' needs `model` (a path, hub id or embedded:NAME)")
        self.model, self.dtype, self.device, self.batch_size, self.seed = model, dtype, device, batch_size, seed
        self.lm = self.tokenizer = None
        self.max_len = 0
        self.calls = 0

    @property
    def name(self) -> str:
        return f"hf:{self.model}"

    def _load(self) -> None:
        if self.lm is not None:
            return
        from rlkit.reward_api import make_generator

        made = make_generator(self.model, "hf", dtype=self.dtype, device=self.device)
        self.tokenizer, self.lm, self.max_len = made.tokenizer, made.model, made.max_model_len

    def generate(self, prompts: Sequence[Messages | str], max_tokens: int, temperature: float) -> list[str | None]:
        self._load()
        out: list[str | None] = []
        for start in range(0, len(prompts), self.batch_size):
            out.extend(self._chunk(prompts[start:start + self.batch_size], max_tokens, temperature))
        return out

    def _chunk(self, prompts: Sequence[Messages | str], max_tokens: int, temperature: float) -> list[str]:
        import torch

        tok, lm = self.tokenizer, self.lm
        limit = max(1, self.max_len - max_tokens)
        rows = []
        for p in prompts:
            text, templated = render_prompt(p, tok)
            rows.append(tok(text, add_special_tokens=not templated, verbose=False)["input_ids"][-limit:])
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):  # left padding
            ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r):] = 1
        sample = {"do_sample": False}
        if temperature > 0:
            sample = {"do_sample": True, "temperature": temperature, "top_p": 1.0, "top_k": 0}
        self.calls += 1
        devices = [] if str(lm.device) == "cpu" else None
        with torch.no_grad(), torch.random.fork_rng(devices=devices):  # the trainer's RNG stays as it was
            torch.manual_seed(self.seed * 1_000_003 + self.calls)
            seqs = lm.generate(input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device),
                               max_new_tokens=max_tokens, pad_token_id=tok.pad_token_id, **sample)
        return [tok.decode(s[width:], skip_special_tokens=True) for s in seqs.cpu()]

    def close(self) -> None:
        self.lm = self.tokenizer = None


class VLLMClient:
    """A vLLM engine of its own in this process (not the policy's), created on the first call.

    On CPU vLLM stays in the process only with ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` (set by
    ``rlkit.reward_api.make_generator`` when unset).  ``max_model_len`` is capped at the model's
    ``max_position_embeddings``; prompts longer than ``max_model_len - max_tokens`` keep their end
    (the answer format)."""

    def __init__(self, model: str, dtype: str = "auto", gpu_memory_utilization: float = 0.1,
                 max_model_len: int = 2048, enforce_eager: bool = True, seed: int = 0,
                 kv_cache_memory_bytes: int | None = None):
        if not model:
            raise ValueError("judge client 'vllm' needs `model` (a path, hub id or embedded:NAME)")
        self.model, self.dtype, self.seed, self.kv_cache_memory_bytes = model, dtype, seed, kv_cache_memory_bytes
        self.gpu_memory_utilization, self.max_model_len, self.enforce_eager = (
            gpu_memory_utilization, max_model_len, enforce_eager)
        self.llm = self.tokenizer = None
        self.calls = 0

    @property
    def name(self) -> str:
        return f"vllm:{self.model}"

    def _engine(self):
        if self.llm is not None:
            return self.llm
        from rlkit.reward_api import make_generator

        # the global RNGs, which creating the engine reseeds, are restored by make_generator
        made = make_generator(self.model, "vllm", dtype=self.dtype, max_model_len=self.max_model_len, seed=self.seed,
                              gpu_memory_utilization=self.gpu_memory_utilization, enforce_eager=self.enforce_eager,
                              enable_prefix_caching=True, **self._kv_cache_size())
        self.llm, self.tokenizer, self.max_model_len = made.model, made.tokenizer, made.max_model_len
        return self.llm

    def _kv_cache_size(self) -> dict[str, int]:
        """On CPU, an explicit KV-cache size (``gpu_memory_utilization`` of the host's memory): vLLM's
        CPU worker otherwise grants ``utilization * total - this process's RSS``, which is negative
        when the policy's engine already lives in the process."""
        import torch

        if self.kv_cache_memory_bytes is not None:
            return {"kv_cache_memory_bytes": int(self.kv_cache_memory_bytes)}
        if torch.cuda.is_available():
            return {}
        import psutil

        return {"kv_cache_memory_bytes": int(self.gpu_memory_utilization * psutil.virtual_memory().total)}

    supports_regex = True

    def generate(self, prompts: Sequence[Messages | str], max_tokens: int, temperature: float,
                 regex: str | None = None) -> list[str | None]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import StructuredOutputsParams

        llm = self._engine()
        limit = max(1, self.max_model_len - max_tokens)
        inputs = []
        for p in prompts:
            text, templated = render_prompt(p, self.tokenizer)
            ids = self.tokenizer(text, add_special_tokens=not templated, verbose=False)["input_ids"]
            inputs.append(TokensPrompt(prompt_token_ids=list(ids[-limit:])))
        self.calls += 1
        structured = None if regex is None else StructuredOutputsParams(regex=regex)
        # No per-request seed: it would give every row of the call the same random stream.  The
        # engine samples from the global generators, seeded per call here and restored after.
        params = SamplingParams(n=1, temperature=max(temperature, 0.0), max_tokens=max_tokens,
                                structured_outputs=structured)
        import torch

        from rlkit.reward_api import preserved_rng

        with preserved_rng():
            torch.manual_seed(self.seed * 1_000_003 + self.calls)
            outputs = llm.generate(inputs, params, use_tqdm=False)
        return [out.outputs[0].text if out.outputs else None for out in outputs]

    def close(self) -> None:
        if self.llm is not None:
            self.llm.llm_engine.engine_core.shutdown()
            self.llm = None


RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


class HTTPClient:
    """An OpenAI-compatible endpoint: ``{base_url}/chat/completions`` (``api: chat``) or
    ``{base_url}/completions`` (``api: completions``; the messages are rendered as text, through
    ``tokenizer``'s chat template when one is named).  ``base_url`` may end in ``/v1`` or not.

    One request per row, ``concurrency`` in flight; each request gets ``timeout_s`` and up to
    ``max_retries`` retries (backoff ``backoff_s * 2**attempt`` times a jitter in [0.5, 1.5),
    capped at ``max_backoff_s``).  ``model`` defaults to the first id of ``GET {base_url}/models``.
    The API key comes from ``api_key`` or the environment variable ``api_key_env``."""

    def __init__(self, base_url: str = "http://127.0.0.1:8000/v1", model: str | None = None, api: str = "chat",
                 concurrency: int = 8, timeout_s: float = 60.0, max_retries: int = 3, backoff_s: float = 0.5,
                 max_backoff_s: float = 8.0, on_error: str = "raise", api_key: str | None = None,
                 api_key_env: str = "OPENAI_API_KEY", tokenizer: str | None = None, extra_body: dict | None = None):
        if api not in ("chat", "completions"):
            raise ValueError(f"judge client 'http': api must be 'chat' or 'completions', not {api!r}")
        if on_error not in ("raise", "none"):
            raise ValueError(f"judge client 'http': on_error must be 'raise' or 'none', not {on_error!r}")
        if not str(base_url).startswith(("http://", "https://")):
            raise ValueError(f"judge client 'http': base_url {base_url!r} is not an http(s) URL")
        if concurrency < 1 or timeout_s <= 0 or max_retries < 0:
            raise ValueError("judge client 'http': concurrency >= 1, timeout_s > 0 and max_retries >= 0 are needed")
        base = str(base_url).rstrip("/")
        self.base_url = base if base.endswith("/v1") else base + "/v1"
        self.model, self.api, self.on_error = model, api, on_error
        self.concurrency, self.timeout_s, self.max_retries = concurrency, timeout_s, max_retries
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self.api_key = api_key or os.environ.get(api_key_env or "", "") or None
        self.tokenizer_path, self.extra_body = tokenizer, dict(extra_body or {})
        self._tokenizer = None
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self.requests = self.retries = 0

    @property
    def name(self) -> str:
        return self.base_url

    @property
    def endpoint(self) -> str:
        return f"{self.base_url}/{'chat/completions' if self.api == 'chat' else 'completions'}"

    supports_regex = True  # sent as vLLM's `structured_outputs` field

    def generate(self, prompts: Sequence[Messages | str], max_tokens: int, temperature: float,
                 regex: str | None = None) -> list[str | None]:
        if not prompts:
            return []
        if self.model is None:
            self.model = self._default_model()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="judge-http")
        bodies = [self._body(p, max_tokens, temperature) for p in prompts]
        if regex is not None:
            bodies = [{**body, "structured_outputs": {"regex": regex}} for body in bodies]
        futures = [self._pool.submit(self._complete, body) for body in bodies]
        out: list[str | None] = []
        errors: list[tuple[int, BaseException]] = []
        for row, future in enumerate(futures):
            try:
                out.append(future.result())
            except Exception as exc:  # noqa: BLE001 - one row's failure; on_error decides
                errors.append((row, exc))
                out.append(None)
        if errors:
            row, first = errors[0]
            message = (f"judge request to {self.endpoint} failed for {len(errors)} of {len(prompts)} rows "
                       f"(first: row {row}: {first})")
            if self.on_error == "raise":
                raise JudgeError(message) from first
            logger.warning("%s; those rows get no judge score", message)
        return out

    def _body(self, prompt: Messages | str, max_tokens: int, temperature: float) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "max_tokens": max_tokens, "temperature": max(temperature, 0.0)}
        if self.api == "chat":
            body["messages"] = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        else:
            body["prompt"] = render_prompt(prompt, self._load_tokenizer())[0]
        body.update(self.extra_body)
        return body

    def _load_tokenizer(self):
        if self.tokenizer_path and self._tokenizer is None:
            from rlkit.reward_api import load_tokenizer

            self._tokenizer = load_tokenizer(self.tokenizer_path)
        return self._tokenizer

    def _complete(self, body: dict[str, Any]) -> str:
        data = self._request(self.endpoint, body)
        try:
            choice = data["choices"][0]
            text = choice["message"]["content"] if self.api == "chat" else choice["text"]
        except (KeyError, IndexError, TypeError) as exc:
            raise JudgeError(f"{self.endpoint}: unexpected response {str(data)[:200]!r}") from exc
        return "" if text is None else str(text)

    def _default_model(self) -> str:
        url = f"{self.base_url}/models"
        data = self._request(url, None)
        try:
            return str(data["data"][0]["id"])
        except (KeyError, IndexError, TypeError) as exc:
            raise JudgeError(f"{url}: no model listed ({str(data)[:200]!r}); set the judge's `model`") from exc

    def _request(self, url: str, body: dict | None) -> Any:
        """POST (GET without a body) with retries; the last error names the URL."""
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last: str = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                with self._lock:
                    self.retries += 1
                time.sleep(self._backoff(attempt))
            with self._lock:
                self.requests += 1
            method = "GET" if body is None else "POST"
            request = urllib.request.Request(url, data=payload, headers=headers, method=method)
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    return json.loads(response.read().decode("utf-8"))
            except urllib.error.HTTPError as exc:
                last = f"HTTP {exc.code} {exc.reason}: {_error_body(exc)}"
                if exc.code not in RETRY_STATUS:
                    break
            except http.client.HTTPException as exc:  # a broken or cut response
                last = f"{type(exc).__name__}: {exc}"
            except (TimeoutError, OSError) as exc:  # URLError (refused, DNS), socket timeouts, resets
                reason = getattr(exc, "reason", exc)
                last = (f"timed out after {self.timeout_s:g} s" if isinstance(reason, TimeoutError)
                        else f"{type(reason).__name__}: {reason}")
            except ValueError as exc:  # the body was not JSON
                last = f"invalid JSON in the response: {exc}"
        attempts = attempt + 1
        raise JudgeError(f"{url}: {last} (after {attempts} attempt{'s' if attempts > 1 else ''})")

    def _backoff(self, attempt: int) -> float:
        return min(self.backoff_s * 2 ** (attempt - 1), self.max_backoff_s) * (0.5 + random.random())

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


def _error_body(exc: urllib.error.HTTPError) -> str:
    try:
        return exc.read()[:200].decode("utf-8", errors="replace")
    except Exception:  # noqa: BLE001 - the status is what matters
        return ""


class FunctionClient:
    """Wraps ``fn(prompts, max_tokens, temperature) -> list[str | None]`` as a client."""

    def __init__(self, fn: Callable, name: str = "function"):
        self.fn, self.name = fn, name

    def generate(self, prompts: Sequence[Messages | str], max_tokens: int, temperature: float) -> list[str | None]:
        return list(self.fn(list(prompts), max_tokens, temperature))


CLIENTS = {"hf": HFClient, "vllm": VLLMClient, "http": HTTPClient}


def make_client(client: Any, **kwargs: Any):
    """A judge client from ``client`` (``hf`` | ``vllm`` | ``http`` | ``"module:attr"`` | an object
    with ``generate``) and its keyword arguments; a bad option is a ValueError naming it."""
    if hasattr(client, "generate"):
        if kwargs:
            raise ValueError(f"judge client {client!r} is an object; options {sorted(kwargs)} cannot apply")
        return client
    if not isinstance(client, str):
        raise TypeError(f"judge `client` must be hf, vllm, http or 'module:attr', got {client!r}")
    factory = CLIENTS.get(client)
    if factory is None:
        if ":" not in client:
            raise ValueError(f"unknown judge client {client!r}; choose hf, vllm, http or 'module:attr'")
        factory = load_callable(client)
        if not isinstance(factory, type):
            if hasattr(factory, "generate"):
                return make_client(factory, **kwargs)
            if callable(factory) and not kwargs:
                return FunctionClient(factory, client)
            raise ValueError(f"judge client {client!r} is neither a class, an object with generate() nor a "
                             f"function without options (got options {sorted(kwargs)})")
    try:
        made = factory(**kwargs)
    except TypeError as exc:
        raise ValueError(f"judge client {client!r}: {exc}") from exc
    if not hasattr(made, "generate"):
        raise ValueError(f"judge client {client!r} built {made!r}, which has no generate(prompts, max_tokens, "
                         f"temperature) method")
    return made


def use_constraint(constrained: Any, client: Any, who: str) -> bool:
    """Whether ``client`` decodes under a regular expression: ``auto`` = only an in-process vLLM
    engine; ``true`` needs a client that takes ``regex`` (vllm, http), else a ValueError."""
    if constrained == "auto":
        return isinstance(client, VLLMClient)
    if constrained is True or constrained is False:
        if constrained and not getattr(client, "supports_regex", False):
            raise ValueError(f"{who}: constrained=true needs a client that decodes under a regular expression "
                             f"(vllm or http), not {client_name(client)}")
        return constrained
    raise ValueError(f"{who}: constrained must be auto, true or false, not {constrained!r}")


def client_name(client: Any) -> str:
    return str(getattr(client, "name", type(client).__name__))
