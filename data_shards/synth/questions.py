"""Temporal multiple-choice questions about a simulated :class:`~data_shards.synth.render.Scene`.

Every question is derived from the scene's event timeline and per-frame state, never from
text, so its answer is what the frames show. Question types use the NExT-QA codes:

  TN  what an object did right after an event      TP  ... right before an event
  TC  when an event happens (beginning / middle / end / never)
  CW  why an object changed direction (what it hit) CH  how it moved after a bounce
  DC  counting (objects appearing, colour changes, hits)
  DL  location (quadrant at the end / where it appeared)
  DO  description (colour at the end / at an event)

Distractors are chosen so that they are false for the whole video (e.g. "hit the blue square"
is only offered when the object never touches the blue square), which keeps every question
unambiguous. Each question carries ``reasoning_steps`` (what the frames show, in order),
``false_steps`` (a plausible but false version of each step) and ``reasoning``.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from data_shards.schema import OPTION_LETTERS
from data_shards.synth.render import COLOURS, SIDES, Scene

DIRS = ("right", "up and to the right", "up", "up and to the left", "left", "down and to the left",
        "down", "down and to the right")
QUADS = ("top left", "top right", "bottom left", "bottom right")
PARTS = ("at the beginning of the video", "in the middle of the video", "near the end of the video")
NEVER = "never"
QTYPES = ("TN", "TP", "TC", "CW", "CH", "DC", "DL", "DO")


@dataclass(frozen=True)
class Action:
    """Something that happened to one object, seen from that object."""

    frame: int
    kind: str  # appear | colour | hit | wall | leave
    what: str | int | None = None  # new colour, other object index, or edge side


@dataclass
class Draft:
    """A question before its options are drawn: the answer, a pool of false options, steps."""

    qtype: str
    question: str
    answer: str
    pool: list[str]
    steps: list[tuple[str, str]]  # (true step, false step)


class Facts:
    """Per-object views of a scene that the question builders share."""

    def __init__(self, scene: Scene, rng: np.random.Generator):
        self.s, self.rng = scene, rng
        self.n = len(scene.objects)
        self.acts: list[list[Action]] = [[] for _ in range(self.n)]
        kinds = {"appear": "appear", "colour": "colour", "wall": "wall", "leave": "leave"}
        for e in scene.events:
            if e.kind == "collide":
                a, b = e.objects
                self.acts[a].append(Action(e.frame, "hit", b))
                self.acts[b].append(Action(e.frame, "hit", a))
            else:
                what = e.info.get("new") if e.kind == "colour" else e.info.get("side")
                self.acts[e.objects[0]].append(Action(e.frame, kinds[e.kind], what))

    def name(self, i: int) -> str:
        return self.s.objects[i].name

    def shape(self, i: int) -> str:
        return f"the {self.s.objects[i].shape}"

    def past(self, i: int, a: Action) -> str:
        """``a`` as a past-tense verb phrase: "hit the red circle", "turned blue", ..."""
        return self._phrase(a, past=True)

    def present(self, i: int, a: Action) -> str:
        """``a`` as a present-tense verb phrase: "hit the red circle", "turn blue", ..."""
        return self._phrase(a, past=False)

    def _phrase(self, a: Action, past: bool) -> str:
        if a.kind == "hit":
            return f"hit {self.name(a.what)}"
        if a.kind == "colour":
            return f"{'turned' if past else 'turn'} {a.what}"
        if a.kind == "wall":
            return f"{'bounced' if past else 'bounce'} off the {a.what} edge"
        return {"appear": "appear", "leave": "disappear"}[a.kind] + ("ed" if past else "")

    def never(self, i: int) -> list[Action]:
        """Actions object ``i`` never performs anywhere in the video (safe distractors)."""
        done = {(a.kind, a.what) for a in self.acts[i]}
        cands = [Action(-1, "hit", j) for j in range(self.n) if j != i]
        cands += [Action(-1, "wall", s) for s in SIDES]
        cands += [Action(-1, "colour", c) for c in COLOURS if c != self.s.objects[i].colour0]
        if self.s.objects[i].appear == 0:
            cands.append(Action(-1, "appear"))
        cands.append(Action(-1, "leave"))
        return [a for a in cands if (a.kind, a.what) not in done]

    def lonely(self, i: int, a: Action) -> bool:
        """True when no other action of ``i`` shares ``a``'s frame (its order is then clear)."""
        return sum(b.frame == a.frame for b in self.acts[i]) == 1

    def pick(self, items: list):
        return items[int(self.rng.integers(len(items)))]

    # -- geometry ---------------------------------------------------------------------------
    def direction(self, i: int, frame: int) -> int:
        vx, vy = self.s.vel[frame, i]
        return int(round(math.degrees(math.atan2(-vy, vx)) / 45.0)) % 8

    def quad(self, i: int, frame: int, margin: float = 0.0) -> int | None:
        """Quadrant index of ``i`` at ``frame``; None when within ``margin`` of a middle line."""
        x, y = self.s.pos[frame, i]
        fx, fy = x / self.s.width - 0.5, y / self.s.height - 0.5
        if min(abs(fx), abs(fy)) < margin:
            return None
        return (2 if fy > 0 else 0) + (1 if fx > 0 else 0)

    def part(self, frame: int) -> int | None:
        """0/1/2 for beginning/middle/end; None in the borders between them."""
        f = frame / self.s.frames
        for k, (lo, hi) in enumerate(((0.0, 0.3), (0.37, 0.63), (0.7, 1.01))):
            if lo <= f < hi:
                return k
        return None

    def start_step(self, i: int) -> tuple[str, str]:
        """Where object ``i`` is at the start (true) and a false version."""
        o, nm = self.s.objects[i], self.name(i)
        if o.appear > 0:
            q = self.quad(i, o.appear)
            return (f"At the start, {nm} is not in the frame yet.",
                    f"At the start, {nm} is already in the {QUADS[q]} of the frame.")
        q, d = self.quad(i, 0), self.direction(i, 0)
        return (f"At the start, {nm} is in the {QUADS[q]} of the frame, moving {DIRS[d]}.",
                f"At the start, {nm} is in the {QUADS[3 - q]} of the frame, moving {DIRS[(d + 4) % 8]}.")

    def colour_steps(self, i: int) -> list[tuple[str, str]]:
        """The colour history of ``i`` as steps, with false versions (other colours)."""
        sh, c0 = self.shape(i), self.s.objects[i].colour0
        other = [c for c in COLOURS if c != c0]
        steps = [(f"{sh.capitalize()} is {c0} when it first appears.",
                  f"{sh.capitalize()} is {self.pick(other)} when it first appears.")]
        changes = [a for a in self.acts[i] if a.kind == "colour"]
        for a in changes:
            wrong = self.pick([c for c in COLOURS if c != a.what])
            steps.append((f"Then it turns {a.what}.", f"Then it turns {wrong}."))
        if not changes:
            steps.append(("It keeps that colour in every frame.",
                          f"Later it turns {self.pick(other)}."))
        return steps


