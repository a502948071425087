"""Rank / world size / local rank from whichever launcher started us, and how a distributed
process ends.

One function for torchrun, the deepspeed launcher, SLURM (srun) and Open MPI, so that the
loader, reasoning generation, the trainer and eval agree on who they are; ``shutdown`` and
``exit_process`` end every distributed command the same way.

torch is imported inside ``shutdown`` / ``exit_process`` only: this is the bottom layer of the
project, and every command ends through ``exit_process`` (``python -m eval score`` too), which must
not spend seconds loading torch in a process that never used it.
"""

from __future__ import annotations

import atexit
import os
import sys
from dataclasses import dataclass
from typing import NoReturn


@dataclass(frozen=True)
class WorldInfo:
    rank: int
    world_size: int
    local_rank: int
    launcher: str
    """Which variables were read: torchrun (also the deepspeed launcher), slurm, mpi or none."""


def _int(env: dict, *names: str) -> int | None:
    for name in names:
        value = env.get(name)
        if value not in (None, ""):
            try:
                return int(value)
            except ValueError:
                raise ValueError(f"environment variable {name}={value!r} is not an integer") from None
    return None


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS has one)."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity else os.cpu_count() or 1


def world_info_from_env(env: dict | None = None) -> WorldInfo:
    """Read the process's place in the job from the environment.

    Priority: torchrun / deepspeed (RANK, WORLD_SIZE, LOCAL_RANK), then SLURM (SLURM_PROCID,
    SLURM_NTASKS, SLURM_LOCALID), then Open MPI (OMPI_COMM_WORLD_*). With none set: a single
    process, rank 0 of 1.
    """
    env = os.environ if env is None else env
    if _int(env, "RANK") is not None and _int(env, "WORLD_SIZE") is not None:
        info = WorldInfo(_int(env, "RANK"), _int(env, "WORLD_SIZE"), _int(env, "LOCAL_RANK") or 0, "torchrun")
    elif _int(env, "SLURM_PROCID") is not None and _int(env, "SLURM_NTASKS") is not None:
        info = WorldInfo(_int(env, "SLURM_PROCID"), _int(env, "SLURM_NTASKS"), _int(env, "SLURM_LOCALID") or 0, "slurm")
    elif _int(env, "OMPI_COMM_WORLD_RANK") is not None:
        info = WorldInfo(_int(env, "OMPI_COMM_WORLD_RANK"), _int(env, "OMPI_COMM_WORLD_SIZE") or 1,
                         _int(env, "OMPI_COMM_WORLD_LOCAL_RANK") or 0, "mpi")
    else:
        info = WorldInfo(0, 1, 0, "none")
    if not 0 <= info.rank < info.world_size:
        raise ValueError(f"rank {info.rank} is not in [0, world size {info.world_size}) ({info.launcher} variables)")
    return info


_left_group = False


def shutdown() -> None:
    """Leave the process group at the end of a run, every rank together (barrier, then
    ``destroy_process_group``). End the process with :func:`exit_process` afterwards."""
    global _left_group
    import torch.distributed as dist  # torch only here: ``common`` stays importable without loading torch

    if dist.is_available() and dist.is_initialized():
        if dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()
        _left_group = True


def exit_process(code: int) -> NoReturn:
    """End a command's process with ``code``; skip the interpreter's teardown when it ran
    distributed.

    Why: once ``deepspeed.initialize`` has run, ``destroy_process_group`` no longer stops the
    gloo groups' threads (two ``pt_gloo_runloop`` and a ``gloo_tcp_loop`` per group): DeepSpeed
    still holds the groups (``deepspeed.utils.groups._WORLD_GROUP``, ``zero.Init``, each ZeRO-3
    parameter's ``ds_process_group``), even after ``engine.destroy()``. Plain gloo without
    DeepSpeed does stop them. Tearing the interpreter down with those threads running now and
    then aborts a rank after all its work is done ("terminate called without an active
    exception", SIGABRT): 2 of ~50 ``python -m train`` runs here, and one ZeRO-3 test rank in CI.
    So a process that joined a group runs the ``atexit`` handlers (logging, multiprocessing
    children such as DataLoader workers), flushes stdout/stderr and leaves with ``os._exit``,
    which skips only module teardown and the C++ static destructors. Files the run wrote are
    closed before this (metrics, TensorBoard, checkpoints, eval outputs).
    A process that never joined a group exits normally.
    """
    if "torch.distributed" not in sys.modules:  # never imported, so never joined: no torch import here
        sys.exit(code)
    import torch.distributed as dist  # already imported (checked above): no load here

    if not (_left_group or (dist.is_available() and dist.is_initialized())):
        sys.exit(code)
    try:
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # closed or broken pipe: nothing more can be said
                pass
        os._exit(code)
