"""The loader's settings (a plain dataclass: importing it loads neither torch nor webdataset)."""

from __future__ import annotations

from dataclasses import dataclass

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
        return out
