"""The generation job on real shards: resume, partial-line repair, failed records, merge, vCoT."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from data_shards.reasoning_records import load_reasoning, validate_reasoning
from reasoning_gen.generate import main as generate_main
from reasoning_gen.merge import main as merge_main
from tests.reasoning_gen.chat_server import ChatServer


def _gen(shards, out, *extra):
    return generate_main(["--shards", shards["pattern"], "--out", str(out), "--workers", "0", "--no-progress",
                          "--batch-size", "4", *extra])


def _lines(path: Path) -> list[dict]:
    out = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        obj = json.loads(line)
        validate_reasoning(obj, f"{path}:{i}")
        out.append(obj)
    return out


def test_generate_resume_after_partial_line(synthetic_shards, tmp_path, capsys):
    ref_dir, dir_ = tmp_path / "ref", tmp_path / "run"
    assert _gen(synthetic_shards, ref_dir) == 0
    ref = _lines(ref_dir / "val.rank00000.jsonl")
    assert sorted(r["qid"] for r in ref) == sorted(synthetic_shards["qids"])
    for r in ref:
        assert r["status"] == "ok" and r["prompt_version"] == "reasvqa-v1" and r["teacher"].startswith("synthetic")
        truth = synthetic_shards["answers"][r["qid"]]
        assert r["teacher_correct"] == (r["teacher_answer"] == truth)
        assert r["refined"] and r["refined"] != r["raw"]

    # an interrupted run: 10 whole lines and half of the 11th
    dir_.mkdir()
    raw = (ref_dir / "val.rank00000.jsonl").read_bytes().split(b"\n")
    partial = raw[10][: len(raw[10]) // 2]
    (dir_ / "val.rank00000.jsonl").write_bytes(b"\n".join(raw[:10]) + b"\n" + partial)
    capsys.readouterr()
    assert _gen(synthetic_shards, dir_) == 0
    printed = capsys.readouterr().out
    assert f"cut a partial last line of {len(partial)} bytes" in printed
    assert "skipped 10 already done" in printed and f"generated {len(ref) - 10}" in printed
    got = _lines(dir_ / "val.rank00000.jsonl")
    assert sorted(r["qid"] for r in got) == sorted(r["qid"] for r in ref)
    # deterministic teacher: the resumed run wrote the same texts
    assert {r["qid"]: r["raw"] for r in got} == {r["qid"]: r["raw"] for r in ref}

    # nothing left: every shard is skipped without being opened
    assert _gen(synthetic_shards, dir_) == 0
    printed = capsys.readouterr().out
    assert "0 with work left, 0 question(s) to generate" in printed
    assert len(_lines(dir_ / "val.rank00000.jsonl")) == len(ref)


def test_failed_requests_are_recorded_then_retried(synthetic_shards, tmp_path, capsys):
    out = tmp_path / "out"
    assert _gen(synthetic_shards, out, "--opt", "fail_rate=0.3", "--retries", "2", "--max-failed-frac", "1") == 0
    first = _lines(out / "val.rank00000.jsonl")
    failed = [r for r in first if r["status"] == "failed"]
    assert len(first) == len(synthetic_shards["qids"]) and 3 <= len(failed) <= 30
    assert all("synthetic failure injected" in r["error"] for r in failed)
    stats: dict = {}
    assert len(load_reasoning(out, stats)) == len(first) - len(failed) and stats["failed"] == len(failed)

    assert _gen(synthetic_shards, out) == 0  # failed ones count as done without the flag
    assert len(_lines(out / "val.rank00000.jsonl")) == len(first)
    assert _gen(synthetic_shards, out, "--retry-failed") == 0
    assert len(_lines(out / "val.rank00000.jsonl")) == len(first) + len(failed)
    capsys.readouterr()
    assert merge_main([str(out), "--out", str(tmp_path / "merged.jsonl")]) == 0
    printed = capsys.readouterr().out
    assert f"failed then retried {len(failed)}" in printed and "duplicates dropped 0" in printed
    merged = _lines(tmp_path / "merged.jsonl")
    assert len(merged) == len(first) and all(r["status"] == "ok" for r in merged)
    assert len(load_reasoning(tmp_path / "merged.jsonl")) == len(first)


def test_a_run_where_most_requests_fail_exits_nonzero_with_everything_recorded(synthetic_shards, tmp_path, capsys):
    out = tmp_path / "out"
    assert _gen(synthetic_shards, out, "--opt", "fail_rate=1.0", "--retries", "0") == 3
    err = capsys.readouterr().err
    n = len(synthetic_shards["qids"])
    assert f"{n} of {n} requests failed" in err and "--retry-failed" in err
    lines = _lines(out / "val.rank00000.jsonl")
    assert len(lines) == n and all(r["status"] == "failed" and r["error"] for r in lines)


def test_merge_reports_duplicates_and_corrupt_lines(synthetic_shards, tmp_path, capsys):
    out = tmp_path / "out"
    assert _gen(synthetic_shards, out) == 0
    src = out / "val.rank00000.jsonl"
    lines = src.read_text().splitlines()
    # another rank that wrote 5 of the same qids (a run with another world size), a corrupt line
    # in its middle and a partial last line
    (out / "val.rank00001.jsonl").write_text("\n".join(lines[:3] + ["{not json"] + lines[3:5]) + "\n" + lines[5][:40])
    (out / "train.rank00000.jsonl").write_text(lines[0].replace("/val/", "/train/") + "\n")
    capsys.readouterr()
    assert merge_main([str(out), "--out", str(tmp_path / "m" / "all.jsonl")]) == 0
    printed = capsys.readouterr().out
    assert "duplicates dropped 5" in printed and "corrupt lines 2" in printed
    merged = _lines(tmp_path / "m" / "all.val.jsonl")
    assert len(merged) == len(lines) and len({r["qid"] for r in merged}) == len(lines)
    assert len(_lines(tmp_path / "m" / "all.train.jsonl")) == 1


def test_vcot_job_sends_decoded_frame_pairs(synthetic_shards, tmp_path):
    server = ChatServer({}, delay_s=0.0, image_size=(40, 24), max_tokens=None)
    try:
        pattern = synthetic_shards["pattern"].replace("{000000..000005}", "{000000..000001}")
        code = generate_main(["--shards", pattern, "--out", str(tmp_path / "vcot"), "--workers", "1",
                              "--no-progress", "--backend", "openai", "--base-url", server.url, "--model",
                              "teacher-x", "--prompt", "vcot", "--frames", "3", "--size", "24x40", "--rephrase",
                              "--opt", "max_concurrency=2", "--opt", "image_format=png"])
    finally:
        server.close()
    assert code == 0 and not server.bad_requests, server.bad_requests
    recs = _lines(tmp_path / "vcot" / "val.rank00000.jsonl")
    assert len(recs) == 16 and all(r["status"] == "ok" for r in recs)
    # per question: 2 frame pairs x (common, bridge, rephrase); frames only with the first two
    assert len(server.texts) == 16 * 2 * 3
    for r in recs:
        assert r["prompt_version"] == "vcot-v1+rephrase-v1" and len(r["vcot"]) == 2 and r["raw"] is None
        assert all(c.startswith("reply to request") and c.endswith("with 0 images, attempt 0") for c in r["vcot"])
        assert all("with 2 images" in c for c in r["vcot_common"])
    bridge = [t for t in server.texts if "What they have in common: reply to" in t]
    assert len(bridge) == 32


def test_bad_arguments(synthetic_shards, tmp_path):
    with pytest.raises(SystemExit):
        generate_main(["--shards", synthetic_shards["pattern"], "--out", str(tmp_path), "--backend", "openai"])
    with pytest.raises(ValueError, match="vcot needs num_frames >= 2"):
        _gen(synthetic_shards, tmp_path / "x", "--prompt", "vcot", "--frames", "1")
    with pytest.raises(TypeError, match="backend 'synthetic': bad options"):
        _gen(synthetic_shards, tmp_path / "y", "--opt", "temperature=3")
    shutil.rmtree(tmp_path / "x", ignore_errors=True)


def test_ranks_split_the_work_and_each_takes_its_own_device(synthetic_shards, tmp_path, monkeypatch, capsys):
    """Two ranks of one node (the environment torchrun gives them): disjoint shares of the questions that
    together are all of them; the transformers backend gets each rank's LOCAL_RANK (its GPU, resolve_device), the vllm
    backend refuses a second process on a node (its tensor-parallel workers take the node's GPUs)."""
    from reasoning_gen.backends.hf import resolve_device
    from reasoning_gen.generate import place_backend

    shares = []
    for rank in (0, 1):
        for k, v in {"RANK": rank, "WORLD_SIZE": 2, "LOCAL_RANK": rank, "LOCAL_WORLD_SIZE": 2}.items():
            monkeypatch.setenv(k, str(v))
        assert _gen(synthetic_shards, tmp_path / "two") == 0
        shares.append({r["qid"] for r in _lines(tmp_path / "two" / f"val.rank{rank:05d}.jsonl")})
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(k)
    assert _gen(synthetic_shards, tmp_path / "one") == 0
    everything = {r["qid"] for r in _lines(tmp_path / "one" / "val.rank00000.jsonl")}
    assert shares[0] and shares[1] and not shares[0] & shares[1] and shares[0] | shares[1] == everything

    assert place_backend("transformers", {"model": "m"}, 3, {})["local_rank"] == 3
    assert place_backend("transformers", {"local_rank": 0}, 3, {})["local_rank"] == 0  # an explicit option wins
    assert place_backend("vllm", {"tensor_parallel_size": 8}, 0, {"LOCAL_WORLD_SIZE": "1"}) == {"tensor_parallel_size": 8}
    for local_rank, env in ((1, {}), (0, {"LOCAL_WORLD_SIZE": "8"}), (0, {"SLURM_NTASKS_PER_NODE": "2(x4)"})):
        with pytest.raises(ValueError, match="one process per node"):
            place_backend("vllm", {"tensor_parallel_size": 8}, local_rank, env)
    import torch

    if not torch.cuda.is_available():  # on CPU: auto is the CPU, and asking for this rank's GPU is an error
        assert resolve_device("auto", 1).type == "cpu"
        with pytest.raises(ValueError, match="LOCAL_RANK 1 has no GPU of its own"):
            resolve_device("cuda", 1)
        # the CLI says so in one line (exit 2) before the model loads: the model folder does not even exist
        for k, v in {"RANK": 1, "WORLD_SIZE": 2, "LOCAL_RANK": 1}.items():
            monkeypatch.setenv(k, str(v))
        assert _gen(synthetic_shards, tmp_path / "nogpu", "--backend", "transformers", "--model",
                    str(tmp_path / "no-model"), "--opt", "device=cuda") == 2
        assert "LOCAL_RANK 1 has no GPU of its own" in capsys.readouterr().err
    else:
        n = torch.cuda.device_count()
        assert resolve_device("auto", n - 1) == torch.device("cuda", n - 1)
        with pytest.raises(ValueError, match="no GPU of its own"):
            resolve_device("auto", n)


def test_records_carry_the_prompt_version_the_backend_really_sends(synthetic_shards, tmp_path):
    """A text-only backend (the study's real teacher) sends the description prompt: its records say so."""
    from reasoning_gen.backends import build_backend
    from reasoning_gen.generate import GenerateConfig, run_generation
    from reasoning_gen.prompts import REASVQA_TEXT_VERSION

    backend = build_backend("synthetic")
    backend.reasvqa_prompt_version = REASVQA_TEXT_VERSION  # what the transformers backend sets in text-only mode
    pattern = synthetic_shards["pattern"].replace("{000000..000005}", "{000000..000001}")
    cfg = GenerateConfig(shards=pattern, out_dir=str(tmp_path / "gen"), num_frames=3, frame_size=None,
                         batch_size=4, num_workers=0, progress=False)
    run_generation(cfg, backend, rank=0, world_size=1)
    recs = _lines(tmp_path / "gen" / "val.rank00000.jsonl")
    assert recs and {r["prompt_version"] for r in recs} == {REASVQA_TEXT_VERSION}
