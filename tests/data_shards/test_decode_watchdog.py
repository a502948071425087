"""The decode watchdog (issue 23, part 4): a video whose decoding stalls or runs past
``decode_timeout_s`` is skipped, named, counted and quarantined, and later epochs skip it undecoded.

Real inputs only: a FIFO that a writer feeds part of a real mp4 and then holds open (FFmpeg blocks
reading it, as on a stalled network stream), and real tars in which one H.264 video takes far longer
to decode than the others (720p, one key frame in 40 s: every sampled frame needs the whole GOP).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch

from data_shards.stream.frames import DecodeError, DecodeTimeout, decode_frames, decode_frames_within
from data_shards.stream.loader import LoaderConfig, build_loader
from tests.conftest import has_ffmpeg
from tests.data_shards.media_helpers import encode_testsrc_mp4, make_record, write_tar

pytestmark = pytest.mark.skipif(not has_ffmpeg(), reason="needs ffmpeg")


@pytest.fixture(scope="module")
def light(tmp_path_factory) -> bytes:
    return encode_testsrc_mp4(tmp_path_factory.mktemp("light") / "light.mp4", size=(24, 32), seconds=2.0)


def test_a_stalled_fifo_times_out_and_names_the_source(tmp_path, light):
    fifo = tmp_path / "stalled.mp4"
    os.mkfifo(fifo)
    release = threading.Event()

    def writer():  # a third of a real mp4, then silence with the pipe still open (no EOF)
        with open(fifo, "wb") as f:
            f.write(light[: len(light) // 3])
            f.flush()
            release.wait(30)

    threading.Thread(target=writer, daemon=True).start()
    start = time.monotonic()
    try:
        with pytest.raises(DecodeTimeout, match=rf"{fifo}: decoding took longer than 1 s \(data.decode_timeout_s\)"):
            decode_frames_within(1.0, fifo, 2)
        assert 0.9 < time.monotonic() - start < 5.0
    finally:
        release.set()  # EOF: the abandoned decoder thread finishes (with an error nobody reads)


def test_within_the_limit_it_is_decode_frames(light):
    want = decode_frames(light, 3, (24, 32), name="light")
    got = decode_frames_within(10.0, light, 3, (24, 32), name="light")
    assert torch.equal(got, want)
    with pytest.raises(DecodeError, match="corrupt.mp4") as err:  # the decoder's own errors still come through
        decode_frames_within(10.0, b"\x00\x00\x00\x18ftypmp42" + os.urandom(4000), 2, name="corrupt.mp4")
    assert not isinstance(err.value, DecodeTimeout)


@pytest.fixture(scope="module")
def shards_with_a_slow_video(tmp_path_factory, light):
    out = tmp_path_factory.mktemp("watchdog")
    heavy = out / "heavy.mp4"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=25",
                    "-t", "40", "-c:v", "libx264", "-preset", "ultrafast", "-g", "100000", "-bf", "0",
                    "-pix_fmt", "yuv420p", str(heavy)], check=True)
    slow_key = "synthetic__train__slow"
    samples_a = [(make_record(f"synthetic__train__a{i}", f"a{i}", 2), light) for i in range(3)]
    samples_b = [(make_record(slow_key, "slow", 2), heavy.read_bytes())]
    samples_b += [(make_record(f"synthetic__train__b{i}", f"b{i}", 2), light) for i in range(2)]
    write_tar(out / "shard-000000.tar", samples_a)
    write_tar(out / "shard-000001.tar", samples_b)
    return out, slow_key


@pytest.mark.parametrize("workers", [0, 2])
def test_a_slow_video_is_skipped_named_counted_and_quarantined_for_later_epochs(shards_with_a_slow_video, tmp_path,
                                                                                 caplog, workers):
    out, slow_key = shards_with_a_slow_video
    quarantine = tmp_path / "run" / "decode_quarantine.jsonl"
    cfg = LoaderConfig(urls=str(out / "shard-{000000..000001}.tar"), num_frames=4, frame_size=(24, 32),
                       micro_batch_size=2, num_workers=workers, shuffle_buffer=0, log_every_s=0.0,
                       decode_timeout_s=0.25, quarantine_file=str(quarantine))
    loader = build_loader(cfg, rank=0, world_size=1)
    with caplog.at_level(logging.WARNING, logger="data_shards.stream.loader"):
        first = [s["video_id"] for b in loader for s in b]
    assert sorted(set(first)) == ["a0", "a1", "a2", "b0", "b1"], first  # every other video, twice (2 questions)
    stats = loader.stats()
    assert (stats["decode_timeout"], stats["quarantined"], stats["corrupt_video"]) == (1, 0, 0), stats
    if workers == 0:  # (a worker process logs to its own stderr, not to caplog)
        warned = [r.getMessage() for r in caplog.records if "decode_timeout" in r.getMessage()]
        assert any(f"shard-000001.tar:{slow_key}.mp4" in m and "0.25 s" in m for m in warned), warned
    lines = [json.loads(x) for x in quarantine.read_text().splitlines()]
    assert [(Path(x["url"]).name, x["key"]) for x in lines] == [("shard-000001.tar", slow_key)]
    assert loader.quarantined() == [(str(out / "shard-000001.tar"), slow_key)]

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="data_shards.stream.loader"):
        second = [s["video_id"] for b in loader for s in b]
    assert sorted(second) == sorted(first)
    stats = loader.stats()
    assert (stats["decode_timeout"], stats["quarantined"]) == (1, 1), stats  # skipped, not decoded (timed) again
    if workers == 0:
        assert any("quarantined" in r.getMessage() and slow_key in r.getMessage() for r in caplog.records)

    # a new loader on the same file (a restarted run) skips it from the start
    again = build_loader(cfg, rank=0, world_size=1)
    assert sorted(s["video_id"] for b in again for s in b) == sorted(first)
    assert (again.stats()["decode_timeout"], again.stats()["quarantined"]) == (0, 1)


def test_without_a_limit_the_slow_video_is_decoded(shards_with_a_slow_video):
    out, _ = shards_with_a_slow_video
    cfg = LoaderConfig(urls=str(out / "shard-000001.tar"), num_frames=4, frame_size=(24, 32), micro_batch_size=2,
                       num_workers=0, shuffle_buffer=0, decode_timeout_s=0)
    loader = build_loader(cfg, rank=0, world_size=1)
    assert sorted({s["video_id"] for b in loader for s in b}) == ["b0", "b1", "slow"]
    assert loader.stats()["decode_timeout"] == 0


def test_a_negative_limit_is_refused():
    problems = dict(LoaderConfig(urls="x.tar", decode_timeout_s=-1).problems())
    assert "decode_timeout_s" in problems
