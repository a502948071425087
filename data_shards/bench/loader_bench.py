"""Loader throughput: our streaming loader vs decoding the same shards with PyAV, in one run.

``python -m data_shards bench SHARDS [--frames 8 --workers 2 --size 224x224 --seconds 20 --max-videos M]
[--transcoded TC_SHARDS]`` or, making its own sources (:mod:`data_shards.bench.sources`),
``python -m data_shards bench --make-sources DIR --gop x264 [--transcode --tc-height 256 ...]``

Providers (each runs until it has handled ``--max-videos`` videos or ``--seconds`` passed,
cycling over the shards as often as needed; same K timestamps per video, the segment middles):

- ``loader``: :func:`data_shards.stream.loader.build_loader` with N workers, shards read in endless
  passes; a video counts when its last question is yielded to the consumer (main process).
- ``torchcodec-seq``: :func:`data_shards.stream.frames.decode_frames` on each tar member, one process
  (the decoder alone: shows what the pipeline adds or loses).
- ``pyav-seq`` (the baseline of ``speedup_vs_pyav_seek``): PyAV, one process: open each video from the
  tar bytes, for each timestamp seek (to the key frame before it) and decode forward to the
  frame played at that time, convert to RGB at the target size (swscale). Same frames as ours.
- ``pyav-decode-all`` (the baseline of ``speedup_vs_pyav``, the issue's "PyAV sequential"): PyAV
  decodes every frame in order and keeps the ones played at the timestamps (same frames).
- ``pyav-keyframe``: PyAV seek + the first decoded frame, i.e. the key frame at or before each
  timestamp. Cheaper but NOT the same frames (up to one GOP early; the table prints the mean
  time error); shown for reference only.
- ``loader-transcoded`` (with ``--transcoded`` or ``--transcode``): the loader on the same videos
  written with ``write --transcode``. Its frames are compared with the ORIGINAL videos decoded at
  the same timestamps and size (``torchcodec-seq``'s frames): PSNR and mean |difference| are
  printed beside it, and so is the one-time transcode cost (CPU s per video, from the records'
  ``meta.transcode``). ``speedup_transcoded_vs_pyav`` = its frames/s over ``pyav-decode-all`` on
  the original videos.

The single-process providers run with one torch thread, like the loader's workers (DataLoader sets
it): torchcodec's batched frame API runs small torch ops, and with torch's default thread pool those
spin on the other cores (measured 12x the CPU time of a short decode on the busy 2-core machine).

Prints a table, then (with transcoded shards) ``speedup_transcoded_vs_pyav: Z.ZZ``,
``speedup_vs_pyav_seek: Y.YY`` (loader frames/s over pyav-seq, the strongest
PyAV baseline) and, as the last line, ``speedup_vs_pyav: X.XX`` (loader frames/s over PyAV
sequential decoding, pyav-decode-all), and appends a row to ``docs/bench/loader.csv``.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import io
import json
import os
import resource
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from webdataset.tariterators import tarfile_samples

from data_shards.bench.sources import make_shards, make_sources, parse_gop
from data_shards.common.atomic import atomic_path
from data_shards.ingest.transcode import add_arguments, config_from_args
from data_shards.stream.frames import decode_frames, segment_times
from data_shards.stream.loader import LoaderConfig, _parse_size, build_loader, expand_urls

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CSV = REPO / "docs" / "bench" / "loader.csv"
CSV_FIELDS = ["date", "commit", "cpus", "load_1m", "shards", "videos_in_shards", "frames", "size", "workers",
              "seconds", "rounds", "max_videos", "loader_videos", "loader_videos_s", "loader_frames_s",
              "tc_seq_videos_s", "tc_seq_frames_s", "pyav_videos_s", "pyav_frames_s", "pyav_all_videos_s",
              "pyav_key_videos_s", "loader_frames_cpu_s", "pyav_frames_cpu_s", "speedup_vs_pyav_seek",
              "speedup_tc_seq_vs_pyav", "cpu_efficiency_vs_pyav", "speedup_vs_pyav", "source", "decode_threads",
              "load_1m_end", "tc_loader_frames_s", "speedup_transcoded_vs_pyav", "tc_psnr_db", "tc_psnr_min_db",
              "tc_mae", "tc_cpu_s_per_video", "tc_bytes_ratio", "tc_settings"]


@dataclass
class Result:
    """What one provider did within the budget."""

    name: str
    videos: int = 0
    frames: int = 0
    seconds: float = 0.0
    cpu_s: float = 0.0
    """CPU seconds used (all threads, and for the loader its worker processes too)."""
    note: str = ""
    decoded: int = 0
    """Loader: videos its workers decoded (the ``videos`` counter); more than ``videos`` when some were still
    in flight (decoded, not yet consumed) when a round stopped."""
    samples: dict[str, np.ndarray] = field(default_factory=dict)
    """A few decoded videos by key (uint8 [K, H, W, 3]) to check that providers agree."""

    @property
    def videos_s(self) -> float:
        return self.videos / self.seconds if self.seconds else 0.0

    @property
    def frames_s(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0

    @property
    def frames_cpu_s(self) -> float:
        return self.frames / self.cpu_s if self.cpu_s else 0.0


def cpu_seconds() -> float:
    """User + system CPU time of this process and of its finished (joined) child processes."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def tar_videos(urls: list[str]) -> Iterator[tuple[str, dict, bytes]]:
    """``(key, record, video bytes)`` for every sample of the shards, in order (main process)."""
    for sample in tarfile_samples(iter([{"url": u} for u in urls])):
        record = json.loads(sample["json"])
        yield sample["__key__"], record, sample[record["video"].rsplit(".", 1)[1].lower()]


