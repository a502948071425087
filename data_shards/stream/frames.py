"""Frame sampling: T frames at segment middles of a video (or a clip window), decoded by torchcodec.

The video (or the window ``[start, end]``) is cut into ``T`` equal segments and the frame *played*
at the middle of each segment is returned: ``t_i = start + (i + 0.5) * (end - start) / T``. This is
the usual uniform sampling of VideoQA models (no frame at the very first or last instant, which
are often black or a fade).

Decoding uses torchcodec's ``VideoDecoder`` in ``approximate`` seek mode (no full scan of the file
before the first frame: the index comes from the container header) and asks for all ``T``
timestamps in one batched ``get_frames_played_at`` call, so the decoder walks forward through the
file and seeks only when the next timestamp lies beyond the next key frame. Frames are resized
*inside* the decoder (``torchcodec.transforms.Resize``, FFmpeg swscale, bilinear with
anti-aliasing) so a full-resolution RGB frame is never materialised as a tensor.
"""

from __future__ import annotations

import math
import threading
from pathlib import Path
from typing import Any

import torch

# Imported here, not lazily: loading torchcodec's FFmpeg libraries takes seconds, and DataLoader
# workers forked after this module was imported inherit them instead of each paying again.
from torchcodec.decoders import VideoDecoder
from torchcodec.transforms import Resize

from data_shards.stream.budget import FrameBudget

__all__ = ["DecodeError", "decode_frames", "segment_times"]


class DecodeError(RuntimeError):
    """A video that cannot be decoded: corrupt bytes, no video stream, zero frames, bad window.

    The message starts with ``{source}:`` (a path, or a tar member such as
    ``shard-000003.tar:synthetic__train__v17.mp4``) so that the bad file can be found.
    """

    def __init__(self, source: str, message: str):
        self.source = source
        super().__init__(f"{source}: {message}")


class DecodeTimeout(DecodeError):
    """Decoding one video took longer than its time limit (a stalled input, a pathological file)."""


def decode_frames_within(timeout_s: float, source: bytes | str | Path, num_frames: int | FrameBudget, *args: Any,
                         name: str | None = None, **kwargs: Any) -> torch.Tensor:
    """:func:`decode_frames` with a time limit: :class:`DecodeTimeout` after ``timeout_s`` seconds.

    The decode runs in a daemon thread (torchcodec releases the GIL inside FFmpeg, so the caller's
    thread wakes at the deadline). A decoder blocked in FFmpeg cannot be interrupted: the thread is
    abandoned and ends when its input does (a stalled pipe when its writer closes it, a slow file when
    it is done). Callers quarantine such a source so that it is not tried again.
    """
    result: list[Any] = []

    def run() -> None:
        try:
            result.append(decode_frames(source, num_frames, *args, name=name, **kwargs))
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread below
            result.append(e)

    worker = threading.Thread(target=run, name="decode-watchdog", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise DecodeTimeout(_source_name(source, name), f"decoding took longer than {timeout_s:g} s "
                            "(data.decode_timeout_s); the decoder is abandoned")
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0]


def segment_times(num_frames: int, start: float, end: float) -> list[float]:
    """Middles of ``num_frames`` equal segments of ``[start, end]``, in seconds, increasing."""
    step = (end - start) / num_frames
    return [start + (i + 0.5) * step for i in range(num_frames)]


def _source_name(source: bytes | str | Path, name: str | None) -> str:
    if name is not None:
        return name
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes of video>"
    return str(source)


def _check_args(src: str, num_frames: int | FrameBudget, size: tuple[int, int] | None,
                start: float | None, end: float | None) -> None:
    if not isinstance(num_frames, FrameBudget) and (
            isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1):
        raise ValueError(f"{src}: num_frames must be an int >= 1 or a FrameBudget, got {num_frames!r}")
    if size is not None and (len(size) != 2 or not all(isinstance(v, int) and v > 0 for v in size)):
        raise ValueError(f"{src}: size must be (height, width) positive ints, got {size!r}")
    for label, value in (("start", start), ("end", end)):
        if value is not None and (not math.isfinite(value) or value < 0):
            raise DecodeError(src, f"bad window: {label}={value!r} must be a finite number >= 0")
    if start is not None and end is not None and end <= start:
        raise DecodeError(src, f"bad window: end {end} is not after start {start}")