def _first(f: Facts, i: int, a: Action) -> str | None:
    """How to anchor on ``a``: "" if unique, " for the first time" if the first of repeats, else None."""
    same = [b for b in f.acts[i] if (b.kind, b.what) == (a.kind, a.what)]
    if len(same) == 1:
        return ""
    return " for the first time" if same[0] == a else None


def _cap(text: str) -> str:
    return text[0].upper() + text[1:]


def order_questions(f: Facts) -> list[Draft]:
    """TN (what right after an event) and TP (what right before an event)."""
    out = []
    for i in range(f.n):
        nm, acts = f.name(i), f.acts[i]
        pool = [f.past(i, a) for a in f.never(i)]
        for e, a in itertools.pairwise(acts):
            if not (f.lonely(i, e) and f.lonely(i, a)):
                continue  # two things in one frame: "right after" would be ambiguous
            steps = [f.start_step(i), (f"Later, {nm} {f.past(i, e)}.", f"Later, {nm} {f.pick(pool)}."),
                     (f"Right after that, {nm} {f.past(i, a)}.", f"Right after that, {nm} {f.pick(pool)}.")]
            anchor = _first(f, i, e)
            if anchor is not None:
                out.append(Draft("TN", f"What did {nm} do right after it {f.past(i, e)}{anchor}?",
                                 f.past(i, a), pool, steps))
            anchor = _first(f, i, a)
            if anchor is not None:
                out.append(Draft("TP", f"What did {nm} do right before it {f.past(i, a)}{anchor}?",
                                 f.past(i, e), pool, steps))
    return out


