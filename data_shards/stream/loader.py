"""Streaming loader: WebDataset video shards -> decoded frames -> batches of question samples.

Pipeline of one DataLoader worker (webdataset 1.0.2 stages, see :mod:`data_shards.stream.pipeline`)::

    brace-expanded URLs (paths, pipe:...) -> shard source: seeded per-epoch shuffle, split by rank
    then by worker (or ResampledShards) -> tar reader (handler: skip + count) -> shuffle buffer
    (raw samples, before decoding) -> decode T frames with torchcodec (handler: skip + count)
    -> one sample per question (+ reasoning joined by qid) -> lists of batch_size questions
    -> with_epoch(ceil(epoch_batches / workers))

The main process iterates a torch DataLoader over that pipeline and stops after exactly
``epoch_batches`` batches. Because the shard source keeps making new passes over the rank's
shards (or resamples) whenever ``epoch_batches`` is set, a rank with fewer or smaller shards
never runs dry, so every rank yields the same number of batches and no collective waits.
With ``epoch_batches=None`` an epoch is a single pass over the rank's shards: every question
exactly once over all ranks and workers, but ranks may differ in batch count.

Usage::

    loader = build_loader(LoaderConfig(urls="shards/train-{000000..000099}.tar", epoch_batches=500))
    for batch in loader:          # one epoch; iterate again for the next one
        ...                       # batch: list of question samples, frames uint8 [T, 3, H, W]
    print(loader.stats())         # skipped shards / samples by category, videos, questions, ...
"""

from __future__ import annotations

import argparse
import atexit
import functools
import itertools
import json
import logging
import math
import os
import signal
import tempfile
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

import torch
import webdataset as wds
from webdataset.filters import batched
from webdataset.filters import map as wds_map
from webdataset.shardlists import expand_urls as wds_expand

from data_shards.common.distenv import usable_cores, world_info_from_env
from data_shards.common.urls import glob_local, unfinished_writes
from data_shards.reasoning_records import load_reasoning
from data_shards.stream.budget import FrameBudget, OverBudget
from data_shards.stream.pipeline import (
    FAILURES,
    CountDecoded,
    Progress,
    Quarantine,
    SeededShuffle,
    ShardSkips,
    ShardSource,
    SharedCounters,
    SkipHandler,
    TarSamples,
    decode_video,
    expand_questions,
)
from data_shards.stream.settings import LoaderConfig

log = logging.getLogger("data_shards.stream.loader")


def _worker_ignores_preemption(worker_id: int) -> None:
    """A loader worker ignores SIGTERM / SIGUSR1. SLURM signals every process of a job step, workers
    included: a worker that died of it would make the rank fail with "DataLoader worker ... killed by
    signal" instead of saving. The rank handles the signal (it saves, then ends its loader, which stops
    the workers)."""
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)


def expand_urls(urls: str | list[str]) -> list[str]:
    """Brace-expand a pattern (``::`` separates several) or each entry of a list, then glob local ones
    (``/data/shards/nextqa_train-*.tar``: the shards the writer made, however many ``--max-size`` gave),
    sorted. A glob that matches no file is kept as is, so that it is reported as missing."""
    items = [urls] if isinstance(urls, str) else list(urls)
    out: list[str] = []
    for item in items:
        out.extend(f for u in wds_expand(item) if u for f in glob_local(u))
    return out


def resolve_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """Rank and world size: the arguments, else launcher variables, else torch.distributed, else (0, 1)."""
    if rank is not None or world_size is not None:
        if rank is None or world_size is None:
            raise ValueError(f"give both rank and world_size or neither (got rank={rank}, world_size={world_size})")
    else:
        info = world_info_from_env()
        if info.launcher != "none":
            rank, world_size = info.rank, info.world_size
        elif torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
        else:
            rank, world_size = 0, 1
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, world size {world_size})")
    return rank, world_size


