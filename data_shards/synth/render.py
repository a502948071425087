"""Synthetic scenes: coloured shapes that move, appear, change colour, collide and leave.

A :class:`Scene` is drawn from a seeded numpy ``Generator``, simulated frame by frame
(:func:`simulate`) into per-frame arrays plus an explicit event timeline, and rendered with
numpy (:func:`render_frames`): a plain background and pre-rasterised shape sprites pasted at
integer positions, so a 640x360 frame costs one background copy and a few small masked writes.

Events (``Event.kind``):
  ``appear``   the object becomes visible (only for objects absent from the first frame)
  ``colour``   the object changes colour (``info["old"]`` -> ``info["new"]``)
  ``collide``  two objects touch and bounce (elastic, equal masses): a change of direction of
               both, caused by the other object
  ``wall``     an object bounces off an edge of the frame (``info["side"]``)
  ``leave``    the object disappears from the scene

Geometry: positions are pixel coordinates of the object's centre (x right, y down). Every
object has a radius ``r``; collisions use the circle of radius ``r`` for every shape, and the
sprites are drawn to roughly fill it (square half-side 0.8 r, triangle circumradius 1.2 r).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "green": (30, 185, 60), "blue": (40, 90, 245), "yellow": (240, 220, 30),
    "purple": (160, 50, 215), "orange": (255, 140, 0), "cyan": (0, 210, 220), "white": (240, 240, 240),
}
COLOURS = list(PALETTE)
SHAPES = ("circle", "square", "triangle", "diamond")
SIDES = ("left", "right", "top", "bottom")
BACKGROUNDS = ((25, 25, 25), (55, 55, 60), (40, 32, 48))


@dataclass
class Obj:
    """One object of a scene; frames are indices into the video (0-based)."""

    shape: str
    colour0: str
    radius: float
    appear: int
    """First visible frame (0 = visible from the start)."""
    leave: int | None
    """Frame at which it is gone (None = stays to the end)."""
    changes: list[tuple[int, str]]
    """Colour changes ``(frame, new colour)``, in time order."""
    pos: tuple[float, float]
    """Position at its first frame (for late objects: chosen at spawn time)."""
    vel: tuple[float, float]
    """Velocity in pixels per second."""

    @property
    def name(self) -> str:
        """How questions refer to it: its colour when it first appears, and its shape."""
        return f"the {self.colour0} {self.shape}"


@dataclass
class Event:
    frame: int
    kind: str
    objects: list[int]
    info: dict = field(default_factory=dict)


@dataclass
class Scene:
    """A generated and simulated scene.

    Attributes:
        pos: float64 [T, N, 2] centre positions (x, y) in pixels.
        vel: float64 [T, N, 2] velocities in pixels per second (after the frame's bounces).
        visible: bool [T, N].
        colour: int64 [T, N] index into ``COLOURS``.
    """

    width: int
    height: int
    fps: float
    frames: int
    background: tuple[int, int, int]
    objects: list[Obj]
    events: list[Event]
    pos: np.ndarray
    vel: np.ndarray
    visible: np.ndarray
    colour: np.ndarray

    @property
    def duration(self) -> float:
        return self.frames / self.fps

    def time(self, frame: int) -> float:
        return round(frame / self.fps, 4)


class SceneRejected(Exception):
    """The random draw led to an unusable scene (e.g. no room to spawn); draw again."""


def _frame_in(rng: np.random.Generator, frames: int, lo: float, hi: float) -> int:
    return int(rng.integers(max(1, int(lo * frames)), max(2, int(hi * frames))))


def make_objects(rng: np.random.Generator, width: int, height: int, fps: float,
                 frames: int) -> list[Obj]:
    """Draw 2-4 objects with unique shapes and unique starting colours and their schedules.

    At least two objects are visible from the first frame; the others appear later. Colour
    changes never go to a colour some object starts with, so "the red circle" stays a
    unique name and a changed colour is never confused with another object.
    """
    n = int(rng.integers(2, 5))
    shapes = [SHAPES[i] for i in rng.permutation(len(SHAPES))[:n]]
    colour_ids = rng.permutation(len(COLOURS))
    starts = [COLOURS[i] for i in colour_ids[:n]]
    spare = [COLOURS[i] for i in colour_ids[n:]]
    n_late = int(rng.integers(0, n - 1))
    side = min(width, height)
    duration = frames / fps
    max_changes = max(2, int(duration / 5))
    objs = []
    for i in range(n):
        late = i >= n - n_late
        appear = _frame_in(rng, frames, 0.15, 0.7) if late else 0
        changes: list[tuple[int, str]] = []
        k = int(rng.integers(0, max_changes + 1))
        times = sorted({_frame_in(rng, frames, 0.1, 0.92) for _ in range(k)})
        current = starts[i]
        for t in times:
            if t <= appear + 2 or (changes and t - changes[-1][0] < 3):
                continue  # keep every colour visible for a few frames
            new = spare[int(rng.integers(len(spare)))]
            if new == current:
                continue
            changes.append((t, new))
            current = new
        leave = None
        if rng.random() < 0.2 and frames / fps >= 3:
            leave = _frame_in(rng, frames, 0.6, 0.92)
            if leave - appear < max(3, int(fps)):
                leave = None
            changes = [c for c in changes if c[0] < (leave or frames) - 2]
        r = float(rng.uniform(0.09, 0.12)) * side
        speed = float(rng.uniform(0.18, 0.32)) * side
        ang = float(rng.uniform(0, 2 * math.pi))
        pos = (float(rng.uniform(r, width - r)), float(rng.uniform(r, height - r)))
        objs.append(Obj(shapes[i], starts[i], r, appear, leave, changes, pos,
                        (speed * math.cos(ang), speed * math.sin(ang))))
    if n >= 2 and rng.random() < 0.7:
        _aim(objs[0], objs[1], rng)
    return objs


def _aim(a: Obj, b: Obj, rng: np.random.Generator) -> None:
    """Point ``a`` roughly at ``b``'s start so that most scenes hold a collision."""
    dx, dy = b.pos[0] - a.pos[0], b.pos[1] - a.pos[1]
    ang = math.atan2(dy, dx) + float(rng.uniform(-0.35, 0.35))
    speed = math.hypot(*a.vel)
    a.vel = (speed * math.cos(ang), speed * math.sin(ang))


def _spawn_starts(objs: list[Obj], width: int, height: int, rng: np.random.Generator) -> None:
    """Re-draw start positions of the first-frame objects until none overlap."""
    first = [o for o in objs if o.appear == 0]
    for i, o in enumerate(first):
        for _ in range(50):
            if all(math.dist(o.pos, p.pos) > o.radius + p.radius + 2 for p in first[:i]):
                break
            o.pos = (float(rng.uniform(o.radius, width - o.radius)),
                     float(rng.uniform(o.radius, height - o.radius)))
        else:
            raise SceneRejected("no room for the first-frame objects")


def simulate(objs: list[Obj], width: int, height: int, fps: float, frames: int,
             rng: np.random.Generator, background: tuple[int, int, int]) -> Scene:
    """Move the objects frame by frame: walls and pairwise elastic collisions, with events."""
    n = len(objs)
    _spawn_starts(objs, width, height, rng)
    dt = 1.0 / fps
    p = np.array([o.pos for o in objs], dtype=np.float64)
    v = np.array([o.vel for o in objs], dtype=np.float64)
    rad = np.array([o.radius for o in objs])
    cur = np.array([COLOURS.index(o.colour0) for o in objs])
    pos = np.zeros((frames, n, 2))
    vel = np.zeros((frames, n, 2))
    visible = np.zeros((frames, n), dtype=bool)
    colour = np.zeros((frames, n), dtype=np.int64)
    alive = np.zeros(n, dtype=bool)
    events: list[Event] = []
    for t in range(frames):
        for i, o in enumerate(objs):
            if o.appear == t:
                if t > 0:
                    p[i] = _free_spot(o.radius, p, rad, alive, width, height, rng)
                    o.pos = (float(p[i, 0]), float(p[i, 1]))
                    events.append(Event(t, "appear", [i]))
                alive[i] = True
            if o.leave == t and alive[i]:
                alive[i] = False
                events.append(Event(t, "leave", [i]))
            for ft, new in o.changes:
                if ft == t and alive[i]:
                    events.append(Event(t, "colour", [i], {"old": COLOURS[cur[i]], "new": new}))
                    cur[i] = COLOURS.index(new)
        if t > 0:
            p[alive] += v[alive] * dt
            _walls(p, v, rad, alive, width, height, t, events)
            _collide(p, v, rad, alive, t, events)
        pos[t], vel[t], visible[t], colour[t] = p, v, alive, cur
    return Scene(width, height, fps, frames, background, objs, events, pos, vel, visible, colour)


def _free_spot(r: float, p: np.ndarray, rad: np.ndarray, alive: np.ndarray, width: int,
               height: int, rng: np.random.Generator) -> np.ndarray:
    for _ in range(60):
        q = np.array([rng.uniform(r, width - r), rng.uniform(r, height - r)])
        gap = np.hypot(*(p[alive] - q).T) - rad[alive] - r
        if not alive.any() or gap.min() > r:
            return q
    raise SceneRejected("no free spot for an appearing object")


def _walls(p, v, rad, alive, width, height, t, events) -> None:
    for i in np.flatnonzero(alive):
        for axis, lo_side, hi_side, size in ((0, "left", "right", width), (1, "top", "bottom", height)):
            if p[i, axis] - rad[i] < 0 and v[i, axis] < 0:
                p[i, axis] = 2 * rad[i] - p[i, axis]
                v[i, axis] = -v[i, axis]
                events.append(Event(t, "wall", [int(i)], {"side": lo_side}))
            elif p[i, axis] + rad[i] > size and v[i, axis] > 0:
                p[i, axis] = 2 * (size - rad[i]) - p[i, axis]
                v[i, axis] = -v[i, axis]
                events.append(Event(t, "wall", [int(i)], {"side": hi_side}))


def _collide(p, v, rad, alive, t, events) -> None:
    idx = np.flatnonzero(alive)
    for a_pos, i in enumerate(idx):
        for j in idx[a_pos + 1:]:
            d = p[j] - p[i]
            dist = float(np.hypot(*d))
            if dist >= rad[i] + rad[j] or dist == 0:
                continue
            nrm = d / dist
            approach = float(np.dot(v[i] - v[j], nrm))
            if approach <= 0:
                continue  # already separating: no second bounce
            # Equal masses, elastic: exchange the velocity components along the normal.
            v[i] -= approach * nrm
            v[j] += approach * nrm
            events.append(Event(t, "collide", [int(i), int(j)]))


def make_scene(rng: np.random.Generator, width: int, height: int, fps: float, frames: int,
               tries: int = 12) -> Scene:
    """Draw and simulate a scene, preferring one that holds at least one collision."""
    fallback = None
    for _ in range(tries):
        background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
        try:
            objs = make_objects(rng, width, height, fps, frames)
            scene = simulate(objs, width, height, fps, frames, rng, background)
        except SceneRejected:
            continue
        if any(e.kind == "collide" for e in scene.events):
            return scene
        fallback = fallback or scene
    if fallback is None:
        raise RuntimeError(f"could not place objects in a {width}x{height} frame after {tries} tries")
    return fallback


def sprite(shape: str, r: float) -> np.ndarray:
    """Boolean mask [2R+1, 2R+1] of a shape centred in the box, R = ceil(1.2 r)."""
    big = int(math.ceil(1.2 * r))
    yy, xx = np.mgrid[-big:big + 1, -big:big + 1].astype(np.float64)
    if shape == "circle":
        return xx ** 2 + yy ** 2 <= r ** 2
    if shape == "square":
        return (np.abs(xx) <= 0.8 * r) & (np.abs(yy) <= 0.8 * r)
    if shape == "diamond":
        return np.abs(xx) + np.abs(yy) <= 1.05 * r
    if shape == "triangle":  # pointing up, circumradius 1.2 r, centroid at the centre
        # Inside = on the inner side of all three edges (half-planes at distance 0.6 r).
        R = 1.2 * r
        inside = yy <= R / 2
        for ang in (math.radians(30), math.radians(150)):
            nx, ny = math.cos(ang), -math.sin(ang)  # outward normals of the two slanted edges
            inside &= xx * nx + yy * ny <= R / 2
        return inside
    raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")


def render_frames(scene: Scene, batch: int = 32) -> Iterator[np.ndarray]:
    """Yield the video as uint8 RGB batches ``[B, H, W, 3]`` (B <= ``batch``)."""
    h, w = scene.height, scene.width
    masks = [sprite(o.shape, o.radius) for o in scene.objects]
    rgb = np.array([PALETTE[c] for c in COLOURS], dtype=np.uint8)
    bg = np.empty((h, w, 3), dtype=np.uint8)
    bg[:] = scene.background
    for b0 in range(0, scene.frames, batch):
        out = np.empty((min(batch, scene.frames - b0), h, w, 3), dtype=np.uint8)
        out[:] = bg
        for k in range(out.shape[0]):
            t = b0 + k
            for i, m in enumerate(masks):
                if scene.visible[t, i]:
                    _paste(out[k], m, scene.pos[t, i], rgb[scene.colour[t, i]])
        yield out


def _paste(img: np.ndarray, mask: np.ndarray, centre: np.ndarray, colour: np.ndarray) -> None:
    half = mask.shape[0] // 2
    x0, y0 = int(round(centre[0])) - half, int(round(centre[1])) - half
    h, w = img.shape[:2]
    # Clip the sprite box to the frame: objects may touch or (briefly) cross an edge.
    ax, ay = max(0, -x0), max(0, -y0)
    bx, by = min(mask.shape[1], w - x0), min(mask.shape[0], h - y0)
    if bx <= ax or by <= ay:
        return
    img[y0 + ay:y0 + by, x0 + ax:x0 + bx][mask[ay:by, ax:bx]] = colour
