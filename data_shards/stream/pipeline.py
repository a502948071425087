"""Stages of the streaming loader (see :mod:`data_shards.stream.loader` for the assembled pipeline).

Everything here runs inside DataLoader worker processes:

- :class:`SharedCounters`: skip / progress counters in a shared-memory table created by the main
  process *before* the workers start, one row per worker (so increments never race) plus one row
  for the main process; the main process sums the rows, which is how ``loader.stats()`` sees what
  happened inside the workers.
- :class:`SkipHandler`: the ``handler=`` given to the tar reader and to the decode map. It sorts
  an exception into a category (missing_shard, corrupt_tar, corrupt_video, bad_record,
  incomplete_sample), counts it, logs at most one line per category every ``log_every_s`` seconds,
  and lets the pipeline go on. Anything it cannot place is re-raised: a bug must not turn into a
  quietly empty epoch.
- :class:`ShardSource`: this (rank, worker)'s shard URLs: one pass, endless passes (each one a new
  seeded permutation, so that a rank with fewer shards never runs dry), or resampling.
- :class:`SeededShuffle`: the sample shuffle buffer with a reproducible per-worker seed.
- :func:`decode_video` and :func:`expand_questions`: one tar sample -> frames -> question samples.
"""

from __future__ import annotations

import json
import logging
import random
import re
import tarfile
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.utils.data
import webdataset as wds
from webdataset.filters import shuffle as wds_shuffle
from webdataset.gopen import Pipe
from webdataset.tariterators import tarfile_samples

from data_shards.schema import SchemaError, validate_record
from data_shards.stream.budget import FrameBudget, OverBudget
from data_shards.stream.frames import DecodeError, DecodeTimeout, decode_frames, decode_frames_within

log = logging.getLogger("data_shards.stream.loader")

FAILURES = ("missing_shard", "corrupt_tar", "corrupt_video", "bad_record", "incomplete_sample", "decode_timeout",
            "quarantined", "over_budget")
"""Skip categories: every skipped shard or sample is counted in exactly one of these (decode_timeout: a video
whose decoding passed ``decode_timeout_s``; quarantined: a later encounter of such a video, not decoded again;
over_budget: a question sample whose prompt cannot hold even ``min_frames`` frames under the frame budget,
refused by the trainer through ``VideoQALoader.refuse``)."""
PROGRESS = ("shards", "videos", "questions", "batches", "epochs", "reasoning_joined", "reasoning_missing")
"""shards: shard URLs handed to the tar reader; videos: videos decoded (workers); questions,
batches, epochs: what the loader yielded (main process); reasoning_*: yielded questions with /
without a joined reasoning record (only counted when reasoning records were given)."""
COUNTERS = FAILURES + PROGRESS


def worker_slot() -> tuple[int, int]:
    """``(worker id, number of workers)`` of the calling DataLoader worker; ``(0, 1)`` in the main process."""
    info = torch.utils.data.get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


class SharedCounters:
    """Integer counters that DataLoader workers write and the main process reads.

    A ``[num_workers + 1, len(names)]`` int64 tensor in shared memory, made before any worker is
    started (workers inherit it through fork, or receive it as a shared-memory handle under
    spawn). Row ``w`` belongs to worker ``w`` and the last row to the main process, so no two
    processes ever write the same cell.
    """

    def __init__(self, num_workers: int, names: tuple[str, ...] = COUNTERS):
        self.names = names
        self._index = {n: i for i, n in enumerate(names)}
        self.table = torch.zeros(max(num_workers, 0) + 1, len(names), dtype=torch.int64).share_memory_()

    def add(self, name: str, n: int = 1) -> None:
        info = torch.utils.data.get_worker_info()
        row = self.table.shape[0] - 1 if info is None else info.id
        self.table[row, self._index[name]] += n

    def totals(self) -> dict[str, int]:
        sums = self.table.sum(dim=0).tolist()
        return {name: int(v) for name, v in zip(self.names, sums)}


SHARD_LEVEL = ("missing_shard", "corrupt_tar")
"""Skips of a whole shard (or the rest of it): counted once per shard and pass, and named per shard."""


