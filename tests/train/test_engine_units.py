"""Single-process pieces of the trainer: DeepSpeed JSON, LR schedule, layout checks, launcher env,
checkpoint bookkeeping (complete / latest / rotation), metrics files, data position."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from train import checkpoint as ckpt
from train.config import load_config
from train.dist import ParallelDims, export_torch_env
from train.engine import deepspeed_config, lr_factor, use_client_optimizer
from train.metrics import MetricsLogger, read_metrics

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "tiny_cpu.yaml"


def dims(world: int = 2, gas: int = 2, micro: int = 2) -> ParallelDims:
    return ParallelDims(0, world, 0, "torchrun", micro, gas)


def test_deepspeed_json_from_the_config():
    cfg = load_config(TINY, ["--deepspeed.precision=bf16", "--optim.grad_clip=0.5",
                             "--deepspeed.gradient_accumulation_steps=4"])
    ds = deepspeed_config(cfg, dims(world=2, gas=4, micro=cfg.data.micro_batch_size), accel="cpu")
    assert ds["zero_optimization"]["stage"] == 3
    micro = cfg.data.micro_batch_size
    assert ds["gradient_accumulation_steps"] == 4 and ds["train_micro_batch_size_per_gpu"] == micro
    assert ds["train_batch_size"] == micro * 4 * 2
    assert ds["zero_optimization"]["memory_efficient_linear"] is False
    assert ds["gradient_clipping"] == 0.5 and ds["bf16"] == {"enabled": True}
    assert ds["zero_force_ds_cpu_optimizer"] is False and "optimizer" not in ds  # torch AdamW as client
    assert ds["zero_optimization"]["overlap_comm"] is False  # no streams on CPU
    json.dumps(ds)  # must be JSON


def test_offload_uses_deepspeed_optimizer_on_gpu_but_torch_adamw_on_cpu():
    cfg = load_config(TINY, ["--deepspeed.offload_optimizer=cpu", "--optim.impl=auto"])
    gpu = deepspeed_config(cfg, dims(), accel="cuda")
    assert gpu["zero_optimization"]["offload_optimizer"] == {"device": "cpu", "pin_memory": True}
    assert gpu["optimizer"]["type"] == "AdamW" and "zero_force_ds_cpu_optimizer" not in gpu
    cpu = deepspeed_config(cfg, dims(), accel="cpu")
    assert "optimizer" not in cpu and cpu["zero_force_ds_cpu_optimizer"] is False
    assert use_client_optimizer(load_config(TINY, ["--optim.name=sgd"]).optim, "cpu", "cuda")
    nvme = load_config(TINY, ["--deepspeed.offload_param=nvme", "--deepspeed.nvme_path=/nvme"])
    assert deepspeed_config(nvme, dims(), accel="cuda")["zero_optimization"]["offload_param"]["nvme_path"] == "/nvme"
    extra = load_config(TINY, ['--deepspeed.extra={"comms_logger": {"enabled": true}}'])
    assert deepspeed_config(extra, dims(), accel="cpu")["comms_logger"] == {"enabled": True}


def test_lr_schedule_warmup_then_cosine():
    optim = load_config(TINY, ["--optim.warmup_steps=4", "--optim.min_lr_ratio=0.1"]).optim
    f = [lr_factor(s, optim, 20) for s in range(20)]
    assert f[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a >= b for a, b in zip(f[4:], f[5:]))
    assert math.isclose(lr_factor(20, optim, 20), 0.1)
    assert math.isclose(lr_factor(12, optim, 20), 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    const = load_config(TINY, ["--optim.schedule=constant", "--optim.warmup_steps=0"]).optim
    assert lr_factor(0, const, 20) == 1.0 and lr_factor(19, const, 20) == 1.0


def test_parallel_dims_and_launcher_env():
    d = ParallelDims.from_env(2, 3, env={"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1"})
    assert (d.rank, d.world_size, d.local_rank, d.launcher, d.global_batch) == (5, 8, 1, "slurm", 48)
    env = {"MASTER_ADDR": "node1", "MASTER_PORT": "29500"}
    export_torch_env(d, env)
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"]) == ("5", "8", "1")
    with pytest.raises(RuntimeError, match="MASTER_ADDR and MASTER_PORT not set"):
        export_torch_env(d, {})
    with pytest.raises(ValueError, match="micro_batch_size"):
        ParallelDims(0, 1, 0, "none", 0, 1)
    with pytest.raises(ValueError, match="rank 2 not in"):
        ParallelDims(2, 2, 0, "torchrun", 1, 1)


def _fake_checkpoint(root: Path, step: int, complete: bool = True) -> Path:
    p = root / ckpt.tag_for(step)
    p.mkdir(parents=True)
    (p / "zero_pp_rank_0_mp_rank_00_model_states.pt").write_bytes(b"x")
    if complete:
        (p / ckpt.COMPLETE).write_text(json.dumps({"step": step}))
    return p


def test_rotation_keeps_latest_k_and_drops_stale_partials(tmp_path):
    for s in (2, 4, 6):
        _fake_checkpoint(tmp_path, s)
    _fake_checkpoint(tmp_path, 3, complete=False)  # a job killed while saving step 3
    _fake_checkpoint(tmp_path, 8, complete=False)  # being written right now: keep
    removed = ckpt.rotate(tmp_path, keep_latest=2)
    assert sorted(p.name for p in removed) == ["global_step2", "global_step3"]
    assert [s for s, _ in ckpt.complete_checkpoints(tmp_path)] == [4, 6]
    assert (tmp_path / "global_step8").is_dir()


def test_resume_resolution(tmp_path):
    assert ckpt.resolve_resume(None, tmp_path) is None
    assert ckpt.resolve_resume("latest", tmp_path) is None  # nothing yet: a fresh start
    _fake_checkpoint(tmp_path, 4)
    _fake_checkpoint(tmp_path, 6, complete=False)
    assert ckpt.resolve_resume("latest", tmp_path) == (tmp_path, "global_step4")  # no 'latest' file: newest complete
    (tmp_path / "latest").write_text("global_step6")  # points at an incomplete one: fall back
    assert ckpt.resolve_resume("latest", tmp_path) == (tmp_path, "global_step4")
    assert ckpt.resolve_resume(str(tmp_path / "global_step4"), tmp_path) == (tmp_path, "global_step4")
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        ckpt.resolve_resume(str(tmp_path / "global_step6"), tmp_path)


def test_rng_state_round_trip():
    import random

    import numpy as np
    import torch

    state = ckpt.rng_state()
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    ckpt.set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a


def test_metrics_only_on_rank0(tmp_path):
    m0 = MetricsLogger(tmp_path / "r0", enabled=True, total_steps=3, progress_bar=False, tensorboard=True)
    m1 = MetricsLogger(tmp_path / "r1", enabled=False, total_steps=3)
    for step in (1, 2):
        for m in (m0, m1):
            m.step(step, 1.0 / step, 100.0)
            m.log(step, {"loss": 1.0 / step, "lr": 0.1})
    m0.close()
    m1.close()
    assert [r["loss"] for r in read_metrics(tmp_path / "r0" / "metrics.jsonl")] == [1.0, 0.5]
    assert list((tmp_path / "r0" / "tb").glob("events.out.tfevents.*"))
    assert not (tmp_path / "r1").exists()


class _ListLoader:
    """Stands in for the loader's epoch protocol (set_epoch + one epoch per iter), nothing else."""

    def __init__(self, per_epoch: int):
        self.per_epoch, self.epoch = per_epoch, 0

    def set_epoch(self, e: int) -> None:
        self.epoch = e

    def __iter__(self):
        return iter([[(self.epoch, i)] for i in range(self.per_epoch)])

    def stats(self) -> dict:
        return {}