def shard_video_counts(urls: list[str]) -> list[int]:
    """Video samples in each shard (reads the shards once)."""
    return [sum(1 for _ in tar_videos([u])) for u in urls]


def cycle_videos(urls: list[str], max_videos: int, budget_s: float, work: Callable[[str, dict, bytes], np.ndarray],
                 result: Result, keep: set[str]) -> None:
    """Run ``work`` over the shards' videos (cycling) until ``max_videos`` or ``budget_s``; adds to ``result``."""
    t0, cpu0, done = time.perf_counter(), cpu_seconds(), 0
    while done < max_videos and time.perf_counter() - t0 < budget_s:
        for key, record, data in tar_videos(urls):
            frames = work(key, record, data)
            done += 1
            result.videos += 1
            result.frames += len(frames)
            if key in keep and key not in result.samples:
                result.samples[key] = frames
            if done >= max_videos or time.perf_counter() - t0 >= budget_s:
                break
    result.seconds += time.perf_counter() - t0
    result.cpu_s += cpu_seconds() - cpu0


PYAV_MODES = ("seek", "keyframe", "decode-all")


def pyav_frames(data: bytes, num_frames: int, size: tuple[int, int], record: dict,
                mode: str = "seek") -> tuple[np.ndarray, float]:
    """PyAV decode at the segment middles, one process.

    Modes: ``seek``: per timestamp, seek to the key frame before it and decode forward to the
    frame played at it; ``keyframe``: seek and take the first decoded frame (the key frame, not
    the requested one); ``decode-all``: decode every frame in order, keep the ones played at
    the timestamps. ``seek`` and ``decode-all`` return the same frames as torchcodec.

    Returns:
        (uint8 ``[K, H, W, 3]`` RGB at ``size``, mean ``|t_frame - t|`` in seconds).
    """
    import av  # PyAV is optional (the "dev" extra): only the bench's baselines use it

    if mode not in PYAV_MODES:
        raise ValueError(f"mode must be one of {PYAV_MODES}, got {mode!r}")
    h, w = size
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        tb = stream.time_base
        begin = float((stream.start_time or 0) * tb)
        end = begin + float(stream.duration * tb) if stream.duration else float(container.duration / 1e6)
        lo = begin if record["start"] is None else max(record["start"], begin)
        hi = end if record["end"] is None else min(record["end"], end)
        times = segment_times(num_frames, lo, hi)
        chosen = []
        if mode == "decode-all":
            frames = container.decode(stream)
            previous = next(frames)
            for frame in frames:
                while len(chosen) < len(times) and frame.time > times[len(chosen)] + 1e-6:
                    chosen.append(previous)  # previous is on screen at that timestamp
                if len(chosen) == len(times):
                    break  # every timestamp has its frame: the rest of the video is not needed
                previous = frame
            chosen += [previous] * (len(times) - len(chosen))
        for t in times if mode != "decode-all" else ():
            container.seek(int(t / tb), stream=stream, backward=True, any_frame=False)
            pick = None
            for frame in container.decode(stream):
                if pick is not None and frame.time > t + 1e-6:
                    break  # this frame is played after t: the previous one is on screen at t
                pick = frame
                if mode == "keyframe":
                    break
            chosen.append(pick)
        err = float(np.mean([abs(f.time - t) for f, t in zip(chosen, times)]))
        return np.stack([f.to_ndarray(width=w, height=h, format="rgb24") for f in chosen]), err


