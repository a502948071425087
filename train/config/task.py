"""The task section of the config: which training sequences each question yields, and the loss weights.

Plain dataclass (no torch): the sequences themselves are built by :mod:`train.tasks`, the loss by
:mod:`train.loss`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class TaskConfig:
    """Which training sequences are built from each question, and how their loss is weighted."""

    mode: Literal["qa", "mtl", "stl", "caption"] = "mtl"
    """"qa": QA task only; "mtl": QA + reasoning task (ReasVQA multi-task); "stl": one target =
    reasoning then answer (single-task baseline); "caption": stage-1 alignment, frames -> caption
    of the video-caption entries (qtype "caption"; QA entries are skipped, and QA modes skip captions)."""
    alpha: float = 1.0
    """Weight of the mean QA loss (task-1 tokens; the STL target counts as task 1)."""
    beta: float = 0.5
    """Weight of the mean reasoning loss (task-2 tokens). The paper's sweet spot: 0.5-0.8."""
    reasoning_source: Literal["none", "raw", "refined", "gt"] = "refined"
    """Reasoning text: "refined" / "raw" from the joined reasoning record, "gt" = the synthetic
    dataset's extra.reasoning (ablation), "none" = no reasoning task at all."""
    answer_format: Literal["letter", "letter_text"] = "letter"
    """QA target: "letter" -> "(B)", "letter_text" -> "(B) red"."""
    max_prompt_len: int = 1024
    """Maximum prompt tokens (placeholders included); longer questions are cut, counted."""
    max_target_len: int = 256
    """Maximum target tokens (eos included); longer reasoning is cut at its end, counted; an STL target
    loses the tail of its reasoning, never its answer line; an answer that alone does not fit is an error."""
    reasoning_instruction: str | None = None
    """Instruction of the reasoning task; None = ``train.prompts.INSTRUCTIONS["reasoning"]``."""
    use_vcot: bool = False
    """Interleave the reasoning record's vCoT transitional captions between the frames."""
    caption_instruction: str | None = None
    """Instruction of the caption task; None = ``train.prompts.CAPTION_INSTRUCTION``."""

    def problems(self) -> list[tuple[str, str]]:
        """(field, message) for every bad value (the choices are checked by their Literal types)."""
        out = []
        for name in ("alpha", "beta"):
            if getattr(self, name) < 0:
                out.append((name, f"must be >= 0, got {getattr(self, name)}"))
        if self.max_prompt_len < 8:
            out.append(("max_prompt_len", f"must be >= 8, got {self.max_prompt_len}"))
        if self.max_target_len < 2:
            out.append(("max_target_len", f"must be >= 2, got {self.max_target_len}"))
        return out