def _summary(f: Facts, i: int, x: Action) -> list[tuple[str, str]]:
    """What object ``i`` really does of ``x``'s kind, vs a false claim that it does ``x``."""
    nm = _cap(f.name(i))
    if x.kind == "colour":
        return f.colour_steps(i)
    done = list(dict.fromkeys(a.what for a in f.acts[i] if a.kind == x.kind))
    if x.kind == "hit":
        true = (f"{nm} touches " + " and ".join(f.name(j) for j in done) + " only." if done
                else f"{nm} never touches another object.")
        return [(true, f"{nm} touches {f.name(x.what)}.")]
    if x.kind == "wall":
        true = (f"{nm} bounces off the " + " and ".join(done) + " edges only." if done
                else f"{nm} never reaches an edge of the frame.")
        return [(true, f"{nm} bounces off the {x.what} edge.")]
    return [(f"{nm} is still in the frame at the end of the video.", f"{nm} disappears before the end.")]


def when_questions(f: Facts) -> list[Draft]:
    """TC: when does an event happen (beginning / middle / end), or never."""
    out = []
    for i in range(f.n):
        for a in f.acts[i]:
            part = f.part(a.frame)
            if part is None or _first(f, i, a) != "" or (a.kind == "hit" and a.what < i):
                continue
            if a.kind == "hit":
                q = f"When do {f.name(i)} and {f.name(a.what)} collide?"
            else:
                q = f"When does {f.name(i)} {f.present(i, a)}?"
            pct = round(100 * a.frame / f.s.frames)
            wrong = f.pick([15, 50, 85][:part] + [15, 50, 85][part + 1:])
            steps = [f.start_step(i),
                     (f"{_cap(f.name(i))} {f.past(i, a)} about {pct}% of the way through the video.",
                      f"{_cap(f.name(i))} {f.past(i, a)} about {wrong}% of the way through the video.")]
            out.append(Draft("TC", q, PARTS[part], [*PARTS, NEVER], steps))
    i = int(f.rng.integers(f.n))
    false = [a for a in f.never(i) if a.kind != "appear"]
    if false:  # one "never" question per video among the candidates
        x = f.pick(false)
        out.append(Draft("TC", f"When does {f.name(i)} {f.present(i, x)}?", NEVER, list(PARTS),
                         _summary(f, i, x)))
    return out


def _bounces(f: Facts, i: int) -> list[Action]:
    """Hits and wall bounces of ``i`` whose direction change is visible (sector changes)."""
    out = []
    for a in f.acts[i]:
        if (a.kind in ("hit", "wall") and a.frame > f.s.objects[i].appear + 1 and f.lonely(i, a)
                and f.direction(i, a.frame - 1) != f.direction(i, a.frame)):
            out.append(a)
    return out


def why_questions(f: Facts) -> list[Draft]:
    """CW: why did an object change direction for the first time (what did it hit)."""
    out = []
    for i in range(f.n):
        first = [a for a in f.acts[i] if a.kind in ("hit", "wall")]
        vis = _bounces(f, i)
        if not first or not vis or first[0] != vis[0]:
            continue  # the first bounce must be clear on its own
        d, nm = first[0], f.name(i)
        causes = [f"it hit {f.name(j)}" for j in range(f.n) if j != i]
        causes += [f"it reached the {s} edge" for s in SIDES]
        answer = f"it hit {f.name(d.what)}" if d.kind == "hit" else f"it reached the {d.what} edge"
        pool = [c for c in causes if c != answer] + ["it changed colour", "a new object appeared"]
        target = f.name(d.what) if d.kind == "hit" else f"the {d.what} edge"
        wrong_target = f.pick([c.split(" ", 2)[2] for c in causes if c != answer])
        db, da = f.direction(i, d.frame - 1), f.direction(i, d.frame)
        steps = [f.start_step(i),
                 (f"{_cap(nm)} moves {DIRS[db]} until it touches {target}.",
                  f"{_cap(nm)} moves {DIRS[db]} until it touches {wrong_target}."),
                 (f"Right then it starts moving {DIRS[da]} instead.",
                  f"Right then it keeps moving {DIRS[db]}.")]
        out.append(Draft("CW", f"Why did {nm} change direction for the first time?", answer, pool, steps))
    return out


