"""The synthetic teacher: an imperfect MLLM stand-in for the synthetic dataset.

It writes a reasoning chain from the ground truth of a synthetic question
(``extra["reasoning_steps"]``, contract 4) and makes the mistakes a real MLLM makes, so that
refinement, teacher-accuracy bookkeeping and the training signal are exercised without a model:

- observation errors: each step ``i`` is replaced by ``extra["false_steps"][i]`` with probability
  ``step_error_rate``, and the conclusion follows from what the teacher believes: when a flipped
  step has an implication (``extra["false_implies"][i]``, the option a teacher believing the false
  step would conclude; null when the false step does not change the answer) the conclusion is that
  option (the last flipped step with an implication wins). Records without ``false_implies``
  (older data) conclude a random wrong option with probability ``mislead_rate`` when at least one
  step is flipped;
- slips: with probability ``slip_rate`` (independent of the steps) the conclusion is a random
  wrong option;
- the surface form varies: plain prose, numbered steps, markdown, answer first, "Answer: B",
  bold, boxed, option text without letter, a distractor discussed before the conclusion, and
  phrasings that restate the answer mid-text ("..., which already suggests (C) red.") before
  more steps and the conclusion. Every statement of the answer in one text names the same option.

Expected accuracy on a question with a ground-truth answer (``p`` = step_error_rate, ``s`` =
slip_rate, ``m`` = steps whose false version has an implication other than the answer, ``n`` =
steps, ``r`` = mislead_rate): ``(1 - s) * (1 - p) ** m`` with ``false_implies``, and
``(1 - s) * (1 - r * (1 - (1 - p) ** n))`` without (:func:`expected_accuracy`).

Everything is a pure function of ``(seed, qid)`` (plus the pair index for vCoT), so a restarted
job regenerates exactly the same text. Which steps flip does not depend on ``slip_rate``.
"""

from __future__ import annotations

import hashlib
import random
import time
from dataclasses import dataclass, field

from reasoning_gen.answers import LETTERS
from reasoning_gen.backends.base import Backend, GenRequest, GenResult

DEFAULT_STEP_ERROR_RATE = 0.15
DEFAULT_SLIP_RATE = 0.1
DEFAULT_MISLEAD_RATE = 0.5
"""Without ``false_implies``: probability that a chain with a flipped step concludes wrongly."""