class ShardSkips:
    """Per-shard counts of shard-level skips, written by the workers, read by the main process: a
    ``[num_workers + 1, len(urls)]`` int64 tensor in shared memory (as :class:`SharedCounters`)."""

    def __init__(self, num_workers: int, urls: list[str]):
        self.urls = list(urls)
        self._index = {u: i for i, u in enumerate(self.urls)}
        self.table = torch.zeros(max(num_workers, 0) + 1, max(len(urls), 1), dtype=torch.int64).share_memory_()

    def add(self, url: str | None) -> None:
        i = self._index.get(url) if url is not None else None
        if i is None:
            return
        info = torch.utils.data.get_worker_info()
        self.table[self.table.shape[0] - 1 if info is None else info.id, i] += 1

    def named(self) -> dict[str, int]:
        """{shard URL: times skipped} for every shard skipped at least once (cumulative over passes)."""
        sums = self.table.sum(dim=0).tolist()
        return {u: int(n) for u, n in zip(self.urls, sums) if n}


class IncompleteSample(ValueError):
    """A tar sample without its ``.json`` record or without the video member it names."""


class QuarantinedSample(ValueError):
    """A sample whose video timed out in an earlier decode: skipped without decoding it again."""


class Quarantine:
    """Samples whose decoding timed out, shared by the DataLoader workers and kept across epochs: one JSON line
    ``{"url", "key", "reason"}`` per sample in a file that every worker appends to (single small writes in
    append mode) and re-reads when it has grown."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._size = -1
        self._keys: set[tuple[str, str]] = set()

    def _refresh(self) -> None:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            size = 0
        if size == self._size:
            return
        keys = set()
        if size:
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    item = json.loads(line)
                    keys.add((item["url"], item["key"]))
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue  # a line being written by another worker right now: read next time
        self._keys, self._size = keys, size

    def __contains__(self, sample: tuple[str, str]) -> bool:
        self._refresh()
        return sample in self._keys

    def add(self, url: str, key: str, reason: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"url": url, "key": key, "reason": reason}) + "\n")

    def entries(self) -> list[tuple[str, str]]:
        """(shard URL, sample key) of every quarantined sample, in the order they were added."""
        self._refresh()
        return sorted(self._keys)


def _pipe_of(exn: BaseException):
    """The webdataset ``Pipe`` stream attached to an exception's args, if any."""
    return next((a for a in exn.args if isinstance(a, Pipe)), None)


def _url_of(exn: BaseException) -> str | None:
    """webdataset appends the shard URL to ``exn.args``; the last string-like arg is it. Its first report
    of a broken tar carries it only inside the message (``@ <_io.BufferedReader name='PATH'>``)."""
    strings = [a for a in exn.args[1:] if isinstance(a, str)]
    if strings:
        return strings[-1]
    m = re.search(r"name='([^']+)'", str(exn.args[0])) if exn.args else None
    return m.group(1) if m else None


def classify(exn: BaseException) -> tuple[str, str] | None:
    """``(category, message)`` for a skippable exception, None for one that must propagate."""
    first = str(exn.args[0]) if exn.args else type(exn).__name__
    url = _url_of(exn)
    where = f" [{url}]" if url and url not in first else ""
    pipe = _pipe_of(exn)
    if pipe is not None:
        try:  # a failed pipe command (e.g. `cat` of a missing file) may not have exited yet
            status = pipe.proc.wait(timeout=5)
        except Exception:  # noqa: BLE001 - an unfinished pipe is judged by the error itself
            status = None
        if status not in (None, 0, 141):
            return "missing_shard", f"shard command exited with status {status}{where}: {first}"
    if isinstance(exn, FileNotFoundError):
        return "missing_shard", f"shard not found{where}: {exn.filename or first}"
    if isinstance(exn, OSError) and ": exit " in first:
        return "missing_shard", f"shard command failed{where}: {first}"
    if isinstance(exn, DecodeTimeout):
        return "decode_timeout", str(exn)
    if isinstance(exn, QuarantinedSample):
        return "quarantined", first
    if isinstance(exn, OverBudget):
        return "over_budget", first
    if isinstance(exn, DecodeError):
        return "corrupt_video", str(exn)
    if isinstance(exn, IncompleteSample):
        return "incomplete_sample", first
    if isinstance(exn, (SchemaError, json.JSONDecodeError, UnicodeDecodeError)):
        return "bad_record", f"{first}{where}"
    if isinstance(exn, (tarfile.TarError, EOFError, zlib.error)) or (
            isinstance(exn, ValueError) and "duplicate file name in tar" in first):
        return "corrupt_tar", f"{type(exn).__name__}: {first}{where}"
    return None


