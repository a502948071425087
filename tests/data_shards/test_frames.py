"""decode_frames: which frames (segment middles), window, size, dtype, and clear errors."""

from __future__ import annotations

import math
import subprocess

import pytest
import torch

from data_shards.stream.frames import DecodeError, decode_frames, segment_times
from tests.data_shards.media_helpers import encode_indexed_mp4, frame_index

FPS = 10


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    """30 frames at 10 fps (3.0 s), key frame every 10 frames; frame i is grey level 8 + 8 i."""
    path = tmp_path_factory.mktemp("frames") / "indexed.mp4"
    data = encode_indexed_mp4(path, num_frames=30, fps=FPS, size=(48, 64), gop=10)
    return path, data


def expected_indices(num_frames: int, start: float, end: float) -> list[int]:
    return [math.floor(t * FPS + 1e-9) for t in segment_times(num_frames, start, end)]


def decoded_indices(frames: torch.Tensor) -> list[int]:
    return [frame_index(f) for f in frames]


def test_segment_times_are_middles():
    assert segment_times(4, 0.0, 2.0) == [0.25, 0.75, 1.25, 1.75]
    assert segment_times(1, 1.0, 3.0) == [2.0]


@pytest.mark.parametrize("num_frames", [1, 4, 7, 30])
def test_whole_video_decodes_the_segment_middle_frames(indexed, num_frames):
    _path, data = indexed
    frames = decode_frames(data, num_frames)
    assert frames.dtype == torch.uint8
    assert tuple(frames.shape) == (num_frames, 3, 48, 64)
    assert decoded_indices(frames) == expected_indices(num_frames, 0.0, 3.0)


def test_path_and_bytes_give_the_same_frames(indexed):
    path, data = indexed
    torch.testing.assert_close(decode_frames(path, 5), decode_frames(data, 5))
    torch.testing.assert_close(decode_frames(str(path), 5), decode_frames(data, 5))


def test_window_picks_middles_of_the_window(indexed):
    _, data = indexed
    frames = decode_frames(data, 5, start=1.0, end=2.0)
    assert decoded_indices(frames) == [11, 13, 15, 17, 19]
    # A window end past the end of the stream is clipped to it: [2.0, 3.0].
    assert decoded_indices(decode_frames(data, 2, start=2.0, end=10.0)) == [22, 27]
    assert decoded_indices(decode_frames(data, 3, end=1.5)) == expected_indices(3, 0.0, 1.5)


def test_resize_during_decode(indexed):
    _, data = indexed
    frames = decode_frames(data, 3, size=(20, 36))
    assert frames.dtype == torch.uint8
    assert tuple(frames.shape) == (3, 3, 20, 36)
    # Resizing a uniform frame keeps its grey level, so the frame identity survives.
    assert decoded_indices(frames) == expected_indices(3, 0.0, 3.0)


def test_corrupt_bytes_raise_decode_error_naming_the_source(indexed):
    _, data = indexed
    with pytest.raises(DecodeError, match=r"^shard-7\.tar:abc\.mp4: cannot open video"):
        decode_frames(b"\x00garbage" * 500, 4, name="shard-7.tar:abc.mp4")
    with pytest.raises(DecodeError) as info:
        decode_frames(data[: len(data) // 2], 4, name="half.mp4")
    assert info.value.source == "half.mp4"
    with pytest.raises(DecodeError, match="bytes of video"):
        decode_frames(b"", 4)


def test_no_video_stream_is_a_decode_error(tmp_path):
    audio = tmp_path / "audio.m4a"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "sine=d=1", "-c:a", "aac",
                    str(audio)], check=True)
    with pytest.raises(DecodeError, match=r"audio\.m4a: no decodable video stream"):
        decode_frames(audio, 4)
    empty = tmp_path / "zero.mp4"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=64x64:rate=8",
                    "-frames:v", "0", "-c:v", "libx264", str(empty)], check=True)
    with pytest.raises(DecodeError, match="zero.mp4"):
        decode_frames(empty, 2)


def test_bad_windows_and_arguments(indexed, tmp_path):
    _, data = indexed
    with pytest.raises(DecodeError, match="bad window.*not after start"):
        decode_frames(data, 2, start=2.0, end=1.0, name="v.mp4")
    with pytest.raises(DecodeError, match="bad window.*holds no frame"):
        decode_frames(data, 2, start=5.0, name="v.mp4")
    with pytest.raises(DecodeError, match="bad window.*finite"):
        decode_frames(data, 2, start=float("nan"))
    with pytest.raises(ValueError, match="num_frames"):
        decode_frames(data, 0)
    with pytest.raises(ValueError, match="size"):
        decode_frames(data, 2, size=(0, 10))
    with pytest.raises(FileNotFoundError, match="nope.mp4"):
        decode_frames(tmp_path / "nope.mp4", 2)
