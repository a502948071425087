"""Records + video files -> WebDataset tar shards (one sample per video) + ``sizes.json``.

``python -m data_shards write --records R.jsonl --videos DIR --out 'OUT/train-%06d.tar'``

A sample (contract 1) is ``{key}.{ext}`` = the raw video bytes and ``{key}.json`` = the
schema-v1 record whose ``video`` is that member name, with ``key`` =
``{dataset}__{split}__{video_id}`` and every character outside ``[A-Za-z0-9_-]`` replaced by
``-`` (so keys hold no ``.`` and no ``/``, which WebDataset would read as an extension or a
folder). Two records whose keys collide after this are an error before anything is written.

Clips (records with ``start``/``end``, e.g. STAR) are CUT to their window with ffmpeg
(re-encoded H.264, frame-accurate) and stored as mp4 with ``start``/``end`` null and
``meta["clip"] = [start, end]`` (the original window). Storing the clip rather than the whole
Charades video keeps shards small (a STAR clip is a few seconds of a 30 s video, and many
clips come from the same video) and lets the loader treat every sample alike.

Videos that are missing, empty or not decodable (probed with torchcodec, first frame decoded)
are reported with file and video_id, counted and skipped; the exit status is 0 unless nothing
was written. Shards roll over at ``max_count`` samples or before ``max_size`` bytes would be
exceeded (a single bigger sample gets a shard of its own). Each shard is written as
``name.tar.tmp`` and renamed when complete, so a crash never leaves a half shard under a
final name; ``sizes.json`` is replaced atomically too (:mod:`data_shards.common.atomic`).

With ``--transcode`` every video (clips: their window) is re-encoded once before it is stored:
smaller, a key frame every few frames, audio dropped (:mod:`data_shards.ingest.transcode`; the record's
``meta["transcode"]`` says what was done); ``--tc-jobs`` ffmpeg processes run ahead of the writer.

Video lookup: ``DIR/{record.video}``; else ``--video-map`` (json: video_id or file stem ->
relative path, e.g. NExT-QA's ``map_vid_vidorID.json``); else a unique file of that name
anywhere under DIR (NExT-QA/VidOR keep videos in numbered folders).
"""

from __future__ import annotations

import argparse
import errno
import functools
import json
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from webdataset import TarWriter

from data_shards.common.atomic import atomic_write_json
from data_shards.common.urls import writing_marker
from data_shards.ingest.probe import probe_video
from data_shards.ingest.transcode import TranscodeConfig, Transcoder, add_arguments, config_from_args
from data_shards.ingest.video_io import VIDEO_EXTS, VideoError, cut_clip
from data_shards.schema import VideoRecord, read_records, validate_record

TAR_BLOCK = 512


