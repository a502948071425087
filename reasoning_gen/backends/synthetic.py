"""The synthetic teacher: an imperfect MLLM stand-in for the synthetic dataset.

It writes a reasoning chain from the ground truth of a synthetic question
(``extra["reasoning_steps"]``, contract 4) and makes mistakes on purpose, so that refinement,
teacher-accuracy bookkeeping and the training signal are exercised without a model:

- each step ``i`` is replaced by ``extra["false_steps"][i]`` with probability ``step_error_rate``;
- the conclusion names a wrong option with probability ``wrong_answer_rate`` (defaults give a
  teacher accuracy of about 67 %, what the ReasVQA paper reports for its teachers);
- the surface form varies: plain prose, numbered steps, markdown, answer first, "Answer: B",
  bold, boxed, option text without letter, a distractor discussed before the conclusion ...

Everything is a pure function of ``(seed, qid)`` (plus the pair index for vCoT), so a restarted
job regenerates exactly the same text.
"""

from __future__ import annotations

import hashlib
import random
import time
from dataclasses import dataclass

from reasoning_gen.answers import LETTERS
from reasoning_gen.backends.base import Backend, GenRequest, GenResult

DEFAULT_STEP_ERROR_RATE = 0.15
DEFAULT_WRONG_ANSWER_RATE = 0.33


def _rng(seed: int, *key: object) -> random.Random:
    digest = hashlib.sha256("\0".join(map(str, (seed, *key))).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def _prose(steps: list[str]) -> str:
    return " ".join(s.strip() for s in steps)


# Each format: (steps, letter, option text, distractor letter, distractor text) -> text.
FORMATS = {
    "plain": lambda st, L, o, W, w: f"{_prose(st)} So the answer is ({L}) {o}.",
    "numbered": lambda st, L, o, W, w: "\n".join(f"{i}. {s}" for i, s in enumerate(st, 1))
    + f"\n{len(st) + 1}. Therefore, the answer is {L}.",
    "markdown": lambda st, L, o, W, w: "### Reasoning\n" + "\n".join(f"- {s}" for s in st)
    + f"\n\n### Answer\n**{L}** {o}",
    "answer_first": lambda st, L, o, W, w: f"{L}. {_prose(st)}",
    "answer_line_first": lambda st, L, o, W, w: f"Answer: ({L}) {o}\n\nExplanation: {_prose(st)}",
    "text_only": lambda st, L, o, W, w: f"{_prose(st)} Therefore, the correct answer is \"{o}\".",
    "bold_final": lambda st, L, o, W, w: f"{_prose(st)}\n\n**Final answer: {L}**",
    "trailing_letter": lambda st, L, o, W, w: f"{_prose(st)} So it is {o} ({L}).",
    "mid_text": lambda st, L, o, W, w: f"{_prose(st[:1])} The correct option is {L}. {_prose(st[1:])}".strip(),
    "distractor": lambda st, L, o, W, w: f"Option {W} ({w}) does not fit what the frames show. {_prose(st)} "
    f"So the best option is {L}.",
    "boxed": lambda st, L, o, W, w: f"{_prose(st)} \\boxed{{{L}}}",
    "steps_answer_line": lambda st, L, o, W, w: "\n".join(f"Step {i}: {s}" for i, s in enumerate(st, 1))
    + f"\nAnswer: {L}",
    "conclusion_text": lambda st, L, o, W, w: f"{_prose(st)} In conclusion, {o}.",
    "choose_because": lambda st, L, o, W, w: f"I choose {L}. {_prose(st)}",
}


@dataclass
class TeacherOutput:
    """What the synthetic teacher wrote, and the truth about its mistakes (for tests/stats)."""

    text: str
    choice: int
    step_errors: list[bool]
    format: str


class SyntheticTeacher:
    """The teacher logic on plain values (no frames, no files)."""

    def __init__(self, seed: int = 0, step_error_rate: float = DEFAULT_STEP_ERROR_RATE,
                 wrong_answer_rate: float = DEFAULT_WRONG_ANSWER_RATE, formats: list[str] | None = None):
        for name, p in (("step_error_rate", step_error_rate), ("wrong_answer_rate", wrong_answer_rate)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {p}")
        unknown = sorted(set(formats or []) - set(FORMATS))
        if unknown:
            raise ValueError(f"unknown synthetic teacher formats {unknown}; known: {sorted(FORMATS)}")
        self.seed, self.p, self.q = seed, step_error_rate, wrong_answer_rate
        self.formats = list(formats or FORMATS)

    def _steps(self, rng: random.Random, steps: list[str], false_steps: list[str]) -> tuple[list[str], list[bool]]:
        errors = [rng.random() < self.p for _ in steps]
        return [f if e else s for s, f, e in zip(steps, false_steps, errors)], errors

    def reason(self, qid: str, options: list[str], answer: int | None, steps: list[str],
               false_steps: list[str]) -> TeacherOutput:
        """A reasoning chain for one question (deterministic in ``(seed, qid)``)."""
        if len(false_steps) != len(steps):
            raise ValueError(f"{qid}: reasoning_steps ({len(steps)}) and false_steps ({len(false_steps)}) "
                             "differ in length")
        rng = _rng(self.seed, qid, "reasvqa")
        used, errors = self._steps(rng, steps, false_steps)
        wrong = [i for i in range(len(options)) if i != answer]
        if answer is None:
            choice = rng.randrange(len(options))
        elif rng.random() < self.q and wrong:
            choice = rng.choice(wrong)
        else:
            choice = answer
        fmt = rng.choice(self.formats)
        other = rng.choice([i for i in range(len(options)) if i != choice])
        text = FORMATS[fmt](used, LETTERS[choice], options[choice], LETTERS[other], options[other])
        return TeacherOutput(text, choice, errors, fmt)

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
        seed: teacher seed (texts are deterministic in ``(seed, qid)``).
        step_error_rate: probability of replacing each step by its false version.
        wrong_answer_rate: probability of concluding with a wrong option.
        formats: restrict the surface formats (names in ``FORMATS``).
        latency_s: seconds slept per batch, to stand in for model time in job tests.
        fail_rate: probability (deterministic per key) that a request fails, to exercise the
            failed-record path.
    """

    needs_frames = False

    def __init__(self, seed: int = 0, step_error_rate: float = DEFAULT_STEP_ERROR_RATE,
                 wrong_answer_rate: float = DEFAULT_WRONG_ANSWER_RATE, formats: list[str] | None = None,
                 latency_s: float = 0.0, fail_rate: float = 0.0):
        self.teacher = SyntheticTeacher(seed, step_error_rate, wrong_answer_rate, formats)
        self.latency_s, self.fail_rate, self.seed = latency_s, fail_rate, seed
        self.name = f"synthetic-teacher(seed={seed},p_step={step_error_rate},p_wrong={wrong_answer_rate})"

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
                return GenResult(self.teacher.reason(s["qid"], s["options"], s.get("answer"), steps, false).text)
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