def run_loader(urls: list[str], num_frames: int, size: tuple[int, int], workers: int, max_videos: int,
               budget_s: float, last_qids: set[str], keep: set[str], result: Result,
               decode_threads: int | None = 1, counts: list[int] | None = None) -> None:
    """Our loader, in whole passes over the shards (``epoch_batches=None``: a pass ends when the shards do),
    pass after pass until ``max_videos`` videos reached the consumer or ``budget_s`` passed (a last pass
    takes only as many shards as hold the videos still wanted, and at most one worker a shard).

    Whole passes, because a loader stopped mid-stream leaves the videos its workers had decoded ahead
    (``prefetch_factor`` batches a worker) uncounted while their CPU time is counted: with 60 s
    long-GOP videos that in-flight work was as large as the counted work, and it made the loader look
    2-3x costlier per video than it is in a training run, which never stops mid-pass (profiled with the
    workers' own ``videos`` counter, :attr:`Result.decoded`; docs/BENCHMARKS.md). Timed from building
    each pass's loader (worker start-up included) to its last batch. ``counts``: videos per shard
    (:func:`shard_video_counts`; read here when not given).
    """
    counts = counts if counts is not None else shard_video_counts(urls)
    done, t_start = 0, time.perf_counter()
    while done < max_videos and time.perf_counter() - t_start < budget_s:
        t0, cpu0 = time.perf_counter(), cpu_seconds()
        pass_urls, n = [], 0  # the whole list, or as few shards as hold the videos still wanted
        for u, c in zip(urls, counts):
            if n >= max_videos - done:
                break
            pass_urls.append(u)
            n += c
        cfg = LoaderConfig(urls=pass_urls, num_frames=num_frames, frame_size=size, micro_batch_size=8,
                           num_workers=min(workers, len(pass_urls)),  # each worker needs a shard
                           shuffle_shards=False, shuffle_buffer=0, epoch_batches=None, decode_threads=decode_threads)
        loader = build_loader(cfg, rank=0, world_size=1)
        for batch in loader:
            for sample in batch:
                # a video counts at its last question: all of it reached the consumer
                if sample["qid"] in last_qids:
                    done += 1
                    result.videos += 1
                    result.frames += sample["frames"].shape[0]
                    if sample["__key__"] in keep and sample["__key__"] not in result.samples:
                        result.samples[sample["__key__"]] = sample["frames"].permute(0, 2, 3, 1).numpy()
        result.seconds += time.perf_counter() - t0
        result.cpu_s += cpu_seconds() - cpu0  # the pass is over: its workers have exited and been joined
        stats = loader.stats()
        result.decoded += stats["videos"]
        skipped = {k: stats[k] for k in ("missing_shard", "corrupt_tar", "corrupt_video", "bad_record") if stats[k]}
        if skipped:
            result.note = f"skipped {skipped}"


def compare(a: Result, b: Result) -> str:
    common = sorted(set(a.samples) & set(b.samples))
    if not common:
        return f"{a.name} vs {b.name}: no common video to compare"
    diffs = [np.abs(a.samples[k].astype(np.int16) - b.samples[k].astype(np.int16)).mean() for k in common]
    return f"{a.name} vs {b.name}: mean |difference| {max(diffs):.2f} of 255 (worst of {len(common)} videos)"


