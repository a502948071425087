"""Kill -9 a two-rank generation job halfway, restart it: every qid exactly once, no corrupt line."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data_shards.reasoning_records import validate_reasoning
from reasoning_gen.generate import main as generate_main
from reasoning_gen.merge import main as merge_main

REPO = Path(__file__).resolve().parents[2]


def _start(shards: str, out: Path, rank: int, world: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "reasoning_gen", "generate", "--shards", shards, "--out", str(out), "--workers", "1",
           "--batch-size", "2", "--no-progress", "--opt", "latency_s=0.3"]
    # a session of its own, so that kill -9 reaches the loader's worker process too
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _kill(p: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):  # the group may be gone already
        os.killpg(p.pid, signal.SIGKILL)


def _count_lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


@pytest.mark.slow
def test_kill9_halfway_then_restart(synthetic_shards, tmp_path):
    out, shards = tmp_path / "out", synthetic_shards["pattern"]
    total = len(synthetic_shards["qids"])
    procs = [_start(shards, out, r, 2, tmp_path / f"run1.rank{r}.log") for r in range(2)]
    files = [out / f"val.rank{r:05d}.jsonl" for r in range(2)]
    deadline = time.monotonic() + 180
    try:
        # each rank is killed as soon as its own file holds 4 records (batches take 0.3 s each)
        while time.monotonic() < deadline and any(p.poll() is None for p in procs):
            for p, f in zip(procs, files):
                if p.poll() is None and _count_lines(f) >= 4:
                    _kill(p)
            time.sleep(0.02)
    finally:
        for p in procs:
            if p.poll() is None:
                _kill(p)
            p.wait(timeout=30)
    logs = "\n".join((tmp_path / f"run1.rank{r}.log").read_text() for r in range(2))
    assert all(p.returncode == -signal.SIGKILL for p in procs), f"a rank ended before the kill:\n{logs}"
    written = sum(_count_lines(f) for f in files)
    assert 8 <= written < total, f"killed after {written} of {total} records"

    procs = [_start(shards, out, r, 2, tmp_path / f"run2.rank{r}.log") for r in range(2)]
    for p in procs:
        assert p.wait(timeout=240) == 0
    logs = [(tmp_path / f"run2.rank{r}.log").read_text() for r in range(2)]
    skipped = sum(int(log.split("skipped ")[1].split()[0]) for log in logs)
    assert skipped >= written - 2, logs  # a line cut by the kill may be redone, nothing more

    assert merge_main([str(out), "--out", str(tmp_path / "merged.jsonl")]) == 0
    lines = (tmp_path / "merged.jsonl").read_text().splitlines()
    recs = []
    for i, line in enumerate(lines, 1):
        rec = json.loads(line)
        validate_reasoning(rec, f"merged.jsonl:{i}")
        recs.append(rec)
    assert sorted(r["qid"] for r in recs) == sorted(synthetic_shards["qids"])
    assert all(r["status"] == "ok" for r in recs)
    for f in files:  # the rank files themselves: whole lines only, no qid twice
        qids = [json.loads(x)["qid"] for x in f.read_text().splitlines()]
        assert len(qids) == len(set(qids))

    # the same texts as one uninterrupted single-process run (the teacher is deterministic)
    assert generate_main(["--shards", shards, "--out", str(tmp_path / "ref"), "--workers", "0", "--no-progress"]) == 0
    ref = {json.loads(x)["qid"]: json.loads(x)["raw"] for x in (tmp_path / "ref" / "val.rank00000.jsonl").open()}
    assert {r["qid"]: r["raw"] for r in recs} == ref