def test_batch_stream_position_resumes_exactly():
    from train.datastream import BatchStream

    full = BatchStream(_ListLoader(3))
    seq = [full.next_batch() for _ in range(7)]
    first = BatchStream(_ListLoader(3))
    head = [first.next_batch() for _ in range(4)]
    pos = first.position()
    assert pos == {"epoch": 1, "batch": 1}
    resumed = BatchStream(_ListLoader(3), **pos)
    assert head + [resumed.next_batch() for _ in range(3)] == seq


def test_epoch_batches_equal_on_every_rank():
    from train.datastream import DataError, DataSummary, epoch_batches_for

    data = load_config(TINY, ["--data.epoch_batches=null", "--data.micro_batch_size=2"]).data
    counted = DataSummary(["a.tar"], True, videos=8, questions=24)
    assert epoch_batches_for(data, counted, world_size=2) == 6  # 24 questions / (2 per batch x 2 ranks)
    assert epoch_batches_for(data, counted, world_size=1) is None  # one process: one pass, any length
    with pytest.raises(DataError, match="data.epoch_batches: must be set"):
        epoch_batches_for(data, DataSummary(["pipe:cat a.tar"], False, None, None), world_size=2)
    fixed = load_config(TINY, ["--data.epoch_batches=5"]).data
    assert epoch_batches_for(fixed, counted, world_size=2) == 5