def sample_key(dataset: str, split: str, video_id: str) -> str:
    """The shard key ``{dataset}__{split}__{video_id}``, sanitised to ``[A-Za-z0-9_-]``."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", f"{dataset}__{split}__{video_id}")


def assign_keys(records: list[VideoRecord], source: str) -> list[str]:
    """Keys for all records; raises ValueError naming both records when two keys collide."""
    seen: dict[str, int] = {}
    keys = []
    for n, rec in enumerate(records):
        key = sample_key(rec.dataset, rec.split, rec.video_id)
        if key in seen:
            other = records[seen[key]]
            raise ValueError(
                f"{source}: records {seen[key] + 1} (video_id {other.video_id!r}) and {n + 1} "
                f"(video_id {rec.video_id!r}) both map to the shard key {key!r}; make the video_ids "
                f"differ in characters other than those outside [A-Za-z0-9_-]")
        seen[key] = n
        keys.append(key)
    return keys


class VideoFinder:
    """Finds a record's video under a root: direct path, then an id map, then by file name."""

    def __init__(self, root: str | Path, video_map: dict[str, str] | None = None):
        self.root = Path(root)
        self.map = video_map or {}
        self._by_name: dict[str, list[Path]] | None = None

    def find(self, rec: VideoRecord) -> Path:
        """The video's path; raises FileNotFoundError saying where it looked, VideoError for a path
        that leaves the root (absolute, or ``..`` after normalisation: never followed)."""
        for rel in (rec.video, self.map.get(rec.video_id) or self.map.get(Path(rec.video).stem) or ""):
            if os.path.isabs(rel) or os.path.normpath(rel).split(os.sep)[0] == "..":
                raise VideoError(f"video path {rel!r} of video_id {rec.video_id!r} escapes the video root "
                                 f"{self.root}: not followed")
        direct = self.root / rec.video
        if direct.is_file():
            return direct
        stem = Path(rec.video).stem
        mapped = self.map.get(rec.video_id) or self.map.get(stem)
        if mapped:
            path = self.root / mapped
            path = path if path.suffix else path.with_suffix(Path(rec.video).suffix or ".mp4")
            if path.is_file():
                return path
        hits = self._index().get(Path(rec.video).name, [])
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise FileNotFoundError(f"{direct}: not found, and {len(hits)} files named "
                                    f"{Path(rec.video).name!r} under {self.root} (ambiguous)")
        raise FileNotFoundError(f"{direct}: missing (nor in the video map, nor anywhere under {self.root})")

    def _index(self) -> dict[str, list[Path]]:
        if self._by_name is None:  # built once, only when some record is not at its direct path
            self._by_name = {}
            for dirpath, _, files in os.walk(self.root):
                for f in files:
                    self._by_name.setdefault(f, []).append(Path(dirpath) / f)
        return self._by_name


