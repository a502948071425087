"""The one interface every teacher backend implements: a batch of (frames + text) -> texts.

Backends never raise for a single bad request: each :class:`GenResult` carries either the text
or the error, so that the generation job can retry it and finally record it as failed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from reasoning_gen.prompts import Prompt


@dataclass
class GenRequest:
    """One request to the teacher.

    Attributes:
        prompt: the text (and task / optional system message).
        frames: uint8 [T, 3, H, W] frames in temporal order (T = 2 for a vCoT pair), or None.
        key: a name for logs and errors (the qid, ``qid#pair3`` ...).
        sample: the question sample (qid, options, answer, extra ...). Only the synthetic
            teacher reads it (to write from the ground truth); model backends must not.
        meta: task details, e.g. ``{"pair": 3, "num_frames": 8}`` for vCoT requests.
    """

    prompt: Prompt
    frames: Any = None
    key: str = ""
    sample: dict | None = None
    meta: dict = field(default_factory=dict)


@dataclass
class GenResult:
    """The outcome of one request: ``text`` on success, else ``error``."""

    text: str | None
    error: str | None = None
    attempts: int = 1

    @property
    def ok(self) -> bool:
        return self.error is None and self.text is not None


class BackendUnavailable(RuntimeError):
    """The teacher answers nothing useful at all (a circuit breaker opened): the job must stop,
    not record every remaining question as failed, one retry schedule at a time."""


class Backend:
    """Base class: ``generate`` a batch; ``name`` is the teacher id written to every record."""

    name: str = "backend"
    needs_frames: bool = True
    """False for backends that never look at pixels (the loader can then skip decoding)."""

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        """Answer every request; ``result[i]`` belongs to ``requests[i]``."""
        raise NotImplementedError

    def close(self) -> None:
        """Free the model / connections."""


def _no_empty(results: list[GenResult]) -> list[GenResult]:
    """An empty or whitespace-only reply is a failure, whatever the backend: an "ok" record without text
    would reach training as a question without reasoning, and MTL would silently become QA-only."""
    return [GenResult(None, "empty reply from the teacher (no text)", r.attempts)
            if r.error is None and (r.text is None or not r.text.strip()) else r for r in results]


def call_with_retries(backend: Backend, requests: list[GenRequest], retries: int) -> list[GenResult]:
    """``backend.generate`` and up to ``retries`` more calls for the requests that failed (an empty reply
    is a failure)."""
    results = _no_empty(backend.generate(requests))
    for _ in range(retries):
        bad = [i for i, r in enumerate(results) if not r.ok]
        if not bad:
            break
        again = _no_empty(backend.generate([requests[i] for i in bad]))
        for i, r in zip(bad, again):
            r.attempts += results[i].attempts
            results[i] = r
    return results
