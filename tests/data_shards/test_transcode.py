"""Write-time transcoding on real ffmpeg encodes: key frames, size, fidelity, bad sources."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
from pathlib import Path

import av
import numpy as np
import pytest

from data_shards.ingest import writer
from data_shards.ingest.transcode import TranscodeConfig, keyframe_times, output_size
from data_shards.schema import QA, VideoRecord, make_qid, write_records
from data_shards.stream.frames import decode_frames
from tests.conftest import has_ffmpeg

pytestmark = pytest.mark.skipif(not has_ffmpeg(), reason="needs the ffmpeg CLI")


def _long_gop_source(path: Path, seconds: float = 4.0, size: tuple[int, int] = (240, 320), fps: int = 30,
                     faststart: bool = False) -> Path:
    """A moving testsrc2 pattern, H.264 with ONE key frame (x264 default GOP 250 > the 120 frames), plus audio."""
    h, w = size
    extra = ["-movflags", "+faststart"] if faststart else []
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=size={w}x{h}:rate={fps}",
                    "-f", "lavfi", "-i", "sine=frequency=440", "-t", str(seconds), "-c:v", "libx264",
                    "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac", *extra, str(path)], check=True)
    return path


def _record(video_id: str, video: str, start=None, end=None) -> VideoRecord:
    qa = QA(make_qid("synthetic", "train", video_id, "0"), "What happens?", ["a", "b", "c"], 1, "TN")
    return VideoRecord(video_id=video_id, dataset="synthetic", split="train", video=video, qas=[qa],
                       start=start, end=end, meta={"origin": f"camera {video_id}"})


def _samples(tar: Path) -> dict[str, dict]:
    out: dict[str, dict] = {}
    with tarfile.open(tar) as tf:
        for m in tf.getmembers():
            key, ext = m.name.split(".")
            out.setdefault(key, {})[ext] = tf.extractfile(m).read()
    return out


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 99.0 if mse == 0 else float(10 * np.log10(255 ** 2 / mse))


def test_output_size_never_upscales_and_stays_even():
    assert output_size(640, 360, TranscodeConfig(height=256)) == (456, 256)
    assert output_size(320, 180, TranscodeConfig(height=256)) == (320, 180)
    assert output_size(1280, 720, TranscodeConfig(height=None, max_side=448)) == (448, 252)
    assert output_size(360, 640, TranscodeConfig(height=None, max_side=448)) == (252, 448)
    with pytest.raises(ValueError, match="height or max_side"):
        TranscodeConfig(height=256, max_side=448)
    with pytest.raises(ValueError, match="codec"):
        TranscodeConfig(codec="mjpeg")


def test_transcode_round_trip_shorter_gop_capped_size_close_frames(tmp_path, capsys):
    vids = tmp_path / "videos"
    vids.mkdir()
    _long_gop_source(vids / "long.mp4")
    assert keyframe_times(vids / "long.mp4") == [0.0], "the source has a single key frame"
    records = tmp_path / "r.jsonl"
    write_records([_record("long", "long.mp4"), _record("clip", "long.mp4", start=1.0, end=3.0)], records)
    rc = writer.main(["--records", str(records), "--videos", str(vids), "--out", str(tmp_path / "o" / "t-%06d.tar"),
                      "--transcode", "--tc-height", "96", "--tc-fps", "10", "--tc-gop", "5", "--tc-jobs", "2"])
    out = capsys.readouterr().out
    assert rc == 0 and "transcoded 2 videos" in out and "skipped 0 video(s)" in out, out
    samples = _samples(tmp_path / "o" / "t-000000.tar")
    whole = samples["synthetic__train__long"]
    rec = json.loads(whole["json"])
    tc = rec["meta"]["transcode"]
    assert rec["meta"]["origin"] == "camera long", "the original's metadata is kept"
    assert tc["source"]["width"] == 320 and tc["source"]["height"] == 240 and tc["source"]["fps"] == 30
    assert tc["output"]["height"] == 96 and tc["output"]["width"] == 128 and tc["output"]["fps"] == 10
    assert tc["settings"]["gop"] == 5 and tc["cpu_s"] > 0 and tc["window"] is None
    assert tc["output"]["bytes"] == len(whole["mp4"])
    keys = keyframe_times(whole["mp4"])
    assert len(keys) >= 8 and max(np.diff(keys)) <= 0.5 + 1e-6, keys  # every 5 frames at 10 fps
    # audio dropped: one stream left
    with av.open(io.BytesIO(whole["mp4"])) as c:
        assert len(c.streams) == 1 and c.streams.video
    # frames at the segment middles (on the 10 fps grid) match the original's at the same size
    ours = decode_frames(whole["mp4"], 4, (72, 96)).numpy()
    theirs = decode_frames(vids / "long.mp4", 4, (72, 96)).numpy()
    assert _psnr(ours, theirs) > 24, _psnr(ours, theirs)
    # the wrong frame (0.5 s later) is much further away: the metric sees timing errors
    later = decode_frames(vids / "long.mp4", 4, (72, 96), start=0.5, end=4.0).numpy()
    assert _psnr(ours, later) < _psnr(ours, theirs) - 5
    # a clip window is cut in the same pass
    clip = json.loads(samples["synthetic__train__clip"]["json"])
    assert clip["start"] is None and clip["meta"]["clip"] == [1.0, 3.0]
    assert clip["meta"]["transcode"]["window"] == [1.0, 3.0]
    assert abs(clip["meta"]["transcode"]["output"]["duration"] - 2.0) < 0.15


def test_corrupt_sources_are_skipped_counted_and_named(tmp_path, capsys):
    vids = tmp_path / "videos"
    vids.mkdir()
    good = _long_gop_source(vids / "good.mp4", seconds=2.0, size=(96, 128))
    (vids / "garbage.mp4").write_bytes(b"not a video at all" * 200)
    whole = _long_gop_source(tmp_path / "whole.mp4", seconds=4.0, size=(96, 128), faststart=True).read_bytes()
    (vids / "cut.mp4").write_bytes(whole[: len(whole) // 2])  # index first (faststart): it opens, frames stop early
    assert keyframe_times(good)
    records = tmp_path / "r.jsonl"
    write_records([_record("garbage", "garbage.mp4"), _record("good", "good.mp4"), _record("cut", "cut.mp4")], records)
    pattern = str(tmp_path / "o" / "t-%06d.tar")
    s = writer.write_shards(records, vids, pattern, transcode=TranscodeConfig(height=64, fps=8, gop=4), jobs=2,
                            log=print)
    out = capsys.readouterr().out
    assert s["videos"] == 1 and s["transcode"]["videos"] == 1
    reasons = {x["video_id"]: x["reason"] for x in s["skipped"]}
    assert set(reasons) == {"garbage", "cut"}, reasons
    assert reasons["garbage"].startswith(str(vids / "garbage.mp4")) and "not a decodable video" in reasons["garbage"]
    assert reasons["cut"].startswith(str(vids / "cut.mp4")) and "truncated or corrupt" in reasons["cut"], reasons["cut"]
    for vid in ("garbage", "cut"):
        assert f"skip video_id {vid!r}" in out
    sizes = json.loads((tmp_path / "o" / "sizes.json").read_text())
    assert {x["video_id"] for x in sizes["skipped"]} == {"garbage", "cut"} and sizes["videos"] == 1


def test_transcode_sweep_prints_cost_bytes_and_fidelity(tmp_path, capsys):
    from data_shards.bench.transcode_sweep import main as sweep

    src = _long_gop_source(tmp_path / "src.mp4", seconds=2.0, size=(96, 128))
    assert sweep([str(src), "--variants", "64:0:4:23:veryfast,64:5:4:23:veryfast", "--frames", "3", "--size",
                  "48x64", "--reps", "1", "--random", "4"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("sources (1):") and "pyav-decode-all" in lines[0]
    for line, name in zip(lines[2:], ("64:0:4:23:veryfast", "64:5:4:23:veryfast")):
        cols = line.split()
        assert cols[0] == name and float(cols[1]) > 0 and int(cols[2]) > 0, line
        assert 10 < float(cols[-2]) <= 99 and 10 < float(cols[-1]) <= 99, line
