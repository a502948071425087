"""The offline generation job: shards -> teacher -> append-only reasoning records per rank.

Each rank takes its own slice of the shards (``shards[rank::world_size]``), streams them
through the real loader (:func:`data_shards.stream.loader.build_loader`, frames decoded unless the
backend never looks at pixels) and appends one record per question to
``DIR/{split}.rank{rank:05d}.jsonl`` (contract 5), flushed and fsynced per batch.

Restart safety: before starting, a partial last line left by a crash in this rank's files is
cut off (and reported); every qid already written by ANY rank file in ``DIR`` is skipped (so a
change of world size does not redo work), and shards whose questions are all done are not
even opened. A request that still fails after the backend's and the job's retries is written
with ``status: "failed"`` and its error; ``retry_failed`` runs those again.

Prompts: ``reasvqa`` (one request per question; raw text refined on the fly, teacher answer
graded against the ground truth) or ``vcot`` (per consecutive frame pair: common attributes,
then the bridging event, optionally a rephrasing pass -> ``vcot``: T - 1 captions).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from tqdm import tqdm

from data_shards.common.distenv import world_info_from_env
from data_shards.reasoning_records import AppendWriter, kind, make_record, read_reasoning_lines
from data_shards.stream.loader import LoaderConfig, build_loader, expand_urls
from reasoning_gen.backends import BACKENDS, build_backend
from reasoning_gen.backends.base import Backend, BackendUnavailable, GenRequest, GenResult, call_with_retries
from reasoning_gen.prompts import (
    prompt_version,
    reasvqa_prompt,
    rephrase_prompt,
    vcot_bridge_prompt,
    vcot_common_prompt,
)
from reasoning_gen.refine import STRATEGIES, audit_leak, load_truth, refine, refine_llm


@dataclass
class GenerateConfig:
    """What one rank of the generation job does."""

    shards: str | list[str]
    """Shard URLs: brace patterns (several joined by ``::``) or a list."""
    out_dir: str
    """Output directory: ``{split}.rank{r:05d}.jsonl`` per split and rank."""
    prompt: str = "reasvqa"
    """``reasvqa`` or ``vcot``."""
    num_frames: int = 8
    """Frames per video given to the teacher (vCoT: T - 1 pairs)."""
    frame_size: tuple[int, int] | None = (336, 336)
    """(height, width) frames are resized to while decoding."""
    batch_size: int = 8
    """Questions per loader batch (and per backend call for ReasVQA)."""
    num_workers: int = 1
    """Loader worker processes (at most one per pending shard)."""
    retries: int = 1
    """Job-level retries of failed requests (on top of the backend's own)."""
    retry_failed: bool = False
    """Regenerate qids whose only records are failed ones."""
    rephrase: bool = False
    """vCoT: shorten every transitional caption with a second pass."""
    refine_strategy: str = "answer-sentences"
    """ReasVQA: how ``refined`` is made from ``raw`` (see :mod:`reasoning_gen.refine`)."""
    refine_k: int = 3
    """Steps kept by the ``first-k-steps`` strategy."""
    refine_backend: Backend | None = None
    """``llm`` strategy: the backend that rewrites reasonings (None = the teacher itself)."""
    truth: dict[str, int | None] | None = None
    """qid -> ground-truth answer overriding the shards' (e.g. answers held apart)."""
    progress: bool = True
    """Show a progress bar (questions/s and ETA)."""


@dataclass
class JobStats:
    """Counters of one rank's run."""

    counts: dict = field(default_factory=lambda: {
        "questions_in_shards": 0, "already_done": 0, "generated": 0, "ok": 0, "failed": 0, "graded": 0,
        "teacher_correct": 0, "leaks": 0, "shards": 0, "shards_skipped_done": 0, "repaired_bytes": 0})

    def add(self, key: str, n: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + n


def rank_file(out_dir: str | Path, split: str, rank: int) -> Path:
    return Path(out_dir) / f"{split}.rank{rank:05d}.jsonl"


def done_qids(out_dir: Path, job_kind: str, include_failed: bool, log=print) -> set[str]:
    """qids with a record of this kind in any rank file of ``out_dir`` (ok ones, and failed ones unless retried)."""
    done: set[str] = set()
    for path in sorted(out_dir.glob("*.rank*.jsonl")):
        counts: dict = {}
        for _, rec in read_reasoning_lines(path, counts):
            if kind(rec) == job_kind and (rec["status"] == "ok" or include_failed):
                done.add(rec["qid"])
        if counts.get("corrupt"):
            log(f"warning: {path}: {counts['corrupt']} corrupt line(s) skipped")
    return done


def shard_qids(url: str) -> list[str] | None:
    """The qids in a local shard, read from its ``.json`` members only; None if not a local file."""
    path = Path(url.removeprefix("file:"))
    if url.startswith("pipe:") or "://" in url or not path.is_file():
        return None
    qids = []
    try:
        with tarfile.open(path, "r:") as tar:
            for member in tar:  # tarfile seeks over the video members without reading them
                if member.isfile() and member.name.endswith(".json"):
                    qids += [qa["qid"] for qa in json.load(tar.extractfile(member))["qas"]]
    except (tarfile.TarError, OSError, ValueError, KeyError, TypeError):
        return None  # let the loader meet it, report and count it
    return qids


def _reasvqa(backend: Backend, batch: list[dict], cfg: GenerateConfig) -> list[dict]:
    reqs = [GenRequest(reasvqa_prompt(s["question"], s["options"], cfg.num_frames), s["frames"], s["qid"], s)
            for s in batch]
    # the prompt the backend really sends (a text-only backend sends the description version)
    version = getattr(backend, "reasvqa_prompt_version", None) or prompt_version("reasvqa")
    results = call_with_retries(backend, reqs, cfg.retries)
    refined = _refine_batch(backend, batch, results, cfg)
    out = []
    for s, res in zip(batch, results):
        if not res.ok:
            out.append(make_record(s["qid"], backend.name, version, status="failed", error=res.error,
                                   split=s["split"]))
            continue
        r, fallback = refined[s["qid"]]
        truth = cfg.truth.get(s["qid"], s["answer"]) if cfg.truth else s["answer"]
        correct = None if truth is None or r.teacher_answer is None else r.teacher_answer == truth
        leak = audit_leak(r.text, s["options"], r.teacher_answer)
        extra = {"leak": leak} if leak else {}
        if fallback:  # the llm rewrite was not used: the regex refinement stands in, and says why
            extra["refine_fallback"] = fallback
        out.append(make_record(s["qid"], backend.name, version, raw=res.text, refined=r.text,
                               teacher_answer=r.teacher_answer, teacher_correct=correct, split=s["split"],
                               refine="answer-sentences" if fallback else cfg.refine_strategy, **extra))
    return out


def _refine_batch(backend: Backend, batch: list[dict], results: list[GenResult], cfg: GenerateConfig) -> dict:
    """qid -> (Refined, why the llm rewrite was not used or None) for the ok teacher replies."""
    ok = [(s, res) for s, res in zip(batch, results) if res.ok]
    if cfg.refine_strategy != "llm":
        return {s["qid"]: (refine(res.text, s["options"], cfg.refine_strategy, cfg.refine_k), None) for s, res in ok}
    rewritten = refine_llm([(res.text, s["question"], s["options"]) for s, res in ok], cfg.refine_backend or backend,
                           cfg.retries)
    return {s["qid"]: r for (s, _), r in zip(ok, rewritten)}


def _vcot(backend: Backend, batch: list[dict], cfg: GenerateConfig) -> list[dict]:
    def frames(s, i):
        return None if s["frames"] is None else s["frames"][i:i + 2]

    pairs = [(s, i) for s in batch for i in range(cfg.num_frames - 1)]
    meta = [{"pair": i, "num_frames": cfg.num_frames} for _, i in pairs]
    reqs = [GenRequest(vcot_common_prompt(i, cfg.num_frames), frames(s, i), f"{s['qid']}#pair{i}", s, m)
            for (s, i), m in zip(pairs, meta)]
    common = call_with_retries(backend, reqs, cfg.retries)
    todo = [k for k, r in enumerate(common) if r.ok]
    bridge: dict[int, GenResult] = dict(enumerate(common))
    reqs2 = [GenRequest(vcot_bridge_prompt(pairs[k][1], cfg.num_frames, common[k].text), frames(*pairs[k]),
                        reqs[k].key, pairs[k][0], meta[k]) for k in todo]
    bridge.update(zip(todo, call_with_retries(backend, reqs2, cfg.retries)))
    if cfg.rephrase:
        todo = [k for k in todo if bridge[k].ok]
        reqs3 = [GenRequest(rephrase_prompt(bridge[k].text), None, reqs[k].key, pairs[k][0],
                            {**meta[k], "caption": bridge[k].text}) for k in todo]
        bridge.update(zip(todo, call_with_retries(backend, reqs3, cfg.retries)))
    version, out, k = prompt_version("vcot", cfg.rephrase), [], 0
    for s in batch:
        mine = [(common[k + i], bridge[k + i]) for i in range(cfg.num_frames - 1)]
        k += cfg.num_frames - 1
        errors = [b.error for _, b in mine if not b.ok]
        if errors:
            out.append(make_record(s["qid"], backend.name, version, status="failed", split=s["split"],
                                   error=f"{len(errors)} of {len(mine)} frame pairs failed; first: {errors[0]}"))
        else:
            out.append(make_record(s["qid"], backend.name, version, vcot=[b.text for _, b in mine],
                                   vcot_common=[c.text for c, _ in mine], split=s["split"]))
    return out


class _Progress:
    """tqdm bar over this rank's pending questions with generated questions/s and the ETA."""

    def __init__(self, total: int | None, enabled: bool):
        self.bar = None
        self.t0, self.done, self.total = time.monotonic(), 0, total
        if enabled:
            self.bar = tqdm(total=total, unit="q", dynamic_ncols=True, file=sys.stderr,
                            bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]")

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is None:
            return
        rate = self.done / max(time.monotonic() - self.t0, 1e-9)
        eta = "?" if not self.total or rate == 0 else f"{max(self.total - self.done, 0) / rate:.0f}s"
        self.bar.set_postfix_str(f"{rate:.2f} q/s, ETA {eta}", refresh=False)
        self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _pending_shards(urls: list[str], done: set[str], stats: JobStats) -> tuple[list[str], int | None, set[str]]:
    """Shards with work left, the number of questions left (None if unknown), shards not pre-scanned."""
    pending, total, unknown = [], 0, set()
    for url in urls:
        qids = shard_qids(url)
        if qids is None:
            unknown.add(url)
            pending.append(url)
            continue
        left = sum(q not in done for q in qids)
        stats.add("questions_in_shards", len(qids))
        stats.add("already_done", len(qids) - left)
        if left:
            pending.append(url)
            total += left
        else:
            stats.add("shards_skipped_done")
    return pending, (None if unknown else total), unknown


def place_backend(name: str, opts: dict, local_rank: int, env: dict) -> dict:
    """Where this rank's teacher runs, across the GPUs of a node.

    ``transformers``: one rank per GPU (torchrun --nproc_per_node GPUS, or one srun task per GPU); each rank gets
    ``local_rank`` and loads its model onto ``cuda:LOCAL_RANK`` (:func:`reasoning_gen.backends.hf.resolve_device`).
    ``vllm``: ONE process per node: vLLM's own ``tensor_parallel_size`` workers take the node's GPUs, so a
    second rank on the node is refused (it would load a second engine onto the same GPUs). The work is
    still split over ranks (nodes) by shard, as for every backend."""
    opts = dict(opts)
    if name == "transformers":
        opts.setdefault("local_rank", local_rank)
    elif name == "vllm":
        per_node = re.match(r"\d+", env.get("LOCAL_WORLD_SIZE") or env.get("SLURM_NTASKS_PER_NODE") or "1")
        local_world = int(per_node.group()) if per_node else 1  # SLURM may write "2(x3)"
        if local_rank > 0 or local_world > 1:
            raise ValueError(f"the vllm backend runs one process per node (its tensor_parallel_size="
                             f"{opts.get('tensor_parallel_size', 1)} workers use the node's GPUs); this node "
                             f"starts {max(local_world, local_rank + 1)}: launch with --nproc_per_node 1 "
                             "(or one srun task per node)")
    return opts


def run_generation(cfg: GenerateConfig, backend: Backend, rank: int, world_size: int, log=print) -> dict:
    """Generate this rank's records; returns the counters (plus the loader's as ``loader_*``)."""
    if cfg.prompt not in ("reasvqa", "vcot"):
        raise ValueError(f"unknown prompt {cfg.prompt!r}; expected reasvqa or vcot")
    if cfg.prompt == "vcot" and cfg.num_frames < 2:
        raise ValueError("vcot needs num_frames >= 2 (captions sit between consecutive frames)")
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stats = JobStats()
    for path in sorted(out_dir.glob(f"*.rank{rank:05d}.jsonl")):
        cut = AppendWriter(path, fsync=False)
        cut.close()
        if cut.repaired:
            log(f"rank {rank}: {path}: cut a partial last line of {cut.repaired} bytes (left by an interrupted run)")
            stats.add("repaired_bytes", cut.repaired)
    done = done_qids(out_dir, cfg.prompt if cfg.prompt == "vcot" else "reasoning", not cfg.retry_failed, log)
    mine = expand_urls(cfg.shards)[rank::world_size]
    stats.add("shards", len(mine))
    pending, total, unscanned = _pending_shards(mine, done, stats)
    log(f"rank {rank}/{world_size}: {len(mine)} shard(s), {len(pending)} with work left, "
        f"{total if total is not None else '?'} question(s) to generate; {len(done)} qid(s) done in {out_dir}")
    if not pending:
        return dict(stats.counts)
    lcfg = LoaderConfig(urls=pending, num_frames=cfg.num_frames, frame_size=cfg.frame_size,
                        micro_batch_size=cfg.batch_size, num_workers=min(cfg.num_workers, len(pending)),
                        shuffle_shards=False, shuffle_buffer=0, decode=backend.needs_frames)
    loader = build_loader(lcfg, rank=0, world_size=1)  # the rank split is ours, above
    writers: dict[str, AppendWriter] = {}
    bar = _Progress(total, cfg.progress)
    step = _vcot if cfg.prompt == "vcot" else _reasvqa
    try:
        for batch in loader:
            todo = [s for s in batch if s["qid"] not in done]
            # done questions of pre-scanned shards were counted by _pending_shards
            stats.add("already_done", sum(s["qid"] in done and s["__url__"] in unscanned for s in batch))
            if not todo:
                continue
            records = step(backend, todo, cfg)
            for split in sorted({r["split"] for r in records}):
                if split not in writers:
                    writers[split] = AppendWriter(rank_file(out_dir, split, rank))
                writers[split].write([r for r in records if r["split"] == split])  # one write + fsync
            for rec in records:
                done.add(rec["qid"])
                stats.add("generated")
                stats.add(rec["status"])
                stats.add("leaks", int("leak" in rec))
                if rec.get("teacher_correct") is not None:
                    stats.add("graded")
                    stats.add("teacher_correct", int(rec["teacher_correct"]))
            bar.update(len(todo))
    finally:
        bar.close()
        for w in writers.values():
            w.close()
    result = dict(stats.counts)
    result.update({f"loader_{k}": v for k, v in loader.stats().items()})
    return result


def _parse_opt(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"--opt wants key=value, got {text!r}")
    return key.replace("-", "_"), yaml.safe_load(value)


def _parse_size(text: str) -> tuple[int, int] | None:
    if text.lower() in ("none", "native"):
        return None
    h, _, w = text.lower().partition("x")
    return int(h), int(w)


def main(argv: list[str] | None = None) -> int:
    """``python -m reasoning_gen generate``: this rank's share of the shards -> reasoning records."""
    p = argparse.ArgumentParser(prog="python -m reasoning_gen generate", description=main.__doc__)
    p.add_argument("--shards", required=True, nargs="+", help="shard URLs / brace patterns")
    p.add_argument("--backend", default="synthetic", choices=sorted(BACKENDS))
    p.add_argument("--prompt", default="reasvqa", choices=["reasvqa", "vcot"])
    p.add_argument("--out", required=True, help="output directory ({split}.rank{r:05d}.jsonl)")
    p.add_argument("--records", nargs="*", default=None,
                   help="schema-v1 records whose answers override the shards' for grading the teacher")
    p.add_argument("--model", default=None, help="model path (transformers, vllm) or name (openai)")
    p.add_argument("--base-url", default=None, help="openai backend: API root, e.g. http://host:8000/v1")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY", help="openai backend: env variable with the key")
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE", help="backend option (repeatable)")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--size", type=_parse_size, default=(336, 336), help="HxW frames are resized to, or native")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--retries", type=int, default=1, help="job-level retries of failed requests")
    p.add_argument("--retry-failed", action="store_true", help="regenerate qids recorded as failed")
    p.add_argument("--rephrase", action="store_true", help="vcot: shorten captions with a second pass")
    p.add_argument("--refine-strategy", default="answer-sentences", choices=STRATEGIES)
    p.add_argument("--k", type=int, default=3)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--max-failed-frac", type=float, default=0.1,
                   help="exit with status 3 when more than this fraction of this run's requests failed "
                        "(they are recorded either way; rerun with --retry-failed)")
    args = p.parse_args(argv)
    opts = dict(_parse_opt(o) for o in args.opt)
    if args.model:
        opts["model"] = args.model
    if args.backend == "openai":
        opts.setdefault("base_url", args.base_url)
        if os.environ.get(args.api_key_env):
            opts.setdefault("api_key", os.environ[args.api_key_env])
        if not opts.get("base_url") or not opts.get("model"):
            p.error("the openai backend needs --base-url and --model")
    info = world_info_from_env()
    try:
        opts = place_backend(args.backend, opts, info.local_rank, os.environ)
    except ValueError as e:
        p.error(str(e))
    truth = None
    if args.records:
        truth = {qid: answer for qid, (_, answer) in load_truth(args.records).items()}
    cfg = GenerateConfig(shards=args.shards, out_dir=args.out, prompt=args.prompt, num_frames=args.frames,
                         frame_size=args.size, batch_size=args.batch_size, num_workers=args.workers,
                         retries=args.retries, retry_failed=args.retry_failed, rephrase=args.rephrase,
                         refine_strategy=args.refine_strategy, refine_k=args.k, truth=truth,
                         progress=not args.no_progress and info.rank == 0)
    try:
        backend = build_backend(args.backend, **opts)
    except (ValueError, FileNotFoundError) as e:  # a bad option, a missing model, a rank without its GPU
        print(f"error: rank {info.rank}: backend {args.backend!r}: {e}", file=sys.stderr)
        return 2
    try:
        stats = run_generation(cfg, backend, info.rank, info.world_size)
    except BackendUnavailable as e:  # records written before it stay (appended and fsynced per batch)
        print(f"error: rank {info.rank}: the teacher is unavailable, stopping: {e}; the records written so "
              f"far stay in {args.out}: rerun the same command once the server answers", file=sys.stderr)
        return 3
    finally:
        backend.close()
    graded = stats.get("graded", 0)
    acc = f"{stats['teacher_correct'] / graded:.3f}" if graded else "n/a"
    print(f"rank {info.rank}: generated {stats['generated']} (ok {stats['ok']}, failed {stats['failed']}), "
          f"skipped {stats['already_done']} already done, teacher accuracy {acc}, "
          f"refined texts still stating the answer {stats.get('leaks', 0)}; "
          + json.dumps({k: v for k, v in stats.items() if v}, sort_keys=True))
    if stats["generated"] and stats["failed"] > args.max_failed_frac * stats["generated"]:
        print(f"error: rank {info.rank}: {stats['failed']} of {stats['generated']} requests failed "
              f"(> --max-failed-frac {args.max_failed_frac}); their errors are in the 'error' field of "
              f"the failed records in {args.out}; rerun with --retry-failed", file=sys.stderr)
        return 3
    return 0