def fidelity(ours: Result, reference: Result) -> tuple[float, float, float, int]:
    """PSNR of ``ours``' frames against ``reference``'s (same videos, timestamps and size).

    Returns:
        (PSNR in dB over all compared frames, the worst video's PSNR, mean |difference| of 255,
        number of videos compared); NaNs when no video was decoded by both.
    """
    common = sorted(set(ours.samples) & set(reference.samples))
    if not common:
        return float("nan"), float("nan"), float("nan"), 0
    sq = [(ours.samples[k].astype(np.float64) - reference.samples[k].astype(np.float64)) ** 2 for k in common]
    psnr = [10 * np.log10(255 ** 2 / max(float(e.mean()), 1e-10)) for e in sq]
    mae = float(np.mean([np.sqrt(e).mean() for e in sq]))
    return 10 * np.log10(255 ** 2 / max(float(np.mean([e.mean() for e in sq])), 1e-10)), min(psnr), mae, len(common)


def transcode_cost(urls: list[str]) -> tuple[float, float, dict]:
    """From the transcoded shards' records: (mean CPU s per video, output / source bytes, settings)."""
    metas = [rec["meta"].get("transcode") for _, rec, _ in tar_videos(urls)]
    if not metas or any(m is None for m in metas):
        raise ValueError(f"{urls[0]}...: not every record has meta.transcode; write these shards with --transcode")
    ratio = sum(m["output"]["bytes"] for m in metas) / sum(m["source"]["bytes"] for m in metas)
    return float(np.mean([m["cpu_s"] for m in metas])), ratio, metas[0]["settings"]


