"""Write-time transcoding: re-encode each video once, before it goes into a shard.

``python -m data_shards write ... --transcode [--tc-height 256 --tc-fps 8 --tc-gop 4 ...]``

Why: the loader decodes K frames per video by seeking, and a seek costs every frame from the
key frame before the timestamp. Real sources are long-GOP (x264's default is a key frame per 250
frames) and full resolution, so each of the K timestamps costs up to 250 full-size frames, about
as much as decoding the whole video (docs/BENCHMARKS.md "Long-GOP sources"). Re-encoding once at
write time to a small size, a capped frame rate and a short key-frame interval makes every later
epoch's decode cheap, at a one-time CPU cost and a measured loss of fidelity.

What a transcode does (ffmpeg CLI, one single-threaded process per video, ``jobs`` at once):
scale down (never up) to ``height`` rows, or so that the longer side is ``max_side``; cap the
frame rate at ``fps`` (the output frame at ``n / fps`` shows the source frame played at that
time); a key frame every ``gop`` frames; ``codec`` / ``preset`` / ``crf``; yuv420p mp4; audio,
subtitles, data streams and container metadata dropped. A clip window (``start``/``end``) is cut
in the same pass. The stored record keeps the original's metadata and adds ``meta["transcode"]``:
the settings, the source's and the output's stream properties and bytes, and the CPU seconds.

A source that cannot be probed, that ffmpeg fails on, or whose output is much shorter than the
source (a truncated or corrupt file) raises :class:`~data_shards.ingest.video_io.VideoError` naming it;
the writer skips, counts and names it like any other bad video.
"""

from __future__ import annotations

import argparse
import errno
import io
import os
import subprocess
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from data_shards.common.atomic import atomic_path
from data_shards.common.distenv import usable_cores
from data_shards.ingest.probe import VideoInfo, probe_video
from data_shards.ingest.video_io import VideoError, ffmpeg_bin

CODECS = ("libx264", "libx265")
"""Encoders whose ``-preset`` / ``-crf`` / ``-g`` options mean the same (both decode with libavcodec)."""


@dataclass
class TranscodeConfig:
    """How each video is re-encoded (defaults chosen from the measurements in docs/BENCHMARKS.md)."""

    height: int | None = 256
    """Output rows (the short side of a landscape video); never upscales. Exclusive with max_side."""
    max_side: int | None = None
    """Longest side of the output in pixels instead of ``height``; never upscales."""
    fps: float | None = None
    """Frame-rate cap; sources at or below it keep their rate. None (default): keep every frame.
    A cap saves bytes and transcode time, not decode time, and returns the frame of up to
    ``1 / fps`` before the requested time (measured: 8 fps drops PSNR from 44 to 26 dB)."""
    gop: int = 8
    """Key-frame interval in output frames: a seek decodes at most this many frames."""
    codec: str = "libx264"
    """Video encoder, one of :data:`CODECS`."""
    preset: str = "veryfast"
    """Encoder speed preset (x264/x265 names)."""
    crf: int = 23
    """Constant rate factor: lower is better quality and more bytes."""

    def __post_init__(self):
        if self.height is not None and self.max_side is not None:
            raise ValueError("TranscodeConfig: give height or max_side, not both")
        for name in ("height", "max_side"):
            value = getattr(self, name)
            if value is not None and (value < 2 or value % 2):
                raise ValueError(f"TranscodeConfig.{name} must be an even number >= 2, got {value}")
        if self.fps is not None and not self.fps > 0:
            raise ValueError(f"TranscodeConfig.fps must be > 0 or None, got {self.fps}")
        if self.gop < 1:
            raise ValueError(f"TranscodeConfig.gop must be >= 1, got {self.gop}")
        if self.codec not in CODECS:
            raise ValueError(f"TranscodeConfig.codec must be one of {CODECS}, got {self.codec!r}")


def output_size(width: int, height: int, cfg: TranscodeConfig) -> tuple[int, int]:
    """``(width, height)`` of the transcoded video: scaled down to the config's limit, both even."""
    scale = 1.0
    if cfg.height is not None:
        scale = min(1.0, cfg.height / height)
    if cfg.max_side is not None:
        scale = min(1.0, cfg.max_side / max(width, height))
    return max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)


def _stream_dict(info: VideoInfo, nbytes: int) -> dict:
    fps = round(info.fps, 4) if info.fps else None
    duration = round(float(info.duration), 4) if info.duration else None
    return {"width": info.width, "height": info.height, "fps": fps, "frames": info.num_frames,
            "duration": duration, "codec": info.codec, "bytes": nbytes}


