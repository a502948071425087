"""The OpenAI-compatible backend against a real chat-completions server on 127.0.0.1.

The server (http.server in a thread) checks the request format, decodes the data-URL images,
measures how many requests are in flight at once, and plays a script per request id: HTTP 429
with Retry-After, HTTP 500s, a reply slower than the client timeout, a 400, a malformed reply.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from reasoning_gen.backends import GenRequest, build_backend
from reasoning_gen.backends.openai_compat import parse_retry_after
from reasoning_gen.prompts import Prompt


class ChatServer:
    """A scripted chat-completions endpoint; ``script[key]`` lists the action of each attempt."""

    def __init__(self, script: dict[str, list], delay_s: float = 0.15):
        self.script, self.delay_s = script, delay_s
        self.lock = threading.Lock()
        self.inflight = self.max_inflight = 0
        self.arrivals: dict[str, list[float]] = {}
        self.bad_requests: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                outer.handle(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda request, address: None  # clients that gave up on a slow reply
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def _check(self, body: dict) -> tuple[str, int]:
        """The request id and the number of valid images; records protocol violations."""
        from PIL import Image

        assert self.path_ok and body["model"] == "teacher-x" and body["max_tokens"] == 64
        user = body["messages"][-1]
        assert user["role"] == "user" and body["messages"][0]["role"] == "system"
        images = 0
        for part in user["content"]:
            if part["type"] == "image_url":
                head, b64 = part["image_url"]["url"].split(",", 1)
                assert head in ("data:image/jpeg;base64", "data:image/png;base64"), head
                img = Image.open(io.BytesIO(base64.b64decode(b64)))
                assert img.size == (24, 16) and img.mode == "RGB"
                images += 1
        text = next(p["text"] for p in user["content"] if p["type"] == "text")
        return text.split("id=")[1].split()[0], images

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        body = json.loads(h.rfile.read(int(h.headers["Content-Length"])))
        self.path_ok = h.path == "/v1/chat/completions"
        try:
            key, images = self._check(body)
        except Exception as e:  # answer 400 and remember: the test fails on any
            self.bad_requests.append(repr(e))
            return self._reply(h, 400, {"error": repr(e)})
        with self.lock:
            self.arrivals.setdefault(key, []).append(time.monotonic())
            attempt = len(self.arrivals[key]) - 1
            self.inflight += 1
            self.max_inflight = max(self.max_inflight, self.inflight)
        steps = self.script.get(key, ["ok"])
        action = steps[min(attempt, len(steps) - 1)]
        time.sleep(self.delay_s + (1.2 if action == "slow" else 0.0))
        headers = {"Retry-After": "0.4"} if action == "429" else {}
        if action in ("429", "500", "400"):
            status, obj = int(action), {"error": f"scripted {action}"}
        elif action == "garbage":
            status, obj = 200, {"nothing": True}
        else:
            status, obj = 200, {"choices": [{"index": 0, "finish_reason": "stop", "message": {
                "role": "assistant", "content": f"reply to {key} with {images} images, attempt {attempt}"}}]}
        # Leave the in-flight count before replying: the client can only send its next request
        # after reading this reply, so the server never over-counts the client's concurrency.
        with self.lock:
            self.inflight -= 1
        self._reply(h, status, obj, headers)

    @staticmethod
    def _reply(h, status: int, obj: dict, headers: dict | None = None) -> None:
        data = json.dumps(obj).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server_factory():
    servers = []

    def make(script, delay_s=0.15):
        servers.append(ChatServer(script, delay_s))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def _requests(keys, frames=2):
    video = torch.randint(0, 256, (frames, 3, 16, 24), dtype=torch.uint8)
    return [GenRequest(Prompt(f"Describe the video. id={k} end", "reasvqa", "be brief"), video, key=k) for k in keys]


@pytest.mark.parametrize("image_format", ["jpeg", "png"])
def test_concurrency_limit_is_reached_and_never_exceeded(server_factory, image_format):
    server = server_factory({})
    backend = build_backend("openai", base_url=server.url, model="teacher-x", max_concurrency=3, timeout_s=5,
                            max_tokens=64, image_format=image_format, seed=0)
    try:
        results = backend.generate(_requests([f"q{i}" for i in range(12)], frames=3))
    finally:
        backend.close()
    assert not server.bad_requests, server.bad_requests
    assert [r.text for r in results] == [f"reply to q{i} with 3 images, attempt 0" for i in range(12)]
    assert server.max_inflight == 3
    assert backend.stats["attempts"] == 12 and backend.stats["retries"] == 0


def test_retries_backoff_retry_after_and_timeouts(server_factory):
    script = {"rate": ["429", "ok"], "flaky": ["500", "500", "ok"], "slow": ["slow", "ok"],
              "dead": ["500"], "bad": ["400"], "garbage": ["garbage"]}
    server = server_factory(script, delay_s=0.05)
    backend = build_backend("openai", base_url=server.url, model="teacher-x", max_concurrency=4, timeout_s=0.6,
                            max_retries=3, backoff_s=0.1, backoff_max_s=1.0, max_tokens=64, seed=1)
    keys = ["ok1", "rate", "flaky", "slow", "dead", "bad", "garbage", "ok2"]
    t0 = time.monotonic()
    try:
        res = dict(zip(keys, backend.generate(_requests(keys))))
    finally:
        backend.close()
    assert not server.bad_requests, server.bad_requests
    for k in ("ok1", "ok2"):
        assert res[k].ok and res[k].attempts == 1
    # 429: retried once, after at least the Retry-After of 0.4 s (the backoff alone is <= 0.1 s)
    assert res["rate"].text == "reply to rate with 2 images, attempt 1"
    gap = server.arrivals["rate"][1] - server.arrivals["rate"][0]
    assert 0.4 <= gap < 1.0, gap
    # 500, 500, ok: exponential backoff with jitter, retry n waits in [0.5, 1] * 0.1 * 2**n
    assert res["flaky"].ok and res["flaky"].attempts == 3
    a = server.arrivals["flaky"]
    assert 0.05 <= a[1] - a[0] < 0.5 and 0.1 <= a[2] - a[1] < 0.6
    # slower than the 0.6 s socket timeout: a timeout, then a retry that succeeds
    assert res["slow"].ok and res["slow"].attempts == 2 and backend.stats["timeouts"] == 1
    # always 500: 1 + max_retries attempts, then a failure that says why
    assert not res["dead"].ok and res["dead"].attempts == 4 and len(server.arrivals["dead"]) == 4
    assert "gave up after 4 attempts" in res["dead"].error and "HTTP 500" in res["dead"].error
    # 400 and a malformed 200 are not retried
    assert not res["bad"].ok and len(server.arrivals["bad"]) == 1 and "HTTP 400" in res["bad"].error
    assert not res["garbage"].ok and len(server.arrivals["garbage"]) == 1 and "malformed" in res["garbage"].error
    assert backend.stats["http_429"] == 1 and backend.stats["http_500"] == 2 + 4
    assert time.monotonic() - t0 < 8


def test_connection_refused_is_retried_then_failed():
    import socket

    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backend = build_backend("openai", base_url=f"http://127.0.0.1:{port}/v1", model="teacher-x", max_retries=2,
                            backoff_s=0.01, timeout_s=1, max_tokens=64)
    try:
        (r,) = backend.generate(_requests(["x"]))
    finally:
        backend.close()
    assert not r.ok and r.attempts == 3 and "connection error" in r.error


def test_parse_retry_after():
    assert parse_retry_after("2.5") == 2.5
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412480.0 - 30) == pytest.approx(30)
    assert parse_retry_after("-4") == 0.0
