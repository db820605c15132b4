"""RubricJudge's OpenAI-compatible HTTP client (rewards/judge.py) against a real local server:
concurrency, the chat and completions endpoints, constrained replies, retries, timeouts and
unreachable endpoints.  The rubric, the parser and the other clients: tests/test_judge.py."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rewards.judge import HTTPClient, JudgeError, Rubric, RubricJudge

RUBRIC = Rubric.from_list([
    {"id": "task_fit", "description": "Does what was asked.", "min": 0, "max": 5},
    {"id": "language", "description": "Fluent and grammatical.", "min": 0, "max": 5},
    {"id": "craft", "description": "Vivid wording.", "min": 1, "max": 10},
])
GOOD_REPLY = "task_fit: 4 - on topic\nlanguage: 3 - a few slips\ncraft: 7 - some images"  # scores 14


# ------------------------------------------------------------------------------------ HTTP client

class FakeOpenAI:
    """An OpenAI-compatible server on 127.0.0.1 (ThreadingHTTPServer in a thread) with knobs:
    ``delay_s`` per request, ``fail_first`` requests answered with ``fail_status``, ``reply(body)``."""

    def __init__(self):
        self.delay_s = 0.0
        self.fail_first = 0
        self.fail_status = 503
        self.reply = lambda body: GOOD_REPLY
        self.lock = threading.Lock()
        self.in_flight = self.max_in_flight = self.count = 0
        self.bodies: list[tuple[str, dict]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                if self.path == "/v1/models":
                    self._json(200, {"object": "list", "data": [{"id": "served-judge", "object": "model"}]})
                else:
                    self._json(404, {"error": "not found"})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with owner.lock:
                    owner.count += 1
                    number = owner.count
                    owner.in_flight += 1
                    owner.max_in_flight = max(owner.max_in_flight, owner.in_flight)
                    owner.bodies.append((self.path, body))
                try:
                    time.sleep(owner.delay_s)
                finally:  # no longer in flight before the reply leaves: the client may send its next at once
                    with owner.lock:
                        owner.in_flight -= 1
                if number <= owner.fail_first:
                    self._json(owner.fail_status, {"error": {"message": "try again"}})
                elif self.path == "/v1/chat/completions":
                    self._json(200, {"choices": [{"index": 0, "message": {"role": "assistant",
                                                                           "content": owner.reply(body)}}]})
                elif self.path == "/v1/completions":
                    self._json(200, {"choices": [{"index": 0, "text": owner.reply(body)}]})
                else:
                    self._json(404, {"error": "not found"})

            def _json(self, status, payload):
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def server():
    fake = FakeOpenAI()
    yield fake
    fake.close()


def http_judge(server_url, **kwargs):
    options = {"rubric": RUBRIC.to_list(), "client": "http", "base_url": server_url, "backoff_s": 0.01,
               "max_backoff_s": 0.05}
    options.update(kwargs)
    return RubricJudge(**options)


def test_http_chat_requests_run_concurrently(server):
    server.delay_s = 0.4
    judge = http_judge(server.url, concurrency=4, model="my-judge", max_tokens=77)
    scores = judge(["c"] * 8, prompts=[f"task {i}" for i in range(8)])
    assert scores == [14.0] * 8
    assert server.count == 8 and server.max_in_flight == 4          # four at a time, as configured
    path, body = server.bodies[0]
    assert path == "/v1/chat/completions" and body["model"] == "my-judge" and body["max_tokens"] == 77
    assert body["messages"][-1]["role"] == "user" and body["temperature"] == 0.0
    tasks = sorted(b["messages"][-1]["content"].split("TASK:\n")[1].split("\n")[0] for _, b in server.bodies)
    assert tasks == sorted(f"task {i}" for i in range(8))
    judge.close()


def test_http_completions_endpoint_and_default_model(server):
    server.reply = lambda body: "task_fit: 5\nlanguage: 5\ncraft: 10"
    judge = http_judge(server.url + "/v1/", api="completions")       # base URL with /v1/ works too
    assert judge(["c", "d"]) == [20.0, 20.0]
    path, body = server.bodies[-1]
    assert path == "/v1/completions" and isinstance(body["prompt"], str) and body["prompt"].endswith("Assistant:")
    assert body["model"] == "served-judge"                            # from GET /v1/models


def test_http_constrained_sends_vllm_structured_outputs(server):
    import re

    from rewards.judge import judge_regex

    assert "structured_outputs" not in (http_judge(server.url)(["a"]) and server.bodies[-1][1])  # off by default
    judge = http_judge(server.url, constrained=True, max_tokens=64)
    assert judge(["a"]) == [14.0]
    regex = server.bodies[-1][1]["structured_outputs"]["regex"]
    assert regex == judge_regex(RUBRIC, 64) and re.fullmatch(regex, GOOD_REPLY + "\n")


@pytest.mark.parametrize("status", [500, 503, 429])
def test_http_retries_then_succeeds(server, status):
    server.fail_first, server.fail_status = 3, status
    judge = http_judge(server.url, concurrency=2, max_retries=3)
    assert judge(["a", "b"]) == [14.0, 14.0]
    assert server.count == 5 and judge.client.retries == 3


def test_http_gives_up_after_max_retries(server):
    server.fail_first = 100
    judge = http_judge(server.url, max_retries=2, concurrency=1)
    with pytest.raises(JudgeError, match=rf"{server.url}/v1/chat/completions.*HTTP 503.*after 3 attempts"):
        judge(["a"])
    assert server.count == 3


def test_http_client_error_is_not_retried(server):
    server.fail_first, server.fail_status = 1, 400
    judge = http_judge(server.url, max_retries=5, on_error="none")
    assert judge(["a"]) == [None]
    assert server.count == 1
    assert judge.update(None)["failed_rows"] == 1


def test_http_timeout(server):
    server.delay_s = 1.5
    judge = http_judge(server.url, timeout_s=0.2, max_retries=1)
    started = time.perf_counter()
    with pytest.raises(JudgeError, match=r"chat/completions.*timed out after 0.2 s.*after 2 attempts"):
        judge(["a"])
    assert time.perf_counter() - started < 1.4          # did not wait for the slow server
    lenient = http_judge(server.url, timeout_s=0.2, max_retries=0, on_error="none")
    assert lenient(["a", "b"]) == [None, None]


def test_http_unreachable_endpoint():
    from conftest import free_port

    url = f"http://127.0.0.1:{free_port()}"                 # nothing listens there
    judge = http_judge(url, model="m", max_retries=1, timeout_s=2)
    with pytest.raises(JudgeError, match=rf"{url}/v1/chat/completions: ConnectionRefusedError.*after 2 attempts"):
        judge(["a", "b"])
    lenient = http_judge(url, model="m", max_retries=0, on_error="none")
    assert lenient(["a", "b"]) == [None, None]
    assert lenient.update(None)["failed_rows"] == 2


def test_http_client_checks_its_options():
    with pytest.raises(ValueError, match="base_url 'localhost:8000' is not an http"):
        HTTPClient(base_url="localhost:8000")
    with pytest.raises(ValueError, match="api must be 'chat' or 'completions'"):
        HTTPClient(api="responses")
    assert HTTPClient(base_url="http://h:1").endpoint == "http://h:1/v1/chat/completions"
