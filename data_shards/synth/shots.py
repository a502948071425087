"""Shot scenes: a synthetic VideoQA variant whose every question is answerable from the sampled frames.

The motion scenes of :mod:`data_shards.synth.render` change between any two frames, so most of
their questions (what happened right after a bounce, which way an object moved) depend on
frames that a K-frame sampler never shows. A *shot scene* is a sequence of ``K`` static shots of
equal length: up to four objects, each in one quadrant of the frame (or out of view), and the
scene changes only between shots. The loader samples the middle of each of ``K`` equal segments
(:func:`data_shards.stream.frames.segment_times`), so with ``data.num_frames == K`` it shows one frame
of every shot, and every question below can be answered from exactly those frames:

  DO  colour of an object at the end           DL  where an object is at the end / appears
  DC  how many colour changes / moves / late objects
  TC  what an object does at the beginning / in the middle / near the end (its other actions are the
      false options, so the set of frames without their order does not tell them apart)
  TN  what an object did right after an action TP  ... right before an action
  CH  which way an object moved when it left a quadrant

Most answers change when the shots are shown in another order, which is what the shuffled-frames
probe measures. Objects are named by their first colour and shape ("the red circle"); colour
changes never take a colour some object starts with, so names stay unique.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from data_shards.synth.questions import DIRS, PARTS, QUADS, Draft, choose
from data_shards.synth.render import BACKGROUNDS, COLOURS, PALETTE, SHAPES, _paste, sprite

ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth")
# Quadrant index q = 2 * bottom + right (as synth_questions.QUADS); (column, row) of each.
_CELL = ((0, 0), (1, 0), (0, 1), (1, 1))


@dataclass(frozen=True)
class Act:
    """What one object did at the cut into ``shot`` (1..K-1)."""

    shot: int
    kind: str  # appear | colour | move | leave
    what: str | int | None = None  # new colour, new quadrant


@dataclass
class ShotScene:
    """A drawn shot scene.

    Attributes:
        quad: int [K, N] quadrant of each object in each shot, -1 = out of view.
        colour: int [K, N] index into ``COLOURS``.
    """

    width: int
    height: int
    fps: float
    frames: int
    background: tuple[int, int, int]
    shapes: list[str]
    quad: np.ndarray
    colour: np.ndarray
    acts: list[list[Act]]

    @property
    def shots(self) -> int:
        return self.quad.shape[0]

    def name(self, i: int) -> str:
        return f"the {COLOURS[self.colour[self.first_shot(i), i]]} {self.shapes[i]}"

    def first_shot(self, i: int) -> int:
        return int(np.flatnonzero(self.quad[:, i] >= 0)[0])


def make_shot_scene(rng: np.random.Generator, width: int, height: int, fps: float, frames: int,
                    shots: int = 4, objects: tuple[int, int] = (2, 3)) -> ShotScene:
    """Draw ``objects[0]..objects[1]`` objects and one or two actions per cut between shots."""
    if shots < 2 or frames < shots:
        raise ValueError(f"a shot scene needs >= 2 shots and >= 1 frame per shot, got {shots} / {frames}")
    if not 1 <= objects[0] <= objects[1] <= 3:
        raise ValueError(f"objects per shot scene must be a range within 1..3, got {objects}")
    n = int(rng.integers(objects[0], objects[1] + 1))
    shapes = [SHAPES[k] for k in rng.permutation(len(SHAPES))[:n]]
    ids = rng.permutation(len(COLOURS))
    starts, spare = [int(c) for c in ids[:n]], [int(c) for c in ids[n:]]
    late = [i for i in range(2, n) if rng.random() < 0.5]  # the first two are there from the start
    quad = np.full((shots, n), -1, dtype=np.int64)
    colour = np.tile(np.array(starts, dtype=np.int64), (shots, 1))
    quad[0, [i for i in range(n) if i not in late]] = rng.permutation(4)[:n - len(late)]
    appear = {i: int(rng.integers(1, shots)) for i in late}
    acts: list[list[Act]] = [[] for _ in range(n)]
    for k in range(1, shots):
        quad[k], colour[k] = quad[k - 1], colour[k - 1]
        movers = [i for i in range(n) if appear.get(i) == k]
        alive = [i for i in range(n) if quad[k, i] >= 0]
        movers += [alive[j] for j in rng.permutation(len(alive))[:int(rng.integers(1, 3))]]
        for i in dict.fromkeys(movers):
            free = [q for q in range(4) if q not in quad[k]]
            if quad[k, i] < 0:
                quad[k, i] = free[int(rng.integers(len(free)))]
                acts[i].append(Act(k, "appear", int(quad[k, i])))
                continue
            kinds = ["colour"] * 3 + ["move"] * (3 if free else 0)
            kinds += ["leave"] if k == shots - 1 and sum(quad[k] >= 0) > 2 else []
            kind = kinds[int(rng.integers(len(kinds)))]
            if kind == "colour":
                options = [c for c in spare if c != colour[k, i]]
                colour[k, i] = options[int(rng.integers(len(options)))]
                acts[i].append(Act(k, "colour", COLOURS[colour[k, i]]))
            elif kind == "move":
                quad[k, i] = free[int(rng.integers(len(free)))]
                acts[i].append(Act(k, "move", int(quad[k, i])))
            else:
                quad[k, i] = -1
                acts[i].append(Act(k, "leave"))
    bg = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    return ShotScene(width, height, fps, frames, bg, shapes, quad, colour, acts)


def shot_bounds(scene: ShotScene) -> list[int]:
    """First frame of every shot, plus ``frames`` at the end (shots as equal as frames allow)."""
    return [round(k * scene.frames / scene.shots) for k in range(scene.shots + 1)]


def render_shots(scene: ShotScene):
    """Yield the video as uint8 RGB batches ``[frames of one shot, H, W, 3]``."""
    h, w = scene.height, scene.width
    r = 0.17 * min(h, w)
    masks = [sprite(s, r) for s in scene.shapes]
    bounds = shot_bounds(scene)
    for k in range(scene.shots):
        img = np.empty((h, w, 3), dtype=np.uint8)
        img[:] = scene.background
        for i, m in enumerate(masks):
            q = scene.quad[k, i]
            if q >= 0:
                cx, cy = _CELL[q]
                centre = np.array([(cx + 0.5) * w / 2, (cy + 0.5) * h / 2])
                _paste(img, m, centre, np.array(PALETTE[COLOURS[scene.colour[k, i]]], dtype=np.uint8))
        yield np.repeat(img[None], bounds[k + 1] - bounds[k], axis=0)


def _direction(q0: int, q1: int) -> str:
    (x0, y0), (x1, y1) = _CELL[q0], _CELL[q1]
    dx, dy = x1 - x0, y0 - y1  # y up
    return DIRS[{(1, 0): 0, (1, 1): 1, (0, 1): 2, (-1, 1): 3, (-1, 0): 4, (-1, -1): 5, (0, -1): 6,
                 (1, -1): 7}[(dx, dy)]]


class ShotFacts:
    """Phrases and true/false reasoning steps about a shot scene."""

    def __init__(self, scene: ShotScene, rng: np.random.Generator):
        self.s, self.rng, self.n = scene, rng, len(scene.shapes)
        self.false_state: dict[str, tuple[int, int, int, int]] = {}
        """False step text -> the state it claims: (object, shot, quadrant or -1, colour index)."""

    def pick(self, items: list):
        return items[int(self.rng.integers(len(items)))]

    def phrase(self, a: Act, past: bool = True) -> str:
        if a.kind == "colour":
            return f"{'turned' if past else 'turn'} {a.what}"
        if a.kind == "move":
            return f"{'moved' if past else 'move'} to the {QUADS[a.what]}"
        return {"appear": "appear", "leave": "disappear"}[a.kind] + ("ed" if past else "")

    def never(self, i: int) -> list[Act]:
        """Actions object ``i`` never performs (safe distractors)."""
        done = {(a.kind, a.what) for a in self.s.acts[i]}
        cands = [Act(0, "colour", c) for c in COLOURS if c != COLOURS[self.s.colour[0, i]]]
        cands += [Act(0, "move", q) for q in range(4)] + [Act(0, "leave")]
        return [a for a in cands if (a.kind, a.what) not in done and not
                (a.kind == "move" and a.what == self.s.quad[self.s.first_shot(i), i])]

    def shot_step(self, i: int, k: int) -> tuple[str, str]:
        """Where and what colour object ``i`` is in shot ``k`` (true) and a false version."""
        sh, q, ci = self.s.shapes[i], int(self.s.quad[k, i]), int(self.s.colour[k, i])
        c = COLOURS[ci]
        head = f"In the {ORDINALS[k]} shot" if k < len(ORDINALS) else f"In shot {k + 1}"
        if q < 0:
            q_false, c_false = int(self.rng.integers(len(QUADS))), ci
            false = f"{head}, the {sh} is in the {QUADS[q_false]}."
        else:
            other = self.pick([x for x in COLOURS if x != c])
            q_false, c_false = [(3 - q, ci), (q, COLOURS.index(other))][int(self.rng.integers(2))]
            false = f"{head}, the {sh} is {COLOURS[c_false]} in the {QUADS[q_false]}."
        self.false_state[false] = (i, k, q_false, c_false)
        return f"{head}, the {sh} is {c} in the {QUADS[q]}." if q >= 0 else f"{head}, the {sh} is not in view.", false

    def track(self, i: int, shots: list[int] | None = None) -> list[tuple[str, str]]:
        return [self.shot_step(i, k) for k in (range(self.s.shots) if shots is None else shots)]

    def part(self, shot: int) -> str:
        """The part of the video (PARTS) in which a cut into ``shot`` (1..K-1) happens."""
        return PARTS[min(2, 3 * (shot - 1) // max(1, self.s.shots - 1))]


def _numbers(answer: int) -> list[str]:
    return [str(v) for v in range(max(5, answer + 3)) if v != answer]


def end_questions(f: ShotFacts) -> list[Draft]:
    """DO colour at the end, DL place at the end, DL where a late object appears."""
    out, last = [], f.s.shots - 1
    for i in range(f.n):
        nm, q = f.s.name(i), int(f.s.quad[last, i])
        if q >= 0:
            col = COLOURS[f.s.colour[last, i]]
            out.append(Draft("DO", f"What colour is the {f.s.shapes[i]} at the end of the video?", col,
                             [c for c in COLOURS if c != col], f.track(i)))
            out.append(Draft("DL", f"Where is {nm} at the end of the video?", f"in the {QUADS[q]}",
                             [f"in the {x}" for x in QUADS if x != QUADS[q]], f.track(i)))
        first = f.s.first_shot(i)
        if first > 0:
            q0 = int(f.s.quad[first, i])
            out.append(Draft("DL", f"Where does {nm} appear?", f"in the {QUADS[q0]}",
                             [f"in the {x}" for x in QUADS if x != QUADS[q0]], f.track(i, [first - 1, first])))
    return out


def count_questions(f: ShotFacts) -> list[Draft]:
    """DC: late objects, colour changes and moves of one object."""
    late = sum(f.s.first_shot(i) > 0 for i in range(f.n))
    out = [Draft("DC", "How many objects appear after the video has started?", str(late), _numbers(late),
                 [f.shot_step(i, 0) for i in range(f.n)])]
    for i in range(f.n):
        for kind, q in (("colour", f"How many times does the {f.s.shapes[i]} change colour?"),
                        ("move", f"How many times does {f.s.name(i)} move to another place?")):
            v = sum(a.kind == kind for a in f.s.acts[i])
            out.append(Draft("DC", q, str(v), _numbers(v), f.track(i)))
    return out


def _unique(f: ShotFacts, i: int, a: Act) -> bool:
    """True when object ``i`` does ``a`` only once (so "when" / "right after it ..." is clear)."""
    return sum((b.kind, b.what) == (a.kind, a.what) for b in f.s.acts[i]) == 1


def current_questions(f: ShotFacts) -> list[Draft]:
    """TC (NExT-QA's temporal-current kind): what an object does in a given part of the video. Its false
    options are first what the object does at the OTHER times (so knowing the set of shots without their
    order does not tell them apart), then actions it never performs."""
    out = []
    for i in range(f.n):
        acts = f.s.acts[i]
        for a in acts:
            if sum(f.part(b.shot) == f.part(a.shot) for b in acts) != 1 or not _unique(f, i, a):
                continue
            answer = f.phrase(a, past=False)
            other_times = [f.phrase(b, past=False) for b in acts if b.shot != a.shot]
            never = [f.phrase(b, past=False) for b in f.never(i)]
            never = [never[j] for j in f.rng.permutation(len(never))]
            pool = list(dict.fromkeys(p for p in other_times if p != answer))
            pool += [p for p in never if p not in pool][:max(0, 4 - len(pool))]
            out.append(Draft("TC", f"What does {f.s.name(i)} do {f.part(a.shot)}?", answer, pool,
                             f.track(i, [a.shot - 1, a.shot])))
    return out


def order_questions(f: ShotFacts) -> list[Draft]:
    """TN / TP: what an object did right after / before another of its actions; CH: which way it moved."""
    out = []
    for i in range(f.n):
        nm, acts, pool = f.s.name(i), f.s.acts[i], [f.phrase(a) for a in f.never(i)]
        for a, b in zip(acts, acts[1:]):
            steps = f.track(i, list(range(a.shot - 1, b.shot + 1)))
            if _unique(f, i, a):
                out.append(Draft("TN", f"What did {nm} do right after it {f.phrase(a)}?", f.phrase(b), pool, steps))
            if _unique(f, i, b):
                out.append(Draft("TP", f"What did {nm} do right before it {f.phrase(b)}?", f.phrase(a), pool, steps))
        for a in acts:
            if a.kind == "move":
                q0, d = int(f.s.quad[a.shot - 1, i]), _direction(int(f.s.quad[a.shot - 1, i]), a.what)
                out.append(Draft("CH", f"Which way did {nm} move when it left the {QUADS[q0]}?",
                                 f"it moved {d}", [f"it moved {x}" for x in DIRS if x != d],
                                 f.track(i, [a.shot - 1, a.shot])))
    return out


BUILDERS = (end_questions, count_questions, current_questions, order_questions)
_BUILDER_OF = {"DO": end_questions, "DL": end_questions, "DC": count_questions, "TC": current_questions,
               "TN": order_questions, "TP": order_questions, "CH": order_questions}


def acts_of(quad: np.ndarray, colour: np.ndarray) -> list[list[Act]]:
    """The actions that per-shot states [K, N] show, object by object: what a viewer reads off the
    shots (the same list :func:`make_shot_scene` drew, for a drawn scene)."""
    acts: list[list[Act]] = [[] for _ in range(quad.shape[1])]
    for i in range(quad.shape[1]):
        for k in range(1, quad.shape[0]):
            q0, q1 = int(quad[k - 1, i]), int(quad[k, i])
            if q0 < 0 <= q1:
                acts[i].append(Act(k, "appear", q1))
            elif q1 < 0 <= q0:
                acts[i].append(Act(k, "leave"))
            elif q0 >= 0:
                if q1 != q0:
                    acts[i].append(Act(k, "move", q1))
                if colour[k, i] != colour[k - 1, i]:
                    acts[i].append(Act(k, "colour", COLOURS[colour[k, i]]))
    return acts


def implied_answers(f: ShotFacts, d: Draft) -> list[str | None]:
    """For each step of ``d``: the answer of the same question on the scene its false step describes
    (what a teacher that saw that false state would conclude), or None when the answer stays the same
    or the question no longer applies (the synthetic teacher's ``extra.false_implies``)."""
    out: list[str | None] = []
    for _, false in d.steps:
        state = f.false_state.get(false)
        if state is None:
            out.append(None)
            continue
        i, k, q, c = state
        quad, colour = f.s.quad.copy(), f.s.colour.copy()
        quad[k, i], colour[k, i] = q, c
        seen = ShotScene(f.s.width, f.s.height, f.s.fps, f.s.frames, f.s.background, f.s.shapes, quad, colour,
                         acts_of(quad, colour))
        same = [x for x in _BUILDER_OF[d.qtype](ShotFacts(seen, np.random.default_rng(0)))
                if x.qtype == d.qtype and x.question == d.question]
        out.append(same[0].answer if same and same[0].answer != d.answer else None)
    return out
SHOT_QTYPES = ("DO", "DL", "DC", "TC", "TN", "TP", "CH")
"""The question types of shot scenes."""


def make_shot_questions(scene: ShotScene, rng: np.random.Generator, count: int,
                        qtypes: tuple[str, ...] | None = None) -> list[dict]:
    """Up to ``count`` questions about a shot scene, round robin over the types it allows (only
    ``qtypes`` when given)."""
    return choose(ShotFacts(scene, rng), BUILDERS, rng, count, qtypes, implies=implied_answers)


def shot_meta(scene: ShotScene) -> dict:
    """The machine-readable truth of a shot scene (what the questions were derived from)."""
    return {"kind": "shots", "width": scene.width, "height": scene.height, "fps": scene.fps,
            "duration": round(scene.frames / scene.fps, 4), "frame_count": scene.frames,
            "shot_starts": shot_bounds(scene)[:-1], "background": list(scene.background),
            "objects": [{"name": scene.name(i), "shape": s,
                         "shots": [{"quad": None if q < 0 else QUADS[q], "colour": COLOURS[c]}
                                   for q, c in zip(scene.quad[:, i].tolist(), scene.colour[:, i].tolist())],
                         "acts": [{"shot": a.shot, "kind": a.kind,
                                   "what": QUADS[a.what] if a.kind in ("move", "appear") else a.what}
                                  for a in scene.acts[i]]}
                        for i, s in enumerate(scene.shapes)]}
