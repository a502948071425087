"""ffmpeg helpers: encode raw RGB frames to H.264 mp4 and cut clips (probing with torchcodec is
:mod:`data_shards.ingest.probe`, so that rendering does not load torchcodec).

Everything here shells out to the ``ffmpeg`` CLI (no Python bindings needed) and writes its
outputs atomically (:mod:`data_shards.common.atomic`): ffmpeg writes a temp file next to the
output, with an explicit container format, which is renamed to the final name only after ffmpeg
exited cleanly, so a crash never leaves a half file with the final name.

Reproducibility: the encoder runs with ``-threads 1`` and the ``bitexact`` flags (no encoder
version string, no creation time in the container), so the same ffmpeg build gives the same
bytes for the same frames. Other ffmpeg builds may give other bytes; compare decoded frames.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from data_shards.common.atomic import PendingFile, atomic_path

VIDEO_EXTS = ("mp4", "webm", "mkv", "avi")
"""Containers a shard may hold (contract 1): the member extension is the container name."""


class VideoError(RuntimeError):
    """A video that cannot be encoded, cut or decoded; the message names the file."""


def ffmpeg_bin() -> str:
    """Path of the ffmpeg CLI, or a clear error when it is not installed."""
    path = shutil.which("ffmpeg")
    if path is None:
        raise VideoError("the ffmpeg command-line tool is not on PATH (apt-get install ffmpeg)")
    return path


def _x264_args(preset: str, crf: int, gop: int | None) -> list[str]:
    # One keyframe per second by default (whatever the frame rate): approximate seeking in the
    # loader lands on keyframes, so dense keyframes keep seeks cheap.
    keys = ["-g", str(gop)] if gop is not None else ["-force_key_frames", "expr:gte(t,n_forced*1)"]
    return ["-c:v", "libx264", "-preset", preset, "-crf", str(crf), *keys,
            "-pix_fmt", "yuv420p", "-threads", "1", "-fflags", "+bitexact", "-flags", "+bitexact",
            "-map_metadata", "-1", "-movflags", "+faststart", "-f", "mp4"]


class Mp4Writer:
    """Stream RGB frames into an H.264 mp4 through an ffmpeg subprocess (frames piped on stdin).

    Use as a context manager; on an exception the partial output is removed::

        with Mp4Writer(path, width=96, height=96, fps=8) as w:
            w.write(frames)          # uint8 [T, H, W, 3] (or one frame [H, W, 3])

    Args:
        path: output .mp4 path (written to a temp file beside it and renamed on success).
        width, height: frame size in pixels; both must be even (yuv420p halves chroma).
        fps: frame rate of the output stream.
        preset: x264 preset (``ultrafast``, ``veryfast``, ...): speed vs file size.
        crf: x264 constant rate factor (lower = better quality, bigger file).
        gop: keyframe interval in frames; None = one keyframe per second.
    """

    def __init__(self, path: str | Path, width: int, height: int, fps: float,
                 preset: str = "veryfast", crf: int = 20, gop: int | None = None):
        if width % 2 or height % 2 or width <= 0 or height <= 0:
            raise VideoError(f"{path}: frame size {width}x{height} must be positive and even (yuv420p)")
        self.path = Path(path)
        self.shape = (height, width, 3)
        self.frames = 0
        ffmpeg = ffmpeg_bin()
        self._out = PendingFile(self.path)
        self.tmp = self._out.tmp
        cmd = [ffmpeg, "-hide_banner", "-loglevel", "error", "-y", "-f", "rawvideo",
               "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", f"{fps}", "-i", "-", "-an",
               *_x264_args(preset, crf, gop if gop is not None else max(1, round(fps))), str(self.tmp)]
        try:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
        except BaseException:
            self._out.discard()
            raise

    def write(self, frames: np.ndarray) -> None:
        """Append frames: uint8 ``[T, H, W, 3]`` or ``[H, W, 3]``, RGB."""
        if frames.ndim == 3:
            frames = frames[None]
        if frames.dtype != np.uint8 or frames.shape[1:] != self.shape:
            raise VideoError(f"{self.path}: expected uint8 frames [T, {self.shape[0]}, {self.shape[1]}, 3], "
                             f"got {frames.dtype} {list(frames.shape)}")
        try:
            self.proc.stdin.write(np.ascontiguousarray(frames).data)
        except BrokenPipeError:
            self._fail("ffmpeg stopped reading frames")
        self.frames += frames.shape[0]

    def close(self) -> Path:
        """Finish encoding and move the file into place; returns the final path."""
        self.proc.stdin.close()
        err = self.proc.stderr.read().decode(errors="replace")
        if self.proc.wait() != 0:
            self._fail(f"ffmpeg exited with {self.proc.returncode}: {err.strip()[-500:]}")
        if self.frames == 0:
            self._fail("no frames were written")
        return self._out.commit()

    def abort(self) -> None:
        """Stop ffmpeg and remove the partial output."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stderr):
            try:
                stream.close()
            except OSError:  # a broken pipe on close is expected after kill
                pass
        self._out.discard()

    def _fail(self, why: str) -> None:
        self.abort()
        raise VideoError(f"{self.path}: {why}")

    def __enter__(self) -> Mp4Writer:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def encode_frames(frames: Iterable[np.ndarray], path: str | Path, width: int, height: int,
                  fps: float, **kwargs) -> Path:
    """Encode an iterable of uint8 RGB frame batches (``[T, H, W, 3]`` or ``[H, W, 3]``) to mp4.

    Keyword arguments go to :class:`Mp4Writer` (preset, crf, gop).
    """
    with Mp4Writer(path, width, height, fps, **kwargs) as w:
        for batch in frames:
            w.write(batch)
    return Path(path)


def cut_clip(src: str | Path, start: float | None, end: float | None, dst: str | Path,
             preset: str = "veryfast", crf: int = 20) -> Path:
    """Cut ``[start, end]`` seconds out of ``src`` into an H.264 mp4 at ``dst`` (re-encoded).

    Re-encoding (rather than stream copy) makes the cut frame-accurate: a stream copy can only
    start at a keyframe, which would shift the clip by up to a GOP. Audio is dropped (the models
    read frames only). ``start`` None means 0, ``end`` None means the end of the video.

    Raises:
        VideoError: naming ``src`` when ffmpeg fails or the clip is empty.
    """
    src, dst = Path(src), Path(dst)
    start = float(start or 0.0)
    if end is not None and end <= start:
        raise VideoError(f"{src}: clip end {end} is not after start {start}")
    # -ss before -i seeks fast to the nearest keyframe and then decodes up to `start` exactly.
    cmd = [ffmpeg_bin(), "-hide_banner", "-loglevel", "error", "-y", "-ss", f"{start:.6f}",
           "-i", str(src)]
    if end is not None:
        cmd += ["-t", f"{end - start:.6f}"]
    # Fps stays the source's; width/height are rounded down to even sizes for yuv420p.
    cmd += ["-an", "-sn", "-dn", "-vf", "scale=trunc(iw/2)*2:trunc(ih/2)*2", *_x264_args(preset, crf, None)]
    with atomic_path(dst) as tmp:
        proc = subprocess.run([*cmd, str(tmp)], check=False, stdin=subprocess.DEVNULL, capture_output=True)
        if proc.returncode != 0 or not tmp.exists() or tmp.stat().st_size == 0:
            err = proc.stderr.decode(errors="replace").strip()[-500:]
            raise VideoError(f"{src}: cutting [{start}, {end}] failed (ffmpeg rc {proc.returncode}): {err}")
    return dst
