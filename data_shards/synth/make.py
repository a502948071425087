"""The synthetic temporal VideoQA dataset: rendered mp4 videos + schema-v1 records.

``python -m data_shards synth --out DIR --videos N --seed S`` writes ``DIR/videos/*.mp4``
(H.264, yuv420p) and ``DIR/records.jsonl`` (dataset ``"synthetic"``); the records' ``video``
fields are paths relative to ``DIR/videos``, so the shard writer takes
``--records DIR/records.jsonl --videos DIR/videos``.

Each video is drawn from ``numpy.random.default_rng([seed, crc32(split), index])``, so the same
seed gives byte-identical records and identical decoded frames, whatever the number of jobs.
Scenes and questions are built in :mod:`data_shards.synth.render` and
:mod:`data_shards.synth.questions`; every record's ``meta`` holds the event timeline and each
object's final state, which is what the questions were derived from.
"""

from __future__ import annotations

import argparse
import itertools
import os
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from data_shards.ingest.video_io import encode_frames
from data_shards.schema import CAPTION_QTYPE, QA, VideoRecord, make_qid, read_records, write_records
from data_shards.synth.questions import make_questions
from data_shards.synth.render import COLOURS, PALETTE, Scene, make_scene, render_frames
from data_shards.synth.shots import SHOT_QTYPES, make_shot_questions, make_shot_scene, render_shots, shot_meta

DATASET = "synthetic"
GENERATOR_VERSION = 1
SCENES = ("motion", "shots")


def scene_meta(scene: Scene, seed: int, index: int) -> dict:
    """The machine-readable truth of a scene: sizes, objects (with final state) and events."""
    last = scene.frames - 1
    names = [o.name for o in scene.objects]
    objects = []
    for i, o in enumerate(scene.objects):
        x, y = scene.pos[last, i]
        objects.append({
            "name": o.name, "shape": o.shape, "colour0": o.colour0, "radius": round(o.radius, 2),
            "appear": scene.time(o.appear), "leave": None if o.leave is None else scene.time(o.leave),
            "final": {"visible": bool(scene.visible[last, i]), "x": round(float(x), 2),
                      "y": round(float(y), 2), "colour": COLOURS[scene.colour[last, i]]}})
    # Positions are the objects' centres (x, y) in pixels in the event's frame.
    events = [{"t": scene.time(e.frame), "frame": e.frame, "kind": e.kind,
               "objects": [names[j] for j in e.objects],
               "pos": [[round(float(v), 2) for v in scene.pos[e.frame, j]] for j in e.objects],
               **e.info} for e in scene.events]
    return {"width": scene.width, "height": scene.height, "fps": scene.fps,
            "duration": round(scene.duration, 4), "frame_count": scene.frames,
            "background": list(scene.background), "palette": {c: list(PALETTE[c]) for c in COLOURS},
            "objects": objects, "events": events,
            "generator": {"name": "data_shards.synth.make", "version": GENERATOR_VERSION,
                          "seed": seed, "index": index}}


def make_video(videos_dir: Path, index: int, seed: int, split: str, width: int, height: int,
               fps: float, duration: float, questions_per_video: int, preset: str, scene_kind: str = "motion",
               shots: int = 4, objects: tuple[int, int] = (2, 3), qtypes: tuple[str, ...] | None = None
               ) -> VideoRecord:
    """Draw, render and encode one video; returns its record (video = file name)."""
    rng = np.random.default_rng([seed, zlib.crc32(split.encode()), index])
    frames = max(2, int(round(duration * fps)))
    video_id = f"synth-{seed}-{index:05d}"
    if scene_kind == "shots":
        shot_scene = make_shot_scene(rng, width, height, fps, frames, shots, objects)
        drafts, pixels = make_shot_questions(shot_scene, rng, questions_per_video, qtypes), render_shots(shot_scene)
        meta = {**shot_meta(shot_scene), "generator": {"name": "data_shards.synth.make", "version": GENERATOR_VERSION,
                                                        "seed": seed, "index": index}}
    else:
        scene = make_scene(rng, width, height, fps, frames)
        drafts, pixels = make_questions(scene, rng, questions_per_video), render_frames(scene)
        meta = scene_meta(scene, seed, index)
    qas = [QA(qid=make_qid(DATASET, split, video_id, f"q{j}"), **q) for j, q in enumerate(drafts)]
    encode_frames(pixels, videos_dir / f"{video_id}.mp4", width, height, fps, preset=preset)
    return VideoRecord(video_id=video_id, dataset=DATASET, split=split, video=f"{video_id}.mp4",
                       qas=qas, meta=meta)


