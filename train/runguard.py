"""Guards that keep runs apart: the run folder and the resume policy, checked before DeepSpeed starts.

* :func:`check_run_folder`: a fresh run (no ``--resume``) into a folder that already holds another
  run's checkpoints or metrics is refused with one line (resume it, pick another ``run.name``, or
  ``--run.overwrite=true``, which :func:`clear_run_folder` carries out on rank 0).
* :func:`resume_plan`: compares the checkpoint's saved config and rank count with this job's,
  BEFORE DeepSpeed loads anything. The policy (docs/TRAINING.md, "Resuming with changed settings"):

  - refused (one line, exit 2): anything under ``model`` (shapes and names of the weights) or
    ``tokenizer`` (another vocabulary changes what every embedding row and target id means), the
    world size (ZeRO-3 shards), ``deepspeed.zero_stage`` / ``precision`` (checkpoint layout),
    ``data.micro_batch_size`` / ``deepspeed.gradient_accumulation_steps`` (the saved data position
    counts batches of the old size), ``optim.name`` / ``optim.impl`` (the optimizer state);
  - applied, with a warning that lists old -> new: the optimizer hyper-parameters (lr, betas, eps,
    weight decay, momentum, grad clip), the schedule (warmup, kind, min_lr_ratio, schedule_steps)
    and ``run.max_steps``. A longer ``run.max_steps`` keeps the cosine schedule's horizon
    (``optim.schedule_steps`` is pinned to the saved one), so the lr never rises again; pass
    ``--optim.schedule_steps=N`` to re-plan the decay;
  - the data (the checkpoint's ``data.json``: expanded shard list, batches per epoch) changed: the saved
    position counts batches of the old data, so the new data starts from its beginning (epoch 0);
  - every other changed field is used as given and listed in the same warning.
* :func:`apply_optim_settings`: after the load, writes the applied settings into the optimizer's
  param groups and the scheduler (DeepSpeed restores the saved ones).
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from train.checkpoint import DATA_STATE
from train.config import ConfigError, TrainConfig, config_to_dict
from train.engine import lr_factor, param_groups

REFUSED = {
    "model": "the weights' shapes and names come from it",
    "tokenizer": "the token ids of the embedding rows and of the targets come from it",
    "deepspeed.zero_stage": "the checkpoint's layout depends on it",
    "deepspeed.precision": "the checkpoint's layout depends on it",
    "data.micro_batch_size": "the saved data position counts batches of the old size",
    "deepspeed.gradient_accumulation_steps": "the saved data position counts batches of the old size",
    "parallel.sequence": "the saved data positions are per data-parallel rank, whose number it sets",
    "optim.name": "the saved optimizer state belongs to the old optimizer",
    "optim.impl": "the saved optimizer state belongs to the old optimizer",
}
APPLIED = ("optim.lr", "optim.weight_decay", "optim.betas", "optim.eps", "optim.momentum", "optim.grad_clip",
           "optim.warmup_steps", "optim.schedule", "optim.min_lr_ratio", "optim.schedule_steps", "run.max_steps")
QUIET = ("logging.", "checkpoint.", "run.name", "run.output_dir", "run.overwrite")
"""Changes that never need a word (where output goes, how often it is written)."""
_OPTIM_STATES = re.compile(r"^(?:bf16_)?zero_pp_rank_(\d+)_mp_rank_\d+_optim_states\.pt$")


# ------------------------------------------------------------------ run folders

def previous_run(cfg: TrainConfig) -> list[str]:
    """What of an earlier run the run / checkpoint folder holds (empty: the folder is free)."""
    found = []
    ckpt = cfg.checkpoint_dir
    latest = ckpt / "latest"
    if latest.is_file():
        found.append(f"{latest} -> {latest.read_text().strip()}")
    tags = sorted(p.name for p in ckpt.glob("global_step*")) if ckpt.is_dir() else []
    if tags:
        found.append(f"{len(tags)} checkpoint folder(s) in {ckpt}")
    metrics = cfg.run_dir / "metrics.jsonl"
    if metrics.is_file() and metrics.stat().st_size > 0:
        found.append(f"{metrics}")
    return found


def check_run_folder(cfg: TrainConfig, resume: str | None) -> None:
    """Refuse a fresh run that would mix with (or overwrite) another run's files.

    Raises:
        ConfigError: one line that says how to resume or how to start fresh.
    """
    if resume is not None:
        if cfg.run.overwrite:
            raise ConfigError("config: run.overwrite: cannot be combined with --resume (choose one)")
        return
    found = previous_run(cfg)
    if found and not cfg.run.overwrite:
        raise ConfigError(f"run dir {cfg.run_dir} already holds a run ({'; '.join(found)}): continue it with "
                          f"--resume latest, or start fresh with another --run.name or --run.overwrite=true "
                          f"(deletes its checkpoints and metrics)")


def clear_run_folder(cfg: TrainConfig) -> list[Path]:
    """``run.overwrite``: delete the earlier run's checkpoints, metrics, tokenizer and configs (rank 0)."""
    ckpt, run = cfg.checkpoint_dir, cfg.run_dir
    paths = [*(ckpt.glob("global_step*") if ckpt.is_dir() else []), ckpt / "latest", ckpt / "tokenizer",
             run / "metrics.jsonl", run / "tb", run / "tokenizer", run / "config.yaml", run / "ds_config.json"]
    removed = []
    for p in paths:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()
        else:
            continue
        removed.append(p)
    return removed


