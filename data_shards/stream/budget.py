"""A frame budget: how many frames a clip gets, from its length and a visual-token budget.

Without a budget every clip is decoded to ``data.num_frames`` frames. With one
(:meth:`data_shards.stream.settings.LoaderConfig.budget_on`), each clip gets the largest frame count
``n`` such that

* ``min_frames <= n <= max_frames`` (``max_frames`` None: ``num_frames``);
* ``n <= duration x fps`` when ``fps`` is set (``duration``: the clip window, or the stream's length,
  as the decoder reads it); ``min_frames`` wins over ``fps``: a clip shorter than ``min_frames / fps``
  seconds still gets ``min_frames`` frames, sampled more densely;
* the model's visual tokens for ``n`` frames are at most ``max_tokens``;
* ``n`` is a multiple of the model's temporal group (a projector's temporal stride, a Qwen temporal
  patch), so that no group is padded with repeated frames.

The model's side is three numbers (:class:`FrameBudget` ``group``, ``tokens_per_group``,
``extra_tokens``, the fields of ``train.config.model.FrameLayout``): the loader gets them as a plain
picklable object, so that DataLoader workers (fork or spawn) can choose frame counts before decoding.
A sample whose prompt cannot hold even ``min_frames`` frames is refused by the trainer
(:class:`OverBudget`, counted as ``over_budget`` in the loader's stats).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["FrameBudget", "OverBudget", "subsample"]


class OverBudget(ValueError):
    """A sample that cannot fit even ``min_frames`` frames under the budget or the prompt length.

    The message names the sample (its qid, shard and key) and the numbers that did not fit; the loader
    counts it as ``over_budget`` (``VideoQALoader.refuse``) and the run goes on without it.
    """


@dataclass(frozen=True)
class FrameBudget:
    """The frame budget of a run, with the model's token layout (picklable: it travels to the workers).

    Attributes:
        min_frames, max_frames: bounds of the frame count of a clip.
        fps: at most this many frames per second of the clip (None: no cap).
        max_tokens: visual tokens a clip may take at most (None: no cap).
        group: frames per temporal group of the model (counts are multiples of it).
        tokens_per_group, extra_tokens: the model's visual tokens per group and per clip.
    """

    min_frames: int
    max_frames: int
    fps: float | None = None
    max_tokens: int | None = None
    group: int = 1
    tokens_per_group: int = 1
    extra_tokens: int = 0

    def visual_tokens(self, num_frames: int) -> int:
        """Visual tokens of a clip of ``num_frames`` frames (``FrameLayout.num_visual_tokens``)."""
        return math.ceil(num_frames / self.group) * self.tokens_per_group + self.extra_tokens

    @property
    def lowest(self) -> int:
        """The smallest frame count a clip may get: ``min_frames`` rounded up to a whole group."""
        return -(-self.min_frames // self.group) * self.group

    @property
    def highest(self) -> int:
        """The largest frame count a clip may get: ``max_frames`` rounded down to a whole group, and
        within the token budget."""
        n = self.max_frames // self.group * self.group
        if self.max_tokens is not None:
            n = min(n, (self.max_tokens - self.extra_tokens) // self.tokens_per_group * self.group)
        return n

    def problems(self) -> list[tuple[str, str]]:
        """(field, message) for budgets that no clip can meet (the data section's field names)."""
        out = []
        if self.group < 1 or self.tokens_per_group < 1 or self.extra_tokens < 0:
            out.append(("model", f"bad frame layout: group {self.group}, {self.tokens_per_group} tokens per group, "
                                 f"{self.extra_tokens} extra"))
            return out
        if self.lowest > self.max_frames:
            out.append(("max_frames", f"{self.max_frames} frames hold no whole temporal group of the model at or above "
                                      f"min_frames {self.min_frames} (the model takes frames in groups of "
                                      f"{self.group}): raise max_frames to >= {self.lowest}"))
        elif self.max_tokens is not None and self.visual_tokens(self.lowest) > self.max_tokens:
            out.append(("max_visual_tokens", f"{self.max_tokens} visual tokens cannot hold min_frames "
                        f"{self.min_frames} (rounded to the model's group of {self.group}: {self.lowest} frames take "
                        f"{self.visual_tokens(self.lowest)} tokens; {self.tokens_per_group} per group + "
                        f"{self.extra_tokens}); raise the budget or lower min_frames"))
        return out

    def choose(self, duration_s: float | None, name: str = "?") -> int:
        """Frames for a clip of ``duration_s`` seconds (None or not finite: no fps cap).

        Returns:
            The largest allowed count (see the module doc), a multiple of ``group``.

        Raises:
            OverBudget: naming ``name``, when the budget holds no count at all (:meth:`problems`
                reports that case when the run starts, so a checked budget never raises here).
        """
        hi = self.highest
        if self.fps is not None and duration_s is not None and math.isfinite(duration_s):
            by_fps = math.floor(duration_s * self.fps + 1e-9)
            hi = min(hi, max(by_fps // self.group * self.group, self.lowest))
        if hi < self.lowest:
            raise OverBudget(f"{name}: no frame count fits the frame budget (min_frames {self.min_frames}, max_frames "
                             f"{self.max_frames}, max_visual_tokens {self.max_tokens}, group {self.group})")
        return hi

    def counts(self, up_to: int) -> list[int]:
        """The allowed frame counts up to ``up_to``, increasing (multiples of ``group`` from ``lowest``)."""
        return list(range(self.lowest, up_to + 1, self.group))


def subsample(num_frames: int, keep: int) -> list[int]:
    """Indices of ``keep`` of ``num_frames`` decoded frames, the frame nearest each middle of ``keep`` equal
    segments (the segment-middle sampling of ``frames.segment_times``, applied to the decoded frames)."""
    if not 1 <= keep <= num_frames:
        raise ValueError(f"cannot keep {keep} of {num_frames} frames")
    return [min(num_frames - 1, int((i + 0.5) * num_frames / keep)) for i in range(keep)]