def how_questions(f: Facts) -> list[Draft]:
    """CH: how did an object move right after a bounce (compass direction)."""
    out = []
    gap = max(3, int(round(0.5 * f.s.fps)))  # the new direction must stay for half a second
    for i in range(f.n):
        nm, never = f.name(i), f.never(i)
        for a in _bounces(f, i):
            later = [b.frame for b in f.acts[i] if b.frame > a.frame] + [f.s.frames]
            anchor = _first(f, i, a)
            if later[0] - a.frame < gap or anchor is None or not never:
                continue
            db, da = f.direction(i, a.frame - 1), f.direction(i, a.frame)
            pool = [f"it moved {DIRS[(da + k) % 8]}" for k in (2, 3, 4, 5, 6)] + ["it stopped moving"]
            steps = [(f"Before that, {nm} moves {DIRS[db]}.", f"Before that, {nm} moves {DIRS[(db + 4) % 8]}."),
                     (f"Then it {f.past(i, a)}.", f"Then it {f.past(i, f.pick(never))}."),
                     (f"In the next frames it moves {DIRS[da]}.", f"In the next frames it moves {DIRS[(da + 4) % 8]}.")]
            out.append(Draft("CH", f"How did {nm} move right after it {f.past(i, a)}{anchor}?",
                             f"it moved {DIRS[da]}", pool, steps))
    return out


def _numbers(answer: int) -> list[str]:
    return [str(v) for v in range(max(5, answer + 3)) if v != answer]


def count_questions(f: Facts) -> list[Draft]:
    """DC: how many objects appear later, how many colour changes, how many hits."""
    objs = f.s.objects
    first = [i for i in range(f.n) if objs[i].appear == 0]
    late = sorted((i for i in range(f.n) if objs[i].appear > 0), key=lambda i: objs[i].appear)
    names = " and ".join(f.name(i) for i in first)
    steps = [(f"The first frame shows {names}.",
              f"The first frame shows {names} and {f.name(late[0])}." if late
              else f"The first frame shows only {f.name(first[0])}.")]
    steps += [(f"Later, {f.name(i)} comes into view.", f"{_cap(f.name(i))} is already in the first frame.")
              for i in late]
    if not late:
        spare = [c for c in COLOURS if all(o.colour0 != c for o in objs)]
        steps.append(("No new object comes into view later.",
                      f"Later, a {f.pick(spare)} {objs[0].shape} comes into view."))
    out = [Draft("DC", "How many objects appear after the video has started?", str(len(late)),
                 _numbers(len(late)), steps)]
    for i in range(f.n):
        changes = sum(a.kind == "colour" for a in f.acts[i])
        out.append(Draft("DC", f"How many times does {f.shape(i)} change colour?", str(changes),
                         _numbers(changes), f.colour_steps(i)))
        hits = [a for a in f.acts[i] if a.kind == "hit"]
        if len(hits) > 6:
            continue  # too many to count reliably from a few sampled frames
        nm = _cap(f.name(i))
        others = [j for j in range(f.n) if j != i]
        steps = [(f"{nm} hits {f.name(a.what)}.", f"{nm} bounces off the {f.pick(SIDES)} edge instead.")
                 for a in hits] or [(f"{nm} never touches another object.",
                                     f"{nm} touches {f.name(f.pick(others))}.")]
        out.append(Draft("DC", f"How many times does {f.name(i)} hit another object?", str(len(hits)),
                         _numbers(len(hits)), steps))
    return out


def where_questions(f: Facts) -> list[Draft]:
    """DL: which quadrant an object is in at the end, or where it came into view."""
    out, last = [], f.s.frames - 1
    for i in range(f.n):
        nm, o = f.name(i), f.s.objects[i]
        q = f.quad(i, last, margin=0.1) if f.s.visible[last, i] else None
        if q is not None:
            d = f.direction(i, last)
            steps = [f.start_step(i),
                     (f"In the last frames it moves {DIRS[d]}.", f"In the last frames it moves {DIRS[(d + 4) % 8]}."),
                     (f"In the last frame it is in the {QUADS[q]} part of the frame.",
                      f"In the last frame it is in the {QUADS[3 - q]} part of the frame.")]
            out.append(Draft("DL", f"Where is {nm} at the end of the video?", f"in the {QUADS[q]}",
                             [f"in the {x}" for x in QUADS if x != QUADS[q]], steps))
        q = f.quad(i, o.appear, margin=0.1) if o.appear > 0 else None
        if q is not None:
            steps = [(f"At the start, {nm} is not in the frame.", f"At the start, {nm} is already in the frame."),
                     (f"When it comes into view it is in the {QUADS[q]} part of the frame.",
                      f"When it comes into view it is in the {QUADS[3 - q]} part of the frame.")]
            out.append(Draft("DL", f"Where does {nm} appear?", f"in the {QUADS[q]}",
                             [f"in the {x}" for x in QUADS if x != QUADS[q]], steps))
    return out