# ------------------------------------------------------------------ resume policy

@dataclass
class ResumePlan:
    """What a resume changes, decided before DeepSpeed loads the checkpoint."""

    applied: list[str] = field(default_factory=list)
    """``key old -> new`` of the applied settings."""
    as_given: list[str] = field(default_factory=list)
    """Other changed fields, used as given."""
    data_restart: str | None = None
    """Why the data position is not used (the shards or the batches per epoch changed), or None."""

    def warning(self) -> str | None:
        if not (self.applied or self.as_given or self.data_restart):
            return None
        parts = [self.data_restart] if self.data_restart else []
        if self.applied:
            parts.append("applying the changed optimizer / schedule settings: " + ", ".join(self.applied))
        if self.as_given:
            parts.append("other settings that differ from the checkpoint's (used as given): "
                         + ", ".join(self.as_given))
        return "resume: " + "; ".join(parts)


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix[:-1]: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {f"{prefix}{k}": v})
    return out


def saved_world_size(tag_dir: Path) -> int | None:
    """Ranks that wrote a checkpoint: ``complete.json``, else its per-rank optimizer-state files."""
    try:
        info = json.loads((tag_dir / "complete.json").read_text())
        if isinstance(info.get("world_size"), int):
            return info["world_size"]
    except (OSError, ValueError):
        pass
    ranks = [int(m.group(1)) for p in tag_dir.iterdir() if (m := _OPTIM_STATES.match(p.name))]
    return max(ranks) + 1 if ranks else None


