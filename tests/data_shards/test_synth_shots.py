"""Shot scenes: every question is answerable from the K frames the loader samples (one per shot).

The test answers the end-of-video, counting and 'when' questions with an oracle that reads ONLY the
decoded frames (the pixel at each quadrant's centre), never the record's meta, and checks that the
oracle is right on every such question, and wrong on some of them once the frames are shuffled.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from data_shards.schema import read_records
from data_shards.stream.frames import decode_frames
from data_shards.synth import make as synth
from data_shards.synth.questions import PARTS, QUADS
from data_shards.synth.render import PALETTE
from data_shards.synth.shots import make_shot_scene
from tests.conftest import has_ffmpeg

pytestmark = pytest.mark.skipif(not has_ffmpeg(), reason="needs the ffmpeg CLI")

SHOTS = 4


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shots")
    return synth.make_synthetic(out, videos=12, seed=3, width=64, height=64, duration=3.0, scene="shots",
                                shots=SHOTS, questions_per_video=8)


def _read_frames(frames: np.ndarray) -> list[dict[int, str]]:
    """Per frame: quadrant -> colour name of the object at its centre (absent = background)."""
    out = []
    for f in frames:  # [3, H, W]
        h, w = f.shape[1:]
        seen = {}
        for q in range(4):
            y, x = int((q // 2 + 0.5) * h / 2), int((q % 2 + 0.5) * w / 2)
            rgb = f[:, y, x].astype(float)
            name, dist = min(((c, float(np.sum((np.array(v) - rgb) ** 2))) for c, v in PALETTE.items()),
                             key=lambda t: t[1])
            if dist < 40 ** 2:
                seen[q] = name
        out.append(seen)
    return out


def _oracle(qa, shots: list[dict[int, str]]) -> str | None:
    """The answer text read from the frames, for the question forms that need no shape recognition
    beyond the object's first colour (the name), or None for forms it does not handle."""
    q = qa.question
    m = re.match(r"Where is the (\w+) (\w+) at the end of the video\?", q)
    if m:  # follow the named object from its first shot by colour, then by elimination of moves
        track = _track(m.group(1), shots)
        return None if track is None or track[-1] is None else f"in the {QUADS[track[-1][0]]}"
    m = re.match(r"What does the (\w+) (\w+) do (.+)\?", q)
    if m and len(shots) == 4:  # the cut of that part of the video (4 shots: cut k = part + 1): what changed
        track, k = _track(m.group(1), shots), PARTS.index(m.group(3)) + 1
        if track is None or track[k - 1] is None or track[k] is None:
            return None
        (q0, c0), (q1, c1) = track[k - 1], track[k]
        return f"move to the {QUADS[q1]}" if q1 != q0 else f"turn {c1}" if c1 != c0 else None
    return None


def _track(colour: str, shots: list[dict[int, str]]):
    """(quadrant, colour) of the object first seen in ``colour`` in every shot, None when ambiguous.

    An object either keeps its colour (then it is wherever that colour is now, if only one quadrant
    shows it) or changes colour in place (a cut never moves and recolours the same object).
    """
    start = next((k for k, s in enumerate(shots) if colour in s.values()), None)
    if start is None or list(shots[start].values()).count(colour) != 1:
        return None
    q = next(q for q, c in shots[start].items() if c == colour)
    out: list = [None] * start + [(q, colour)]
    for k in range(start + 1, len(shots)):
        c = out[-1][1]
        where = [p for p, v in shots[k].items() if v == c]
        if len(where) > 1 or (not where and q not in shots[k]):
            return None
        q = where[0] if where else q
        out.append((q, shots[k][q]))
    return out


def test_one_frame_per_shot_shows_the_records_state(shots):
    """The loader's segment-middle frames are the shots, exactly as the meta describes them."""
    for rec in read_records(shots):
        frames = decode_frames(shots.parent / "videos" / rec.video, SHOTS, None).numpy()
        seen = _read_frames(frames)
        for k in range(SHOTS):
            want = {QUADS.index(o["shots"][k]["quad"]): o["shots"][k]["colour"]
                    for o in rec.meta["objects"] if o["shots"][k]["quad"] is not None}
            assert seen[k] == want, f"{rec.video_id} shot {k}: frames show {seen[k]}, meta says {want}"