class SkipHandler:
    """webdataset ``handler=``: count and rate-limit-log a skippable error, re-raise anything else.

    Args:
        counters: where the skip is counted (category name = counter name).
        log_every_s: at most one warning per category per process in this many seconds; the
            next line says how many were not logged in between.
    """

    def __init__(self, counters: SharedCounters, log_every_s: float = 30.0, shards: ShardSkips | None = None):
        self.counters = counters
        self.log_every_s = log_every_s
        self.shards = shards
        self._last: dict[str, float] = {}
        self._unlogged: dict[str, int] = {}
        self._seen: set[tuple[str, str | None]] = set()

    def new_pass(self) -> None:
        """A new pass over the shards: a shard skipped again counts again (workers start each pass afresh)."""
        self._seen.clear()

    def __call__(self, exn: BaseException) -> bool:
        found = classify(exn)
        if found is None:
            raise exn
        category, message = found
        if category in SHARD_LEVEL:  # webdataset may report one broken tar twice: count the shard once
            key = (category, _url_of(exn))
            if key in self._seen:
                return True
            self._seen.add(key)
            if self.shards is not None:
                self.shards.add(key[1])
        self.counters.add(category)
        now = time.monotonic()
        if now - self._last.get(category, -1e18) >= self.log_every_s:
            extra = self._unlogged.pop(category, 0)
            more = f" (+{extra} more since the last {category} report)" if extra else ""
            log.warning("skipped %s: %s%s", category, message, more)
            self._last[category] = now
        else:
            self._unlogged[category] = self._unlogged.get(category, 0) + 1
        return True


class Progress:
    """Per-process tally the shard source reads to notice that its shards give no usable sample.

    ``read`` counts tar samples read, ``good`` / ``bad`` the samples the decode stage turned into
    frames or rejected (corrupt video, bad record). A shuffle buffer sits between the two, so
    decoding lags reading by up to the buffer size; :meth:`stalled_since` allows for that.
    """

    def __init__(self) -> None:
        self.read = self.good = self.bad = 0

    def mark(self) -> tuple[int, int, int]:
        return self.read, self.good, self.bad

    def stalled_since(self, mark: tuple[int, int, int]) -> bool:
        """Nothing usable since ``mark``: no sample decoded, and every sample read since (if any)
        matched by a rejected one, so that the samples still filling the shuffle buffer do not count."""
        read, good, bad = (now - then for now, then in zip(self.mark(), mark))
        return good == 0 and bad >= read


class CountDecoded:
    """The decode stage, counting its outcomes into ``progress`` (exceptions go on to the handler)."""

    def __init__(self, fn: Callable[[dict[str, Any]], dict[str, Any]], progress: Progress):
        self.fn, self.progress = fn, progress

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        try:
            out = self.fn(sample)
        except BaseException:
            self.progress.bad += 1
            raise
        self.progress.good += 1
        return out