def tar_size(members: dict[str, bytes]) -> int:
    """Bytes the members take in a tar: a header block each plus the data padded to blocks."""
    return sum(TAR_BLOCK + -(-len(v) // TAR_BLOCK) * TAR_BLOCK for v in members.values())


@dataclass
class _Shard:
    name: str
    path: Path
    tmp: Path
    videos: int = 0
    questions: int = 0
    bytes: int = 0


@dataclass
class ShardSink:
    """Writes samples into rolling tar shards ``pattern % index`` (tmp file + rename).

    Each shard is written as ``name.tar.tmp`` and renamed when it is full or closed: its own
    scheme rather than :mod:`data_shards.common.atomic`, because a shard stays open across many
    :meth:`add` calls and the fixed name is part of the contract (a rerun overwrites the temp file a
    killed run left, and a full disk's error names it).

    Args:
        pattern: shard path with a printf index, e.g. ``out/train-%06d.tar``.
        max_count: samples per shard at most.
        max_size: bytes per shard at most (estimated from tar block sizes, checked before a
            sample is added; a sample bigger than this gets a shard of its own).
    """

    pattern: str
    max_count: int = 1000
    max_size: int = 3 * 10 ** 9
    done: list[_Shard] = field(default_factory=list)

    def __post_init__(self):
        if "%" not in self.pattern or self.pattern % 0 == self.pattern % 1:
            raise ValueError(f"shard pattern {self.pattern!r} needs a printf index like %06d")
        if self.max_count < 1 or self.max_size < 1:
            raise ValueError(f"max_count and max_size must be >= 1 (got {self.max_count}, {self.max_size})")
        self._cur: _Shard | None = None
        self._file = self._tar = None

    def add(self, key: str, members: dict[str, bytes], questions: int) -> str:
        """Write one sample (``members``: extension -> bytes); returns the shard name."""
        size = tar_size(members)
        cur = self._cur
        if cur is not None and cur.bytes + size > self.max_size:
            self._finish()
        if self._cur is None:
            self._open()
        self._tar.write({"__key__": key, **members})
        cur = self._cur
        cur.videos += 1
        cur.questions += questions
        cur.bytes += size
        if cur.videos >= self.max_count:
            self._finish()  # full: finish it now, so that a later failure cannot cost it
        return cur.name

    def close(self) -> list[_Shard]:
        """Finish the open shard; returns all finished shards."""
        if self._cur is not None:
            self._finish()
        return self.done

    def _open(self) -> None:
        path = Path(self.pattern % len(self.done))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        self._cur = _Shard(path.name, path, tmp)
        self._file = open(tmp, "wb")
        # Fixed mtime and owner: the same inputs give byte-identical shards.
        self._tar = TarWriter(self._file, encoder=False, mtime=0, user="videoqa", group="videoqa")

    def _finish(self) -> None:
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._cur.tmp, self._cur.path)
        self._cur.bytes = self._cur.path.stat().st_size
        self.done.append(self._cur)
        self._cur = None

    def abort(self) -> None:
        """Drop the open shard (its tmp file); finished shards stay."""
        if self._cur is not None:
            for close in (self._tar.close, self._file.close):
                try:
                    close()
                except OSError:  # e.g. the flush of a full disk: the file is dropped anyway
                    pass
            self._cur.tmp.unlink(missing_ok=True)
            self._cur = None


def load_video(rec: VideoRecord, path: Path, workdir: Path) -> tuple[str, bytes, bool]:
    """The bytes to store for ``rec``: the file itself, or its [start, end] clip cut to mp4.

    Returns:
        (member extension, bytes, whether it was cut).

    Raises:
        VideoError: empty, unsupported, undecodable, or a window outside the video.
    """
    if path.stat().st_size == 0:
        raise VideoError(f"{path}: empty file (0 bytes)")
    info = probe_video(path)
    if rec.start is None and rec.end is None:
        ext = path.suffix.lower().lstrip(".")
        if ext not in VIDEO_EXTS:
            raise VideoError(f"{path}: container {ext!r} is not one of {VIDEO_EXTS}")
        return ext, path.read_bytes(), False
    if rec.start is not None and info.duration is not None and rec.start >= float(info.duration):
        raise VideoError(f"{path}: clip start {rec.start} s is not before the video's end "
                         f"({float(info.duration):.3f} s)")
    clip = cut_clip(path, rec.start, rec.end, workdir / "clip.mp4")
    probe_video(clip)
    return "mp4", clip.read_bytes(), True


def stored_record(rec: VideoRecord, key: str, ext: str, cut: bool, source: str, extra: dict | None = None) -> bytes:
    """The ``{key}.json`` member: the record with ``video`` = member name (and a cut clip's window in meta).

    ``extra`` is merged into ``meta`` (e.g. ``{"transcode": ...}``: what was done to the video).
    """
    obj = rec.to_json()
    obj["video"] = f"{key}.{ext}"
    if extra:
        obj["meta"] = {**obj["meta"], **extra}
    if cut:
        obj["meta"] = {**obj["meta"], "clip": [rec.start, rec.end]}
        obj["start"] = obj["end"] = None
    validate_record(obj, source)
    return json.dumps(obj, ensure_ascii=False).encode("utf-8")


def _family(pattern: str) -> re.Pattern:
    """A regex matching every shard name ``pattern`` can produce (``train-%06d.tar`` -> ``train-\\d+\\.tar``)."""
    parts = re.split(r"%0?\d*d", Path(pattern).name)
    return re.compile(r"\d+".join(re.escape(p) for p in parts) + r"\Z")


def write_sizes(path: Path, summary: dict, pattern: str) -> dict:
    """Merge this run into ``sizes.json`` (other shard families in the directory are kept).

    Returns:
        The merged content: {"shards": {name: {videos, questions, bytes}}, "videos", "questions",
        "skipped": [{"video_id", "file", "reason", "shards"}]}.
    """
    fam, base = _family(pattern), Path(pattern).name
    old = {}
    if path.exists():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            print(f"warning: {path}: unreadable ({e}); rewriting it from this run only", file=sys.stderr)
    shards = {k: v for k, v in old.get("shards", {}).items() if not fam.match(k)}
    shards.update(summary["shards"])
    skipped = [s for s in old.get("skipped", []) if s.get("shards") != base]
    skipped += [{**s, "shards": base} for s in summary["skipped"]]
    merged = {"shards": dict(sorted(shards.items())), "videos": sum(s["videos"] for s in shards.values()),
              "questions": sum(s["questions"] for s in shards.values()), "skipped": skipped}
    atomic_write_json(path, merged, indent=1)
    return merged


def write_shards(records_path: str | Path, videos_dir: str | Path, pattern: str, max_count: int = 1000,
                 max_size: int = 3 * 10 ** 9, video_map: dict[str, str] | None = None,
                 log=print, transcode: TranscodeConfig | None = None, jobs: int | None = None) -> dict:
    """Write one shard sample per record's video; skip (and report) videos that cannot be used.

    Args:
        records_path: a records jsonl (validated while read).
        videos_dir: root the records' ``video`` paths are relative to.
        pattern: shard path with a printf index, e.g. ``out/train-%06d.tar``.
        max_count, max_size: roll-over limits per shard (samples, bytes).
        video_map: optional video_id (or file stem) -> path under ``videos_dir``.
        log: where progress lines go (``print``-like).
        transcode: re-encode every video first (:mod:`data_shards.ingest.transcode`), ``jobs`` at once
            (default: usable cores); None stores the videos as they are.

    Returns:
        This run's summary: {"shards": {name: {videos, questions, bytes}}, "videos", "questions",
        "skipped": [{"video_id", "file", "reason"}], "sizes": path of sizes.json}; with ``transcode``
        also "transcode": {"videos", "cpu_s"}.

    Raises:
        SchemaError: an invalid record; ValueError: colliding keys or a bad pattern (both before
        any shard is written).
    """
    records = list(read_records(records_path))
    keys = assign_keys(records, str(records_path))
    marker = _begin(pattern, log)
    sink = ShardSink(pattern, max_count, max_size)
    finder = VideoFinder(videos_dir, video_map)
    skipped: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="shard-writer-") as work:
        tc = None if transcode is None else Transcoder(
            transcode, [(functools.partial(finder.find, r), r.start, r.end) for r in records], Path(work), jobs)
        try:
            for n, (rec, key) in enumerate(zip(records, keys), 1):
                path = Path(videos_dir) / rec.video
                try:
                    path = finder.find(rec)
                    ext, data, cut, extra = (*load_video(rec, path, Path(work)), None) if tc is None else tc.take(n - 1)
                except (OSError, VideoError) as e:
                    if isinstance(e, OSError) and e.errno in _FATAL_ERRNOS:
                        raise  # our side (the work dir), not this video: every later video would fail too
                    skipped.append({"video_id": rec.video_id, "file": str(path), "reason": str(e)})
                    log(f"skip video_id {rec.video_id!r}: {e}")  # the reason names the file
                    continue
                meta = stored_record(rec, key, ext, cut, f"{records_path} (record {n}, video {rec.video_id!r})", extra)
                sink.add(key, {"json": meta, ext: data}, len(rec.qas))
            done = sink.close()
        except BaseException as e:
            where = getattr(e, "filename", None) or (sink._cur.tmp if sink._cur is not None else pattern)
            sink.abort()
            if isinstance(e, OSError) and e.errno in _FATAL_ERRNOS:  # one line naming the path
                raise OSError(e.errno, f"{os.strerror(e.errno)} while writing {where} "
                                       f"(finished shards stay: {len(sink.done)})") from None
            raise
        finally:
            if tc is not None:
                tc.close()
    summary = {"shards": {s.name: {"videos": s.videos, "questions": s.questions, "bytes": s.bytes} for s in done},
               "videos": sum(s.videos for s in done), "questions": sum(s.questions for s in done),
               "skipped": skipped}
    if tc is not None:
        summary["transcode"] = {"videos": tc.done, "cpu_s": round(tc.cpu_s, 3)}
    sizes = Path(pattern % 0).parent / "sizes.json"
    try:
        write_sizes(sizes, summary, pattern)
    except OSError as e:  # the shards are there, the index is not: say which file (the marker stays)
        raise OSError(e.errno, f"{os.strerror(e.errno) if e.errno else e} while writing {sizes} "
                               f"(the {len(done)} shard(s) are written; rerun the write)") from None
    summary["sizes"] = str(sizes)
    fam, names = _family(pattern), {s.name for s in done}
    stale = sorted(p for p in sizes.parent.iterdir() if fam.match(p.name) and p.name not in names)
    if stale and done:  # shards of an earlier write this one replaced: never left to be trained on
        for p in stale:
            p.unlink()
        log(f"removed {len(stale)} stale shard(s) of an earlier write of this pattern that this write "
            f"replaced (first {stale[0]})")
    elif stale:
        log(f"warning: nothing written; {len(stale)} older shard(s) of this pattern are left as they were "
            f"(first {stale[0]}) and are not in sizes.json")
    marker.unlink(missing_ok=True)  # finished: readers may use the folder again
    return summary


