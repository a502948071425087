"""Real test media for the frame / loader / bench tests: mp4s encoded by the ffmpeg CLI and
WebDataset tars written with ``webdataset.TarWriter`` following contract 1 (one sample per video:
``{key}.mp4`` + ``{key}.json``, a schema-v1 record).

Frame ``i`` of an *indexed* video is a uniform grey of value ``index_value(i)``, so a test can
read back WHICH frame was decoded (``frame_index``).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np

STEP = 8


def index_value(i: int) -> int:
    """Grey level of frame ``i`` (i < 30)."""
    return STEP + STEP * i


def frame_index(frame) -> int:
    """The frame index encoded in a decoded frame (any array/tensor of grey pixels)."""
    mean = float(np.asarray(frame, dtype=np.float64).mean())
    return round((mean - STEP) / STEP)


def encode_indexed_mp4(path: Path, num_frames: int = 30, fps: int = 10, size: tuple[int, int] = (48, 64),
                       gop: int = 10) -> bytes:
    """Encode ``num_frames`` uniform grey frames (frame i = ``index_value(i)``) as H.264 mp4.

    Args:
        size: (height, width).
        gop: key frame interval, smaller than the video so that decoding has to seek.

    Returns:
        The mp4 bytes (also written to ``path``).
    """
    assert num_frames <= 30, "grey levels only encode up to 30 frames"
    h, w = size
    frames = np.stack([np.full((h, w, 3), index_value(i), np.uint8) for i in range(num_frames)])
    cmd = ["ffmpeg", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}",
           "-r", str(fps), "-i", "-", "-c:v", "libx264", "-qp", "0", "-g", str(gop), "-pix_fmt", "yuv420p",
           str(path)]
    subprocess.run(cmd, input=frames.tobytes(), check=True)
    return Path(path).read_bytes()


def encode_testsrc_mp4(path: Path, size: tuple[int, int] = (96, 128), fps: int = 8, seconds: float = 2.0) -> bytes:
    """A moving ffmpeg ``testsrc2`` pattern, H.264 / yuv420p. ``size`` is (height, width)."""
    h, w = size
    cmd = ["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=size={w}x{h}:rate={fps}",
           "-t", str(seconds), "-c:v", "libx264", "-pix_fmt", "yuv420p", str(path)]
    subprocess.run(cmd, check=True)
    return Path(path).read_bytes()


def make_record(key: str, video_id: str, n_questions: int, split: str = "train", ext: str = "mp4") -> dict:
    """A schema-v1 record for a shard sample; question j's answer is ``(len(video_id) + j) % 3``."""
    qas = []
    for j in range(n_questions):
        qas.append({"qid": f"synthetic/{split}/{video_id}/q{j}", "question": f"what happens in {video_id} ({j})?",
                    "options": ["red", "green", "blue"], "answer": (len(video_id) + j) % 3, "qtype": "DO",
                    "extra": {"j": j}})
    return {"schema_version": 1, "video_id": video_id, "dataset": "synthetic", "split": split,
            "video": f"{key}.{ext}", "start": None, "end": None, "meta": {}, "qas": qas}


def write_tar(path: Path, samples: list[tuple[dict, bytes]]) -> list[str]:
    """Write ``(record, video_bytes)`` samples to a WebDataset tar; returns their keys."""
    import webdataset as wds

    keys = []
    with wds.TarWriter(str(path)) as sink:
        for record, video in samples:
            key, ext = record["video"].rsplit(".", 1)
            sink.write({"__key__": key, ext: video, "json": json.dumps(record).encode()})
            keys.append(key)
    return keys


def make_shards(out: Path, videos_per_shard: list[int], questions: int = 2, video: bytes | None = None,
                prefix: str = "shard") -> tuple[list[Path], dict[str, dict]]:
    """Write shards ``{prefix}-{i:06d}.tar`` with the given number of videos each.

    Video ``v{n}`` has ``questions + n % 2`` questions. Returns the shard paths and the records
    by qid ... as ``{qid: {"answer", "key", "video_id"}}`` for checking what the loader yields.
    """
    out.mkdir(parents=True, exist_ok=True)
    if video is None:
        video = encode_testsrc_mp4(out / "_src.mp4")
    paths, expected, n = [], {}, 0
    for i, count in enumerate(videos_per_shard):
        samples = []
        for _ in range(count):
            vid = f"v{n}"
            key = f"synthetic__train__{vid}"
            rec = make_record(key, vid, questions + n % 2)
            for qa in rec["qas"]:
                expected[qa["qid"]] = {"answer": qa["answer"], "key": key, "video_id": vid}
            samples.append((rec, video))
            n += 1
        path = out / f"{prefix}-{i:06d}.tar"
        write_tar(path, samples)
        paths.append(path)
    return paths, expected
