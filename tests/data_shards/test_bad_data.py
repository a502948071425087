"""Bad data on every path, on real files: the ``data_shards write`` CLI in a child process (bad
record line, a video path escaping --videos, stale shards of an earlier write, a full disk) and
the loader's skip warnings, each of which names the shard file."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import webdataset as wds

from data_shards.stream.loader import LoaderConfig, build_loader
from data_shards.synth.make import make_synthetic
from tests.conftest import REPO, has_ffmpeg
from tests.data_shards.media_helpers import make_record, make_shards

pytestmark = pytest.mark.skipif(not has_ffmpeg(), reason="needs the ffmpeg CLI")


@pytest.fixture(scope="module")
def synth3(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth3")
    return make_synthetic(out, videos=3, seed=2, width=64, height=64, fps=8, duration=1.0, questions_per_video=2)


def _write(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "data_shards", "write", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def _one_error(proc: subprocess.CompletedProcess, rc: int) -> str:
    assert proc.returncode == rc, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    return lines[0]


def test_a_bad_record_is_one_line_naming_file_line_and_field(synth3, tmp_path):
    lines = synth3.read_text().splitlines()
    bad = json.loads(lines[1])
    bad["qas"][0]["answer"] = 9
    records = tmp_path / "records.jsonl"
    records.write_text("\n".join([lines[0], json.dumps(bad), *lines[2:]]) + "\n")
    err = _one_error(_write("--records", str(records), "--videos", str(synth3.parent / "videos"),
                            "--out", str(tmp_path / "s" / "t-%06d.tar")), rc=2)
    assert f"{records}:2: field 'qas[0].answer'" in err


def test_a_video_path_escaping_the_video_root_is_skipped_not_packed(synth3, tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    recs = [json.loads(ln) for ln in synth3.read_text().splitlines()]
    for rec in recs:
        (videos / rec["video"]).write_bytes((synth3.parent / "videos" / rec["video"]).read_bytes())
    secret = tmp_path / "secret.mp4"  # a real video OUTSIDE --videos
    secret.write_bytes((synth3.parent / "videos" / recs[0]["video"]).read_bytes())
    recs[0]["video"] = "../secret.mp4"
    recs[1]["video"] = str(secret)  # absolute
    records = tmp_path / "records.jsonl"
    records.write_text("".join(json.dumps(r) + "\n" for r in recs))
    out = tmp_path / "s"
    proc = _write("--records", str(records), "--videos", str(videos), "--out", str(out / "t-%06d.tar"))
    assert proc.returncode == 0, proc.stderr
    assert "skipped 2 video(s)" in proc.stdout and proc.stdout.count("escapes the video root") == 2
    sizes = json.loads((out / "sizes.json").read_text())
    assert sizes["videos"] == 1 and {s["video_id"] for s in sizes["skipped"]} == {recs[0]["video_id"],
                                                                                   recs[1]["video_id"]}


def test_rewriting_removes_stale_shards_of_the_earlier_write(synth3, tmp_path):
    out = tmp_path / "s"
    args = ["--records", str(synth3), "--videos", str(synth3.parent / "videos")]
    assert _write(*args, "--out", str(out / "t-%06d.tar"), "--max-count", "1").returncode == 0
    (out / "other-000000.tar").write_bytes(b"another family: kept")
    assert sorted(p.name for p in out.glob("t-*.tar")) == ["t-000000.tar", "t-000001.tar", "t-000002.tar"]
    proc = _write(*args, "--out", str(out / "t-%06d.tar"), "--max-count", "3")
    assert proc.returncode == 0, proc.stderr
    assert "removed 2 stale shard(s)" in proc.stdout
    assert sorted(p.name for p in out.glob("*.tar")) == ["other-000000.tar", "t-000000.tar"]
    assert set(json.loads((out / "sizes.json").read_text())["shards"]) == {"t-000000.tar"}


def test_a_full_disk_says_no_space_left_and_names_the_path(synth3, tmp_path):
    """The shard's temp file is a symlink to /dev/full: the kernel's real ENOSPC on write."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    out = tmp_path / "s"
    out.mkdir()
    (out / "t-000000.tar.tmp").symlink_to("/dev/full")
    err = _one_error(_write("--records", str(synth3), "--videos", str(synth3.parent / "videos"),
                            "--out", str(out / "t-%06d.tar")), rc=1)
    assert "No space left on device" in err and str(out / "t-000000.tar.tmp") in err


