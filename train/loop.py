"""The training run: preflight -> process group -> tokenizer -> ZeRO-3 model -> steps -> checkpoints.

:class:`Trainer` is built from a resolved :class:`~train.config.TrainConfig` on every rank.
The order matters: everything that can fail because of the user's input (config, shard paths,
an empty dataset, reasoning files) is checked before the process group and DeepSpeed start,
so the error is one line instead of a hang of the other ranks.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
import signal
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data_shards.common.atomic import atomic_write_text
from data_shards.reasoning_records import load_reasoning
from data_shards.stream.loader import build_loader
from train import checkpoint as ckpt
from train import runguard
from train.config import TrainConfig, config_to_dict, save_config
from train.datastream import BatchStream, check_reasoning_texts, corpus_texts, epoch_batches_for, preflight
from train.dist import Heartbeat, ParallelDims, all_reduce_sum, barrier, device, init_distributed, rank_table
from train.engine import build_engine, deepspeed_config, model_init_context, optimizer_step
from train.frame_budget import BudgetFit, for_run, run_budget, write_summary
from train.metrics import MetricsLogger, Throughput
from train.models import build_model, load_tokenizer
from train.sequence_parallel import sequence_groups
from train.tasks import build_examples
from train.tokenizer import build_tokenizer

log = logging.getLogger("train")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    """One rank of a training run.

    Args:
        cfg: the resolved config.
        resume: None, "latest" or a ``global_step{N}`` directory (see ``checkpoint.resolve_resume``).
    """

    def __init__(self, cfg: TrainConfig, resume: str | None = None) -> None:
        self.cfg = cfg
        self.dims = ParallelDims.from_env(cfg.data.micro_batch_size, cfg.deepspeed.gradient_accumulation_steps,
                                          sequence=cfg.parallel.sequence)
        # --- checks on the user's input, before any process group exists
        need_count = cfg.data.epoch_batches is None and self.dims.data_parallel_size > 1
        self.data_summary = preflight(cfg.data, count_questions=need_count)
        self.epoch_batches = epoch_batches_for(cfg.data, self.data_summary, self.dims.data_parallel_size)
        self.reasoning = None
        if cfg.data.reasoning:
            self.reasoning = load_reasoning(cfg.data.reasoning)
            if cfg.task.mode in ("mtl", "stl"):
                warning = check_reasoning_texts(self.reasoning, cfg.task.reasoning_source, list(cfg.data.reasoning),
                                                cfg.data.allow_sparse_reasoning)
                if warning and self.dims.is_main:
                    log.warning("%s", warning)
        runguard.check_run_folder(cfg, resume)
        self.resume_from = ckpt.resolve_resume(resume, cfg.checkpoint_dir)
        if resume is not None and self.resume_from is None and self.dims.is_main:
            log.info("--resume %s: no complete checkpoint in %s, starting from step 0", resume, cfg.checkpoint_dir)
        self.restart_data = False
        if self.resume_from is not None:  # refused changes stop here, before DeepSpeed reads a byte
            plan = runguard.resume_plan(cfg, self.resume_from[0] / self.resume_from[1], self.dims.world_size,
                                        self.data_state())
            self.restart_data = plan.data_restart is not None
            if plan.warning() and self.dims.is_main:
                log.warning("%s", plan.warning())
        # --- distributed setup
        if cfg.run.num_threads:
            torch.set_num_threads(cfg.run.num_threads)
        if cfg.run.deterministic:
            torch.use_deterministic_algorithms(True)
        self.backend = init_distributed(self.dims, cfg.deepspeed.backend, cfg.deepspeed.master_timeout_s)
        self.sequence = (sequence_groups(self.dims.world_size, cfg.parallel.sequence, self.dims.rank)
                         if cfg.parallel.sequence > 1 else None)
        self.device = device()
        self.ds_config = deepspeed_config(cfg, self.dims)
        self.is_main = self.dims.is_main
        if self.is_main:
            if cfg.run.overwrite and resume is None:
                removed = runguard.clear_run_folder(cfg)
                if removed:
                        log.warning("run.overwrite: deleted %d item(s) of the earlier run in %s", len(removed),
                                cfg.run_dir)
            cfg.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, cfg.run_dir / "config.yaml")
            atomic_write_text(cfg.run_dir / "ds_config.json", json.dumps(self.ds_config, indent=2))
        self.ranks = rank_table(self.dims)  # which host runs which rank: names the ranks a lost node takes along
        self.heartbeat = Heartbeat(self.dims) if self.dims.world_size > 1 else None
        if self.is_main:
            atomic_write_text(cfg.run_dir / "hosts.json", json.dumps(self.ranks, indent=1))
        self.tokenizer = self._tokenizer()
        self.model, self.engine = self._model_and_engine()
        self.step, self.samples, position = 0, 0, {"epoch": 0, "batch": 0}
        # per-rank streams (dropout, ...); the ranks of a sequence group share one, as they share the data
        seed_everything(cfg.run.seed + 1000 * (self.dims.data_parallel_rank + 1))
        if self.resume_from is not None:
            position = self._resume(*self.resume_from)  # restores this rank's RNG states too
        self.stream = BatchStream(self._loader(), **position)
        self.budget_fit: BudgetFit | None = for_run(cfg, self.model, self.stream.loader)  # None without a frame budget
        self._last_collated: dict | None = None
        self.metrics = MetricsLogger(cfg.run_dir, self.is_main, cfg.run.max_steps, self.step,
                                     cfg.logging.progress_bar, cfg.logging.jsonl, cfg.logging.tensorboard)

    # ------------------------------------------------------------------ setup
    def _tokenizer(self) -> Any:
        """The model family's own tokenizer (e.g. an HF video-LLM's processor), else a local tokenizer,
        else a BPE trained on rank 0 from the shards' texts; saved next to the checkpoints."""
        cfg = self.cfg
        own = load_tokenizer(cfg.model)
        if own is not None:
            if self.is_main:
                own.save_pretrained(cfg.checkpoint_dir / "tokenizer")
            return own
        if cfg.tokenizer.path:
            tok = build_tokenizer(cfg.tokenizer.path)
        else:
            path = cfg.run_dir / "tokenizer"
            if self.is_main and not (path / "tokenizer_config.json").is_file():
                texts = corpus_texts(self.data_summary.urls, cfg.tokenizer.corpus_videos, self.reasoning)
                build_tokenizer(None, corpus=texts, vocab_size=cfg.tokenizer.vocab_size).save_pretrained(str(path))
            barrier()
            tok = build_tokenizer(path)
        if self.is_main:  # export finds it next to the checkpoints
            tok.save_pretrained(str(cfg.checkpoint_dir / "tokenizer"))
        return tok

    def _model_and_engine(self) -> tuple[torch.nn.Module, Any]:
        seed_everything(self.cfg.run.seed)  # identical init on every rank (zero.Init also broadcasts)
        with model_init_context(self.ds_config, self.cfg.deepspeed.zero_init):
            model = build_model(self.cfg.model, self.tokenizer)
        packing = model.prepare_packing(self.cfg.data.packing_sdpa) if self.cfg.data.packing else None
        sequence = model.enable_sequence_parallel(self.sequence) if self.sequence is not None else None
        if packing and sequence:  # Ulysses replaces the packed attention path (its own per-sequence calls)
            packing = "per-sequence causal SDPA on the gathered sequence (sequence parallel)"
        engine = build_engine(model, self.cfg, self.ds_config)
        if self.is_main:
            report = getattr(model, "attention_report", None)
            log.info("attention: %s; world %d (%s, %s); ds config %s", report, self.dims.world_size,
                     self.dims.launcher, self.backend, json.dumps(self.ds_config))
            if self.cfg.data.packing:
                log.info("packing: rows of up to %d tokens (first-fit decreasing); attention: %s",
                         self.cfg.row_capacity, packing)
            if sequence is not None:
                log.info("sequence parallel: %s; %d data-parallel ranks", sequence, self.dims.data_parallel_size)
        return model, engine

    def _loader(self) -> Any:
        # the data section IS the loader's config; only what the trainer resolved is replaced
        # quarantined videos (decode timeouts) are listed in the run folder, shared by every rank and kept
        # across resumes, unless the config names another file
        quarantine = self.cfg.data.quarantine_file or str(self.cfg.run_dir / "decode_quarantine.jsonl")
        lcfg = dataclasses.replace(self.cfg.data, urls=list(self.data_summary.urls), seed=self.cfg.data_seed,
                                   epoch_batches=self.epoch_batches, quarantine_file=quarantine)
        # the ranks of a sequence group read the same data
        return build_loader(lcfg, self.dims.data_parallel_rank, self.dims.data_parallel_size, self.reasoning,
                            frame_budget=run_budget(self.cfg, self.model))

    def _resume(self, load_dir: Path, tag: str) -> dict:
        """Load the checkpoint (checked by runguard.resume_plan before DeepSpeed started)."""
        state = ckpt.load(self.engine, load_dir, tag)
        lr = runguard.apply_optim_settings(self.engine, self.model, self.cfg)  # DeepSpeed restored the old ones
        self.step, self.samples = int(state["step"]), int(state["samples"])
        if "rng" in state:
            ckpt.set_rng_state(state["rng"])
        if self.is_main:
            log.info("resumed from %s at step %d (%d samples, data position %s); next lr %.3g", load_dir / tag,
                     self.step, self.samples, state.get("data"), lr)
        if self.restart_data:  # other data than the checkpoint's (resume_plan said so): from its beginning
            return {"epoch": 0, "batch": 0}
        return dict(state.get("data") or {"epoch": 0, "batch": 0})

    # ------------------------------------------------------------------ steps
    def next_micro_batch(self) -> dict:
        """Collated tensors of the next loader batch (train.tasks.collate, or train.packing.pack_collate
        with data.packing)."""
        examples = self.next_examples()
        if not examples:
            # Every rank must still run a forward (ZeRO-3 gathers parameters collectively): redo the
            # previous micro-batch with all weights zero (task ids 0 -> no target tokens).
            if self._last_collated is None:
                raise RuntimeError(f"rank {self.dims.rank}: a batch of {self.cfg.data.micro_batch_size} questions "
                                   f"gave no training example (task.mode={self.cfg.task.mode}; answers or "
                                   f"reasoning missing?)")
            empty = dict(self._last_collated)
            empty["task_ids"] = torch.zeros_like(empty["task_ids"])
            empty["labels"] = torch.full_like(empty["labels"], -100)
            return empty
        self._last_collated = self.collate_examples(examples)
        return self._last_collated

    def next_examples(self) -> list:
        """The training sequences (train.tasks.Example) of the next loader batch (may be empty); under a frame
        budget every clip at a count its prompts fit, refused samples left out (train.frame_budget)."""
        if self.budget_fit is not None:
            return self.budget_fit.examples(self.stream.next_batch())
        return [ex for sample in self.stream.next_batch() for ex in build_examples(sample, self.cfg.task)]

    def collate_examples(self, examples: list, packing: bool | None = None) -> dict:
        """Tokenized micro-batch of ``examples`` by the model's own collate: packed rows or one padded
        row each (``packing`` None = data.packing)."""
        packing = self.cfg.data.packing if packing is None else packing
        return self.model.collate(examples, self.cfg.task, packing=packing, row_capacity=self.cfg.row_capacity,
                                  visual_row_capacity=self.cfg.data.max_visual_tokens_per_row)

    def client_state(self) -> dict:
        return {"step": self.step, "samples": self.samples, "data": self.stream.position(), "rng": ckpt.rng_state(),
                "world_size": self.dims.world_size, "config": config_to_dict(self.cfg)}

    def data_state(self) -> dict:
        """The data the position counts batches of: the expanded shard list and the batches per epoch."""
        return {"shards": list(self.data_summary.urls), "epoch_batches": self.epoch_batches}

    def save(self) -> Path:
        return ckpt.save(self.engine, self.cfg.checkpoint_dir, self.step, self.client_state(), self.cfg,
                         self.ds_config, self.cfg.checkpoint.keep_latest, self.is_main, self.data_state())

    def train(self) -> dict:
        """Train up to ``run.max_steps``; returns a summary (rank-local, global numbers).

        Stops early, on every rank at the same step, when a preemption signal (SIGTERM / SIGUSR1)
        reached any rank (a checkpoint is saved first; ``summary["preempted"]`` names the signal),
        or raises :class:`NonFiniteError` after ``run.max_nonfinite_steps`` bad steps in a row.
        """
        cfg, gas = self.cfg, self.cfg.deepspeed.gradient_accumulation_steps
        tput, last_saved, stats, bad = Throughput(), self.step, None, 0
        self.engine.train()
        with PreemptionFlag() as preempt:
            while self.step < cfg.run.max_steps:
                t0 = time.perf_counter()
                micro = [self.next_micro_batch() for _ in range(gas)]
                data_s = time.perf_counter() - t0
                stats = optimizer_step(self.engine, micro, cfg.task, self.dims.world_size, self.device,
                                       sequence_parallel=cfg.parallel.sequence)
                self.step += 1
                self.samples += stats.examples
                tput.add(stats.tokens, stats.examples, stats.frames, data_s, stats.compute_s)
                self._log_step(stats, tput.rates())
                bad = self._check_finite(stats, bad)
                interval = cfg.checkpoint.interval_steps
                if interval and self.step % interval == 0 and not bad:
                    last_saved = self._save_once(last_saved)
                if preempt.agreed():  # every rank learns it at the same step (one all-reduce)
                    if not bad:
                        last_saved = self._save_once(last_saved)
                    self.metrics.message(f"preempted by {preempt.name} at step {self.step}: "
                                         f"{'checkpoint saved' if last_saved == self.step else 'NOT saved'}; "
                                         f"continue with --resume latest")
                    break
            if cfg.checkpoint.save_final and not bad and preempt.name is None:
                last_saved = self._save_once(last_saved)
        self.metrics.message(f"done: step {self.step}, {self.samples} samples; data stats "
                             f"{json.dumps(self.stream.loader.stats())}")
        if self.budget_fit is not None:  # what the frame budget did on this rank (frame counts, refusals)
            write_summary(self.budget_fit, self.stream.loader,
                          self.cfg.run_dir / f"frame_budget_rank{self.dims.rank}.json")
            self.metrics.message(f"frame budget: {json.dumps(self.budget_fit.summary())}")
        self.metrics.close()
        return {"step": self.step, "samples": self.samples, "loss": None if stats is None else stats.loss,
                "preempted": preempt.name, **tput.rates()}

    def _save_once(self, last_saved: int) -> int:
        """Save this step unless it is saved already (or was the resumed checkpoint)."""
        if last_saved != self.step:
            self.save()
        return self.step

    def _log_step(self, stats: Any, rates: dict) -> None:
        self.metrics.step(self.step, stats.loss, rates["tokens_per_s"])
        if self.step % self.cfg.logging.every_steps == 0 or self.step == self.cfg.run.max_steps:
            self.metrics.log(self.step, {**asdict(stats), **rates, "samples_seen": self.samples,
                                         "epoch": self.stream.epoch})

    def _check_finite(self, stats: Any, bad: int) -> int:
        """Bad steps in a row after this one; raises NonFiniteError at ``run.max_nonfinite_steps``.

        The loss and the gradient norm are global (all-reduced), so every rank decides alike. With
        fp16, DeepSpeed's loss scaler skips overflowing steps itself: only the loss is checked.
        """
        norm_ok = (stats.grad_norm is None or math.isfinite(stats.grad_norm)
                   or self.cfg.deepspeed.precision == "fp16")
        if math.isfinite(stats.loss) and norm_ok:
            return 0
        bad += 1
        limit = self.cfg.run.max_nonfinite_steps
        what = f"loss {stats.loss}, gradient norm {stats.grad_norm}"
        if bad >= limit:
            raise NonFiniteError(f"step {self.step}: {what}: {bad} non-finite step(s) in a row "
                                 f"(run.max_nonfinite_steps={limit}); stopped without saving, the last good "
                                 f"checkpoint is {self.cfg.checkpoint_dir / 'latest'} (lower optim.lr?)")
        self.metrics.message(f"warning: step {self.step}: {what} ({bad} of {limit} allowed in a row); "
                             f"no checkpoint is written until a step is finite again")
        return bad