def _rng(seed: int, *key: object) -> random.Random:
    digest = hashlib.sha256("\0".join(map(str, (seed, *key))).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def _prose(steps: list[str]) -> str:
    return " ".join(s.strip() for s in steps)


def _join(*parts: str) -> str:
    """Non-empty parts joined by single spaces."""
    return " ".join(p.strip() for p in parts if p.strip())


def _which(st: list[str], k: int, L: str, o: str) -> str:
    """Step ``k - 1`` turned into "<step>, which already suggests (L) o.", then the later steps."""
    if not st:
        return f"This already suggests ({L}) {o}."
    head = st[k - 1].strip().rstrip(".")
    return _join(_prose(st[:k - 1]), f"{head}, which already suggests ({L}) {o}.", _prose(st[k:]))


# Each format: (steps, letter, option text, distractor letter, distractor text, cut) -> text, where
# ``cut`` (1..len(steps)) is the number of steps written before a mid-text statement of the answer.
FORMATS = {
    "plain": lambda st, L, o, W, w, k: f"{_prose(st)} So the answer is ({L}) {o}.",
    "numbered": lambda st, L, o, W, w, k: "\n".join(f"{i}. {s}" for i, s in enumerate(st, 1))
    + f"\n{len(st) + 1}. Therefore, the answer is {L}.",
    "markdown": lambda st, L, o, W, w, k: "### Reasoning\n" + "\n".join(f"- {s}" for s in st)
    + f"\n\n### Answer\n**{L}** {o}",
    "answer_first": lambda st, L, o, W, w, k: f"{L}. {_prose(st)}",
    "answer_line_first": lambda st, L, o, W, w, k: f"Answer: ({L}) {o}\n\nExplanation: {_prose(st)}",
    "text_only": lambda st, L, o, W, w, k: f"{_prose(st)} Therefore, the correct answer is \"{o}\".",
    "bold_final": lambda st, L, o, W, w, k: f"{_prose(st)}\n\n**Final answer: {L}**",
    "trailing_letter": lambda st, L, o, W, w, k: f"{_prose(st)} So it is {o} ({L}).",
    "mid_text": lambda st, L, o, W, w, k: _join(_prose(st[:k]), f"The correct option is {L}.", _prose(st[k:])),
    "distractor": lambda st, L, o, W, w, k: f"Option {W} ({w}) does not fit what the frames show. {_prose(st)} "
    f"So the best option is {L}.",
    "boxed": lambda st, L, o, W, w, k: f"{_prose(st)} \\boxed{{{L}}}",
    "steps_answer_line": lambda st, L, o, W, w, k: "\n".join(f"Step {i}: {s}" for i, s in enumerate(st, 1))
    + f"\nAnswer: {L}",
    "conclusion_text": lambda st, L, o, W, w, k: f"{_prose(st)} In conclusion, {o}.",
    "choose_because": lambda st, L, o, W, w, k: f"I choose {L}. {_prose(st)}",
    # the answer restated mid-text, then more steps, then the conclusion
    "suggests_mid": lambda st, L, o, W, w, k: _join(_prose(st[:k]), f"This already suggests ({L}) {o}.",
                                                    _prose(st[k:]), f"So the answer is ({L}) {o}."),
    "which_suggests": lambda st, L, o, W, w, k: f"{_which(st, k, L, o)} Therefore, the answer is {L}.",
    "points_so_far": lambda st, L, o, W, w, k: _join(_prose(st[:k]), f"So far, this points to option {L} ({o}).",
                                                     _prose(st[k:]), f"The answer is ({L}) {o}."),
    "first_glance": lambda st, L, o, W, w, k: f"At first glance the answer is ({L}) {o}. Checking each shot: "
    f"{_prose(st)} This confirms that the answer is {L}.",
}
RESTATING_FORMATS = ("mid_text", "suggests_mid", "which_suggests", "points_so_far", "first_glance")
"""Formats that state the answer before the last step."""


@dataclass
class TeacherOutput:
    """What the synthetic teacher wrote, and the truth about its mistakes (for tests/stats)."""

    text: str
    choice: int
    step_errors: list[bool]
    format: str
    cause: str = "none"
    """Why the conclusion is what it is: ``none`` (followed the true steps), ``observation`` (a
    false step led to it), ``slip`` (a random wrong option regardless of the steps) or ``guess``
    (the question has no ground-truth answer)."""
    decisive_step: int | None = None
    """With ``cause == "observation"``: the index of the false step the conclusion follows from."""
    restated: bool = False
    """Whether the text states the answer before its last step (besides the conclusion)."""


@dataclass
class _Draws:
    """The random draws of one chain, taken in a fixed order (so the steps that flip do not
    depend on the answer rates)."""

    errors: list[bool]
    mislead: float
    slip: float
    rest: random.Random = field(repr=False)


def _check_implies(qid: str, implies: list | None, n_steps: int, n_options: int) -> None:
    if implies is None:
        return
    if len(implies) != n_steps:
        raise ValueError(f"{qid}: false_implies ({len(implies)}) and reasoning_steps ({n_steps}) differ in length")
    bad = [x for x in implies if x is not None and (isinstance(x, bool) or not isinstance(x, int)
                                                    or not 0 <= x < n_options)]
    if bad:
        raise ValueError(f"{qid}: false_implies entries must be null or option indices < {n_options}, got {bad}")


def expected_accuracy(step_error_rate: float, slip_rate: float, n_steps: int,
                      implies: list[int | None] | None = None, answer: int | None = None,
                      mislead_rate: float = DEFAULT_MISLEAD_RATE) -> float:
    """The probability that the teacher concludes ``answer`` on one question (see the module doc)."""
    keep = 1.0 - step_error_rate
    if implies is None:
        return (1.0 - slip_rate) * (1.0 - mislead_rate * (1.0 - keep ** n_steps))
    m = sum(x is not None and x != answer for x in implies)
    return (1.0 - slip_rate) * keep ** m


class SyntheticTeacher:
    """The teacher logic on plain values (no frames, no files).

    Args:
        seed: teacher seed (texts are deterministic in ``(seed, qid)``).
        step_error_rate: probability of replacing each step by its false version.
        slip_rate: probability of concluding a random wrong option regardless of the steps.
        mislead_rate: without ``false_implies``, probability that a chain with at least one false
            step concludes a random wrong option.
        formats: restrict the surface formats (names in ``FORMATS``).
    """

    def __init__(self, seed: int = 0, step_error_rate: float = DEFAULT_STEP_ERROR_RATE,
                 slip_rate: float = DEFAULT_SLIP_RATE, formats: list[str] | None = None,
                 mislead_rate: float = DEFAULT_MISLEAD_RATE):
        for name, p in (("step_error_rate", step_error_rate), ("slip_rate", slip_rate),
                        ("mislead_rate", mislead_rate)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {p}")
        unknown = sorted(set(formats or []) - set(FORMATS))
        if unknown:
            raise ValueError(f"unknown synthetic teacher formats {unknown}; known: {sorted(FORMATS)}")
        self.seed, self.p, self.slip_rate, self.mislead_rate = seed, step_error_rate, slip_rate, mislead_rate
        self.formats = list(formats or FORMATS)

    def _draws(self, qid: str, n_steps: int) -> _Draws:
        rng = _rng(self.seed, qid, "reasvqa")
        errors = [rng.random() < self.p for _ in range(n_steps)]
        return _Draws(errors, rng.random(), rng.random(), rng)

    def _conclude(self, d: _Draws, n_options: int, answer: int | None,
                  implies: list | None) -> tuple[int, str, int | None]:
        """(choice, cause, decisive step): observation errors first, then a slip overrides them."""
        wrong = [i for i in range(n_options) if i != answer]
        flipped = [i for i, e in enumerate(d.errors) if e]
        choice, cause, step = answer, "none", None
        if implies is not None:
            led = [i for i in flipped if implies[i] is not None and implies[i] != answer]
            if led:
                step = led[-1]
                choice, cause = implies[step], "observation"
        elif flipped and wrong and d.mislead < self.mislead_rate:
            choice, cause, step = d.rest.choice(wrong), "observation", flipped[-1]
        if answer is not None and wrong and d.slip < self.slip_rate:
            return d.rest.choice(wrong), "slip", None
        if choice is None:
            return d.rest.randrange(n_options), "guess", None
        return choice, cause, step

    def reason(self, qid: str, options: list[str], answer: int | None, steps: list[str],
               false_steps: list[str], false_implies: list[int | None] | None = None) -> TeacherOutput:
        """A reasoning chain for one question (deterministic in ``(seed, qid)``).

        Args:
            qid, options, answer: the question (``answer`` None when unknown).
            steps, false_steps: ``extra["reasoning_steps"]`` and ``extra["false_steps"]``.
            false_implies: ``extra["false_implies"]`` when the record has it (see the module doc).
        """
        if len(false_steps) != len(steps):
            raise ValueError(f"{qid}: reasoning_steps ({len(steps)}) and false_steps ({len(false_steps)}) "
                             "differ in length")
        if not options:
            raise ValueError(f"{qid}: no options")
        _check_implies(qid, false_implies, len(steps), len(options))
        d = self._draws(qid, len(steps))
        used = [f if e else s for s, f, e in zip(steps, false_steps, d.errors)]
        choice, cause, decisive = self._conclude(d, len(options), answer, false_implies)
        fmt = d.rest.choice(self.formats)
        others = [i for i in range(len(options)) if i != choice] or [choice]
        other = d.rest.choice(others)
        # a restatement follows the step that misled the teacher, else a random step (not the last)
        cut = decisive + 1 if decisive is not None else d.rest.randint(1, max(1, len(steps) - 1))
        text = FORMATS[fmt](used, LETTERS[choice], options[choice], LETTERS[other], options[other],
                            min(cut, max(1, len(steps))))
        return TeacherOutput(text, choice, d.errors, fmt, cause, decisive, fmt in RESTATING_FORMATS)

    def _pair_step(self, qid: str, pair: int, num_frames: int, steps: list[str], false_steps: list[str],
                   salt: str) -> str:
        j = min(len(steps) - 1, pair * len(steps) // max(1, num_frames - 1))
        rng = _rng(self.seed, qid, salt, pair)
        step = false_steps[j] if rng.random() < self.p else steps[j]
        return step.strip().rstrip(".")

    def common(self, qid: str, pair: int, num_frames: int, steps: list[str], false_steps: list[str]) -> str:
        """vCoT step 1 for frames (pair, pair + 1): what the two frames share."""
        step = self._pair_step(qid, pair, num_frames, steps, false_steps, "common")
        return f"Both frames show the same plain background and the same objects. {step[:1].upper()}{step[1:]}."

    def bridge(self, qid: str, pair: int, num_frames: int, steps: list[str], false_steps: list[str]) -> str:
        """vCoT step 2: the event between the two frames."""
        step = self._pair_step(qid, pair, num_frames, steps, false_steps, "bridge")
        return f"Between frame {pair + 1} and frame {pair + 2}, {_lower(step)}."


def _lower(s: str) -> str:
    return s[:1].lower() + s[1:] if len(s) > 1 and not s[1].isupper() else s


def shorten(caption: str, max_words: int = 20) -> str:
    """The synthetic rephrasing pass: first sentence, at most ``max_words`` words."""
    first = caption.split(". ")[0].strip().rstrip(".")
    words = first.split()
    return " ".join(words[:max_words]) + "."


class SyntheticBackend(Backend):
    """Backend wrapper around :class:`SyntheticTeacher`; it reads ``request.sample``, not pixels.

    Args:
        seed, step_error_rate, slip_rate, mislead_rate, formats: see :class:`SyntheticTeacher`
            (``--opt step_error_rate=0.15 --opt slip_rate=0.1`` on the generate CLI).
        latency_s: seconds slept per batch, to stand in for model time in job tests.
        fail_rate: probability (deterministic per key) that a request fails, to exercise the
            failed-record path.
    """

    needs_frames = False

    def __init__(self, seed: int = 0, step_error_rate: float = DEFAULT_STEP_ERROR_RATE,
                 slip_rate: float = DEFAULT_SLIP_RATE, formats: list[str] | None = None,
                 latency_s: float = 0.0, fail_rate: float = 0.0, mislead_rate: float = DEFAULT_MISLEAD_RATE):
        self.teacher = SyntheticTeacher(seed, step_error_rate, slip_rate, formats, mislead_rate)
        self.latency_s, self.fail_rate, self.seed = latency_s, fail_rate, seed
        self.name = f"synthetic-teacher(seed={seed},p_step={step_error_rate},p_slip={slip_rate})"

    def _one(self, req: GenRequest) -> GenResult:
        if self.fail_rate and _rng(self.seed, req.key, "fail").random() < self.fail_rate:
            return GenResult(None, f"synthetic failure injected (fail_rate={self.fail_rate})")
        task = req.prompt.task
        if task == "rephrase":
            return GenResult(shorten(req.meta["caption"]))
        s = req.sample or {}
        extra = s.get("extra") or {}
        if "reasoning_steps" not in extra or "false_steps" not in extra:
            return GenResult(None, f"{req.key}: sample has no extra.reasoning_steps/false_steps "
                                   "(the synthetic teacher only works on the synthetic dataset)")
        steps, false = extra["reasoning_steps"], extra["false_steps"]
        try:
            if task == "reasvqa":
                return GenResult(self.teacher.reason(s["qid"], s["options"], s.get("answer"), steps, false,
                                                     extra.get("false_implies")).text)
            n, pair = req.meta["num_frames"], req.meta["pair"]
            if task == "vcot_common":
                return GenResult(self.teacher.common(s["qid"], pair, n, steps, false))
            if task == "vcot_bridge":
                return GenResult(self.teacher.bridge(s["qid"], pair, n, steps, false))
        except (KeyError, ValueError, IndexError) as e:
            return GenResult(None, f"{req.key}: {type(e).__name__}: {e}")
        return GenResult(None, f"{req.key}: the synthetic teacher has no task {task!r}")

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        if self.latency_s:
            time.sleep(self.latency_s)
        return [self._one(r) for r in requests]