def describe_questions(f: Facts) -> list[Draft]:
    """DO: an object's colour at the end, or at the moment of one of its bounces."""
    out, last = [], f.s.frames - 1
    for i in range(f.n):
        sh = f.shape(i)
        if f.s.visible[last, i]:
            final = COLOURS[f.s.colour[last, i]]
            wrong = f.pick([c for c in COLOURS if c != final])
            steps = f.colour_steps(i) + [(f"In the last frame it is {final}.", f"In the last frame it is {wrong}.")]
            out.append(Draft("DO", f"What colour is {sh} at the end of the video?", final,
                             [c for c in COLOURS if c != final], steps))
        changes = [a.frame for a in f.acts[i] if a.kind == "colour"]
        for a in f.acts[i]:
            anchor = _first(f, i, a)
            if a.kind not in ("hit", "wall") or anchor is None or not f.lonely(i, a):
                continue
            if any(abs(c - a.frame) <= 2 for c in changes):
                continue  # the colour must be steady around the event
            never = f.never(i)
            if not never:
                continue
            col = COLOURS[f.s.colour[a.frame, i]]
            wrong = f.pick([c for c in COLOURS if c != col])
            steps = [(f"{_cap(sh)} {f.past(i, a)}{anchor}.", f"{_cap(sh)} {f.past(i, f.pick(never))}."),
                     (f"In those frames it is {col}.", f"In those frames it is {wrong}.")]
            out.append(Draft("DO", f"What colour was {sh} when it {f.past(i, a)}{anchor}?", col,
                             [c for c in COLOURS if c != col], steps))
    return out


BUILDERS = (order_questions, when_questions, why_questions, how_questions, count_questions,
            where_questions, describe_questions)


def finish(d: Draft, rng: np.random.Generator, implied: list[str | None] | None = None) -> dict | None:
    """Draw 4-5 distinct options around the answer (answer index uniform) and the reasoning.

    ``implied`` (one per step): the answer a viewer who believed that step's false version would give
    (None = the same answer); it becomes ``extra.false_implies``, option indices or None (also None
    when that answer is not among the options)."""
    pool = [p for p in dict.fromkeys(d.pool) if p != d.answer]
    if len(pool) < 3:
        return None
    n = 5 if len(pool) >= 4 else 4
    others = [pool[k] for k in rng.permutation(len(pool))[:n - 1]]
    ans = int(rng.integers(n))
    options = others[:ans] + [d.answer] + others[ans:]
    steps, false_steps = [s for s, _ in d.steps], [s for _, s in d.steps]
    if any(s == t for s, t in d.steps):
        raise AssertionError(f"a false step equals its true step in {d.question!r}: {d.steps}")
    reasoning = " ".join(steps) + f" So the answer is ({OPTION_LETTERS[ans]}) {d.answer}."
    extra = {"reasoning_steps": steps, "false_steps": false_steps, "reasoning": reasoning}
    if implied is not None:
        extra["false_implies"] = [options.index(a) if a in options else None for a in implied]
    return {"question": d.question, "options": options, "answer": ans, "qtype": d.qtype, "extra": extra}


def make_questions(scene: Scene, rng: np.random.Generator, count: int) -> list[dict]:
    """Up to ``count`` questions about ``scene``, spreading over as many types as it allows.

    Returns:
        dicts with question, options, answer, qtype, extra (qid not set).
    """
    facts = Facts(scene, rng)
    return choose(facts, BUILDERS, rng, count)


def choose(facts, builders, rng: np.random.Generator, count: int, qtypes: tuple[str, ...] | None = None,
           implies=None) -> list[dict]:
    """Up to ``count`` finished questions from the drafts of ``builders(facts)``, round robin over
    the question types in a random order (so one video covers many types), no question twice;
    only types in ``qtypes`` when given (None = all). ``implies(facts, draft)`` gives a chosen draft's
    per-step implied answers (:func:`finish`)."""
    by_type: dict[str, list[Draft]] = {t: [] for t in QTYPES}
    for build in builders:
        for d in build(facts):
            if qtypes is None or d.qtype in qtypes:
                by_type[d.qtype].append(d)
    order = [QTYPES[k] for k in rng.permutation(len(QTYPES))]
    chosen, seen = [], set()
    while len(chosen) < count and any(by_type.values()):
        for t in order:  # round robin over types, so one video covers many of them
            if len(chosen) >= count or not by_type[t]:
                continue
            d = by_type[t].pop(int(rng.integers(len(by_type[t]))))
            qa = finish(d, rng, implies(facts, d) if implies else None) if d.question not in seen else None
            if qa is not None:
                chosen.append(qa)
                seen.add(d.question)
    return chosen