def native_check(urls: list[str], num_frames: int) -> str:
    """Decode the first video at its own size with torchcodec and with PyAV: are the frames identical?"""
    key, record, data = next(tar_videos(urls))
    ours = decode_frames(data, num_frames, None, record["start"], record["end"]).permute(0, 2, 3, 1).numpy()
    theirs, _ = pyav_frames(data, num_frames, tuple(ours.shape[1:3]), record, "seek")
    diff = np.abs(ours.astype(np.int16) - theirs.astype(np.int16))
    verdict = "identical" if not diff.any() else f"DIFFERENT (max {diff.max()}, mean {diff.mean():.2f})"
    return (f"same frames check at native size {ours.shape[1]}x{ours.shape[2]} ({key}): torchcodec vs pyav-seq "
            f"{verdict}; at the target size they differ only by the resize filter")


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def append_csv(path: Path, row: dict) -> None:
    """Append ``row``; a file written with fewer columns (older bench) is rewritten with the new header."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and path.stat().st_size:
        with path.open(newline="") as f:
            old = csv.DictReader(f)
            rows = list(old) if old.fieldnames != CSV_FIELDS else None
        if rows is not None:  # rewritten whole or not at all: the old rows are never lost
            with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, restval="")
                writer.writeheader()
                writer.writerows(rows)
    new = not path.exists() or path.stat().st_size == 0
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, restval="")
        if new:
            writer.writeheader()
        writer.writerow(row)


def run_all(urls: list[str], num_frames: int, size: tuple[int, int], workers: int, budget_s: float,
            max_videos: int | None, rounds: int = 3, tc_urls: list[str] | None = None,
            decode_threads: int | None = 1) -> tuple[list[Result], int]:
    """All providers on the same shards, interleaved in ``rounds`` rounds of ``budget_s / rounds``
    each (so that a change in machine load hits every provider alike).

    Returns:
        The providers' results (loader, torchcodec-seq, pyav-seq, pyav-decode-all, pyav-keyframe,
        and loader-transcoded when ``tc_urls`` are given) and the number of videos in the shards.
    """
    index = [(key, rec) for key, rec, _ in tar_videos(urls)]
    if not index:
        raise ValueError(f"no video sample in {urls}")
    last_qids = {rec["qas"][-1]["qid"] for _, rec in index}
    keep = {key for key, _ in index[:16]}  # frames kept to compare providers (and transcoded vs original)
    limit = max_videos if max_videos is not None else 1 << 40
    results = [Result(f"loader ({workers} workers)"), Result("torchcodec-seq"), Result("pyav-seq"),
               Result("pyav-decode-all"), Result("pyav-keyframe")]
    if tc_urls:
        results.append(Result(f"loader-transcoded ({workers})"))
    errors: dict[str, list[float]] = {r.name: [] for r in results}

    def torchcodec_work(key, rec, data):
        return decode_frames(data, num_frames, size, rec["start"], rec["end"], name=key).permute(0, 2, 3, 1).numpy()

    def pyav_work(mode: str, name: str):
        def work(key, rec, data):
            frames, err = pyav_frames(data, num_frames, size, rec, mode)
            errors[name].append(err)
            return frames
        return work

    works = [urls, torchcodec_work, pyav_work("seek", "pyav-seq"), pyav_work("decode-all", "pyav-decode-all"),
             pyav_work("keyframe", "pyav-keyframe"), tc_urls]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one decoding thread per provider, as in the loader's workers (module docstring)
    try:
        counts = {tuple(w): shard_video_counts(w) for w in works if isinstance(w, list)}  # read once
        for r in range(rounds):
            for res, work in zip(results, works):
                share = -(-(limit - res.videos) // (rounds - r))  # ceil: what is left, spread over the rounds left
                if share <= 0:
                    continue
                if isinstance(work, list):  # a loader over these shards
                    run_loader(work, num_frames, size, workers, share, budget_s / rounds, last_qids, keep, res,
                               decode_threads, counts[tuple(work)])
                else:
                    cycle_videos(urls, share, budget_s / rounds, work, res, keep)
    finally:
        torch.set_num_threads(threads)
    for res in results:
        if errors[res.name]:
            res.note = f"mean |t_frame - t| = {np.mean(errors[res.name]):.3f} s"
        if res.decoded:  # a loader: where its CPU went
            res.note = (f"{res.note}; " if res.note else "") + (
                f"workers decoded {res.decoded} videos for the {res.videos} counted: "
                f"{res.cpu_s / res.decoded:.3f} CPU-s per decoded video")
    return results, len(index)


def sweep_threads(urls: list[str], num_frames: int, size: tuple[int, int], budget_s: float, rounds: int,
                  configs: list[tuple[int, int]]) -> list[Result]:
    """The loader alone with each ``(workers, FFmpeg threads per decoder)``, interleaved in rounds."""
    index = [(key, rec) for key, rec, _ in tar_videos(urls)]
    last_qids = {rec["qas"][-1]["qid"] for _, rec in index}
    results = [Result(f"loader {w} workers x {t} threads") for w, t in configs]
    counts = shard_video_counts(urls)
    for _ in range(rounds):
        for res, (w, t) in zip(results, configs):
            run_loader(urls, num_frames, size, w, 1 << 40, budget_s / rounds, last_qids, set(), res, t, counts)
    return results


def _print_sweep(args: argparse.Namespace, urls: list[str], source: str) -> int:
    configs = [tuple(int(v) for v in c.split("x")) for c in args.sweep_threads.split(",")]
    load = os.getloadavg()[0]
    results = sweep_threads(urls, args.frames, args.size, args.seconds, args.rounds, configs)
    print(f"decoder threads sweep: {len(urls)} shard(s) ({source}), K={args.frames} at {args.size[0]}x{args.size[1]}, "
          f"{args.seconds:g} s per config in {args.rounds} rounds, cpus {os.cpu_count()}, "
          f"load(1m) {load:.2f} at the start, {os.getloadavg()[0]:.2f} at the end")
    base = results[0].videos_s
    for r in results:
        print(f"{r.name:<32}{r.videos:>7} videos{r.videos_s:>9.2f} videos/s{r.videos_s / base if base else 0:>7.2f}x"
              f"{r.cpu_s:>8.1f} CPU-s{r.frames_cpu_s:>9.1f} frames/CPU-s")
    return 0


def _sources(args: argparse.Namespace) -> tuple[list[str], list[str] | None, str]:
    """The original and (optional) transcoded shard URLs the options name or make, and the source label."""
    tc_cfg = config_from_args(args)
    if args.make_sources is None:
        if args.shards is None:
            raise SystemExit("bench: give SHARDS, or --make-sources DIR (see --help)")
        if tc_cfg is not None:
            raise SystemExit("bench: --transcode needs --make-sources; for existing shards give --transcoded TC_SHARDS")
        tc = expand_urls(args.transcoded) if args.transcoded else None
        return expand_urls(args.shards), tc, args.source
    try:
        gop = parse_gop(args.gop)
    except ValueError as e:
        raise SystemExit(f"bench: {e}") from None
    h, w = args.source_size
    try:
        records = make_sources(args.make_sources, args.source_videos, (h, w), args.source_seconds, args.source_fps,
                               gop, grain=args.source_grain)
    except ValueError as e:
        raise SystemExit(f"bench: {e}") from None
    urls = expand_urls(make_shards(records, None))
    tc = expand_urls(make_shards(records, tc_cfg)) if tc_cfg is not None else None
    label = f"{w}x{h} {args.source_seconds:g} s {args.source_fps:g} fps, " + (
        "synthetic (key frame every second)" if gop == "synthetic" else
        f"libx264 defaults, GOP {'250 (x264 default)' if gop == 'x264' else gop}") + (
        f", grain {args.source_grain}" if args.source_grain else "")
    return urls, tc, label


def _arguments() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m data_shards bench", description=main.__doc__)
    p.add_argument("shards", nargs="?", help="shard URL pattern, e.g. 'bench/shards/train-{000000..000007}.tar'")
    p.add_argument("--transcoded", default=None, help="shards of the same videos written with --transcode")
    p.add_argument("--source", default="", help="what the shards hold, for the CSV row")
    p.add_argument("--frames", type=int, default=8, help="K frames per video")
    p.add_argument("--workers", type=int, default=2, help="loader DataLoader workers")
    p.add_argument("--decode-threads", type=int, default=0,
                   help="FFmpeg threads per loader decoder (0: the loader's choice for this machine)")
    p.add_argument("--size", type=_parse_size, default=(224, 224), help="HxW")
    p.add_argument("--seconds", type=float, default=20.0, help="time budget per provider (all rounds)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds per provider")
    p.add_argument("--max-videos", type=int, default=None, help="stop each provider after this many videos")
    p.add_argument("--csv", default=str(DEFAULT_CSV), help="append the result row here ('' to skip)")
    p.add_argument("--sweep-threads", default=None, metavar="WxT,...",
                   help="instead: the loader alone with W workers x T FFmpeg threads each, e.g. 2x1,1x2,2x2")
    g = p.add_argument_group("sources made by the bench (data_shards.bench.sources)")
    g.add_argument("--make-sources", default=None, metavar="DIR", help="make (or reuse) source videos and shards here")
    g.add_argument("--gop", default="x264", help="synthetic (1 s GOP as rendered), x264 (default GOP 250) or N frames")
    g.add_argument("--source-size", type=_parse_size, default=(360, 640), help="HxW of the source videos")
    g.add_argument("--source-seconds", type=float, default=60.0)
    g.add_argument("--source-fps", type=float, default=30.0)
    g.add_argument("--source-videos", type=int, default=16, help="videos (2 per shard)")
    g.add_argument("--source-grain", type=int, default=0,
                   help="temporal noise added before re-encoding (ffmpeg noise=alls=G): camera-like bitrate and "
                        "decode cost (the flat synthetic frames alone compress to almost nothing)")
    add_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    """``python -m data_shards bench SHARDS``: loader vs PyAV sequential throughput."""
    args = _arguments().parse_args(argv)
    size = args.size
    if size is None:
        raise SystemExit("bench needs a fixed --size HxW")
    urls, tc_urls, source = _sources(args)
    if args.sweep_threads:
        for shards, label in ((urls, source), *(((tc_urls, f"{source}, transcoded"),) if tc_urls else ())):
            _print_sweep(args, shards, label)
        return 0
    threads = args.decode_threads or None
    load = os.getloadavg()[0]
    results, n_videos = run_all(urls, args.frames, size, args.workers, args.seconds, args.max_videos,
                                args.rounds, tc_urls, threads)
    load_end = os.getloadavg()[0]
    loader, tc, pyav, pyav_all, pyav_key = results[:5]
    print(f"bench: {len(urls)} shard(s), {n_videos} videos{f' ({source})' if source else ''}, K={args.frames} "
          f"frames at {size[0]}x{size[1]}, {args.workers} loader workers x {threads or 'auto'} decoder thread(s), "
          f"budget {args.seconds:g} s in {args.rounds} rounds, cpus {os.cpu_count()}, load(1m) {load:.2f} at the "
          f"start, {load_end:.2f} at the end")
    tc_row: dict = {}
    if tc_urls:
        cpu_per_video, bytes_ratio, settings = transcode_cost(tc_urls)
        psnr, worst, mae, n = fidelity(results[5], tc)
        results[5].note = (f"vs originals: PSNR {psnr:.1f} dB (worst video {worst:.1f}), |diff| {mae:.2f}/255; "
                           f"transcode once {cpu_per_video:.2f} CPU-s/video, bytes x{bytes_ratio:.2f}")
        speedup_tc = results[5].frames_s / pyav_all.frames_s if pyav_all.frames_s else float("nan")
        tc_row = {"tc_loader_frames_s": f"{results[5].frames_s:.2f}", "speedup_transcoded_vs_pyav": f"{speedup_tc:.3f}",
                  "tc_psnr_db": f"{psnr:.2f}", "tc_psnr_min_db": f"{worst:.2f}", "tc_mae": f"{mae:.3f}",
                  "tc_cpu_s_per_video": f"{cpu_per_video:.3f}", "tc_bytes_ratio": f"{bytes_ratio:.3f}",
                  "tc_settings": json.dumps(settings, sort_keys=True)}
    print(f"{'provider':<24}{'videos':>8}{'frames':>9}{'seconds':>9}{'videos/s':>10}{'frames/s':>10}"
          f"{'vs pyav':>9}{'cpu s':>8}{'frames/cpu-s':>14}{'vs pyav':>9}  note")
    for r in results:
        ratio = r.frames_s / pyav.frames_s if pyav.frames_s else float("nan")
        cpu_ratio = r.frames_cpu_s / pyav.frames_cpu_s if pyav.frames_cpu_s else float("nan")
        print(f"{r.name:<24}{r.videos:>8}{r.frames:>9}{r.seconds:>9.2f}{r.videos_s:>10.2f}{r.frames_s:>10.1f}"
              f"{ratio:>8.2f}x{r.cpu_s:>8.1f}{r.frames_cpu_s:>14.1f}{cpu_ratio:>8.2f}x  {r.note}")
    print(native_check(urls, args.frames))
    print(compare(loader, pyav))
    print(compare(tc, pyav))
    speedup_seek = loader.frames_s / pyav.frames_s if pyav.frames_s else float("nan")
    speedup = loader.frames_s / pyav_all.frames_s if pyav_all.frames_s else float("nan")
    if args.csv:
        append_csv(Path(args.csv), {
            "date": dt.datetime.now().isoformat(timespec="seconds"), "commit": _commit(), "cpus": os.cpu_count(),
            "load_1m": f"{load:.2f}", "shards": len(urls), "videos_in_shards": n_videos, "frames": args.frames,
            "size": f"{size[0]}x{size[1]}", "workers": args.workers, "seconds": args.seconds, "rounds": args.rounds,
            "max_videos": args.max_videos or "", "loader_videos": loader.videos,
            "loader_videos_s": f"{loader.videos_s:.3f}", "loader_frames_s": f"{loader.frames_s:.2f}",
            "tc_seq_videos_s": f"{tc.videos_s:.3f}", "tc_seq_frames_s": f"{tc.frames_s:.2f}",
            "pyav_videos_s": f"{pyav.videos_s:.3f}", "pyav_frames_s": f"{pyav.frames_s:.2f}",
            "pyav_all_videos_s": f"{pyav_all.videos_s:.3f}", "pyav_key_videos_s": f"{pyav_key.videos_s:.3f}",
            "speedup_vs_pyav_seek": f"{speedup_seek:.3f}",
            "speedup_vs_pyav": f"{speedup:.3f}",
            "speedup_tc_seq_vs_pyav": f"{tc.frames_s / pyav.frames_s if pyav.frames_s else float('nan'):.3f}",
            "loader_frames_cpu_s": f"{loader.frames_cpu_s:.2f}", "pyav_frames_cpu_s": f"{pyav.frames_cpu_s:.2f}",
            "cpu_efficiency_vs_pyav": f"{loader.frames_cpu_s / pyav.frames_cpu_s if pyav.frames_cpu_s else 0:.3f}",
            "source": source, "decode_threads": threads or "auto", "load_1m_end": f"{load_end:.2f}", **tc_row})
        print(f"appended a row to {args.csv}")
    if tc_urls:
        print(f"speedup_transcoded_vs_pyav: {float(tc_row['speedup_transcoded_vs_pyav']):.2f}")
    print(f"speedup_vs_pyav_seek: {speedup_seek:.2f}")
    print(f"speedup_vs_pyav: {speedup:.2f}")
    return 0