def test_questions_answerable_from_frames_and_order_matters(shots):
    right = wrong_after_shuffle = asked = asked_tc = tc_wrong_reversed = 0
    for rec in read_records(shots):
        frames = decode_frames(shots.parent / "videos" / rec.video, SHOTS, None).numpy()
        seen = _read_frames(frames)
        for qa in rec.qas:
            truth = qa.options[qa.answer]
            got = _oracle(qa, seen)
            if got is None:
                continue
            asked += 1
            right += got == truth
            shuffled = _oracle(qa, seen[::-1])
            wrong_after_shuffle += shuffled != truth
            asked_tc += qa.qtype == "TC"
            tc_wrong_reversed += qa.qtype == "TC" and shuffled != truth
    assert asked >= 10, f"only {asked} questions of the oracle's forms"
    assert right == asked, f"the frame oracle answered {right}/{asked}"
    assert wrong_after_shuffle > 0, "no answer depends on the order of the frames"
    assert asked_tc >= 5 and tc_wrong_reversed == asked_tc, (asked_tc, tc_wrong_reversed)  # TC needs the order


def test_types_and_options(shots):
    recs = read_records(shots)
    types = {qa.qtype for r in recs for qa in r.qas}
    assert {"DO", "DL", "DC", "TC", "TN", "TP", "CH"} <= types
    for r in recs:
        assert r.meta["kind"] == "shots" and len(r.meta["shot_starts"]) == SHOTS
        for qa in r.qas:
            assert len(set(qa.options)) == len(qa.options) in (4, 5), qa.options
            if qa.qtype == "TC":  # what it does then; its other actions among the false options
                assert re.match(r"(turn \w+|move to the .+|appear|disappear)$", qa.options[qa.answer])
            assert qa.extra["reasoning"].endswith(f"{qa.options[qa.answer]}.")


def test_deterministic_and_bad_arguments(tmp_path):
    a = make_shot_scene(np.random.default_rng(5), 64, 64, 8, 24)
    b = make_shot_scene(np.random.default_rng(5), 64, 64, 8, 24)
    assert (a.quad == b.quad).all() and (a.colour == b.colour).all() and a.acts == b.acts
    with pytest.raises(ValueError, match="shots"):
        make_shot_scene(np.random.default_rng(0), 64, 64, 8, 2, shots=4)
    with pytest.raises(ValueError, match="scene must be one of"):
        synth.make_synthetic(tmp_path, videos=1, seed=0, scene="slides")


def test_objects_and_question_type_filter(tmp_path, shots):
    """--objects and --qtypes (the demo's recipe): the scenes have that many objects and only those
    question types are asked; a filter on the default settings changes nothing else."""
    path = synth.make_synthetic(tmp_path / "one", videos=6, seed=3, width=64, height=64, duration=3.0,
                                scene="shots", shots=SHOTS, questions_per_video=8, objects=(1, 1),
                                qtypes=("DO", "DL", "TC"))
    recs = list(read_records(path))
    assert all(len(r.meta["objects"]) == 1 for r in recs)
    types = [qa.qtype for r in recs for qa in r.qas]
    assert set(types) == {"DO", "DL", "TC"}, types
    full = {r.video_id: r for r in read_records(shots)}
    assert any(len(r.meta["objects"]) > 1 for r in full.values())  # the default is 2-3 objects
    with pytest.raises(ValueError, match="unknown: \\['XX'\\]"):
        synth.make_synthetic(tmp_path / "bad", videos=1, seed=0, scene="shots", qtypes=("DO", "XX"))
    with pytest.raises(ValueError, match="only shot scenes"):
        synth.make_synthetic(tmp_path / "bad", videos=1, seed=0, scene="motion", qtypes=("DO",))
    with pytest.raises(ValueError, match="1..3"):
        synth.make_synthetic(tmp_path / "bad", videos=1, seed=0, scene="shots", objects=(0, 2))


