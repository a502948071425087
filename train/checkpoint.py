"""DeepSpeed checkpoints with the trainer's own state, atomic "latest", rotation and RNG.

Layout of ``{checkpoint dir}``::

    global_step{N}/                    DeepSpeed's files: every rank writes its own shards
        zero_pp_rank_{r}_mp_rank_00_model_states.pt   (+ client_state of rank r: RNG, data position)
        ..._optim_states.pt
        train_config.yaml  ds_config.json  data.json  complete.json   (rank 0, after all ranks finished)
    latest                             the newest COMPLETE tag (what zero_to_fp32 also reads)
    tokenizer/                         the run's tokenizer (for export)
    zero_to_fp32.py                    DeepSpeed's consolidation script (copied by DeepSpeed)

"latest" is written by rank 0 only after a barrier that every rank reaches once its shard
is on disk, and atomically (temp file + rename), so a job killed while saving resumes from
the previous complete checkpoint.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data_shards.common.atomic import atomic_write_text
from train.config import TrainConfig, save_config
from train.dist import barrier

TAG_RE = re.compile(r"^global_step(\d+)$")
COMPLETE = "complete.json"


def tag_for(step: int) -> str:
    return f"global_step{step}"


def complete_checkpoints(ckpt_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint, oldest first."""
    out = []
    root = Path(ckpt_dir)
    if root.is_dir():
        for p in root.iterdir():
            m = TAG_RE.match(p.name)
            if m and (p / COMPLETE).is_file():
                out.append((int(m.group(1)), p))
    return sorted(out)


def resolve_resume(arg: str | None, ckpt_dir: str | Path) -> tuple[Path, str] | None:
    """Where to resume from: (load_dir, tag), or None to start fresh.

    Args:
        arg: None (fresh), "latest" (the newest complete checkpoint in ``ckpt_dir``; a fresh
            start when there is none, so a requeued job can always pass it), or a path to a
            ``global_step{N}`` directory.
        ckpt_dir: the run's checkpoint directory.

    Raises:
        FileNotFoundError: an explicit path is missing or incomplete.
    """
    if arg is None:
        return None
    if arg == "latest":
        latest = Path(ckpt_dir) / "latest"
        if latest.is_file():
            tag = latest.read_text().strip()
            if (Path(ckpt_dir) / tag / COMPLETE).is_file():
                return Path(ckpt_dir), tag
        done = complete_checkpoints(ckpt_dir)
        return (Path(ckpt_dir), done[-1][1].name) if done else None
    path = Path(arg)
    if not (path / COMPLETE).is_file():
        raise FileNotFoundError(f"--resume {arg}: not a complete checkpoint directory (no {COMPLETE})")
    return path.parent, path.name


def rng_state() -> dict:
    """This rank's python, numpy and torch RNG states."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


DATA_STATE = "data.json"
"""The data a checkpoint's position counts batches of: ``{"shards": [...], "epoch_batches": n}``."""


def save(engine: Any, ckpt_dir: str | Path, step: int, client_state: dict, cfg: TrainConfig,
         ds_config: dict, keep_latest: int, is_main: bool, data_state: dict | None = None) -> Path:
    """Save a DeepSpeed checkpoint for ``step`` on every rank, mark it complete, rotate.

    Args:
        engine: the DeepSpeed engine (all ranks call this).
        ckpt_dir: the run's checkpoint directory.
        step: optimizer steps done.
        client_state: this rank's trainer state (step, samples, data position, RNG, config).
        cfg, ds_config: written next to the shards (rank 0).
        data_state: the expanded shard list and batches per epoch the data position refers to
            (:data:`DATA_STATE`, rank 0; a resume on other data starts that data from its beginning).
        keep_latest: complete checkpoints to keep.
        is_main: rank 0 writes the metadata, "latest" and deletes old checkpoints.

    Returns:
        The tag directory.
    """
    ckpt_dir = Path(ckpt_dir)
    tag = tag_for(step)
    # save_latest=False: DeepSpeed's rank 0 would write "latest" without waiting for the
    # other ranks' shards; we write it below after a barrier.
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=client_state, save_latest=False)
    barrier()
    path = ckpt_dir / tag
    if is_main:
        save_config(cfg, path / "train_config.yaml")
        atomic_write_text(path / "ds_config.json", json.dumps(ds_config, indent=2))
        if data_state is not None:
            atomic_write_text(path / DATA_STATE, json.dumps(data_state))
        world = client_state.get("world_size")
        atomic_write_text(path / COMPLETE, json.dumps({"step": step, "time": time.time(), "world_size": world}))
        atomic_write_text(ckpt_dir / "latest", tag)
        rotate(ckpt_dir, keep_latest)
    barrier()
    return path


def rotate(ckpt_dir: str | Path, keep_latest: int) -> list[Path]:
    """Delete all but the newest ``keep_latest`` complete checkpoints, and incomplete ones
    older than the newest complete one (left by a job killed while saving)."""
    done = complete_checkpoints(ckpt_dir)
    removed = [p for _, p in done[:-keep_latest]] if len(done) > keep_latest else []
    newest = done[-1][0] if done else -1
    for p in Path(ckpt_dir).iterdir():
        m = TAG_RE.match(p.name)
        if m and not (p / COMPLETE).exists() and int(m.group(1)) < newest:
            removed.append(p)
    for p in removed:
        shutil.rmtree(p, ignore_errors=True)
    return removed


def load(engine: Any, load_dir: Path, tag: str) -> dict:
    """Load model, optimizer and scheduler state on every rank; return this rank's client state."""
    path, client = engine.load_checkpoint(str(load_dir), tag=tag, load_optimizer_states=True,
                                          load_lr_scheduler_states=True)
    if path is None:
        raise FileNotFoundError(f"DeepSpeed could not load checkpoint {load_dir / tag}")
    return client or {}