class NonFiniteError(RuntimeError):
    """The loss or gradient norm stayed non-finite for ``run.max_nonfinite_steps`` steps (every rank)."""


class PreemptionFlag:
    """Catches SIGTERM / SIGUSR1 (SLURM's warning before a requeue, torchrun's forwarded stop) as a flag.

    The handler only records the signal; :meth:`agreed` all-reduces the flag after a step, so a
    signal that reached only some ranks still stops every rank at the same step, after a save.
    The previous handlers are restored on exit.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
    LAUNCHER_GONE = "the exit of torchrun"
    """A rank whose torchrun exited (a signal it does not forward, such as SIGUSR1, kills it alone)
    is re-parented: it stops like a signalled one instead of training on without a launcher."""

    def __init__(self) -> None:
        self.name: str | None = None
        self._got: str | None = None
        self._old: dict = {}
        # only under torchrun (its agent is our parent); a plain run's parent shell may go away (nohup)
        self._ppid = os.getppid() if os.environ.get("TORCHELASTIC_RUN_ID") else None

    def __enter__(self) -> PreemptionFlag:
        for sig in self.SIGNALS:
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (an embedding application): no handler
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self._got = signal.Signals(signum).name

    def agreed(self) -> bool:
        """True on every rank once any rank got a signal or lost its launcher (a collective: call it on
        all ranks)."""
        if self._got is None and self._ppid is not None and os.getppid() != self._ppid:
            self._got = self.LAUNCHER_GONE
        names = [sig.name for sig in self.SIGNALS] + [self.LAUNCHER_GONE]
        got = all_reduce_sum([float(self._got == n) for n in names])  # which stop reached some rank
        if any(got):
            self.name = "/".join(n for n, c in zip(names, got) if c)
        return self.name is not None

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