def resume_plan(cfg: TrainConfig, tag_dir: Path, world_size: int, data_state: dict | None = None) -> ResumePlan:
    """Check a resume against the checkpoint in ``tag_dir``; may pin ``cfg.optim.schedule_steps``.

    ``data_state``: this job's expanded shard list and batches per epoch (as the checkpoint's
    ``data.json``). When they differ from the checkpoint's, the saved data position (epoch, batch)
    counts batches of data this job does not have: the new data starts from its beginning (epoch 0),
    the model, optimizer, step and schedule continue, and the warning says so.

    Raises:
        ConfigError: a refused change (one line naming the field, the old and the new value).
    """
    path = tag_dir / "train_config.yaml"
    if not path.is_file():
        _check_world(tag_dir, world_size)
        return ResumePlan(as_given=[f"(no {path.name} in the checkpoint: settings not compared)"])
    old = _flat(yaml.safe_load(path.read_text()) or {})
    saved_max = old.get("run.max_steps")
    if (cfg.optim.schedule == "cosine" and cfg.optim.schedule_steps is None and isinstance(saved_max, int)
            and saved_max != cfg.run.max_steps):
        # keep the decay's horizon: a longer run continues at min_lr instead of climbing again
        cfg.optim.schedule_steps = old.get("optim.schedule_steps") or saved_max
    new = _flat(config_to_dict(cfg))
    plan = ResumePlan()
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<unset>"), new.get(key, "<unset>")
        if a == b or key.startswith(QUIET) or (key not in old and key not in APPLIED):
            continue  # (a field this checkpoint's code did not have yet keeps its default meaning)
        why = next((w for k, w in REFUSED.items() if key == k or key.startswith(k + ".")), None)
        if why is not None:
            raise ConfigError(f"resume: {key} is {b!r} but checkpoint {tag_dir} was trained with {a!r}: "
                              f"{why}; resume with the checkpoint's value or start a new run")
        (plan.applied if key in APPLIED else plan.as_given).append(f"{key} {a!r} -> {b!r}")
    _check_world(tag_dir, world_size)
    plan.data_restart = _data_restart(tag_dir, data_state)
    return plan


def _data_restart(tag_dir: Path, data_state: dict | None) -> str | None:
    saved_path = tag_dir / DATA_STATE
    if data_state is None or not saved_path.is_file():
        return None
    saved = json.loads(saved_path.read_text())
    old, new = saved.get("shards") or [], data_state.get("shards") or []
    what = []
    if old != new:
        gone, added = len(set(old) - set(new)), len(set(new) - set(old))
        what.append(f"shards {len(old)} -> {len(new)} ({gone} gone, {added} new"
                    + (", same files in another order" if not gone and not added else "") + ")")
    if saved.get("epoch_batches") != data_state.get("epoch_batches"):
        what.append(f"batches per epoch {saved.get('epoch_batches')} -> {data_state.get('epoch_batches')}")
    if not what:
        return None
    return (f"the data changed since checkpoint {tag_dir} ({'; '.join(what)}): its saved position counts "
            "batches of the old data, so the new data starts from its beginning (epoch 0); model, optimizer, "
            "step and schedule continue")


def _check_world(tag_dir: Path, world_size: int) -> None:
    saved_ws = saved_world_size(tag_dir)
    if saved_ws is not None and saved_ws != world_size:
        raise ConfigError(f"resume: checkpoint {tag_dir} was written by {saved_ws} ranks, this job has "
                          f"{world_size}: ZeRO-3 shards only load on the same number of ranks")


def apply_optim_settings(engine: Any, model: Any, cfg: TrainConfig) -> float:
    """Write this config's optimizer settings over the ones DeepSpeed restored; returns the next lr.

    The scheduler's ``base_lrs`` and every param group's hyper-parameters are replaced; the lr of
    the next step is recomputed from the (possibly new) schedule at the restored step, so the
    logged lr follows the new setting from the first resumed step on.
    """

    o, sched, groups = cfg.optim, engine.lr_scheduler, engine.optimizer.param_groups
    decays = [g["weight_decay"] > 0 for g in param_groups(model, 1.0)]  # same order as the optimizer's
    lr = o.lr * lr_factor(sched.last_epoch, o, cfg.run.max_steps)
    for i, g in enumerate(groups):
        g["initial_lr"], g["lr"] = o.lr, lr
        g["weight_decay"] = o.weight_decay if (decays[i] if i < len(decays) else g["weight_decay"] > 0) else 0.0
        if "betas" in g:
            g["betas"], g["eps"] = tuple(o.betas), o.eps
        if "momentum" in g:
            g["momentum"] = o.momentum
    sched.base_lrs = [o.lr] * len(groups)
    return lr