def test_false_steps_imply_the_answer_a_viewer_would_give():
    """extra.false_implies: re-reading the scene with one false step in place of the true one gives the
    implied option. Checked directly for the end-of-video questions (the false state of the last shot
    names the implied colour / place), and the states a viewer reads off the shots give back exactly the
    actions that were drawn."""
    from data_shards.synth.render import COLOURS
    from data_shards.synth.shots import acts_of, make_shot_questions

    checked = implied = 0
    for i in range(120):
        rng = np.random.default_rng([7, i])
        scene = make_shot_scene(rng, 64, 64, 8, 24, SHOTS, (1, 3))
        assert acts_of(scene.quad, scene.colour) == scene.acts
        for q in make_shot_questions(scene, rng, 6):
            ex = q["extra"]
            assert len(ex["false_implies"]) == len(ex["false_steps"])
            assert all(x is None or (0 <= x < len(q["options"]) and x != q["answer"]) for x in ex["false_implies"])
            implied += sum(x is not None for x in ex["false_implies"])
            if q["qtype"] == "DO" and "at the end" in q["question"]:
                last = re.match(r"In the fourth shot, the \w+ is (\w+) in the (.+)\.", ex["false_steps"][-1])
                colour = last.group(1)
                offered = colour in q["options"] and colour != q["options"][q["answer"]]
                want = q["options"].index(colour) if offered else None
                assert colour in COLOURS and ex["false_implies"][-1] == want
                checked += 1
    assert checked > 20 and implied > 100


def test_frame_captions_cut_one_shot_each_and_say_what_it_shows(shots, tmp_path):
    """The vCoT image model's stage-1 data: every shot becomes its own clip (cut by the shard writer); the
    one frame the loader samples from it shows what its caption says."""
    import json
    import tarfile

    from data_shards.ingest.writer import main as write_main

    recs = synth.write_frame_caption_records(shots, videos=3)  # beside the records: the video paths resolve alike
    rows = [json.loads(x) for x in recs.read_text().splitlines()]
    assert len(rows) == 3 * SHOTS and len({r["video_id"] for r in rows}) == 3 * SHOTS
    assert [(r["start"], r["end"]) for r in rows[:SHOTS]] == [(0.0, 0.75), (0.75, 1.5), (1.5, 2.25), (2.25, 3.0)]
    assert write_main(["--records", str(recs), "--out", str(tmp_path / "sh" / "fc-%06d.tar"), "--max-count", "64"]) == 0
    checked = 0
    with tarfile.open(tmp_path / "sh" / "fc-000000.tar") as tar:
        members = {m.name: m for m in tar.getmembers()}
        for name, m in members.items():
            if not name.endswith(".json"):
                continue
            meta = json.loads(tar.extractfile(m).read())
            video = tar.extractfile(members[name[:-len(".json")] + ".mp4"]).read()
            caption = meta["qas"][0]["extra"]["caption"]
            k = int(meta["video_id"].rsplit("shot", 1)[1])
            assert meta["meta"]["clip"] == [k * 0.75, (k + 1) * 0.75]  # cut to the shot's window
            (seen,) = _read_frames(decode_frames(video, 1, None).numpy())
            want = {QUADS.index(o["shots"][k]["quad"]): o["shots"][k]["colour"]
                    for o in meta["meta"]["objects"] if o["shots"][k]["quad"] is not None}
            assert seen == want, f"{meta['video_id']}: the frame shows {seen}, the shot is {want}"
            for q, colour in want.items():
                assert f"{colour} " in caption and QUADS[q] in caption, (caption, want)
            checked += 1
    assert checked == 3 * SHOTS
    with pytest.raises(ValueError, match="frame captions need shot scenes"):
        motion = synth.make_synthetic(tmp_path / "motion", videos=1, seed=0, width=32, height=32, duration=1.0)
        synth.write_frame_caption_records(motion)