def ffmpeg_command(src: Path, dst: Path, info: VideoInfo, cfg: TranscodeConfig,
                   start: float | None = None, end: float | None = None) -> list[str]:
    """The ffmpeg command line that transcodes ``src`` (probed as ``info``) to ``dst`` (mp4)."""
    w, h = output_size(info.width, info.height, cfg)
    filters = [f"scale={w}:{h}:flags=bicubic"]
    if cfg.fps is not None and info.fps and info.fps > cfg.fps * 1.001:
        # round=up: output frame n (at n/fps) is the last source frame with pts <= n/fps, i.e. the
        # frame played at that time; the default (round=near) was measured 1-2 source frames late.
        filters.append(f"fps={cfg.fps:g}:round=up")
    cmd = [ffmpeg_bin(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y", "-threads", "1"]
    if start:
        cmd += ["-ss", f"{float(start):.6f}"]
    cmd += ["-i", str(src)]
    if end is not None:
        cmd += ["-t", f"{float(end) - float(start or 0.0):.6f}"]
    # One thread per ffmpeg: the writer runs `jobs` of them at once, one per core.
    return cmd + ["-map", "0:v:0", "-an", "-sn", "-dn", "-vf", ",".join(filters), "-c:v", cfg.codec,
                  "-preset", cfg.preset, "-crf", str(cfg.crf), "-g", str(cfg.gop), "-pix_fmt", "yuv420p",
                  "-threads", "1", "-map_metadata", "-1", "-movflags", "+faststart", "-f", "mp4", str(dst)]


def _run_timed(cmd: list[str]) -> tuple[int, str, float]:
    """Run ``cmd``; returns (exit code, stderr text, CPU seconds of that process alone)."""
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        err = proc.stderr.read().decode(errors="replace")
    finally:
        proc.stderr.close()
    # wait4 gives this child's own rusage (RUSAGE_CHILDREN would mix the parallel jobs' times).
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, err, usage.ru_utime + usage.ru_stime


def transcode_file(src: str | Path, dst: str | Path, cfg: TranscodeConfig, start: float | None = None,
                   end: float | None = None) -> dict:
    """Transcode one video (or its ``[start, end]`` window) to ``dst``; checks the result.

    Returns:
        ``meta["transcode"]`` of the stored record: {"settings", "source", "output", "cpu_s",
        "window"}.

    Raises:
        VideoError: naming ``src`` when it cannot be probed, ffmpeg fails, or the output is much
            shorter than the source (truncated or corrupt input).
    """
    src, dst = Path(src), Path(dst)
    if src.stat().st_size == 0:
        raise VideoError(f"{src}: empty file (0 bytes)")
    info = probe_video(src)
    with atomic_path(dst) as tmp:
        code, err, cpu_s = _run_timed(ffmpeg_command(src, tmp, info, cfg, start, end))
        if code != 0 or not tmp.exists() or tmp.stat().st_size == 0:
            if "No space left on device" in err:  # our disk, not this video: the writer stops (finished shards stay)
                raise OSError(errno.ENOSPC, f"no space left on device writing {tmp} (transcoding {src})")
            last = err.strip().splitlines()[-1] if err.strip() else "no output"
            raise VideoError(f"{src}: transcoding failed (ffmpeg rc {code}): {last[:300]}")
    try:
        out = probe_video(dst)
    except VideoError as e:
        raise VideoError(f"{src}: transcoded output is not decodable ({e})") from e
    _check_duration(src, info, out, start, end)
    return {"settings": asdict(cfg), "source": _stream_dict(info, src.stat().st_size),
            "output": _stream_dict(out, dst.stat().st_size), "cpu_s": round(cpu_s, 3),
            "window": None if start is None and end is None else [start, end]}


def _check_duration(src: Path, info: VideoInfo, out: VideoInfo, start: float | None, end: float | None) -> None:
    """A source whose frames stop early (truncated, corrupt) transcodes into a short output: refuse it."""
    if not info.duration or not out.duration:
        return
    expect = float(info.duration) - float(start or 0.0)
    if end is not None:
        expect = min(expect, float(end) - float(start or 0.0))
    # slack: a frame or two of rounding at each end, and the frame-rate cap's last frame
    if float(out.duration) < 0.9 * expect - 0.5:
        raise VideoError(f"{src}: transcoded output lasts {float(out.duration):.2f} s, the source "
                         f"{expect:.2f} s: the source is truncated or corrupt past that point")


def keyframe_times(source: str | Path | bytes) -> list[float]:
    """Presentation times (s) of the key frames of the first video stream, read from packets (no decoding)."""
    import av  # PyAV is optional (the "dev" extra): only the bench and the tests read key frames

    with av.open(io.BytesIO(source) if isinstance(source, bytes) else str(source)) as container:
        stream = container.streams.video[0]
        return sorted(float(p.pts * stream.time_base) for p in container.demux(stream)
                      if p.is_keyframe and p.pts is not None)


class Transcoder:
    """Transcodes the writer's videos ``jobs`` at a time, ahead of the (in-order) shard writing.

    Args:
        cfg: the transcode settings.
        items: per record, ``(locate, start, end)``: ``locate()`` returns the source path (it
            may raise; such a record is left to the writer's own error path).
        workdir: where outputs are written (each is read back and deleted).
        jobs: videos at once (default: usable cores).
    """

    def __init__(self, cfg: TranscodeConfig, items: Sequence[tuple[Callable[[], Path], float | None, float | None]],
                 workdir: Path, jobs: int | None = None):
        self.cfg, self.items, self.workdir = cfg, items, Path(workdir)
        self.jobs = jobs or usable_cores()
        self._pool = ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="transcode")
        self._futures: dict[int, Future] = {}
        self._next = 0
        self.done = 0
        self.cpu_s = 0.0

    def _submit_until(self, last: int) -> None:
        while self._next <= min(last, len(self.items) - 1):
            i, self._next = self._next, self._next + 1
            locate, start, end = self.items[i]
            try:
                path = locate()
            except (OSError, VideoError):
                continue  # the writer finds the same error for this record and reports it
            self._futures[i] = self._pool.submit(self._one, i, path, start, end)

    def _one(self, i: int, path: Path, start: float | None, end: float | None) -> tuple[bytes, dict]:
        out = self.workdir / f"transcode-{i}.mp4"
        try:
            meta = transcode_file(path, out, self.cfg, start, end)
            return out.read_bytes(), meta
        finally:
            out.unlink(missing_ok=True)

    def take(self, index: int) -> tuple[str, bytes, bool, dict]:
        """The transcoded video of record ``index`` (0-based, asked in increasing order).

        Returns:
            (member extension "mp4", bytes, whether a window was cut, extra record meta).

        Raises:
            VideoError / OSError: this record's transcode failed (the message names the file).
        """
        # keep 2 x jobs transcodes in flight ahead of the writer, so no core waits for it
        self._submit_until(index + 2 * self.jobs)
        future = self._futures.pop(index, None)
        if future is None:
            raise VideoError(f"record {index + 1}: its source was not found when transcoding started")
        data, meta = future.result()
        self.done += 1
        self.cpu_s += meta["cpu_s"]
        return "mp4", data, meta["window"] is not None, {"transcode": meta}

    def close(self) -> None:
        """Drop transcodes not started; wait for the running ones (each is one short ffmpeg)."""
        self._pool.shutdown(wait=True, cancel_futures=True)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``--transcode`` options of ``python -m data_shards write``."""
    d = TranscodeConfig()
    g = p.add_argument_group("write-time transcoding (re-encode each video once before it is stored)")
    g.add_argument("--transcode", action="store_true", help="re-encode every video (settings below)")
    g.add_argument("--tc-height", type=int, default=d.height, help="output height, never upscaled (0: keep)")
    g.add_argument("--tc-max-side", type=int, default=None, help="output longest side instead of --tc-height")
    g.add_argument("--tc-fps", type=float, default=d.fps, help="frame-rate cap (default: keep every frame)")
    g.add_argument("--tc-gop", type=int, default=d.gop, help="key-frame interval in output frames")
    g.add_argument("--tc-codec", default=d.codec, choices=CODECS)
    g.add_argument("--tc-preset", default=d.preset, help="encoder preset")
    g.add_argument("--tc-crf", type=int, default=d.crf, help="constant rate factor (lower: better, bigger)")
    g.add_argument("--tc-jobs", type=int, default=None, help="videos transcoded at once (default: cores)")


def config_from_args(a: argparse.Namespace) -> TranscodeConfig | None:
    """The TranscodeConfig the parsed options ask for, or None without ``--transcode``."""
    if not a.transcode:
        return None
    height = None if a.tc_max_side or not a.tc_height else a.tc_height
    return TranscodeConfig(height=height, max_side=a.tc_max_side, fps=a.tc_fps or None, gop=a.tc_gop,
                           codec=a.tc_codec, preset=a.tc_preset, crf=a.tc_crf)