def make_synthetic(out_dir: str | Path, videos: int, seed: int, split: str = "train", width: int = 96,
                   height: int = 96, fps: float = 8, duration: float = 4.0, questions_per_video: int = 6,
                   preset: str = "veryfast", jobs: int | None = None, scene: str = "motion",
                   shots: int = 4, objects: tuple[int, int] = (2, 3), qtypes: tuple[str, ...] | None = None
                   ) -> Path:
    """Make ``videos`` synthetic videos and their records under ``out_dir``.

    Args:
        out_dir: gets ``videos/{video_id}.mp4`` and ``records.jsonl``.
        videos: number of videos.
        seed: base seed; video ``i`` depends only on (seed, split, i).
        split: the records' split name.
        width, height: frame size in pixels (even).
        fps, duration: frame rate and length in seconds (frames = round(duration * fps)).
        questions_per_video: questions per video (fewer when a scene allows fewer).
        preset: x264 preset (``ultrafast`` for the big benchmark videos).
        jobs: videos rendered/encoded at once (threads driving ffmpeg processes); the output
            does not depend on it. None = min(4, cpu count).
        scene: ``motion`` (moving, bouncing objects; :mod:`data_shards.synth.render`) or ``shots``
            (``shots`` static shots; every question answerable from one frame per shot,
            :mod:`data_shards.synth.shots`).
        shots: shots per video when ``scene == "shots"`` (train with ``data.num_frames`` = shots).
        objects: (fewest, most) objects of a shot scene, within 1..3.
        qtypes: shot scenes: ask only these question types (``synth_shots.SHOT_QTYPES``; None = all).

    Returns:
        The path of records.jsonl.
    """
    if videos < 1:
        raise ValueError(f"videos must be >= 1, got {videos}")
    if scene not in SCENES:
        raise ValueError(f"scene must be one of {SCENES}, got {scene!r}")
    if qtypes is not None:
        bad = sorted(set(qtypes) - set(SHOT_QTYPES))
        if scene != "shots" or bad or not qtypes:
            raise ValueError(f"qtypes {list(qtypes)}: only shot scenes take a question-type filter, "
                             f"a non-empty subset of {list(SHOT_QTYPES)}" + (f" (unknown: {bad})" if bad else ""))
    out = Path(out_dir)
    videos_dir = out / "videos"
    videos_dir.mkdir(parents=True, exist_ok=True)
    jobs = jobs or min(4, os.cpu_count() or 1)
    args = (seed, split, width, height, fps, duration, questions_per_video, preset, scene, shots, tuple(objects),
            None if qtypes is None else tuple(qtypes))
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        records = list(pool.map(lambda i: make_video(videos_dir, i, *args), range(videos)))
    path = out / "records.jsonl"
    write_records(records, path)
    return path


def shot_caption(meta: dict) -> str:
    """A stage-1 caption of a shot scene from its meta, shot by shot: "Shot 1: white circle in the top
    right. Shot 2: ..." (objects out of view are left out; an empty shot is "nothing")."""
    if meta.get("kind") != "shots":
        raise ValueError(f"shot_caption needs a shot scene's meta (kind 'shots'), got kind {meta.get('kind')!r}")
    return " ".join(f"Shot {k + 1}: {_shot_content(meta, k)}." for k in range(len(meta["shot_starts"])))


def _shot_content(meta: dict, k: int) -> str:
    """What shot ``k`` shows: "white circle in the top right; ..." or "nothing"."""
    seen = [f"{o['shots'][k]['colour']} {o['shape']} in the {o['shots'][k]['quad']}"
            for o in meta["objects"] if o["shots"][k]["quad"]]
    return "; ".join(seen) or "nothing"


def frame_caption(meta: dict, k: int) -> str:
    """The caption of shot ``k`` alone, as an image caption: "A white circle in the top right." """
    content = _shot_content(meta, k)
    if content == "nothing":
        return "An empty frame."
    return f"{'An' if content[0] in 'aeiou' else 'A'} {content}."