def auto_decode_threads(num_workers: int, local_ranks: int | None = None, cores: int | None = None) -> int:
    """FFmpeg threads per decoder for this machine: its free cores shared out over the node's decoders.

    Every rank on the node runs ``max(num_workers, 1)`` decoders and a main process that needs
    about one core (training), so each decoder gets ``(cores - local_ranks) // decoders`` threads,
    at least 1. Measured on 2 cores (docs/BENCHMARKS.md "Decoder threads"): a worker per core with
    one thread each beats fewer workers with more threads, so threads only go up when cores are
    left over after every worker has one.

    Args:
        num_workers: DataLoader workers per rank.
        local_ranks: ranks on this node (default: ``LOCAL_WORLD_SIZE`` from the launcher, else 1).
        cores: usable cores (default: this process's CPU affinity).
    """
    cores = cores or usable_cores()
    local = local_ranks or int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, (cores - local) // (max(num_workers, 1) * local))


def _identity(batch):
    return batch


def _remove_own_file(path: str, owner_pid: int) -> None:
    """atexit: remove a temporary file, in the process that made it only (forked workers inherit atexit)."""
    if os.getpid() == owner_pid:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


class VideoQALoader:
    """Iterable over batches (``list[dict]`` question samples); one ``for`` loop = one epoch.

    Attributes:
        rank, world_size: this loader's place in the job.
        decode_threads: FFmpeg threads per decoder (the config's, or chosen for this machine).
        urls: all expanded shard URLs (before the split).
        num_batches: batches per epoch, or None for one pass (unknown in advance).
        frame_budget: the frame budget the clips are decoded under (None: ``cfg.num_frames`` each).
    """

    REFUSED_KEPT = 1000
    """Refused samples :meth:`refused` names at most (the count in ``stats()`` has them all)."""

    def __init__(self, cfg: LoaderConfig, urls: list[str], rank: int, world_size: int,
                 reasoning: dict[str, dict] | None, frame_budget: FrameBudget | None = None):
        self.cfg, self.urls, self.rank, self.world_size = cfg, urls, rank, world_size
        self.frame_budget = frame_budget
        self._refused: list[str] = []
        self.decode_threads = cfg.decode_threads or auto_decode_threads(cfg.num_workers)
        self.num_batches = cfg.epoch_batches
        self.counters = SharedCounters(cfg.num_workers)
        self._has_reasoning = reasoning is not None
        self._epoch = 0
        self.shard_skips = ShardSkips(cfg.num_workers, urls)
        self.handler = handler = SkipHandler(self.counters, cfg.log_every_s, self.shard_skips)
        progress = Progress()
        repeat = cfg.epoch_batches is not None
        self.source = ShardSource(urls, rank, world_size, seed=cfg.seed, shuffle=cfg.shuffle_shards, repeat=repeat,
                                  resample=cfg.resample, counters=self.counters, progress=progress)
        size = tuple(cfg.frame_size) if cfg.frame_size is not None else None

        # Stages are objects and partials of module-level functions, not closures, so that the
        # pipeline also pickles for workers started with "spawn".
        if cfg.quarantine_file is None:  # made in the main process, so every worker appends to the same file
            fd, path = tempfile.mkstemp(prefix="decode_quarantine_", suffix=".jsonl")
            os.close(fd)
            atexit.register(_remove_own_file, path, os.getpid())
        self.quarantine = Quarantine(cfg.quarantine_file or path)
        frames_per_clip = frame_budget if frame_budget is not None else cfg.num_frames
        decode = functools.partial(decode_video, num_frames=frames_per_clip, size=size, decode=cfg.decode,
                                   num_threads=self.decode_threads, counters=self.counters,
                                   timeout_s=cfg.decode_timeout_s, quarantine=self.quarantine)
        stages: list[Any] = [self.source, TarSamples(handler, progress)]
        if cfg.shuffle_buffer > 1:
            stages.append(SeededShuffle(cfg.shuffle_buffer, self.source))
        stages += [wds_map(CountDecoded(decode, progress), handler=handler),
                   functools.partial(expand_questions, reasoning=reasoning),
                   batched(cfg.micro_batch_size, collation_fn=None, partial=not repeat)]
        self.dataset = wds.DataPipeline(*stages)
        if repeat:
            # with_epoch counts what ONE worker yields; the main loop cuts the merged stream at
            # exactly epoch_batches, so each worker needs ceil(epoch_batches / workers).
            self.dataset = self.dataset.with_epoch(nbatches=math.ceil(cfg.epoch_batches / max(cfg.num_workers, 1)))

    @property
    def epoch(self) -> int:
        """The epoch the next ``for`` loop will run (0-based)."""
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch of the next iteration (e.g. when resuming); it seeds the shard order."""
        self._epoch = int(epoch)

    def __len__(self) -> int:
        if self.num_batches is None:
            raise TypeError("a one-pass loader (epoch_batches=None) has no length known in advance")
        return self.num_batches

    def __iter__(self) -> Iterator[list[dict]]:
        cfg = self.cfg
        epoch = self._epoch
        self._epoch += 1
        self.handler.new_pass()  # (workers copy the handler when they start: each pass starts afresh)
        self.source.epoch = epoch  # workers copy the pipeline (and this value) when they start
        kwargs: dict[str, Any] = {}
        if cfg.num_workers > 0:
            kwargs = {"prefetch_factor": cfg.prefetch_factor, "timeout": cfg.timeout_s,
                      "worker_init_fn": _worker_ignores_preemption}
        loader = torch.utils.data.DataLoader(self.dataset, batch_size=None, num_workers=cfg.num_workers,
                                             collate_fn=_identity, **kwargs)
        iterator = iter(loader)
        yielded = 0
        try:
            for batch in iterator:
                self._count(batch)
                yield batch
                yielded += 1
                if self.num_batches is not None and yielded >= self.num_batches:
                    break
        finally:
            del iterator  # stops the workers now, not at garbage collection
        if self.num_batches is not None and yielded < self.num_batches:
            raise RuntimeError(f"rank {self.rank}: epoch {epoch} ended after {yielded} of {self.num_batches} "
                               f"batches (stats: {self.stats()})")
        self.counters.add("epochs")
        self._report(epoch, yielded)

    def _count(self, batch: list[dict]) -> None:
        self.counters.add("batches")
        self.counters.add("questions", len(batch))
        if self._has_reasoning:
            joined = sum(s["reasoning"] is not None for s in batch)
            self.counters.add("reasoning_joined", joined)
            self.counters.add("reasoning_missing", len(batch) - joined)

    def _report(self, epoch: int, batches: int) -> None:
        stats = self.stats()
        skipped = {k: stats[k] for k in FAILURES if stats[k]}
        if skipped:
            named = self.skipped_shards()  # every one, whatever the rate limit of the skip warnings let through
            log.warning("rank %d epoch %d: %d batches; skipped so far: %s%s", self.rank, epoch, batches,
                        ", ".join(f"{v} {k}" for k, v in skipped.items()),
                        "; shards skipped: " + ", ".join(f"{u} ({n}x)" for u, n in named.items()) if named else "")

    def refuse(self, message: str) -> None:
        """Skip a question sample the consumer cannot use under the frame budget (its prompt cannot hold
        ``min_frames`` frames): counted as ``over_budget`` in :meth:`stats`, warned about (rate-limited as
        every skip, ``log_every_s``) and listed by :meth:`refused`. ``message`` names the sample (qid, shard,
        key) and what did not fit."""
        if len(self._refused) < self.REFUSED_KEPT:
            self._refused.append(message)
        self.handler(OverBudget(message))

    def refused(self) -> list[str]:
        """The messages of the samples refused so far by :meth:`refuse` in this process (the first
        :data:`REFUSED_KEPT`)."""
        return list(self._refused)

    def quarantined(self) -> list[tuple[str, str]]:
        """(shard URL, sample key) of every video quarantined after a decode timeout (all ranks that share
        ``quarantine_file``; this loader's own ones otherwise)."""
        return self.quarantine.entries()

    def skipped_shards(self) -> dict[str, int]:
        """{shard URL: times skipped whole (missing or a broken tar)}, cumulative over epochs."""
        return self.shard_skips.named()

    def stats(self) -> dict[str, int]:
        """Counters summed over the main process and all workers, cumulative over epochs.

        Keys: missing_shard, corrupt_tar, corrupt_video, bad_record, incomplete_sample, decode_timeout,
        quarantined, over_budget (skips),
        shards, videos (decoded), questions, batches, epochs (yielded), reasoning_joined,
        reasoning_missing.
        """
        return self.counters.totals()


def build_loader(cfg: LoaderConfig, rank: int | None = None, world_size: int | None = None,
                 reasoning: dict[str, dict] | None = None, frame_budget: FrameBudget | None = None) -> VideoQALoader:
    """Build this rank's loader (contract 3).

    Args:
        cfg: what to read and how.
        rank, world_size: this process's place; None: from the launcher's environment
            (:func:`data_shards.common.distenv.world_info_from_env`), else torch.distributed, else 0 of 1.
        reasoning: reasoning records by qid (``data_shards.reasoning_records.load_reasoning``); each
            question sample gets its record under "reasoning" (None when absent).
        frame_budget: the frame budget with the model's token layout (``cfg.frame_budget(...)``); None
            with the budget on in ``cfg``: one visual token per frame is assumed (the loader alone). With
            the budget off it must be None.

    Returns:
        An iterable over batches (``list[dict]`` of question samples, frames uint8
        ``[T, 3, H, W]``) with ``.stats()``.

    Raises:
        ValueError: no URLs, bad sizes, resampling without ``epoch_batches``, or fewer shards
            than ``num_workers * world_size`` (some worker would get none).
    """
    rank, world_size = resolve_world(rank, world_size)
    urls = expand_urls(cfg.urls)
    if not urls:
        raise ValueError(f"LoaderConfig.urls {cfg.urls!r} expands to no shard URL")
    for problem in unfinished_writes(urls)[:1]:
        raise ValueError(problem)
    for name, problem in cfg.problems():
        raise ValueError(f"LoaderConfig.{name} {problem}")
    if cfg.resample and cfg.epoch_batches is None:
        raise ValueError("LoaderConfig.resample=True draws shards forever: set epoch_batches")
    if frame_budget is not None and not cfg.budget_on:
        raise ValueError("build_loader got a frame_budget but the config has none (set LoaderConfig.max_visual_tokens, "
                         "fps or max_frames)")
    if cfg.budget_on and frame_budget is None:
        frame_budget = cfg.frame_budget()
    for name, problem in (frame_budget.problems() if frame_budget is not None else []):
        raise ValueError(f"LoaderConfig.{name} {problem}")
    need = max(cfg.num_workers, 1) * world_size
    if not cfg.resample and len(urls) < need:
        raise ValueError(f"{len(urls)} shard(s) for {world_size} rank(s) x {max(cfg.num_workers, 1)} worker(s): "
                         f"every worker needs at least one shard; write more shards ({need}+), use fewer "
                         f"workers, or set resample=True (urls: {cfg.urls!r})")
    return VideoQALoader(cfg, urls, rank, world_size, reasoning, frame_budget)


def _parse_size(text: str) -> tuple[int, int] | None:
    if text.lower() in ("none", "native"):
        return None
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size must be HxW (e.g. 64x64) or 'native', got {text!r}") from None
    return h, w


def main(argv: list[str] | None = None) -> int:
    """``python -m data_shards load SHARDS``: stream shards and print batches and the final stats."""
    p = argparse.ArgumentParser(prog="python -m data_shards load", description=main.__doc__)
    p.add_argument("shards", help="shard URL pattern, e.g. 'shards/train-{000000..000009}.tar' or 'pipe:cat x.tar'")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--size", type=_parse_size, default=(64, 64), help="HxW, or 'native'")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--max-batches", type=int, default=None, help="stop after this many batches")
    p.add_argument("--epoch-batches", type=int, default=None)
    p.add_argument("--resample", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-decode", action="store_true", help="skip frame decoding")
    p.add_argument("--reasoning", nargs="*", default=None, help="reasoning jsonl files to join by qid")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    reasoning = None
    if args.reasoning:
        reasoning = load_reasoning(args.reasoning)
    cfg = LoaderConfig(urls=args.shards, num_frames=args.frames, frame_size=args.size, micro_batch_size=args.batch_size,
                       num_workers=args.workers, resample=args.resample, seed=args.seed,
                       epoch_batches=args.epoch_batches, decode=not args.no_decode)
    loader = build_loader(cfg, reasoning=reasoning)
    print(f"loader: {len(loader.urls)} shard(s), rank {loader.rank} of {loader.world_size}; "
          f"config {json.dumps(asdict(cfg))}")
    for i, batch in enumerate(itertools.islice(loader, args.max_batches)):
        items = ", ".join(f"{s['qid']} {tuple(s['frames'].shape) if s['frames'] is not None else None}" for s in batch)
        print(f"batch {i}: {len(batch)} question(s): {items}")
    print("stats: " + json.dumps(loader.stats(), sort_keys=True))
    return 0
