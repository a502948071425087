"""Transcode settings vs decode cost, bytes and fidelity, on a few source videos (how the defaults were picked).

``python -m data_shards.bench.transcode_sweep VIDEO... [--variants 256:0:8:23:veryfast,256:8:4:23:veryfast]``

A variant is ``height:fps:gop:crf:preset`` (fps 0: no cap). For each source video and variant:
the transcode's CPU seconds (:func:`data_shards.ingest.transcode.transcode_file`), its bytes, the CPU time
of decoding K frames at the segment middles at ``--size`` (torchcodec, one thread, as a loader
worker; median of ``--reps``), and the PSNR of those frames, and of frames at ``--random`` random
timestamps, against the source decoded at the same timestamps and size (worst video). The source's
own cost with ``pyav-decode-all`` and with torchcodec is printed first. One process, one torch
thread: CPU times, not wall times, so other load on the machine moves them little.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torchcodec.decoders import VideoDecoder
from torchcodec.transforms import Resize

from data_shards.bench.loader_bench import pyav_frames
from data_shards.ingest.transcode import TranscodeConfig, transcode_file
from data_shards.stream.frames import decode_frames
from data_shards.stream.loader import _parse_size

DEFAULT_VARIANTS = ("256:0:30:23:veryfast,256:0:8:23:veryfast,256:0:4:23:veryfast,256:15:8:23:veryfast,"
                    "256:8:8:23:veryfast,256:8:4:23:veryfast,224:0:8:23:veryfast,256:0:8:28:veryfast")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(255 ** 2 / mse)


def cpu_time(fn, reps: int) -> tuple[float, object]:
    """Median CPU seconds of ``fn()`` over ``reps`` calls, and its last result."""
    times, out = [], None
    for _ in range(reps):
        t0 = time.process_time()
        out = fn()
        times.append(time.process_time() - t0)
    return float(np.median(times)), out


def at_times(source, times: list[float], size: tuple[int, int]) -> np.ndarray:
    """uint8 ``[len(times), 3, H, W]``: the frames played at ``times``, resized in the decoder."""
    decoder = VideoDecoder(source, seek_mode="approximate", transforms=[Resize(size)])
    return decoder.get_frames_played_at(times).data.numpy()


def parse_variant(text: str) -> TranscodeConfig:
    height, fps, gop, crf, preset = text.split(":")
    return TranscodeConfig(height=int(height), fps=float(fps) or None, gop=int(gop), crf=int(crf), preset=preset)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m data_shards.bench.transcode_sweep", description=__doc__.split("\n")[0])
    p.add_argument("videos", nargs="+", help="source video files")
    p.add_argument("--variants", default=DEFAULT_VARIANTS, help="comma-separated height:fps:gop:crf:preset")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--size", type=_parse_size, default=(224, 224))
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--random", type=int, default=16, help="random timestamps per video for the second PSNR")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    variants = [parse_variant(v) for v in a.variants.split(",")]
    rows: dict[str, list[tuple[float, int, float, float, float]]] = {v: [] for v in a.variants.split(",")}
    base = []
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        for video in map(Path, a.videos):
            data = video.read_bytes()
            t_all, _ = cpu_time(lambda data=data: pyav_frames(data, a.frames, a.size, {"start": None, "end": None},
                                                    "decode-all"), 1)
            t_tc, ref = cpu_time(lambda data=data: decode_frames(data, a.frames, a.size).numpy(), a.reps)
            base.append((len(data), t_all, t_tc))
            duration = float(VideoDecoder(data, seek_mode="approximate").metadata.duration_seconds)
            times = sorted(rng.uniform(0.1, duration - 0.1, a.random).tolist())
            ref_random = at_times(data, times, a.size)
            for name, cfg in zip(rows, variants):
                out = Path(tmp) / "out.mp4"
                meta = transcode_file(video, out, cfg)
                coded = out.read_bytes()
                t_dec, ours = cpu_time(lambda coded=coded: decode_frames(coded, a.frames, a.size).numpy(), a.reps)
                rows[name].append((meta["cpu_s"], len(coded), t_dec, psnr(ours, ref),
                                   psnr(at_times(coded, times, a.size), ref_random)))
    b = np.mean(base, axis=0)
    print(f"sources ({len(base)}): {b[0] / 1e3:.0f} kB, pyav-decode-all {b[1] * 1e3:.0f} ms, torchcodec "
          f"{b[2] * 1e3:.1f} ms CPU per video (K={a.frames} at {a.size[0]}x{a.size[1]})")
    print(f"{'height:fps:gop:crf:preset':<28}{'tc CPU-s':>9}{'kB':>7}{'decode ms':>10}{'vs all':>8}"
          f"{'PSNR mid':>9}{'PSNR rnd':>9}")
    for name, r in rows.items():
        r = np.array(r)
        m = r.mean(axis=0)
        print(f"{name:<28}{m[0]:9.2f}{m[1] / 1e3:7.0f}{m[2] * 1e3:10.1f}{b[1] / m[2]:7.1f}x"
              f"{r[:, 3].min():9.1f}{r[:, 4].min():9.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
