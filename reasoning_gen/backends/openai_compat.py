"""A teacher behind any OpenAI-compatible chat-completions server (vLLM serve, SGLang, TGI, ...).

Standard library only (``urllib.request`` in a thread pool): frames go as base64 data URLs
(JPEG or PNG), at most ``max_concurrency`` requests are in flight, and transient failures
(HTTP 408/409/425/429/5xx, timeouts, dropped connections) are retried with exponential backoff
and jitter; a ``Retry-After`` header (seconds or HTTP date) is honoured as the minimum wait.
Other HTTP errors (400, 401, 404 ...) fail at once: retrying cannot fix them.

Circuit breaker: after ``max_consecutive_failures`` failed attempts in a row (no success in
between, over all threads: a server that is down or answers only errors), no more requests are
sent and ``generate`` raises :class:`BackendUnavailable`, so the job stops in seconds to about a
minute instead of walking every remaining question through its retry schedule.

``timeout_s`` bounds every socket operation (connect, each read), i.e. a server that sends
nothing for ``timeout_s`` seconds. ``deadline_s`` bounds the whole attempt (connect, request, the
complete reply): a watchdog shuts the socket down when it passes, so a server that trickles a byte
now and then cannot hold a request, and the job, forever.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import random
import socket
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from reasoning_gen.backends.base import Backend, BackendUnavailable, GenRequest, GenResult
from reasoning_gen.images import data_url

RETRY_STATUS = {408, 409, 425, 429}


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


class OpenAIBackend(Backend):
    """Chat-completions client with bounded concurrency, retries and timeouts.

    Args:
        base_url: the API root, e.g. ``http://127.0.0.1:8000/v1`` (``/chat/completions`` is added
            unless already there).
        model: the model name sent in every request (also the teacher id of the records).
        api_key: bearer token, or None for servers without authentication.
        max_concurrency: requests in flight at most.
        timeout_s: socket timeout of every connect / read (seconds).
        max_retries: retries after the first attempt for transient failures.
        backoff_s, backoff_max_s: the n-th retry waits ``min(backoff_max_s, backoff_s * 2**n)``
            scaled by a random factor in [0.5, 1] (jitter), and never less than Retry-After.
        max_retry_after_s: a longer Retry-After is capped (and said so in the error if it fails).
        image_format: ``jpeg`` (needs Pillow) or ``png``; jpeg_quality for JPEG.
        max_tokens, temperature: generation settings; extra_body: more JSON fields to send.
        seed: seed of the jitter (reproducible waits in tests).
        max_consecutive_failures: failed attempts in a row that open the circuit breaker (0 = never).
        deadline_s: wall-clock limit of one attempt, the whole reply included (default ``1.5 * timeout_s``).
            With the defaults (60 s without a byte, 90 s in all, the breaker at 8 = the concurrency) a server
            that stays silent stops the job after about a minute, one that trickles after about 90 s; a
            teacher whose replies take longer needs larger values (``--opt timeout_s=... deadline_s=...``).
    """

    def __init__(self, base_url: str, model: str, api_key: str | None = None, max_concurrency: int = 8,
                 timeout_s: float = 60.0, max_retries: int = 5, backoff_s: float = 1.0,
                 backoff_max_s: float = 60.0, max_retry_after_s: float = 300.0, image_format: str = "jpeg",
                 jpeg_quality: int = 90, max_tokens: int = 1024, temperature: float = 0.0,
                 extra_body: dict | None = None, seed: int | None = None, max_consecutive_failures: int = 8,
                 deadline_s: float | None = None):
        if max_concurrency < 1 or max_retries < 0 or timeout_s <= 0 or (deadline_s is not None and deadline_s <= 0):
            raise ValueError("max_concurrency >= 1, max_retries >= 0, timeout_s > 0 and deadline_s > 0 are required")
        self.deadline_s = 1.5 * timeout_s if deadline_s is None else deadline_s
        url = base_url.rstrip("/")
        self.url = url if url.endswith("/chat/completions") else url + "/chat/completions"
        self.model, self.api_key = model, api_key
        self.name = f"openai:{model}"
        self.timeout_s, self.max_retries = timeout_s, max_retries
        self.backoff_s, self.backoff_max_s, self.max_retry_after_s = backoff_s, backoff_max_s, max_retry_after_s
        self.image_format, self.jpeg_quality = image_format, jpeg_quality
        self.max_tokens, self.temperature, self.extra_body = max_tokens, temperature, dict(extra_body or {})
        self.max_consecutive_failures = max_consecutive_failures
        self._failures_in_row, self.breaker = 0, None  # breaker: why it opened (None = closed)
        self.stats: Counter = Counter()
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._pool = ThreadPoolExecutor(max_concurrency, thread_name_prefix="openai-backend")

    def payload(self, req: GenRequest) -> dict:
        """The chat-completions JSON body: system message, then the frames, then the text."""
        content: list[dict] = []
        for frame in [] if req.frames is None else req.frames:
            content.append({"type": "image_url",
                            "image_url": {"url": data_url(frame, self.image_format, self.jpeg_quality)}})
        content.append({"type": "text", "text": req.prompt.text})
        messages = [{"role": "system", "content": req.prompt.system}] if req.prompt.system else []
        messages.append({"role": "user", "content": content})
        return {"model": self.model, "messages": messages, "max_tokens": self.max_tokens,
                "temperature": self.temperature, **self.extra_body}

    def _post(self, body: bytes) -> str:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        watch = _Deadline(self.deadline_s)
        try:
            with _opener(watch).open(request, timeout=self.timeout_s) as resp:
                raw = resp.read()
        except Exception as e:  # noqa: BLE001 - mapped to retryable / final below
            if watch.fired:  # whatever the shut-down socket raised: this attempt ran out of time
                self._count("timeouts")
                raise _Retryable(f"no complete reply within the {self.deadline_s:g}s deadline") from None
            self._raise_mapped(e)
        finally:
            watch.cancel()
        return self._text(raw)

    def _raise_mapped(self, e: Exception) -> None:
        """Transient failures as :class:`_Retryable`, other HTTP errors as RuntimeError (not retried)."""
        if isinstance(e, urllib.error.HTTPError):
            detail = e.read()[:300].decode("utf-8", "replace") if e.fp else ""
            msg = f"HTTP {e.code} {e.reason}: {detail}".strip()
            if e.code in RETRY_STATUS or e.code >= 500:
                self._count(f"http_{e.code}")
                raise _Retryable(msg, parse_retry_after(e.headers.get("Retry-After") if e.headers else None)) from None
            raise RuntimeError(msg) from None
        if isinstance(e, TimeoutError):
            self._count("timeouts")
            raise _Retryable(f"timeout after {self.timeout_s}s ({e})") from None
        if isinstance(e, urllib.error.URLError):
            if isinstance(e.reason, (TimeoutError, socket.timeout)):
                self._count("timeouts")
                raise _Retryable(f"timeout after {self.timeout_s}s ({e.reason})") from None
            self._count("connection_errors")
            raise _Retryable(f"connection error: {e.reason}") from None
        if isinstance(e, (ConnectionError, http.client.HTTPException)):
            self._count("connection_errors")
            raise _Retryable(f"connection error: {type(e).__name__}: {e}") from None
        raise e

    @staticmethod
    def _text(raw: bytes) -> str:
        try:
            obj = json.loads(raw)
            content = obj["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise RuntimeError(f"malformed chat-completions reply ({type(e).__name__}: {e}): {raw[:200]!r}") from None
        if isinstance(content, list):  # content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if not isinstance(content, str):
            raise RuntimeError(f"reply content is {type(content).__name__}, not text: {raw[:200]!r}")
        if not content.strip():  # a failed attempt like an error: retried, counted by the circuit breaker
            raise _Retryable(f"empty reply (no text in the message content): {raw[:200]!r}")
        return content

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.stats[key] += n

    def _delay(self, retry: int, retry_after: float | None) -> float:
        base = min(self.backoff_max_s, self.backoff_s * 2 ** retry)
        with self._lock:
            delay = base * (0.5 + 0.5 * self._rng.random())
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_retry_after_s))
        return delay

    def _one(self, req: GenRequest) -> GenResult:
        try:
            body = json.dumps(self.payload(req)).encode("utf-8")
        except Exception as e:  # a frame that cannot be encoded: this request fails, others go on
            return GenResult(None, f"{req.key}: cannot build request: {type(e).__name__}: {e}")
        for attempt in range(self.max_retries + 1):
            if self.breaker is not None:
                self._count("not_sent")
                return GenResult(None, f"{req.key}: not sent: {self.breaker}", attempt)
            self._count("attempts")
            try:
                text = self._post(body)
                self._count("ok")
                with self._lock:
                    self._failures_in_row = 0
                return GenResult(text, attempts=attempt + 1)
            except (_Retryable, RuntimeError) as e:
                self._failed_attempt(e)
                if isinstance(e, RuntimeError):
                    self._count("failed")
                    return GenResult(None, f"{req.key}: {e}", attempt + 1)
                if attempt == self.max_retries:
                    self._count("failed")
                    return GenResult(None, f"{req.key}: gave up after {attempt + 1} attempts: {e}", attempt + 1)
                self._count("retries")
                time.sleep(self._delay(attempt, e.retry_after))
        raise AssertionError("unreachable")

    def _failed_attempt(self, error: Exception) -> None:
        with self._lock:
            self._failures_in_row += 1
            if (self.breaker is None and self.max_consecutive_failures
                    and self._failures_in_row >= self.max_consecutive_failures):
                self.breaker = (f"circuit breaker open: {self._failures_in_row} failed requests in a row to "
                                f"{self.url}, the last: {error}")

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        """Answer every request; raises BackendUnavailable once the circuit breaker is open."""
        if self.breaker is not None:
            raise BackendUnavailable(self.breaker)
        results = list(self._pool.map(self._one, requests))
        if self.breaker is not None:
            raise BackendUnavailable(self.breaker)
        return results

    def close(self) -> None:
        self._pool.shutdown(wait=True)


class _Deadline:
    """Shuts the attempt's socket down when ``seconds`` have passed: a read blocked in it then fails at
    once (the socket timeout only bounds each single read)."""

    def __init__(self, seconds: float) -> None:
        self.sock: socket.socket | None = None
        self.fired = False
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def attach(self, sock: socket.socket) -> None:
        with self._lock:
            self.sock = sock
            if self.fired:  # connected after the deadline
                _shut(sock)

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            if self.sock is not None:
                _shut(self.sock)

    def cancel(self) -> None:
        self._timer.cancel()


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed


def _opener(watch: _Deadline) -> urllib.request.OpenerDirector:
    """A urllib opener whose connections hand their socket to ``watch`` once connected."""

    class _HTTP(http.client.HTTPConnection):
        def connect(self) -> None:
            super().connect()
            watch.attach(self.sock)

    class _HTTPS(http.client.HTTPSConnection):
        def connect(self) -> None:
            super().connect()
            watch.attach(self.sock)

    class _HTTPHandler(urllib.request.HTTPHandler):
        def http_open(self, req):
            return self.do_open(_HTTP, req)

    class _HTTPSHandler(urllib.request.HTTPSHandler):
        def https_open(self, req):
            return self.do_open(_HTTPS, req, context=self._context)

    return urllib.request.build_opener(_HTTPHandler, _HTTPSHandler)
