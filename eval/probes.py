"""Probes of the vCoT paper (arXiv 2511.12868): what a model's answer depends on.

Each probe changes the model's INPUT for every question and the evaluation is run again; the
report gives the change of accuracy against the plain run:

- ``shuffle_text``: the words of the question and of every option are put in a random order
  (the option order and the gold index stay). A model that reads the video answers about as
  well; one that leans on language priors drops.
- ``shuffle_frames``: the sampled frames are shown in a random order (never the original one
  when there are 2+ frames). Temporal questions (before/after, when) should suffer.
- ``vcot``: vCoT infill switched: the reasoning record's transitional captions (``vcot``: one
  per gap between consecutive frames) are interleaved with the frames, or removed when the plain
  run already shows them (a model trained with ``task.use_vcot``).

Randomness is seeded by (seed, qid), so a question gets the same shuffle on any rank and in any
batch: 1-rank and 2-rank evaluations agree.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

PROBES = ("shuffle_text", "shuffle_frames", "vcot")


def _rng(kind: str, seed: int, qid: str) -> random.Random:
    return random.Random(f"{kind}:{seed}:{qid}")


def shuffle_words(text: str, rng: random.Random) -> str:
    """The words of ``text`` (split on whitespace) in a random order."""
    words = str(text).split()
    rng.shuffle(words)
    return " ".join(words)


def shuffle_text(question: str, options: list[str], qid: str, seed: int = 0) -> tuple[str, list[str]]:
    """Question and options with their words shuffled (each text on its own, option order kept)."""
    rng = _rng("text", seed, qid)
    return shuffle_words(question, rng), [shuffle_words(o, rng) for o in options]


def frame_permutation(num_frames: int, qid: str, seed: int = 0) -> list[int]:
    """A random order of ``num_frames`` frame indices, never the identity when num_frames >= 2."""
    order = list(range(num_frames))
    if num_frames < 2:
        return order
    rng = _rng("frames", seed, qid)
    while order == sorted(order):
        rng.shuffle(order)
    return order


def vcot_captions(sample: dict) -> list[str] | None:
    """The question's transitional captions (T - 1 of them) from its joined reasoning record, or None.

    Raises:
        ValueError: the record has captions, but not one per frame gap (names the qid).
    """
    rec = sample.get("reasoning")
    caps = rec.get("vcot") if isinstance(rec, dict) else None
    if not caps:
        return None
    n_frames = int(sample["frames"].shape[0])
    if len(caps) != n_frames - 1:
        raise ValueError(f"{sample['qid']}: reasoning field 'vcot' has {len(caps)} captions; {n_frames} frames "
                         f"need {n_frames - 1} (generate them with the same number of frames as --frames)")
    return [str(c) for c in caps]


@dataclass
class ModelInput:
    """What the model is shown for a batch of questions (after a probe, if any)."""

    pixel_values: torch.Tensor
    """uint8 [B, T, 3, H, W]."""
    questions: list[str]
    options: list[list[str]]
    captions: list[list[str] | None] | None
    """Per question None or T - 1 captions; None = no captions at all."""
    notes: list[dict]
    """Per question: what the probe changed (shown text, frame order, captions used)."""


def model_input(batch: list[dict], probe: str | None = None, use_vcot: bool = False, seed: int = 0) -> ModelInput:
    """Build the model input of a batch of question samples (contract 3), with a probe applied.

    Args:
        batch: question samples, frames uint8 [T, 3, H, W] of one size.
        probe: None (plain) or one of :data:`PROBES`.
        use_vcot: the plain run shows vCoT captions (the model was trained with them); the
            ``vcot`` probe flips this.
        seed: seed of the shuffles.

    Returns:
        The :class:`ModelInput`.
    """
    if probe is not None and probe not in PROBES:
        raise ValueError(f"unknown probe {probe!r}; known: {', '.join(PROBES)}")
    with_captions = use_vcot != (probe == "vcot")
    frames, questions, options, captions, notes = [], [], [], [], []
    for s in batch:
        q, opts, f, note = s["question"], list(s["options"]), s["frames"], {}
        if probe == "shuffle_text":
            q, opts = shuffle_text(q, opts, s["qid"], seed)
            note = {"shown_question": q, "shown_options": opts}
        elif probe == "shuffle_frames":
            order = frame_permutation(int(f.shape[0]), s["qid"], seed)
            f = f[order]
            note = {"frame_order": order}
        caps = vcot_captions(s) if with_captions else None
        if with_captions:
            note["captions"] = caps
        frames.append(f)
        questions.append(q)
        options.append(opts)
        captions.append(caps)
        notes.append(note)
    try:
        pixel_values = torch.stack(frames)
    except RuntimeError as e:
        raise ValueError(f"frames of different sizes in one batch ({[s['qid'] for s in batch]}): {e}") from None
    return ModelInput(pixel_values, questions, options, captions if with_captions else None, notes)