def test_sweep_removes_only_unmapped_deepspeed_shm_workspaces(tmp_path):
    """Stale DeepSpeed shm files go; one a live process maps and another user's stay."""
    import os
    import subprocess
    import sys

    from train.dist import SHM_PREFIX, shm_workspace_path, sweep_stale_shm_workspaces

    mine = f"{SHM_PREFIX}_{os.getuid()}_"
    stale, live, other = tmp_path / f"{mine}127.0.0.1_1_0", tmp_path / f"{mine}127.0.0.1_2_0", \
        tmp_path / f"{SHM_PREFIX}_{os.getuid() + 1}_127.0.0.1_3_0"
    for f in (stale, live, other):
        f.write_bytes(b"\0" * 4096)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import mmap, sys\nf = open(sys.argv[1], 'r+b')\nm = mmap.mmap(f.fileno(), 4096)\n"
        "print('mapped', flush=True)\nsys.stdin.read()"), str(live)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "mapped"
        assert sweep_stale_shm_workspaces(str(tmp_path)) == [stale.name]
        assert not stale.exists() and live.exists() and other.exists()
    finally:
        holder.communicate("", timeout=30)
    assert sweep_stale_shm_workspaces(str(tmp_path)) == [live.name]
    env = {"MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"}
    assert shm_workspace_path(3, env) == f"/dev/shm/{mine}10.0.0.1_29500_3"


def test_mostly_empty_reasoning_is_refused_unless_the_experiment_allows_it():
    """data.allow_sparse_reasoning turns the refusal of MTL on mostly empty reasoning into a warning (the
    study's real teacher: most of its refined texts are empty); a few empty ones are a warning either way."""
    from train.datastream import DataError, check_reasoning_texts

    recs = {f"q{i}": {"qid": f"q{i}", "prompt_version": "reasvqa-v1", "refined": "" if i < 3 else "The ball rolls."}
            for i in range(4)}
    with pytest.raises(DataError, match=r"3 of 4 ok records have no 'refined' text.*allow_sparse_reasoning"):
        check_reasoning_texts(recs, "refined", ["r.jsonl"])
    warning = check_reasoning_texts(recs, "refined", ["r.jsonl"], allow_sparse=True)
    assert "3 of 4" in warning and "training anyway" in warning
    recs["q0"]["refined"] = recs["q1"]["refined"] = "x"
    assert "1 of 4" in check_reasoning_texts(recs, "refined", ["r.jsonl"])
    assert load_config(Path(__file__).parents[2] / "configs" / "tiny_cpu.yaml",
                       ["--data.urls=/x.tar", "--data.allow_sparse_reasoning=true"]).data.allow_sparse_reasoning
