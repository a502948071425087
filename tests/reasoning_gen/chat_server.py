"""A scripted OpenAI-compatible chat-completions server for tests (http.server in a thread).

It checks the request format, decodes the data-URL images, measures how many requests are in
flight at once, and plays a script per request id (``id=KEY`` in the text): ``429`` (with
Retry-After 0.4 s), ``500``, ``400``, ``slow`` (1.2 s more than usual), ``garbage`` (a 200 with
no choices) or ``ok``; the reply names the key, the number of images and the attempt.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class ChatServer:
    """A scripted chat-completions endpoint; ``script[key]`` lists the action of each attempt."""

    def __init__(self, script: dict[str, list], delay_s: float = 0.15, image_size: tuple[int, int] | None = (24, 16),
                 max_tokens: int | None = 64):
        self.script, self.delay_s, self.image_size, self.max_tokens = script, delay_s, image_size, max_tokens
        self.lock = threading.Lock()
        self.inflight = self.max_inflight = 0
        self.arrivals: dict[str, list[float]] = {}
        self.bad_requests: list[str] = []
        self.texts: list[str] = []
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

        assert self.path_ok and body["model"] == "teacher-x"
        assert self.max_tokens is None or body["max_tokens"] == self.max_tokens
        user = body["messages"][-1]
        assert user["role"] == "user" and all(m["role"] == "system" for m in body["messages"][:-1])
        images = 0
        for part in user["content"]:
            if part["type"] == "image_url":
                head, b64 = part["image_url"]["url"].split(",", 1)
                assert head in ("data:image/jpeg;base64", "data:image/png;base64"), head
                img = Image.open(io.BytesIO(base64.b64decode(b64)))
                assert img.mode == "RGB" and (self.image_size is None or img.size == self.image_size), img.size
                images += 1
        text = next(p["text"] for p in user["content"] if p["type"] == "text")
        self.texts.append(text)
        return (text.split("id=")[1].split()[0] if "id=" in text else f"request{len(self.texts)}"), images

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
