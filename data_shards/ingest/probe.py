"""Probe a video with torchcodec: stream metadata, and frame 0 decoded to prove the stream is readable.

Apart from :mod:`data_shards.ingest.video_io` (the ffmpeg CLI helpers) because loading torchcodec
(and its FFmpeg libraries) takes seconds, which rendering the synthetic videos does not need.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torchcodec.decoders import VideoDecoder

from data_shards.ingest.video_io import VideoError


@dataclass
class VideoInfo:
    """What :func:`probe_video` learned about a video stream."""

    width: int
    height: int
    fps: float | None
    num_frames: int | None
    duration: float | None
    codec: str | None


def probe_video(source: str | Path | bytes, decode_first: bool = True) -> VideoInfo:
    """Open a video with torchcodec, read its stream metadata and (optionally) decode frame 0.

    Decoding the first frame catches files whose container parses but whose stream does not.

    Raises:
        VideoError: naming the file when it cannot be opened or decoded.
    """
    name = "<bytes>" if isinstance(source, (bytes, bytearray)) else str(source)
    try:
        dec = VideoDecoder(source if isinstance(source, bytes) else str(source), seek_mode="approximate")
        md = dec.metadata
        if decode_first:
            dec.get_frame_at(0)
    except Exception as e:  # torchcodec raises RuntimeError/ValueError of several kinds
        raise VideoError(f"{name}: not a decodable video ({type(e).__name__}: {str(e).strip()[:300]})") from e
    return VideoInfo(width=md.width, height=md.height, fps=md.average_fps, num_frames=md.num_frames,
                     duration=md.duration_seconds, codec=md.codec)