def test_every_skip_warning_of_the_loader_names_the_shard_file(tmp_path, caplog):
    paths, _ = make_shards(tmp_path, [2, 2])
    video = (tmp_path / "_src.mp4").read_bytes()
    whole = paths[0].read_bytes()
    (tmp_path / "trunc.tar").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "zero.tar").write_bytes(b"")
    with wds.TarWriter(str(tmp_path / "odd.tar")) as sink:
        sink.write({"__key__": "synthetic__train__lonely", "mp4": video})
        sink.write({"__key__": "synthetic__train__badjson", "json": b"{not json", "mp4": video})
        rec = make_record("synthetic__train__junk", "junk", 1)
        sink.write({"__key__": "synthetic__train__junk", "json": json.dumps(rec).encode(),
                    "mp4": b"\x00\x00\x00\x18ftypmp42" + os.urandom(3000)})
    bad = [tmp_path / n for n in ("zero.tar", "trunc.tar", "odd.tar")]
    cfg = LoaderConfig(urls=[str(p) for p in bad + paths], num_frames=2, frame_size=(24, 32), micro_batch_size=2,
                       num_workers=0, shuffle_shards=False, shuffle_buffer=0, log_every_s=0.0)
    caplog.set_level(logging.WARNING, logger="data_shards.stream.loader")
    loader = build_loader(cfg, 0, 1)
    assert sum(len(b) for b in loader) >= 10  # the 4 good videos (10 questions), + what trunc.tar held
    skips = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipped")]
    stats = loader.stats()
    assert len(skips) >= 5 and stats["bad_record"] == 1 and stats["corrupt_video"] == 1, (skips, stats)
    for msg in skips:
        assert any(str(p) in msg for p in bad), msg


@pytest.mark.parametrize("workers", [0, 2])
def test_every_skipped_shard_is_counted_once_and_named_despite_the_rate_limit(tmp_path, caplog, workers):
    """Two truncated shards and a missing one among good ones, with the default rate limit of the skip
    warnings (one a category every 30 s): corrupt_tar counts 2 (webdataset reports a truncated tar twice),
    and the epoch report names all three shards, whichever warning lines the limit let through."""
    paths, _ = make_shards(tmp_path, [2, 2, 2, 2])
    for name, src in (("trunc_a.tar", paths[0]), ("trunc_b.tar", paths[1])):
        whole = src.read_bytes()
        (tmp_path / name).write_bytes(whole[: len(whole) // 2])
    bad = [tmp_path / "trunc_a.tar", tmp_path / "trunc_b.tar", tmp_path / "gone.tar"]
    cfg = LoaderConfig(urls=[str(p) for p in bad + paths[2:]], num_frames=2, frame_size=(24, 32), micro_batch_size=2,
                       num_workers=workers, shuffle_shards=False, shuffle_buffer=0)
    caplog.set_level(logging.WARNING, logger="data_shards.stream.loader")
    loader = build_loader(cfg, 0, 1)
    assert sum(len(b) for b in loader) >= 4
    stats = loader.stats()
    assert stats["corrupt_tar"] == 2 and stats["missing_shard"] == 1, stats
    assert loader.skipped_shards() == {str(p): 1 for p in bad}
    report = [r.getMessage() for r in caplog.records if "shards skipped:" in r.getMessage()]
    assert report and all(str(p) in report[-1] for p in bad), report
