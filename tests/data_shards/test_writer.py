"""Shard writer and shard inspection on real synthetic mp4s, real ffmpeg cuts and real tars."""

from __future__ import annotations

import json
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from torchcodec.decoders import VideoDecoder

from data_shards.ingest import inspect_shards as insp
from data_shards.ingest import writer
from data_shards.ingest.video_io import encode_frames
from data_shards.schema import QA, VideoRecord, make_qid, read_records, validate_record, write_records
from data_shards.synth.make import make_synthetic
from tests.conftest import has_ffmpeg

pytestmark = pytest.mark.skipif(not has_ffmpeg(), reason="needs the ffmpeg CLI")


@pytest.fixture(scope="module")
def synth7(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth7")
    return make_synthetic(out, videos=7, seed=1, width=64, height=64, fps=8, duration=2.0,
                          questions_per_video=4)


def _members(tar: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(tar) as tf:
        return tf.getmembers()


def _record(video_id: str, video: str, dataset: str = "synthetic", start=None, end=None) -> VideoRecord:
    qa = QA(make_qid(dataset, "train", video_id, "0"), "What happens?", ["a", "b", "c", "d"], 1, "TN")
    return VideoRecord(video_id=video_id, dataset=dataset, split="train", video=video, qas=[qa],
                       start=start, end=end)


def test_rolls_by_count_and_stores_contract_samples(synth7, tmp_path):
    pattern = str(tmp_path / "shards" / "train-%06d.tar")
    s = writer.write_shards(synth7, synth7.parent / "videos", pattern, max_count=2, log=lambda *a: None)
    recs = {writer.sample_key(r.dataset, r.split, r.video_id): r for r in read_records(synth7)}
    assert len(s["shards"]) == 4 and s["skipped"] == []
    seen = set()
    for name, info in s["shards"].items():
        tar = tmp_path / "shards" / name
        names = [m.name for m in _members(tar)]
        assert info["bytes"] == tar.stat().st_size and info["videos"] == len(names) // 2 <= 2
        with tarfile.open(tar) as tf:
            for n in names:
                key, ext = n.split(".")  # exactly one dot: keys hold none
                assert "/" not in key and key in recs and ext in ("json", "mp4"), n
                data = tf.extractfile(n).read()
                rec = recs[key]
                if ext == "json":
                    obj = json.loads(data)
                    validate_record(obj, n)
                    assert obj["video"] == f"{key}.mp4" and obj["qas"] == rec.to_json()["qas"]
                else:
                    assert data == (synth7.parent / "videos" / rec.video).read_bytes()
                seen.add(key)
    assert seen == set(recs)
    sizes = json.loads((tmp_path / "shards" / "sizes.json").read_text())
    assert sizes["shards"] == s["shards"]
    assert sizes["videos"] == 7 and sizes["questions"] == sum(len(r.qas) for r in recs.values())
    assert not list((tmp_path / "shards").glob("*.tmp"))

    res = insp.inspect_shards(str(tmp_path / "shards" / "train-{000000..000003}.tar"))
    assert res["errors"] == []
    assert res["total"]["videos"] == res["total"]["samples"] == 7
    assert res["total"]["questions"] == sizes["questions"]
    assert res["total"]["bytes"] == sum(v["bytes"] for v in sizes["shards"].values())
    want = Counter(f"synthetic:{qa.qtype}" for r in recs.values() for qa in r.qas)
    assert res["qtypes"] == dict(sorted(want.items()))
    # A glob finds the same shards.
    assert insp.inspect_shards(str(tmp_path / "shards" / "*.tar"))["total"] == res["total"]


def test_rolls_by_size(synth7, tmp_path):
    biggest = max(p.stat().st_size for p in (synth7.parent / "videos").glob("*.mp4"))
    limit = int(2.2 * (biggest + 8192))
    s = writer.write_shards(synth7, synth7.parent / "videos", str(tmp_path / "s-%03d.tar"),
                            max_size=limit, log=lambda *a: None)
    assert len(s["shards"]) >= 3 and s["videos"] == 7
    assert all(v["bytes"] <= limit + 10240 for v in s["shards"].values())  # + tar end padding


def test_star_clip_is_cut_to_its_window(tmp_path):
    # 6 s at 10 fps; frame i has brightness 4 * i, so the first frame of the cut tells where it starts.
    frames = np.zeros((60, 48, 64, 3), dtype=np.uint8)
    frames[:] = (np.arange(60, dtype=np.uint8) * 4)[:, None, None, None]
    encode_frames([frames], tmp_path / "videos" / "CH1.mp4", 64, 48, 10)
    records = tmp_path / "star.jsonl"
    write_records([_record("CH1_1.5_4.0", "CH1.mp4", "star", 1.5, 4.0)], records)
    s = writer.write_shards(records, tmp_path / "videos", str(tmp_path / "out" / "star-%06d.tar"), log=lambda *a: None)
    assert s["videos"] == 1
    tar = tmp_path / "out" / "star-000000.tar"
    key = "star__train__CH1_1-5_4-0"
    assert sorted(m.name for m in _members(tar)) == [f"{key}.json", f"{key}.mp4"]
    with tarfile.open(tar) as tf:
        obj = json.loads(tf.extractfile(f"{key}.json").read())
        clip = tf.extractfile(f"{key}.mp4").read()
    assert obj["start"] is None and obj["end"] is None and obj["meta"]["clip"] == [1.5, 4.0]
    dec = VideoDecoder(clip)
    assert abs(float(dec.metadata.duration_seconds) - 2.5) <= 0.15
    assert abs(len(dec) - 25) <= 1
    first = float(dec[0].float().mean())
    assert abs(first - 15 * 4) < 6, f"clip starts at brightness {first}, want ~60 (frame 15 = 1.5 s)"


def test_missing_empty_and_garbage_videos_are_skipped_and_reported(synth7, tmp_path, capsys):
    vids = tmp_path / "videos"
    (vids / "nested" / "deep").mkdir(parents=True)
    good = list(read_records(synth7))[:2]
    for rec in good:
        (vids / "nested" / "deep" / rec.video).write_bytes((synth7.parent / "videos" / rec.video).read_bytes())
    (vids / "garbage.mp4").write_bytes(b"this is not an mp4 file at all" * 100)
    (vids / "empty.mp4").write_bytes(b"")
    bad = [_record("missing", "missing.mp4"), _record("garbage", "garbage.mp4"), _record("empty", "empty.mp4")]
    records = tmp_path / "r.jsonl"
    write_records([bad[0], good[0], bad[1], bad[2], good[1]], records)
    rc = writer.main(["--records", str(records), "--videos", str(vids), "--out", str(tmp_path / "o" / "t-%06d.tar")])
    out = capsys.readouterr().out
    assert rc == 0, out
    sizes = json.loads((tmp_path / "o" / "sizes.json").read_text())
    assert sizes["videos"] == 2  # the good ones were found by name under nested/deep
    reasons = {s["video_id"]: s["reason"] for s in sizes["skipped"]}
    assert set(reasons) == {"missing", "garbage", "empty"}
    assert "missing" in reasons["missing"] and "not a decodable video" in reasons["garbage"]
    assert "0 bytes" in reasons["empty"]
    for s in sizes["skipped"]:
        assert s["file"].endswith(f"{s['video_id']}.mp4") and f"video_id {s['video_id']!r}" in out
    assert "skipped 3 video(s)" in out
    # Nothing usable at all: exit status 1, and the skips are still recorded.
    only_bad = tmp_path / "bad.jsonl"
    write_records(bad, only_bad)
    assert writer.main(["--records", str(only_bad), "--videos", str(vids), "--out", str(tmp_path / "b" / "x-%06d.tar")]) == 1
    assert len(json.loads((tmp_path / "b" / "sizes.json").read_text())["skipped"]) == 3


def test_key_collision_is_an_error_before_writing(tmp_path):
    records = tmp_path / "r.jsonl"
    write_records([_record("a.b", "x.mp4"), _record("a-b", "y.mp4")], records)
    with pytest.raises(ValueError, match=r"records 1 \(video_id 'a.b'\) and 2 \(video_id 'a-b'\).*'synthetic__train__a-b'"):
        writer.write_shards(records, tmp_path, str(tmp_path / "o" / "t-%06d.tar"))
    assert not (tmp_path / "o").exists()


def test_a_crash_leaves_no_half_shard_under_a_final_name(synth7, tmp_path):
    records = tmp_path / "r.jsonl"
    write_records([*list(read_records(synth7))[:3], _record("missing", "missing.mp4")], records)

    def crash(*_):  # a failure in the middle of a shard (here: while reporting the skip)
        raise RuntimeError("simulated crash")

    out = tmp_path / "o"
    with pytest.raises(RuntimeError, match="simulated crash"):
        writer.write_shards(records, synth7.parent / "videos", str(out / "t-%06d.tar"), max_count=2, log=crash)
    # Shard 0 (2 samples) was complete and stays; shard 1 was open and is gone, tmp file included; the
    # folder stays marked as an unfinished write
    assert sorted(p.name for p in out.iterdir()) == [".t-%06d.tar.writing", "t-000000.tar"]
    assert len(_members(out / "t-000000.tar")) == 4


def test_a_full_disk_stops_the_writer_instead_of_skipping_every_video(synth7, tmp_path, monkeypatch):
    """A missing or unreadable video is skipped; a full disk (or read-only work dir) is not that
    video's fault: it stops the run, and the shards already finished stay."""
    import errno

    real, calls = writer.load_video, []

    def load_then_disk_full(rec, path, work):
        calls.append(rec.video_id)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(work / "clip.mp4"))
        return real(rec, path, work)

    monkeypatch.setattr(writer, "load_video", load_then_disk_full)
    out = tmp_path / "o"
    with pytest.raises(OSError, match="No space left"):
        writer.write_shards(synth7, synth7.parent / "videos", str(out / "t-%06d.tar"), max_count=2,
                            log=lambda *a, **k: None)
    assert sorted(p.name for p in out.iterdir()) == [".t-%06d.tar.writing", "t-000000.tar"]  # the shard stays
    assert len(_members(out / "t-000000.tar")) == 4


def test_inspect_reports_broken_shards_without_crashing(synth7, tmp_path, capsys):
    writer.write_shards(synth7, synth7.parent / "videos", str(tmp_path / "t-%06d.tar"), log=lambda *a: None)
    whole = (tmp_path / "t-000000.tar").read_bytes()
    (tmp_path / "cut.tar").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "junk.tar").write_bytes(b"\x00garbage" * 50)
    rc = insp.main([str(tmp_path / "t-000000.tar"), str(tmp_path / "cut.tar"), str(tmp_path / "junk.tar"),
                    str(tmp_path / "absent.tar")])
    cap = capsys.readouterr()
    assert rc == 1
    assert "t-000000.tar" in cap.out and "total" in cap.out
    assert "cut.tar" in cap.err and "junk.tar" in cap.err and "absent.tar: -: missing file" in cap.err
    res = insp.inspect_shards([str(tmp_path / "t-000000.tar")])
    assert res["errors"] == [] and res["total"]["videos"] == 7
    assert insp.main([str(tmp_path / "t-000000.tar"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["total"]["videos"] == 7
    from data_shards.__main__ import main as dispatch  # python -m data_shards inspect ...

    assert dispatch(["inspect", str(tmp_path / "t-{000000..000000}.tar")]) == 0
    assert "total" in capsys.readouterr().out


def test_a_killed_rewrite_is_refused_by_every_reader_until_a_write_finishes(synth7, tmp_path):
    """kill -9 of a second `data_shards write` into the same folder after its first shard: shard 0 is new,
    the others old, sizes.json old. Readers (training preflight, the loader of eval / generation) refuse
    the folder in one line naming the marker; the next write removes the leftovers and the marker."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from data_shards.stream.loader import LoaderConfig, build_loader
    from tests.conftest import REPO
    from train.config.sections import DataConfig
    from train.datastream import DataError, preflight

    out = tmp_path / "o"
    pattern = str(out / "t-%06d.tar")
    writer.write_shards(synth7, synth7.parent / "videos", pattern, max_count=1, log=lambda *a, **k: None)
    assert len(list(out.glob("t-*.tar"))) == 7 and not list(out.glob(".*.writing"))
    # a slow second write (one sample a shard, each video re-encoded): killed once its shard 1 exists
    cmd = [sys.executable, "-m", "data_shards", "write", "--records", str(synth7), "--out", pattern, "--max-count",
           "1", "--transcode", "--tc-jobs", "1"]
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    first = out / "t-000000.tar"
    before = first.stat().st_mtime_ns
    deadline = time.time() + 120
    while time.time() < deadline and first.stat().st_mtime_ns == before:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert first.stat().st_mtime_ns != before, "the second write never replaced shard 0"
    marker = out / ".t-%06d.tar.writing"
    assert marker.is_file()
    urls = f"{out}/t-{{000000..000006}}.tar"
    with pytest.raises(DataError, match="shard write that has not finished") as e:
        preflight(DataConfig(urls=[urls]))
    assert str(marker) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ValueError, match="shard write that has not finished"):
        build_loader(LoaderConfig(urls=urls), rank=0, world_size=1)
    writer.write_shards(synth7, synth7.parent / "videos", pattern, max_count=1, log=lambda *a, **k: None)
    assert not marker.exists() and not list(out.glob("*.tmp"))
    assert preflight(DataConfig(urls=[urls])).videos == 7