def decode_frames(
    source: bytes | str | Path,
    num_frames: int | FrameBudget,
    size: tuple[int, int] | None = None,
    start: float | None = None,
    end: float | None = None,
    *,
    name: str | None = None,
    num_threads: int = 1,
) -> torch.Tensor:
    """Decode ``num_frames`` frames at the segment middles of a video or of ``[start, end]``.

    Args:
        source: encoded video bytes (e.g. a tar member), or a path to a video file.
        num_frames: T, the number of frames (>= 1); or a
            :class:`~data_shards.stream.budget.FrameBudget`, which chooses T from the length of the
            window (``hi - lo`` below: the clip, or the stream as its metadata gives it).
        size: ``(height, width)`` to resize to during decoding; None keeps the native size.
        start: window start in seconds (None: the start of the stream).
        end: window end in seconds (None: the end of the stream). An end past the end of the
            stream is clipped to it (annotated clip ends often overshoot by a few frames); a
            window that starts at or after the end of the stream is an error.
        name: how to name the source in errors (default: the path, or the byte count).
        num_threads: FFmpeg decoding threads. 1 is best when many decoders run in parallel
            (DataLoader workers); more helps a single decoder.

    Returns:
        uint8 tensor ``[T, 3, H, W]`` (RGB), ``H, W`` = ``size`` or the video's own size.

    Raises:
        DecodeError: corrupt or unreadable bytes, no video stream, zero frames, bad window.
        OverBudget: a budget that holds no frame count (naming the source).
        FileNotFoundError: ``source`` is a path that does not exist.
        ValueError: bad ``num_frames`` or ``size``.
    """
    src = _source_name(source, name)
    _check_args(src, num_frames, size, start, end)
    if isinstance(source, Path):
        source = str(source)
    if isinstance(source, str) and (not Path(source).exists() or Path(source).is_dir()):  # a FIFO is fine
        raise FileNotFoundError(f"{src}: video file not found")
    if isinstance(source, (bytearray, memoryview)):
        source = bytes(source)
    transforms = [Resize(size)] if size is not None else None
    try:
        decoder = VideoDecoder(source, seek_mode="approximate", dimension_order="NCHW",
                               num_ffmpeg_threads=num_threads, transforms=transforms)
    except ValueError as e:
        # torchcodec raises ValueError("The best video stream is unknown ...") when the
        # container holds no video stream, or a video stream without a single frame.
        if "stream" in str(e):
            raise DecodeError(src, "no decodable video stream (zero frames or audio only)") from e
        raise DecodeError(src, f"cannot open video: {_first_line(e)}") from e
    except RuntimeError as e:
        raise DecodeError(src, f"cannot open video: {_first_line(e)}") from e

    meta = decoder.metadata
    if not meta.num_frames:
        raise DecodeError(src, "the video stream has zero frames")
    stream_begin = meta.begin_stream_seconds or 0.0
    stream_end = meta.end_stream_seconds
    if stream_end is None or not math.isfinite(stream_end) or stream_end <= stream_begin:
        raise DecodeError(src, f"unknown or empty duration (stream [{stream_begin}, {stream_end}] s)")
    lo = stream_begin if start is None else max(float(start), stream_begin)
    hi = stream_end if end is None else min(float(end), stream_end)
    if hi <= lo:
        raise DecodeError(src, f"bad window: [{start}, {end}] s holds no frame of the stream "
                               f"[{stream_begin:.3f}, {stream_end:.3f}] s")
    if isinstance(num_frames, FrameBudget):
        num_frames = num_frames.choose(hi - lo, src)
    times = segment_times(num_frames, lo, hi)
    try:
        frames = decoder.get_frames_played_at(times).data
    except (RuntimeError, ValueError, IndexError) as e:
        raise DecodeError(src, f"decoding frames at {[round(t, 3) for t in times]} s failed: "
                               f"{_first_line(e)}") from e
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[:2] != (num_frames, 3):
        raise DecodeError(src, f"decoder returned {frames.dtype} {tuple(frames.shape)}, "
                               f"expected uint8 [{num_frames}, 3, H, W]")
    return frames


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    # torchcodec prefixes C++ errors with "Class, /path/to/File.cpp:LINE, ": keep the message.
    line = text.splitlines()[0] if text else type(exc).__name__
    parts = line.split(", ", 2)
    if len(parts) == 3 and ".cpp:" in parts[1]:
        return parts[2]
    return line
