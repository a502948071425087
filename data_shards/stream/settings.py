"""The loader's settings (a plain dataclass: importing it loads neither torch nor webdataset)."""

from __future__ import annotations

from dataclasses import dataclass

from data_shards.stream.budget import FrameBudget

MAX_FRAMES = 2048
"""Frames a clip at most (long-video recipes sample hundreds; 100,000 is a typo that decodes gigabytes)."""


@dataclass
class LoaderConfig:
    """What to read and how to batch it; one loader per rank.

    The one definition of the loader's settings: the trainer's ``data`` config section
    (``train.config.DataConfig``) extends this class, so the loader reads the trainer's section as
    it is, and :meth:`problems` checks it for both.
    """

    urls: str | list[str] = ""
    """Shard URLs: a brace pattern (``shards/train-{000000..000031}.tar``; several joined by
    ``::``), or a list of them; local paths or ``pipe:COMMAND`` URLs (e.g. ``pipe:cat x.tar``)."""
    num_frames: int = 8
    """T, frames per video, taken at the middles of T equal segments of the video or its clip."""
    max_visual_tokens: int | None = None
    """Frame budget: visual tokens a clip may take at most (the model's count for its frames, e.g. groups x
    tokens per group + extras); each clip gets the largest frame count within min_frames..max_frames, the
    fps cap and this budget, rounded down to the model's temporal group. None: no token cap. Setting this,
    ``fps`` or ``max_frames`` turns the budget on (docs/TRAINING.md "A frame budget"); off, every clip has
    num_frames frames."""
    fps: float | None = None
    """Frame budget: at most this many frames per second of the clip (its [start, end] window, else the
    stream's length); min_frames wins for clips shorter than min_frames / fps. None: no fps cap."""
    min_frames: int = 1
    """Frame budget: the fewest frames a clip gets (rounded up to the model's temporal group). A sample whose
    prompt cannot hold them is refused: skipped, named in a warning, counted as ``over_budget``."""
    max_frames: int | None = None
    """Frame budget: the most frames a clip gets (rounded down to the model's temporal group); None:
    num_frames."""
    frame_size: tuple[int, int] | None = (224, 224)
    """(height, width) the decoder resizes to; None keeps each video's own size (then videos
    of different sizes cannot be stacked by the consumer)."""
    micro_batch_size: int = 8
    """Question samples per batch (a trainer's micro-batch on each rank)."""
    num_workers: int = 2
    """DataLoader worker processes per rank (0: decode in the main process)."""
    shuffle_shards: bool = True
    """Shuffle the shard list (same permutation on every rank, new for every epoch and pass)."""
    shuffle_buffer: int = 32
    """Videos held in the sample shuffle buffer (raw bytes, before decoding); 0 or 1: no shuffle."""
    resample: bool = False
    """Draw shards with replacement (webdataset ResampledShards) instead of splitting them;
    needs ``epoch_batches``."""
    seed: int = 0
    """Seed of the shard permutation, the shuffle buffer and resampling."""
    epoch_batches: int | None = None
    """Batches every rank yields per epoch (passes over the shards repeat as needed); None: one
    pass over this rank's shards."""
    decode: bool = True
    """Decode frames; False yields question samples with ``frames=None`` (fast inspection)."""
    decode_threads: int | None = None
    """FFmpeg threads per decoder; None: chosen per machine by :func:`auto_decode_threads` (the
    cores this process may use, shared out over this node's decoders: 1 when workers fill them)."""
    log_every_s: float = 30.0
    """At most one warning per skip category and process in this many seconds."""
    prefetch_factor: int = 2
    """Batches each worker prepares ahead."""
    timeout_s: float = 0.0
    """Fail if a worker gives no batch for this long (0: wait forever)."""
    decode_timeout_s: float = 60.0
    """Seconds one video may take to decode (0: no limit). A video that takes longer is skipped, named in a
    warning, counted (``decode_timeout``) and quarantined: later epochs skip it without decoding it again
    (``quarantined``). A hung decoder thread is abandoned, not killed (FFmpeg cannot be interrupted)."""
    quarantine_file: str | None = None
    """Where the quarantined samples are listed (one JSON line each: shard URL, key, reason); None: a
    temporary file for the loader's life (training: ``decode_quarantine.jsonl`` in the run folder, shared by
    the ranks and kept across resumes)."""

    @property
    def budget_on(self) -> bool:
        """Whether frames per clip come from the frame budget (max_visual_tokens, fps or max_frames set)."""
        return self.max_visual_tokens is not None or self.fps is not None or self.max_frames is not None

    @property
    def frame_cap(self) -> int:
        """The most frames a clip gets: max_frames, else num_frames."""
        return self.num_frames if self.max_frames is None else self.max_frames

    def frame_budget(self, group: int = 1, tokens_per_group: int = 1, extra_tokens: int = 0,
                     max_tokens: int | None = None) -> FrameBudget | None:
        """The budget with a model's token layout (None when the budget is off).

        Args:
            group, tokens_per_group, extra_tokens: the model's ``FrameLayout`` (temporal group, visual tokens
                per group and per clip); the defaults count one token per frame (the loader alone).
            max_tokens: a tighter token cap than ``max_visual_tokens`` (the trainer's: the packed row's
                visual budget, the prompt length).
        """
        if not self.budget_on:
            return None
        caps = [v for v in (self.max_visual_tokens, max_tokens) if v is not None]
        return FrameBudget(min_frames=self.min_frames, max_frames=self.frame_cap, fps=self.fps,
                           max_tokens=min(caps) if caps else None, group=group, tokens_per_group=tokens_per_group,
                           extra_tokens=extra_tokens)

    def problems(self) -> list[tuple[str, str]]:
        """(field, message) for every bad value (shard expansion is checked when the loader is built)."""
        out = []
        if not self.urls:
            out.append(("urls", "no shard URLs given"))
        for name in ("num_frames", "micro_batch_size", "prefetch_factor"):
            if getattr(self, name) < 1:
                out.append((name, f"must be >= 1, got {getattr(self, name)}"))
        if self.num_frames > MAX_FRAMES:
            out.append(("num_frames", f"{self.num_frames} frames a clip is over the limit of {MAX_FRAMES} (decoding "
                                      "them would take minutes and gigabytes before training fails)"))
        if self.frame_size is not None and (len(self.frame_size) != 2 or min(self.frame_size) < 1):
            out.append(("frame_size", f"must be [height, width] > 0, got {self.frame_size}"))
        for name in ("num_workers", "shuffle_buffer", "timeout_s", "log_every_s", "decode_timeout_s"):
            if getattr(self, name) < 0:
                out.append((name, f"must be >= 0, got {getattr(self, name)}"))
        if self.epoch_batches is not None and self.epoch_batches < 1:
            out.append(("epoch_batches", f"must be >= 1 or None, got {self.epoch_batches}"))
        if self.decode_threads is not None and self.decode_threads < 1:
            out.append(("decode_threads", f"must be >= 1 or None, got {self.decode_threads}"))
        return out + self._budget_problems()

    def _budget_problems(self) -> list[tuple[str, str]]:
        out = []
        if self.min_frames < 1:
            out.append(("min_frames", f"must be >= 1, got {self.min_frames}"))
        if self.max_frames is not None and not 1 <= self.max_frames <= MAX_FRAMES:
            out.append(("max_frames", f"must be in 1..{MAX_FRAMES} or None, got {self.max_frames}"))
        if self.max_visual_tokens is not None and self.max_visual_tokens < 1:
            out.append(("max_visual_tokens", f"must be >= 1 or None, got {self.max_visual_tokens}"))
        if self.fps is not None and not self.fps > 0:
            out.append(("fps", f"must be > 0 or None, got {self.fps}"))
        if self.budget_on and self.min_frames > self.frame_cap:
            field = "max_frames" if self.max_frames is not None else "num_frames"
            out.append(("min_frames", f"{self.min_frames} is above {field} {self.frame_cap} (the most frames a clip "
                                      "gets under the frame budget)"))
        if not self.budget_on and self.min_frames != 1:
            out.append(("min_frames", f"{self.min_frames} has no effect without a frame budget: set "
                                      "max_visual_tokens, fps or max_frames too (or leave min_frames at 1)"))
        return out
