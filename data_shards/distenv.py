"""Rank / world size / local rank from whichever launcher started us.

One function for torchrun, the deepspeed launcher, SLURM (srun) and Open MPI, so that the
loader, reasoning generation and the trainer agree on who they are.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


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
