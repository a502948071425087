"""The synthetic dataset: determinism, real decodable mp4s, well-formed questions, and frames that
show what the records say."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torchcodec.decoders import VideoDecoder

from data_shards.ingest.video_io import VideoError
from data_shards.schema import OPTION_LETTERS, read_records
from data_shards.synth import make as synth
from data_shards.synth.render import PALETTE
from tests.conftest import has_ffmpeg

pytestmark = pytest.mark.skipif(not has_ffmpeg(), reason="needs the ffmpeg CLI")

NEXTQA_CODES = {"CW", "CH", "TN", "TP", "TC", "DC", "DL", "DO"}


@pytest.fixture(scope="module")
def twenty(tmp_path_factory) -> Path:
    """20 default-size videos (96x96, 8 fps, 4 s), seed 0."""
    out = tmp_path_factory.mktemp("synth20")
    return synth.make_synthetic(out, videos=20, seed=0)


def _frames(path: Path) -> torch.Tensor:
    return VideoDecoder(str(path))[:]  # uint8 [T, 3, H, W]


def _nearest_colour(rgb: np.ndarray) -> str:
    return min(PALETTE, key=lambda c: float(np.sum((np.array(PALETTE[c]) - rgb) ** 2)))


def _patch(frame: torch.Tensor, x: float, y: float) -> np.ndarray:
    """Mean RGB of the 3x3 patch centred at (x, y) of a [3, H, W] frame."""
    xi, yi = int(round(x)), int(round(y))
    return frame[:, yi - 1:yi + 2, xi - 1:xi + 2].float().mean(dim=(1, 2)).numpy()


def test_same_seed_same_records_and_frames_other_seed_differs(tmp_path):
    a = synth.make_synthetic(tmp_path / "a", videos=3, seed=7, jobs=2)
    b = synth.make_synthetic(tmp_path / "b", videos=3, seed=7, jobs=1)
    c = synth.make_synthetic(tmp_path / "c", videos=3, seed=8)
    assert a.read_bytes() == b.read_bytes()
    for rec in read_records(a):
        fa, fb = _frames(a.parent / "videos" / rec.video), _frames(b.parent / "videos" / rec.video)
        assert torch.equal(fa, fb), f"decoded frames of {rec.video} differ between two runs"
    assert a.read_text().replace("synth-7-", "") != c.read_text().replace("synth-8-", "")


def test_cli_writes_decodable_videos_of_the_requested_size(tmp_path, capsys):
    rc = synth.main(["--out", str(tmp_path), "--videos", "2", "--seed", "1", "--width", "128",
                     "--height", "64", "--fps", "10", "--duration", "2.5", "--questions-per-video", "3"])
    assert rc == 0
    assert "wrote 2 videos" in capsys.readouterr().out
    recs = list(read_records(tmp_path / "records.jsonl"))
    assert len(recs) == 2
    for rec in recs:
        assert rec.dataset == "synthetic" and rec.split == "train" and rec.start is None
        dec = VideoDecoder(str(tmp_path / "videos" / rec.video))
        md = dec.metadata
        assert (md.width, md.height, md.codec) == (128, 64, "h264")
        assert len(dec) == 25 == rec.meta["frame_count"]
        assert abs(float(md.duration_seconds) - 2.5) < 1e-6
        assert 1 <= len(rec.qas) <= 3


def test_odd_frame_size_is_a_clear_error(tmp_path):
    with pytest.raises(VideoError, match="must be positive and even"):
        synth.make_synthetic(tmp_path, videos=1, seed=0, width=95)


def test_questions_are_well_formed_and_cover_the_types(twenty):
    recs = list(read_records(twenty))  # read_records validates every record against schema v1
    assert len(recs) == 20
    types = Counter()
    for rec in recs:
        assert len(rec.qas) >= 4, f"{rec.video_id}: only {len(rec.qas)} questions"
        for qa in rec.qas:
            where = f"{qa.qid}: {qa.question}"
            assert qa.qtype in NEXTQA_CODES, where
            assert 4 <= len(qa.options) <= 5 and len(set(qa.options)) == len(qa.options), where
            assert 0 <= qa.answer < len(qa.options), where
            steps, false = qa.extra["reasoning_steps"], qa.extra["false_steps"]
            assert steps and len(steps) == len(false), where
            assert all(s != f for s, f in zip(steps, false)), where
            assert not any(re.search(r"\([A-E]\)", s) for s in steps), f"answer letter in a step: {where}"
            final = f"So the answer is ({OPTION_LETTERS[qa.answer]}) {qa.options[qa.answer]}."
            assert qa.extra["reasoning"] == " ".join(steps) + " " + final, where
            types[qa.qtype] += 1
    assert set(types) == NEXTQA_CODES, f"question types seen over 20 videos: {dict(types)}"
    answers = Counter(qa.answer for rec in recs for qa in rec.qas)
    assert len(answers) >= 4, f"answer positions are not spread: {dict(answers)}"


def test_last_frame_shows_the_recorded_final_colours(twenty):
    checked = 0
    for rec in read_records(twenty):
        last = VideoDecoder(str(twenty.parent / "videos" / rec.video))[-1]
        for obj in rec.meta["objects"]:
            fin = obj["final"]
            if not fin["visible"]:
                continue
            seen = _nearest_colour(_patch(last, fin["x"], fin["y"]))
            assert seen == fin["colour"], f"{rec.video_id}: {obj['name']} looks {seen}, record says {fin['colour']}"
            checked += 1
        # The DO "at the end" answers agree with the recorded final colours.
        for qa in rec.qas:
            m = re.match(r"What colour is the (\w+) at the end of the video\?", qa.question)
            if m:
                obj = next(o for o in rec.meta["objects"] if o["shape"] == m.group(1))
                assert qa.options[qa.answer] == obj["final"]["colour"], qa.qid
    assert checked >= 40


def test_colour_changes_are_visible_at_the_recorded_frame(twenty):
    checked = 0
    for rec in read_records(twenty):
        frames = _frames(twenty.parent / "videos" / rec.video)
        for ev in rec.meta["events"]:
            if ev["kind"] != "colour":
                continue
            (x, y), f = ev["pos"][0], ev["frame"]
            after = _nearest_colour(_patch(frames[f], x, y))
            assert after == ev["new"], f"{rec.video_id} frame {f}: {ev['objects'][0]} looks {after}, not {ev['new']}"
            # The object moves a few pixels per frame, far less than its radius (>= 8 px).
            before = _nearest_colour(_patch(frames[f - 1], x, y))
            assert before == ev["old"], f"{rec.video_id} frame {f - 1}: looks {before}, not {ev['old']}"
            checked += 1
    assert checked >= 5


def test_collision_events_are_contacts_and_answers_follow_the_timeline(twenty):
    for rec in read_records(twenty):
        objs = {o["name"]: o for o in rec.meta["objects"]}
        events = rec.meta["events"]
        for ev in events:
            if ev["kind"] == "collide":
                (a, b), (pa, pb) = ev["objects"], ev["pos"]
                gap = float(np.hypot(pa[0] - pb[0], pa[1] - pb[1]))
                assert gap <= objs[a]["radius"] + objs[b]["radius"] + 1e-6, json.dumps(ev)
        n_late = sum(o["appear"] > 0 for o in objs.values())
        assert n_late == sum(ev["kind"] == "appear" for ev in events)
        for qa in rec.qas:
            if qa.question == "How many objects appear after the video has started?":
                assert qa.options[qa.answer] == str(n_late), qa.qid