class ShardSource:
    """The shard URLs of one (rank, worker), as ``dict(url=...)`` (webdataset's shard-list items).

    Modes:
        one pass (``repeat=False``): the list (shuffled with ``(seed, epoch)`` if ``shuffle``),
            split by rank, then by worker; every shard exactly once over all ranks and workers.
        endless passes (``repeat=True``): pass ``p`` uses permutation ``(seed, epoch, p)``, split
            the same way, so in every pass the ranks and workers still hold disjoint shards; the
            loader cuts the stream after a fixed number of batches. A pass that yields no usable
            sample (every shard of this worker missing, corrupt, or holding only corrupt videos)
            widens the next passes to the rank's shards, then to all shards, so that the worker
            still delivers its batches; when even all shards give nothing it raises.
        resampling (``resample=True``): webdataset ``ResampledShards`` with a seed that depends on
            (seed, epoch, rank, worker); no split (each draw is independent).

    ``epoch`` is set by the loader in the main process before workers start (they copy it).
    """

    def __init__(self, urls: list[str], rank: int, world_size: int, *, seed: int, shuffle: bool,
                 repeat: bool, resample: bool, counters: SharedCounters, progress: Progress):
        self.urls = list(urls)
        self.rank, self.world_size = rank, world_size
        self.seed, self.shuffle, self.repeat, self.resample = seed, shuffle, repeat, resample
        self.counters, self.progress = counters, progress
        self.epoch = 0

    SCOPES = ("worker", "rank", "all")
    """Whose shards a pass reads: this worker's share, the whole rank's, or every shard."""

    def my_shards(self, pass_index: int, scope: str = "worker") -> list[str]:
        """The shards of pass ``pass_index``: permuted by (seed, epoch, pass), split by rank then worker."""
        order = list(self.urls)
        if self.shuffle:
            random.Random(f"shards:{self.seed}:{self.epoch}:{pass_index}").shuffle(order)
        if scope == "all":
            return order
        mine = order[self.rank::self.world_size]
        return mine if scope == "rank" else list(wds.split_by_worker(mine))

    def __call__(self) -> Iterator[dict[str, str]]:
        if self.resample:
            yield from self._resampled()
            return
        scope = 0
        for pass_index in range(1 << 62):
            before = self.progress.mark()
            shards = self.my_shards(pass_index, self.SCOPES[scope])
            for url in shards:
                self.counters.add("shards")
                yield {"url": url}
            if not self.repeat:
                return
            if not self.progress.stalled_since(before):
                continue
            # A whole pass gave nothing usable (shards missing or corrupt, or only corrupt videos).
            # Rather than leave this worker (and so its rank) short of batches, and loop forever,
            # widen to the rank's, then to all shards.
            worker, _ = worker_slot()
            where = f"rank {self.rank} worker {worker}: a pass over {len(shards)} shard(s) ({self.SCOPES[scope]}'s)"
            if scope == len(self.SCOPES) - 1:
                raise RuntimeError(f"{where} gave no readable sample (counters: {self.counters.totals()}); "
                                   f"shards: {shards[:5]}")
            scope += 1
            log.warning("%s gave no readable sample; reading the %s's shards from now on", where,
                        self.SCOPES[scope])

    def _resampled(self) -> Iterator[dict[str, str]]:
        worker, _ = worker_slot()
        shards = wds.ResampledShards(self.urls, seed=self.seed * 1_000_003 + self.epoch, deterministic=True,
                                     worker_seed=lambda: self.rank * 65_536 + worker)
        # Stop only when many draws in a row gave nothing: with 1 good shard in N, 10 N + 10
        # empty draws in a row happen with probability ~e^-10.
        limit, empty, before = 10 * len(self.urls) + 10, 0, self.progress.mark()
        for item in shards:
            empty = empty + 1 if self.progress.stalled_since(before) else 0
            before = self.progress.mark()
            if empty > limit:
                raise RuntimeError(f"rank {self.rank} worker {worker}: {limit} resampled shards in a row gave "
                                   f"no readable sample (counters: {self.counters.totals()})")
            self.counters.add("shards")
            yield item


class SeededShuffle:
    """webdataset's shuffle buffer, seeded by (seed, epoch, rank, worker) when the worker starts."""

    def __init__(self, bufsize: int, source: ShardSource):
        self.bufsize, self.source = bufsize, source

    def __call__(self, samples: Iterator[dict]) -> Iterator[dict]:
        s = self.source
        rng = random.Random(f"samples:{s.seed}:{s.epoch}:{s.rank}:{worker_slot()[0]}")
        return wds_shuffle(self.bufsize, initial=self.bufsize, rng=rng)(samples)


