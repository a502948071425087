"""The trainer's side of the data: checks before launch, tokenizer corpus, resumable batch stream.

* :func:`preflight` runs BEFORE DeepSpeed starts: every local shard exists, the dataset has at
  least one sample, the reasoning files exist. It fails with one line naming what is missing.
* :func:`corpus_texts` reads the records (json members only, no video) for training a BPE.
* :class:`BatchStream` iterates epochs of ``data_shards.stream.loader`` batches and knows its position
  ``(epoch, batches consumed in that epoch)``.

Resuming the data position: the loader's order is a deterministic function of
``(seed, epoch, rank, worker)`` (seeded shard permutation and shuffle buffer; the DataLoader
merges workers round-robin). So a resumed run calls ``set_epoch(epoch)`` and skips the
``batch`` batches the interrupted run had already consumed in that epoch; it then sees
exactly the batches the uninterrupted run saw. The cost of skipping is decoding at most one
epoch's worth of batches once.
"""

from __future__ import annotations

import json
import logging
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_shards.common.urls import unfinished_writes
from data_shards.stream.loader import expand_urls
from train.config import DataConfig
from train.tokenizer import corpus_from_samples

log = logging.getLogger("train.data")

REMOTE_PREFIXES = ("pipe:", "http://", "https://", "s3://", "gs://", "hf://", "ais://")


class DataError(ValueError):
    """The dataset is missing or empty (raised before DeepSpeed starts)."""


@dataclass
class DataSummary:
    """What preflight found."""

    urls: list[str]
    """All expanded shard URLs."""
    local: bool
    """All URLs are local files (checked); remote ones cannot be checked before reading."""
    videos: int | None
    """Videos counted (None: not counted, e.g. remote shards)."""
    questions: int | None
    """Questions counted (None: not counted)."""


def _is_local(url: str) -> bool:
    return not url.startswith(REMOTE_PREFIXES)


def _local_path(url: str) -> Path:
    return Path(url[len("file:"):] if url.startswith("file:") else url)


def _tar_records(path: Path, limit: int | None = None, skipped: dict[str, int] | None = None) -> Iterator[dict]:
    """Yield the ``.json`` record members of a shard (no video bytes are read).

    An unreadable shard (zero bytes, truncated, not a tar) ends the shard and a member that is not
    valid JSON is passed over; both are logged with the shard's path and counted in ``skipped``
    (keys ``corrupt_tar`` / ``bad_record``), the same categories the loader counts.
    """
    skipped = {} if skipped is None else skipped
    n = 0
    try:
        with tarfile.open(path, "r:") as tf:
            for member in tf:
                if not (member.isfile() and member.name.endswith(".json") and not member.name.endswith("sizes.json")):
                    continue
                try:
                    record = json.loads(tf.extractfile(member).read())
                except (json.JSONDecodeError, UnicodeDecodeError) as e:
                    skipped["bad_record"] = skipped.get("bad_record", 0) + 1
                    log.warning("data: skipped member %s of shard %s: not valid JSON (%s)", member.name, path, e)
                    continue
                yield record
                n += 1
                if limit is not None and n >= limit:
                    return
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        skipped["corrupt_tar"] = skipped.get("corrupt_tar", 0) + 1
        log.warning("data: skipped the rest of shard %s after %d record(s): not a readable tar (%s: %s)", path, n,
                    type(e).__name__, str(e).splitlines()[0] if str(e) else "")


def preflight(cfg: DataConfig, count_questions: bool = False) -> DataSummary:
    """Check the shards and reasoning files before any process group or model exists.

    Args:
        cfg: the data section.
        count_questions: read every record to count questions (needed to derive
            ``epoch_batches`` for several ranks; reads json members only).

    Raises:
        DataError: one line naming the missing file / pattern or saying the dataset is empty.
    """

    urls: list[str] = []
    for pattern in cfg.urls:
        got = expand_urls(pattern)
        if not got:
            raise DataError(f"data.urls: {pattern!r} expands to no shard")
        urls += got
    local = all(_is_local(u) for u in urls)
    for u in urls:
        if _is_local(u) and not _local_path(u).is_file():
            raise DataError(f"data.urls: shard not found: {u}")
        if _is_local(u) and _local_path(u).stat().st_size == 0:
            raise DataError(f"data.urls: shard {u} is empty (0 bytes): an interrupted write or copy")
    for problem in unfinished_writes(urls)[:1]:
        raise DataError(f"data.urls: {problem}")
    for pattern in cfg.reasoning:
        if not any(ch in pattern for ch in "*?[") and not Path(pattern).exists():
            raise DataError(f"data.reasoning: file not found: {pattern}")
    if not local:
        return DataSummary(urls, False, None, None)
    counted = _counts_from_sizes(urls)
    if counted is not None:
        videos, questions = counted
        if videos == 0 or questions == 0:
            raise DataError(f"data.urls: the dataset is empty: sizes.json lists {videos} videos and {questions} "
                            f"questions in {len(urls)} shard(s) ({urls[0]}{' ...' if len(urls) > 1 else ''})")
        return DataSummary(urls, True, videos, questions)
    videos = questions = 0
    for u in urls:  # unreadable shards are logged and passed over (the loader skips them too)
        for rec in _tar_records(_local_path(u)):
            videos += 1
            questions += len(rec.get("qas") or [])
            if not count_questions:
                break
        if videos and not count_questions:
            return DataSummary(urls, True, None, None)
    if videos == 0 or (count_questions and questions == 0):
        raise DataError(f"data.urls: the dataset is empty: {len(urls)} shard(s) hold no "
                        f"{'sample' if videos == 0 else 'question'} ({urls[0]}{' ...' if len(urls) > 1 else ''})")
    return DataSummary(urls, True, videos, questions)


