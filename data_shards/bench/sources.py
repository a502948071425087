"""Source videos and shards for the loader bench: the synthetic videos as rendered, or re-encoded the
way real videos come (ffmpeg's libx264 defaults: preset medium, crf 23, a key frame every 250 frames),
and the same videos written both as they are and with ``write --transcode``.

Used by ``python -m data_shards bench --make-sources DIR --gop x264 [--transcode]``. Everything
lands under ``DIR`` and is reused by a later run with the same settings (a ``params.json`` stamp).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

from data_shards.common.atomic import atomic_path, atomic_write_json
from data_shards.common.distenv import usable_cores
from data_shards.ingest.transcode import TranscodeConfig
from data_shards.ingest.video_io import VideoError, ffmpeg_bin
from data_shards.ingest.writer import write_shards
from data_shards.schema import read_records, write_records
from data_shards.synth.make import make_synthetic

GOPS = ("synthetic", "x264")
"""``synthetic``: the rendered videos (one key frame per second, x264 veryfast); ``x264``: re-encoded
with libx264's defaults (key frame every 250 frames); an integer N: re-encoded with ``-g N``."""


def parse_gop(text: str) -> str:
    if text in GOPS or (text.isdigit() and int(text) >= 1):
        return text
    raise ValueError(f"--gop must be one of {GOPS} or a key-frame interval in frames, got {text!r}")


def reencode(src: Path, dst: Path, gop: str, grain: int = 0) -> None:
    """Re-encode ``src`` as a user's source would be: ``ffmpeg -i src -c:v libx264 [-g N] dst`` (defaults).
    ``grain`` > 0 adds temporal noise of that strength first (``-vf noise=alls=G:allf=t``): the flat synthetic
    frames compress to almost nothing, camera footage does not, and its bitrate is what decoding costs."""
    cmd = [ffmpeg_bin(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y", "-i", str(src),
           *(["-vf", f"noise=alls={grain}:allf=t"] if grain else []), "-c:v", "libx264",
           *(["-g", gop] if gop.isdigit() else []), "-f", "mp4"]
    with atomic_path(dst) as tmp:
        proc = subprocess.run([*cmd, str(tmp)], capture_output=True)
        if proc.returncode != 0:
            raise VideoError(f"{src}: re-encoding failed: {proc.stderr.decode(errors='replace').strip()[-300:]}")


def _stamp_ok(folder: Path, params: dict) -> bool:
    stamp = folder / "params.json"
    return stamp.exists() and json.loads(stamp.read_text()) == params


def _stamp(folder: Path, params: dict) -> None:
    atomic_write_json(folder / "params.json", params, indent=1)  # the stamp says "complete": never half-written


def make_sources(out: str | Path, videos: int, size: tuple[int, int], seconds: float, fps: float, gop: str,
                 jobs: int | None = None, log=print, grain: int = 0) -> Path:
    """Synthetic videos re-encoded with the given GOP (and ``grain``, see :func:`reencode`); returns their
    records.jsonl (videos beside it)."""
    out, jobs = Path(out), jobs or usable_cores()
    h, w = size
    base = dict(videos=videos, width=w, height=h, seconds=seconds, fps=fps)
    synth = out / f"synth-{w}x{h}-{seconds:g}s-{fps:g}fps-{videos}"
    if not _stamp_ok(synth, base):
        shutil.rmtree(synth, ignore_errors=True)
        t0 = time.perf_counter()
        make_synthetic(synth, videos, seed=0, width=w, height=h, fps=fps, duration=seconds, jobs=jobs)
        _stamp(synth, base)
        log(f"rendered {videos} synthetic videos in {time.perf_counter() - t0:.0f} s")
    if gop == "synthetic":
        if grain:
            raise ValueError("--source-grain needs a re-encoded source (--gop x264 or N)")
        return synth / "records.jsonl"
    params = {**base, "gop": gop, **({"grain": grain} if grain else {})}
    folder = out / f"{synth.name}-gop{gop}{f'-grain{grain}' if grain else ''}"
    if not _stamp_ok(folder, params):
        shutil.rmtree(folder, ignore_errors=True)
        (folder / "videos").mkdir(parents=True)
        records = list(read_records(synth / "records.jsonl"))
        t0 = time.perf_counter()
        with ThreadPoolExecutor(jobs) as pool:
            list(pool.map(lambda r: reencode(synth / "videos" / r.video, folder / "videos" / r.video, gop, grain),
                          records))
        write_records(records, folder / "records.jsonl")
        _stamp(folder, params)
        log(f"re-encoded {videos} videos with libx264 defaults{'' if gop == 'x264' else f', -g {gop}'}"
            f"{f', grain {grain}' if grain else ''} in {time.perf_counter() - t0:.0f} s")
    return folder / "records.jsonl"


def make_shards(records: Path, tc: TranscodeConfig | None, per_shard: int = 2, jobs: int | None = None,
                log=print) -> str:
    """Shards of ``records`` (as they are, or transcoded) beside them; returns the brace URL pattern."""
    params = {"per_shard": per_shard, "transcode": asdict(tc) if tc else None}
    tag = "-".join(f"{k}{v}" for k, v in asdict(tc).items() if v is not None) if tc else ""
    name = f"shards-tc-{tag}" if tc else "shards"
    folder = records.parent / name
    if not _stamp_ok(folder, params):
        shutil.rmtree(folder, ignore_errors=True)
        t0 = time.perf_counter()
        s = write_shards(records, records.parent / "videos", str(folder / "train-%06d.tar"), max_count=per_shard,
                         transcode=tc, jobs=jobs, log=log)
        if s["skipped"]:
            raise VideoError(f"{records}: {len(s['skipped'])} bench video(s) skipped: {s['skipped'][0]['reason']}")
        _stamp(folder, params)
        what = f", transcoded ({s['transcode']['cpu_s']:.1f} CPU-s)" if tc else ""
        log(f"wrote {s['videos']} videos to {len(s['shards'])} shards in {folder}{what} in "
            f"{time.perf_counter() - t0:.0f} s")
    n = len(json.loads((folder / "sizes.json").read_text())["shards"])
    return str(folder / f"train-{{000000..{n - 1:06d}}}.tar")
