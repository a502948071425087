"""The frame budget on the trainer's side: the model's layout for the loader, prompts that fit, refusals.

The loader chooses each clip's frame count before decoding (:mod:`data_shards.stream.budget`: the caps,
the fps cap from the clip's length, the visual-token budget, the model's temporal group). It does not
see the text, so the prompt's own length is checked here, per question sample, after
:func:`train.tasks.build_examples`:

* the sample keeps the largest allowed count, at most its clip's, for which the prompts of all its
  examples fit ``task.max_prompt_len`` (the question cut as the collate cuts it; the family measures
  its own prompt, ``VideoModel.prompt_fits``); a smaller count keeps the decoded frames nearest the
  middles of equal segments (``data_shards.stream.budget.subsample``);
* a sample that cannot fit even ``min_frames`` frames is refused: skipped, counted as ``over_budget``
  in the loader's stats, named (qid, video, shard, key) in a rate-limited warning
  (``VideoQALoader.refuse``). The run goes on;
* a family that takes one frame count per micro-batch (LLaVA-OneVision,
  ``VideoModel.same_frames_per_batch``) gets every clip of the micro-batch trimmed to the smallest
  count among them, before any prompt is built.

The prompt placeholders are then built by the collate from each clip's own frame count, so text and
visual tokens match after every cut. Off (no budget in ``data``), nothing here runs.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from data_shards.common.atomic import atomic_write_text
from data_shards.stream.budget import FrameBudget, subsample
from train.config.sections import TrainConfig
from train.tasks import Example, build_examples

log = logging.getLogger(__name__)


def run_budget(cfg: TrainConfig, model: Any) -> FrameBudget | None:
    """The run's :class:`FrameBudget` with the model's layout (None when ``data`` sets no budget).

    The token cap is the tightest of ``data.max_visual_tokens``, ``data.max_visual_tokens_per_row`` (one
    clip never takes more than a packed row holds) and ``task.max_prompt_len`` (nor more than a prompt).

    Raises:
        ValueError: naming the data field, when no clip can meet the budget (e.g. ``min_frames`` takes more
            tokens than ``max_visual_tokens``), or the model needs ``data.frame_size`` to count its tokens.
    """
    data = cfg.data
    if not data.budget_on:
        return None
    size = tuple(data.frame_size) if data.frame_size is not None else None
    try:
        layout = model.frame_layout(1, size)
    except ValueError as e:
        raise ValueError(f"data.frame_size: the frame budget counts the model's visual tokens per frame: {e}") from None
    caps = [v for v in (data.max_visual_tokens_per_row, cfg.task.max_prompt_len) if v is not None]
    budget = data.frame_budget(layout.temporal_stride, layout.tokens_per_group, layout.extra_tokens, min(caps))
    for name, problem in budget.problems():
        raise ValueError(f"data.{name} {problem} (caps: data.max_visual_tokens {data.max_visual_tokens}, "
                         f"data.max_visual_tokens_per_row {data.max_visual_tokens_per_row}, task.max_prompt_len "
                         f"{cfg.task.max_prompt_len})")
    return budget


def sample_name(sample: dict) -> str:
    """How a refused question sample is named: qid, video, shard and key."""
    return (f"{sample.get('qid', '?')} (video {sample.get('video_id', '?')}, {sample.get('__url__', '?')}: "
            f"sample {sample.get('__key__', '?')})")


class BudgetFit:
    """Examples of question samples under the frame budget (see the module doc).

    Args:
        model: the ``VideoModel`` (``prompt_fits``, ``same_frames_per_batch``).
        budget: from :func:`run_budget`.
        max_prompt_len: ``task.max_prompt_len``.
        build: question sample -> examples (:func:`train.tasks.build_examples` with the task).
        refuse: called with the message of each refused sample (``VideoQALoader.refuse``).

    Attributes:
        frame_counts: Counter of the frame counts of the clips that were given to the collate (one per
            question sample with video).
        n_refused, n_trimmed: samples refused; clips given fewer frames than decoded (prompt fit, or the
            one-count rule).
    """

    def __init__(self, model: Any, budget: FrameBudget, max_prompt_len: int,
                 build: Callable[[dict], list[Example]], refuse: Callable[[str], None]):
        self.model, self.budget, self.max_prompt_len = model, budget, max_prompt_len
        self.build, self.refuse = build, refuse
        self.frame_counts: collections.Counter[int] = collections.Counter()
        self.n_refused = self.n_trimmed = 0

    def examples(self, samples: list[dict]) -> list[Example]:
        """The examples of one loader batch, every clip at a frame count its prompts fit."""
        groups = []
        for sample in samples:
            exs = self.fit_sample(sample, self.build(sample))
            if exs:
                groups.append(exs)
        if getattr(self.model, "same_frames_per_batch", False):
            groups = self.one_count(groups)
        for exs in groups:
            clip = next((ex.frames for ex in exs if ex.frames is not None), None)
            if clip is not None:
                self.frame_counts[int(clip.shape[0])] += 1
        return [ex for exs in groups for ex in exs]

    def fits(self, examples: list[Example], num_frames: int) -> bool:
        """Whether every video example's prompt fits with its clip at ``num_frames`` frames."""
        return all(self.model.prompt_fits(ex, num_frames, self.max_prompt_len) for ex in examples
                   if ex.frames is not None)

    def fit_sample(self, sample: dict, examples: list[Example]) -> list[Example]:
        """The examples of one question sample with its clip at the largest count whose prompts fit;
        [] (and :attr:`refuse` called) when even ``min_frames`` do not fit."""
        clip = next((ex.frames for ex in examples if ex.frames is not None), None)
        if clip is None:
            return examples
        have = int(clip.shape[0])
        if self.fits(examples, have):
            return examples
        counts = [n for n in self.budget.counts(have) if n < have]
        lo, hi, best = 0, len(counts) - 1, -1  # fits is monotone in the count: binary search
        while lo <= hi:
            mid = (lo + hi) // 2
            if self.fits(examples, counts[mid]):
                best, lo = mid, mid + 1
            else:
                hi = mid - 1
        if best < 0:
            self.n_refused += 1
            lowest = min(self.budget.lowest, have)
            self.refuse(f"{sample_name(sample)}: its prompt cannot hold min_frames {lowest} frame(s) "
                        f"({self.budget.visual_tokens(lowest)} visual tokens) within task.max_prompt_len "
                        f"{self.max_prompt_len} (question, options and instruction included); refused by the frame "
                        "budget (raise task.max_prompt_len or lower data.min_frames)")
            return []
        return self.trim(examples, counts[best])

    def trim(self, examples: list[Example], num_frames: int) -> list[Example]:
        """``examples`` with their (shared) clip cut to ``num_frames`` frames (segment middles)."""
        clip = next(ex.frames for ex in examples if ex.frames is not None)
        if int(clip.shape[0]) == num_frames:
            return examples
        self.n_trimmed += 1
        short = clip[subsample(int(clip.shape[0]), num_frames)]
        return [dataclasses.replace(ex, frames=short) if ex.frames is not None else ex for ex in examples]

    def one_count(self, groups: list[list[Example]]) -> list[list[Example]]:
        """Every clip of the micro-batch trimmed to the smallest count among them (LLaVA-OneVision). A smaller
        count always still fits: prompts only get shorter with fewer frames."""
        counts = [int(ex.frames.shape[0]) for exs in groups for ex in exs if ex.frames is not None]
        if len(set(counts)) <= 1:
            return groups
        least = min(counts)
        return [self.trim(exs, least) if any(ex.frames is not None for ex in exs) else exs for exs in groups]

    def summary(self) -> dict[str, Any]:
        """What the budget did in this process: frame counts trained, refused and trimmed samples."""
        return {"frame_counts": {str(k): v for k, v in sorted(self.frame_counts.items())},
                "refused": self.n_refused, "trimmed": self.n_trimmed, "budget": dataclasses.asdict(self.budget)}


def for_run(cfg: TrainConfig, model: Any, loader: Any) -> BudgetFit | None:
    """The trainer's :class:`BudgetFit` (None without a budget); refusals go to ``loader.refuse``."""
    budget = loader.frame_budget
    if budget is None:
        return None
    return BudgetFit(model, budget, cfg.task.max_prompt_len, lambda s: build_examples(s, cfg.task), loader.refuse)


def write_summary(fit: BudgetFit, loader: Any, path: Path) -> None:
    """``frame_budget_rank{R}.json``-style report: :meth:`BudgetFit.summary`, the loader's stats and the
    refused samples' messages."""
    path.parent.mkdir(parents=True, exist_ok=True)  # a node without the shared run folder
    out = {**fit.summary(), "loader_stats": loader.stats(), "refused_samples": loader.refused()}
    atomic_write_text(path, json.dumps(out, indent=1) + "\n")