def _counts_from_sizes(urls: list[str]) -> tuple[int, int] | None:
    """(videos, questions) of the shards from the writer's sizes.json files, if they list every shard."""
    videos = questions = 0
    tables: dict[Path, dict] = {}
    for u in urls:
        path = _local_path(u)
        sizes = path.parent / "sizes.json"
        if sizes not in tables:
            try:
                tables[sizes] = json.loads(sizes.read_text()).get("shards", {}) if sizes.is_file() else {}
            except (OSError, json.JSONDecodeError, AttributeError):
                tables[sizes] = {}
        entry = tables[sizes].get(path.name)
        if not isinstance(entry, dict) or "videos" not in entry or "questions" not in entry:
            return None
        videos += int(entry["videos"])
        questions += int(entry["questions"])
    return videos, questions


def check_reasoning_texts(reasoning: dict[str, dict], source: str, files: list[str],
                          allow_sparse: bool = False) -> str | None:
    """The ReasVQA records of ``data.reasoning`` must hold ``source`` text (``raw`` / ``refined``): an empty
    one reaches training as a question without reasoning, so MTL / STL silently train QA only. Raises
    DataError when more than half are empty (unless ``allow_sparse``: ``data.allow_sparse_reasoning``);
    returns a warning line when some are, else None."""
    if source not in ("raw", "refined"):
        return None
    recs = [r for r in reasoning.values() if not str(r.get("prompt_version", "")).startswith("vcot")]
    empty = sum(not (isinstance(r.get(source), str) and r[source].strip()) for r in recs)
    if not recs or not empty:
        return None
    what = (f"data.reasoning {files}: {empty} of {len(recs)} ok records have no {source!r} text (empty teacher "
            "replies?); those questions train without reasoning")
    if 2 * empty > len(recs):
        if allow_sparse:
            return f"{what}: most of them (data.allow_sparse_reasoning is true: training anyway)"
        raise DataError(f"{what}: most of them, so task.mode would in effect be qa. Regenerate them "
                        "(reasoning_gen generate --retry-failed after removing them), train with task.mode=qa, "
                        "or set data.allow_sparse_reasoning=true if that is the experiment")
    return what


def corpus_texts(urls: list[str], max_videos: int, reasoning: dict[str, dict] | None = None) -> list[str]:
    """Texts (questions, options, reasoning) of the first ``max_videos`` records, for a BPE."""

    records: list[dict] = []
    for u in urls:
        if not _is_local(u):
            continue
        records += list(_tar_records(_local_path(u), max_videos - len(records)))
        if len(records) >= max_videos:
            break
    texts = list(corpus_from_samples(records))
    if reasoning:
        texts += list(corpus_from_samples([{"reasoning": r} for r in reasoning.values()]))
    return texts


def epoch_batches_for(cfg: DataConfig, summary: DataSummary, world_size: int) -> int | None:
    """Batches per rank per epoch: the configured value, or (several ranks) one pass's worth.

    With several ranks a one-pass epoch could give ranks different batch counts and leave a
    collective waiting forever, so it is derived from the question count: every rank yields
    floor(questions / (micro_batch_size * world_size)) batches (the loader repeats shards as
    needed to fill them).
    """
    if cfg.epoch_batches is not None or world_size == 1:
        return cfg.epoch_batches
    if summary.questions is None:
        raise DataError("data.epoch_batches: must be set for multi-rank training on remote shards "
                        "(the question count cannot be read before training)")
    return max(1, summary.questions // (cfg.micro_batch_size * world_size))


class BatchStream:
    """Endless stream of loader batches over epochs, with a resumable position.

    Args:
        loader: a ``data_shards.stream.loader.VideoQALoader`` (has ``set_epoch`` and one-epoch ``__iter__``).
        epoch, batch: the position to start from (batches of ``epoch`` already consumed).
    """

    def __init__(self, loader: Any, epoch: int = 0, batch: int = 0) -> None:
        self.loader = loader
        self.epoch, self.batch = epoch, batch
        self._it: Iterator | None = None

    def position(self) -> dict[str, int]:
        """{"epoch", "batch"}: where the next batch comes from (saved in checkpoints)."""
        return {"epoch": self.epoch, "batch": self.batch}

    def _start_epoch(self) -> None:
        self.loader.set_epoch(self.epoch)
        self._it = iter(self.loader)
        for skipped in range(self.batch):  # resume: drop what the interrupted run consumed
            if next(self._it, None) is None:
                raise DataError(f"data: epoch {self.epoch} has only {skipped} batches, cannot skip {self.batch}")

    def next_batch(self) -> list[dict]:
        """The next batch (question samples), moving to the next epoch when one ends."""
        for _ in range(2):
            if self._it is None:
                self._start_epoch()
            batch = next(self._it, None)
            if batch is not None:
                self.batch += 1
                return batch
            if self.batch == 0:
                raise DataError(f"data: epoch {self.epoch} yielded no batch (stats: {self.loader.stats()})")
            self.epoch, self.batch, self._it = self.epoch + 1, 0, None
        raise DataError(f"data: epoch {self.epoch} yielded no batch (stats: {self.loader.stats()})")