def write_caption_records(records_path: str | Path, out_path: str | Path | None = None) -> Path:
    """Video-caption pairs for stage-1 alignment (``task.mode: caption``) of shot-scene records:
    one record per video with the same video and a single caption entry (qtype ``caption``, text in
    ``extra.caption``, from :func:`shot_caption`). Written next to ``records_path`` (default
    ``captions.jsonl``) so the video paths resolve alike."""
    records_path = Path(records_path)
    out = Path(out_path) if out_path else records_path.with_name("captions.jsonl")
    caps = [VideoRecord(video_id=r.video_id, dataset=r.dataset, split=r.split, video=r.video,
                        qas=[QA(qid=make_qid(r.dataset, r.split, r.video_id, "cap0"), question="", options=[],
                                answer=None, qtype=CAPTION_QTYPE, extra={"caption": shot_caption(r.meta)})],
                        start=r.start, end=r.end, meta=r.meta)
            for r in read_records(records_path)]
    write_records(caps, out)
    return out


def write_frame_caption_records(records_path: str | Path, out_path: str | Path | None = None,
                                videos: int | None = None) -> Path:
    """Image-caption pairs for the stage-1 alignment of an "image" model (the vCoT study): one record per
    SHOT of the first ``videos`` shot-scene records (all if None), its window ``[start, end]`` that shot's
    seconds (the shard writer cuts it to its own clip; one frame sampled from it shows the shot), its caption
    :func:`frame_caption`. Written next to ``records_path`` (default ``frame_captions.jsonl``)."""
    records_path = Path(records_path)
    out = Path(out_path) if out_path else records_path.with_name("frame_captions.jsonl")
    recs = []
    for r in itertools.islice(read_records(records_path), videos):
        if r.meta.get("kind") != "shots":
            raise ValueError(f"{records_path}: video {r.video_id}: frame captions need shot scenes (meta kind "
                             f"'shots'), got {r.meta.get('kind')!r}")
        fps, starts = float(r.meta["fps"]), [*r.meta["shot_starts"], r.meta["frame_count"]]
        for k in range(len(starts) - 1):
            qa = QA(qid=make_qid(r.dataset, r.split, f"{r.video_id}-shot{k}", "cap0"), question="", options=[],
                    answer=None, qtype=CAPTION_QTYPE, extra={"caption": frame_caption(r.meta, k)})
            recs.append(VideoRecord(video_id=f"{r.video_id}-shot{k}", dataset=r.dataset, split=r.split,
                                    video=r.video, qas=[qa], start=starts[k] / fps, end=starts[k + 1] / fps,
                                    meta=r.meta))
    write_records(recs, out)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m data_shards synth", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="output directory (videos/ + records.jsonl)")
    p.add_argument("--videos", type=int, required=True, help="number of videos")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", default="train")
    p.add_argument("--width", type=int, default=96)
    p.add_argument("--height", type=int, default=96)
    p.add_argument("--fps", type=float, default=8)
    p.add_argument("--duration", type=float, default=4.0, help="seconds per video")
    p.add_argument("--questions-per-video", type=int, default=6)
    p.add_argument("--preset", default="veryfast", help="x264 preset (ultrafast for big videos)")
    p.add_argument("--jobs", type=int, default=None, help="videos in flight (default min(4, cpus))")
    p.add_argument("--scene", choices=SCENES, default="motion",
                   help="motion: moving objects; shots: static shots, each question answerable from one frame a shot")
    p.add_argument("--shots", type=int, default=4, help="shots per video with --scene shots")
    p.add_argument("--objects", type=int, nargs=2, default=(2, 3), metavar=("MIN", "MAX"),
                   help="objects per shot scene, a range within 1..3 (default 2 3)")
    p.add_argument("--qtypes", nargs="+", metavar="QTYPE",
                   help="shot scenes: ask only these question types (default: all of DO DL DC TC TN TP CH)")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    path = make_synthetic(a.out, a.videos, a.seed, a.split, a.width, a.height, a.fps, a.duration,
                          a.questions_per_video, a.preset, a.jobs, a.scene, a.shots, tuple(a.objects), a.qtypes)
    dt = time.perf_counter() - t0
    n_q = sum(len(rec.qas) for rec in read_records(path))
    print(f"wrote {a.videos} videos ({a.width}x{a.height}, {a.fps:g} fps, {a.duration:g} s) and {n_q} "
          f"questions to {path} in {dt:.1f} s ({a.videos / dt:.2f} videos/s, {dt / a.videos:.3f} s/video)")
    return 0
