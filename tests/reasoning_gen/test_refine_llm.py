"""The ``llm`` refinement strategy against a real chat-completions server on 127.0.0.1.

The server answers the teacher prompt with a reasoning that concludes "(B)", and the rewrite
prompt alternately with a clean rewrite and with one that still gives the answer away. The
regex detector audits every rewrite: clean ones are used, leaky ones fall back to the
``answer-sentences`` refinement with the reason recorded; no refined text states the answer.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from data_shards.reasoning_records import read_reasoning_lines
from reasoning_gen.backends import build_backend
from reasoning_gen.generate import GenerateConfig, run_generation
from reasoning_gen.refine import audit_leak, refine, refine_llm

RAW = "The object moves across the frames in order. So the answer is (B)."
CLEAN = "The object moves across the frames in order."
LEAKY = "The object moves across the frames in order, so B is correct."


@pytest.fixture
def server():
    count = {"rewrite": 0, "teacher": 0}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            text = next(p["text"] for p in body["messages"][-1]["content"] if p["type"] == "text")
            with lock:
                if "Rewrite the reasoning" in text:
                    assert RAW in text and "Options:" in text
                    count["rewrite"] += 1
                    reply = CLEAN if count["rewrite"] % 2 else LEAKY
                else:
                    count["teacher"] += 1
                    reply = RAW
            data = json.dumps({"choices": [{"message": {"role": "assistant", "content": reply}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1", count
    httpd.shutdown()
    httpd.server_close()


def test_llm_rewrites_are_audited_and_leaky_ones_fall_back(server, synthetic_shards, tmp_path):
    url, count = server
    backend = build_backend("openai", base_url=url, model="teacher-x", max_concurrency=1, timeout_s=10, seed=0)
    cfg = GenerateConfig(shards=synthetic_shards["pattern"], out_dir=str(tmp_path), num_frames=2,
                         frame_size=(32, 32), batch_size=4, num_workers=0, refine_strategy="llm", progress=False)
    try:
        stats = run_generation(cfg, backend, 0, 1, log=lambda *a: None)
    finally:
        backend.close()
    recs = [r for p in sorted(tmp_path.glob("*.jsonl")) for _, r in read_reasoning_lines(p, {})]
    n = len(synthetic_shards["qids"])
    assert len(recs) == n and stats["ok"] == n and count["rewrite"] == n
    by_llm = [r for r in recs if r["refine"] == "llm"]
    fallen = [r for r in recs if r.get("refine_fallback")]
    assert len(by_llm) == len(fallen) == n // 2
    assert all(r["refined"] == CLEAN for r in by_llm)
    assert all("leaks the answer" in r["refine_fallback"] and r["refine"] == "answer-sentences" for r in fallen)
    assert all(r["refined"] == "The object moves across the frames in order." for r in fallen)
    assert all(r["teacher_answer"] == 1 and "leak" not in r for r in recs)
    for r in recs:
        assert audit_leak(r["refined"], synthetic_shards["options"][r["qid"]], 1) is None


def test_refine_llm_falls_back_when_the_backend_fails():
    """A backend that cannot answer (nothing listens) gives the rule-based refinement and the reason."""
    backend = build_backend("openai", base_url="http://127.0.0.1:9/v1", model="teacher-x", max_retries=0,
                            timeout_s=2, max_consecutive_failures=0)
    options = ["throw the ball", "cut the cake", "sit down"]
    try:
        ((r, why),) = refine_llm([(RAW, "What happens?", options)], backend, retries=0)
    finally:
        backend.close()
    assert why.startswith("rewrite failed") and r.text == refine(RAW, options).text and r.teacher_answer == 1
    with pytest.raises(ValueError, match="needs a backend"):
        refine(RAW, options, "llm")
