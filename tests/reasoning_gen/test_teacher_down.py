"""``python -m reasoning_gen generate`` (a real child process) against a teacher that goes down.

A local HTTP server answers the first requests, then only HTTP 500 (or nothing listens at all):
the circuit breaker stops the job within about a minute with exit 3 and one error line, the
records written before stay, and ``merge`` of a folder where every record failed exits non-zero.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


class FlakyTeacher:
    """Answers ``ok_first`` requests with a reasoning, then every request with ``status``."""

    def __init__(self, ok_first: int, status: int = 500, reply: str | None = None):
        """``reply``: after ``ok_first``, answer 200 with this content (e.g. "" or whitespace) instead of an error."""
        self.ok_first, self.status, self.seen, self.reply = ok_first, status, 0, reply
        lock, outer = threading.Lock(), self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                self.rfile.read(int(self.headers["Content-Length"]))
                with lock:
                    outer.seen += 1
                    ok = outer.seen <= outer.ok_first
                empty = not ok and outer.reply is not None
                content = outer.reply if empty else "The ball rolls left. Answer: A."
                obj = {"choices": [{"message": {"role": "assistant", "content": content}}]} if ok or empty \
                    else {"error": "scripted"}
                data = json.dumps(obj).encode()
                self.send_response(200 if ok or empty else outer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _generate(shards: str, out: Path, url: str, *extra: str) -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OPENAI_API_KEY": ""}
    cmd = [sys.executable, "-m", "reasoning_gen", "generate", "--backend", "openai", "--base-url", url,
           "--model", "teacher-x", "--shards", shards, "--out", str(out), "--frames", "2", "--size", "32x32",
           "--batch-size", "4", "--workers", "0", "--no-progress", *extra]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    return proc, time.monotonic() - t0


def _errors(proc: subprocess.CompletedProcess) -> list[str]:
    return [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]


def _lines(out: Path) -> list[dict]:
    return [json.loads(ln) for p in sorted(out.glob("*.rank*.jsonl")) for ln in p.read_text().splitlines()]


def _start_time_of_python() -> float:
    """Seconds the bare imports of a generate run take on this (shared) machine: the budget's zero."""
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-c", "import reasoning_gen.generate, data_shards.stream.loader"], cwd=REPO,
                   env={**os.environ, "PYTHONPATH": str(REPO)}, check=True, timeout=300)
    return time.monotonic() - t0


@pytest.mark.slow
def test_a_teacher_that_starts_failing_stops_the_job_with_exit_3_and_keeps_what_was_written(
        synthetic_shards, tmp_path):
    server = FlakyTeacher(ok_first=8, status=500)
    try:
        imports = _start_time_of_python()
        proc, took = _generate(synthetic_shards["pattern"], tmp_path / "out", server.url)
    finally:
        server.close()
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    (err,) = _errors(proc)
    assert "circuit breaker open" in err and "HTTP 500" in err and server.url in err
    assert took - imports < 60, f"took {took:.0f}s (imports {imports:.0f}s)"
    ok = [r for r in _lines(tmp_path / "out") if r["status"] == "ok"]
    assert len(ok) == 8 and all(r["raw"].startswith("The ball rolls left") for r in ok)
    assert server.seen < 8 + 40, f"{server.seen} requests: the breaker should have stopped them"


def test_a_teacher_that_answers_empty_text_is_failing_not_ok(synthetic_shards, tmp_path):
    """HTTP 200 with an empty (or whitespace) message is a failed attempt: retried, counted by the circuit
    breaker, never an "ok" record without text; merge keeps only the real answers."""
    server = FlakyTeacher(ok_first=4, reply="  \n")
    try:
        proc, _ = _generate(synthetic_shards["pattern"], tmp_path / "out", server.url)
    finally:
        server.close()
    assert proc.returncode == 3, proc.stderr[-3000:]
    (err,) = _errors(proc)
    assert "circuit breaker open" in err and "empty reply" in err
    recs = _lines(tmp_path / "out")
    ok = [r for r in recs if r["status"] == "ok"]
    assert len(ok) == 4 and all(r["raw"].strip() for r in ok)  # the 4 real answers; no ok record without text
    merged = subprocess.run([sys.executable, "-m", "reasoning_gen", "merge", str(tmp_path / "out"), "--out",
                             str(tmp_path / "m.jsonl"), "--ok-only"], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert merged.returncode == 0 and len((tmp_path / "m.jsonl").read_text().splitlines()) == 4


@pytest.mark.slow
def test_no_server_at_all_stops_the_job_quickly(synthetic_shards, tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    imports = _start_time_of_python()
    proc, took = _generate(synthetic_shards["pattern"], tmp_path / "out", f"http://127.0.0.1:{port}/v1")
    assert proc.returncode == 3, proc.stderr[-3000:]
    (err,) = _errors(proc)
    assert "circuit breaker open" in err and "connection error" in err
    assert took - imports < 60, f"took {took:.0f}s (imports {imports:.0f}s)"


@pytest.mark.slow
def test_merge_of_a_folder_where_every_record_failed_exits_non_zero(synthetic_shards, tmp_path):
    """Breaker off, no retries, HTTP 400 for everything: every question is recorded as failed."""
    server = FlakyTeacher(ok_first=0, status=400)
    out = tmp_path / "out"
    try:
        proc, _ = _generate(synthetic_shards["pattern"], out, server.url, "--retries", "0",
                            "--opt", "max_retries=0", "--opt", "max_consecutive_failures=0")
    finally:
        server.close()
    assert proc.returncode == 3, proc.stderr[-3000:]  # --max-failed-frac
    lines = _lines(out)
    assert len(lines) == len(synthetic_shards["qids"]) and {r["status"] for r in lines} == {"failed"}
    from reasoning_gen.merge import main as merge_main

    assert merge_main([str(out), "--out", str(tmp_path / "merged.jsonl")]) == 1
    assert (tmp_path / "merged.jsonl").is_file()  # written anyway: the errors are in it


def test_merge_with_some_ok_records_still_exits_zero(tmp_path):
    n_ok = 3
    from data_shards.reasoning_records import make_record
    from reasoning_gen.merge import main as merge_main

    recs = [make_record(f"d/val/v/q{i}", "t", "p", raw="r", refined="r", split="val") for i in range(n_ok)]
    recs.append(make_record("d/val/v/q9", "t", "p", status="failed", error="x", split="val"))
    (tmp_path / "val.rank00000.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert merge_main([str(tmp_path), "--out", str(tmp_path / "m.jsonl")]) == 0
