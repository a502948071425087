"""The OpenAI-compatible backend against a real chat-completions server on 127.0.0.1.

The server (http.server in a thread) checks the request format, decodes the data-URL images,
measures how many requests are in flight at once, and plays a script per request id: HTTP 429
with Retry-After, HTTP 500s, a reply slower than the client timeout, a 400, a malformed reply.
"""

from __future__ import annotations

import time

import pytest
import torch

from reasoning_gen.backends import GenRequest, build_backend
from reasoning_gen.backends.openai_compat import parse_retry_after
from reasoning_gen.prompts import Prompt
from tests.reasoning_gen.chat_server import ChatServer


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


def test_a_trickling_server_cannot_hold_a_request_past_its_deadline():
    """A server that answers a byte every 0.3 s never trips the per-read timeout (1 s); the attempt's
    wall-clock deadline (2 s) ends it, and the retry too (it used to take the reply's 5 minutes)."""
    import socket
    import threading

    stop = threading.Event()
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    port = srv.getsockname()[1]

    def trickle(conn):
        with conn:
            conn.recv(1 << 20)  # the request
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n")
            for _ in range(1000):
                if stop.is_set():
                    return
                try:
                    conn.sendall(b" ")
                except OSError:
                    return
                time.sleep(0.3)

    def serve():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            threading.Thread(target=trickle, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    backend = build_backend("openai", base_url=f"http://127.0.0.1:{port}/v1", model="teacher-x", max_retries=1,
                            backoff_s=0.01, timeout_s=1, deadline_s=2, max_tokens=64)
    t0 = time.monotonic()
    try:
        (r,) = backend.generate(_requests(["x"]))
    finally:
        backend.close()
        stop.set()
        srv.close()
    took = time.monotonic() - t0
    assert not r.ok and r.attempts == 2 and "2s deadline" in r.error, r
    assert took < 10, took


def test_parse_retry_after():
    assert parse_retry_after("2.5") == 2.5
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412480.0 - 30) == pytest.approx(30)
    assert parse_retry_after("-4") == 0.0