class TarSamples:
    """webdataset tar reading (open URL, iterate members, group by key) that also feeds ``progress``."""

    def __init__(self, handler: Callable[[BaseException], bool], progress: Progress):
        self.handler, self.progress = handler, progress

    def __call__(self, src: Iterator[dict[str, str]]) -> Iterator[dict[str, Any]]:
        for sample in tarfile_samples(src, handler=self.handler):
            self.progress.read += 1
            yield sample


def decode_video(sample: dict[str, Any], *, num_frames: int | FrameBudget, size: tuple[int, int] | None, decode: bool,
                 num_threads: int, counters: SharedCounters, timeout_s: float = 0.0,
                 quarantine: Quarantine | None = None) -> dict[str, Any]:
    """One tar sample (``{key}.json`` + ``{key}.{ext}``) -> ``{"record", "frames", "__key__", "__url__"}``.

    ``frames`` is uint8 ``[T, 3, H, W]`` (None when ``decode`` is False); ``num_frames`` a
    :class:`~data_shards.stream.budget.FrameBudget`: T chosen per clip from its length. With ``timeout_s`` > 0
    the decode has that long (:func:`~data_shards.stream.frames.decode_frames_within`); a sample that takes longer is
    added to ``quarantine``, and a quarantined sample is refused before its video is touched.

    Raises:
        IncompleteSample, SchemaError / JSONDecodeError, DecodeError (DecodeTimeout among them),
        QuarantinedSample: all naming the shard and key.
    """
    key, url = sample.get("__key__"), sample.get("__url__")
    where = f"{url}: sample {key}"
    if quarantine is not None and (str(url), str(key)) in quarantine:
        raise QuarantinedSample(f"{where}: quarantined after a decode timeout ({quarantine.path}); not decoded again")
    if "json" not in sample:
        members = sorted(k for k in sample if not k.startswith("__"))
        raise IncompleteSample(f"{where}: no {key}.json record (members: {members})")
    try:
        record = json.loads(sample["json"])
    except (json.JSONDecodeError, UnicodeDecodeError) as e:  # name the shard: the handler sees no url here
        raise SchemaError(f"{url}:{key}.json", "<record>", f"not valid JSON ({e})") from None
    validate_record(record, f"{url}:{key}.json")
    member = record["video"]
    stem, _, ext = member.rpartition(".")
    if stem != key or not ext:
        raise SchemaError(f"{url}:{key}.json", "video", f"{member!r} is not a member name {key}.<ext>")
    ext = ext.lower()
    if ext not in sample:
        raise IncompleteSample(f"{where}: no video member {member} next to its record")
    frames = None
    if decode and timeout_s > 0:
        try:
            frames = decode_frames_within(timeout_s, sample[ext], num_frames, size, record["start"], record["end"],
                                          name=f"{url}:{member}", num_threads=num_threads)
        except DecodeTimeout as e:
            if quarantine is not None:
                quarantine.add(str(url), str(key), str(e))
            raise
    elif decode:
        frames = decode_frames(sample[ext], num_frames, size, record["start"], record["end"],
                               name=f"{url}:{member}", num_threads=num_threads)
    counters.add("videos")
    return {"record": record, "frames": frames, "__key__": key, "__url__": url}


def expand_questions(videos: Iterator[dict[str, Any]], reasoning: dict[str, dict] | None) -> Iterator[dict[str, Any]]:
    """Decoded videos -> one question sample per QA (contract 3); ``reasoning`` joined by qid.

    Every question of a video shares the same ``frames`` tensor (no copy).
    """
    for video in videos:
        rec = video["record"]
        for qa in rec["qas"]:
            yield {"qid": qa["qid"], "video_id": rec["video_id"], "dataset": rec["dataset"], "split": rec["split"],
                   "question": qa["question"], "options": list(qa["options"]), "answer": qa["answer"],
                   "qtype": qa["qtype"], "extra": qa["extra"], "frames": video["frames"],
                   "reasoning": reasoning.get(qa["qid"]) if reasoning else None,
                   "__key__": video["__key__"], "__url__": video["__url__"]}
