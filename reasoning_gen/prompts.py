"""Versioned prompts for the teacher MLLM.

Every record stores the version of the prompt that produced it, so texts written with an old
wording are never mixed up with new ones: change a template -> bump its version.

- ReasVQA (arXiv 2501.13536): the frames, the question and lettered options; the teacher
  reasons step by step about what the frames show and then names its choice.
- ReasVQA, text only: the same question for a text-only LLM that reads the video's shot
  descriptions instead of frames (as caption-then-LLM pipelines do); it ends with
  ``Answer: (X)``.
- vCoT (arXiv 2511.12868): for every two consecutive frames, first what they have in common,
  then (given that) the event that bridges them; the bridging sentences are the transitional
  captions interleaved with the frames later.
- Rephrase: an optional pass that shortens a caption to one plain sentence.
- Refine (``llm`` strategy): rewrite a reasoning without its conclusion.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from reasoning_gen.answers import LETTERS

REASVQA_VERSION = "reasvqa-v1"
REASVQA_TEXT_VERSION = "reasvqa-text-v1"
VCOT_VERSION = "vcot-v1"
REPHRASE_VERSION = "rephrase-v1"
REFINE_LLM_VERSION = "refine-llm-v1"

REASVQA_SYSTEM = "You are a careful assistant that answers questions about videos."

REASVQA_TEMPLATE = (
    "The images are {num_frames} frames sampled uniformly from a video, in temporal order.\n"
    "Question: {question}\n"
    "Options:\n{options}\n"
    "Think step by step. First describe what happens in the frames that matters for the question: "
    "the people and objects, their actions, and the order in which things happen. Then reason "
    "from these observations to the option that answers the question. End with one line of the "
    "form \"Answer: X\" where X is the letter of your choice."
)

REASVQA_TEXT_SYSTEM = "You are a careful assistant that answers questions about videos from their descriptions."

# For a text-only teacher: the video arrives as a description (e.g. "Shot 1: white circle in the top right.
# Shot 2: ..."), one line per shot, in temporal order.
REASVQA_TEXT_TEMPLATE = (
    "A video is described shot by shot, in temporal order:\n{description}\n"
    "Question: {question}\n"
    "Options:\n{options}\n"
    "Think step by step in a few short sentences: say which shots matter for the question and what "
    "they show, then reason from them to the option that answers the question. End with one line of "
    "the form \"Answer: (X)\" where X is the letter of your choice."
)

VCOT_COMMON_TEMPLATE = (
    "The two images are consecutive frames of a video (frame {i} and frame {j} of {num_frames}).\n"
    "List what the two frames have in common: the setting, the people and objects that appear "
    "in both, and their attributes. Answer in one or two short sentences."
)

VCOT_BRIDGE_TEMPLATE = (
    "The two images are consecutive frames of a video (frame {i} and frame {j} of {num_frames}).\n"
    "What they have in common: {common}\n"
    "Given this, describe in one sentence the event that most likely happened between the "
    "first frame and the second frame, i.e. what changed and how."
)

REPHRASE_TEMPLATE = (
    "Rewrite the following description of a video moment as one short, plain sentence "
    "(at most 20 words), keeping every concrete detail and adding nothing:\n{caption}"
)

# The ``llm`` refinement strategy (ReasVQA's open question 1: refine with a model, not rules).
REFINE_LLM_TEMPLATE = (
    "Below is a step-by-step reasoning about a multiple-choice question on a video.\n"
    "Question: {question}\n"
    "Options:\n{options}\n"
    "Reasoning:\n{reasoning}\n\n"
    "Rewrite the reasoning so that it keeps every observation about the video and every reasoning "
    "step, but no longer states, names or hints at which option is the answer: drop the final "
    "answer, the option letters and any sentence that concludes. Reply with the rewritten "
    "reasoning only."
)


def format_options(options: list[str]) -> str:
    """``"(A) first\\n(B) second ..."``."""
    return "\n".join(f"({LETTERS[i]}) {opt}" for i, opt in enumerate(options))


@dataclass(frozen=True)
class Prompt:
    """One request's text: the instruction, an optional system message, what task it is."""

    text: str
    task: str
    """``reasvqa``, ``vcot_common``, ``vcot_bridge``, ``rephrase`` or ``refine_llm`` (the synthetic teacher
    reads it)."""
    system: str | None = None


def reasvqa_prompt(question: str, options: list[str], num_frames: int) -> Prompt:
    return Prompt(REASVQA_TEMPLATE.format(num_frames=num_frames, question=question.strip(),
                                          options=format_options(options)), "reasvqa", REASVQA_SYSTEM)


def format_description(description: str) -> str:
    """One shot per line: ``"Shot 1: ... Shot 2: ..."`` -> ``"Shot 1: ...\nShot 2: ..."`` (other texts
    are only stripped of repeated whitespace)."""
    text = " ".join(description.split())
    return re.sub(r"\s+(?=Shot \d+:)", "\n", text)


def reasvqa_text_prompt(question: str, options: list[str], description: str) -> Prompt:
    """The ReasVQA question for a text-only teacher: the video's description replaces the frames.

    Args:
        question, options: as for :func:`reasvqa_prompt`.
        description: what the video shows, e.g. the shot captions of
            :func:`data_shards.synth.make.shot_caption` (one shot per line in the prompt).
    """
    return Prompt(REASVQA_TEXT_TEMPLATE.format(description=format_description(description),
                                               question=question.strip(), options=format_options(options)),
                  "reasvqa", REASVQA_TEXT_SYSTEM)


def vcot_common_prompt(i: int, num_frames: int) -> Prompt:
    """For the pair (frame ``i``, frame ``i + 1``), 0-based; the text counts frames from 1."""
    return Prompt(VCOT_COMMON_TEMPLATE.format(i=i + 1, j=i + 2, num_frames=num_frames), "vcot_common")


def vcot_bridge_prompt(i: int, num_frames: int, common: str) -> Prompt:
    return Prompt(VCOT_BRIDGE_TEMPLATE.format(i=i + 1, j=i + 2, num_frames=num_frames,
                                              common=" ".join(common.split())), "vcot_bridge")


def rephrase_prompt(caption: str) -> Prompt:
    return Prompt(REPHRASE_TEMPLATE.format(caption=" ".join(caption.split())), "rephrase")


def refine_llm_prompt(raw: str, question: str, options: list[str]) -> Prompt:
    return Prompt(REFINE_LLM_TEMPLATE.format(question=question.strip(), options=format_options(options),
                                             reasoning=raw.strip()), "refine_llm")


def prompt_version(kind: str, rephrase: bool = False) -> str:
    """The version string stored in records: ``reasvqa-v1``, ``reasvqa-text-v1``, ``vcot-v1`` or
    ``vcot-v1+rephrase-v1``."""
    versions = {"reasvqa": REASVQA_VERSION, "reasvqa_text": REASVQA_TEXT_VERSION, "vcot": VCOT_VERSION}
    if kind not in versions:
        raise ValueError(f"unknown prompt {kind!r}; expected one of {sorted(versions)}")
    return versions[kind] + (f"+{REPHRASE_VERSION}" if rephrase else "")