def _begin(pattern: str, log) -> Path:
    """Mark the folder as being written (readers refuse its shards until the marker is gone); if an
    interrupted write of this pattern left its marker, remove the ``.tar.tmp`` files it left too."""
    out = Path(pattern % 0).parent
    out.mkdir(parents=True, exist_ok=True)
    marker = writing_marker(pattern)
    fam = _family(pattern)
    interrupted = marker.exists()
    atomic_write_json(marker, {"pattern": Path(pattern).name, "regex": fam.pattern, "pid": os.getpid(),
                               "started": time.strftime("%Y-%m-%dT%H:%M:%S")})
    leftovers = sorted(p for p in out.iterdir() if interrupted and p.name.endswith(".tmp")
                       and fam.match(p.name[:-len(".tmp")]))
    for p in leftovers:
        p.unlink()
    if leftovers:
        log(f"removed {len(leftovers)} unfinished shard file(s) of an interrupted write (first {leftovers[0]})")
    return marker


_FATAL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EMFILE, errno.ENFILE}
"""OSErrors of the machine rather than of one input video: they stop the writer (finished shards stay)."""


def _parse_bytes(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)[bB]?\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 500M, 2G, 1000000)")
    scale = {"": 1, "k": 10 ** 3, "m": 10 ** 6, "g": 10 ** 9, "t": 10 ** 12}[m.group(2).lower()]
    return int(float(m.group(1)) * scale)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m data_shards write", description=__doc__.split("\n")[0])
    p.add_argument("--records", required=True, help="records jsonl (schema v1)")
    p.add_argument("--videos", default=None, help="video root (default: <records dir>/videos)")
    p.add_argument("--out", required=True, help="shard pattern with a printf index, e.g. 'out/train-%%06d.tar'")
    p.add_argument("--max-count", type=int, default=1000, help="samples (videos) per shard at most")
    p.add_argument("--max-size", type=_parse_bytes, default=3 * 10 ** 9, help="bytes per shard at most (500M, 2G)")
    p.add_argument("--video-map", default=None, help="json: video_id or file stem -> path under --videos")
    add_arguments(p)  # --transcode and its --tc-* options
    a = p.parse_args(argv)
    videos = a.videos or str(Path(a.records).parent / "videos")
    vmap = json.loads(Path(a.video_map).read_text(encoding="utf-8")) if a.video_map else None
    try:
        s = write_shards(a.records, videos, a.out, a.max_count, a.max_size, vmap, transcode=config_from_args(a),
                         jobs=a.tc_jobs)
    except (ValueError, OSError) as e:  # SchemaError names file:line and field; a full disk names the path
        print(f"error: {e}", file=sys.stderr)
        return 2 if isinstance(e, ValueError) else 1
    total = sum(v["bytes"] for v in s["shards"].values())
    if "transcode" in s:
        tc = s["transcode"]
        print(f"transcoded {tc['videos']} videos: {tc['cpu_s']:.1f} CPU-s, "
              f"{tc['cpu_s'] / max(tc['videos'], 1):.2f} CPU-s per video")
    print(f"wrote {s['videos']} videos, {s['questions']} questions in {len(s['shards'])} shard(s), "
          f"{total / 1e6:.1f} MB; skipped {len(s['skipped'])} video(s); sizes in {s['sizes']}")
    return 0 if s["videos"] > 0 else 1
