"""Who we are in the job, the checked parallel layout, and process-group setup.

Rank / world size / local rank come from ONE function, ``data_shards.common.distenv.world_info_from_env``
(torchrun, the deepspeed launcher, SLURM srun, Open MPI). ``ParallelDims`` checks the layout
against the batch settings before anything heavy starts (torchtitan's ParallelDims idea: data
parallelism only, ZeRO shards over all ranks).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import dataclass
from datetime import timedelta

import deepspeed
import torch
import torch.distributed as dist
from deepspeed.accelerator import get_accelerator

from data_shards.common.distenv import WorldInfo, world_info_from_env


@dataclass(frozen=True)
class ParallelDims:
    """The layout of one run: ZeRO partitions over all ``world_size`` ranks; with sequence parallel the
    ``sequence`` consecutive ranks of a group share each micro-batch (``train.sequence_parallel``)."""

    rank: int
    """Global rank of this process."""
    world_size: int
    """Number of processes (= data-parallel degree = ZeRO partition count)."""
    local_rank: int
    """Rank on this node (picks the accelerator device)."""
    launcher: str
    """Which environment variables were read: torchrun, slurm, mpi or none."""
    micro_batch_size: int
    """Questions per micro-batch per rank."""
    grad_accum: int
    """Micro-batches per optimizer step per rank."""
    sequence: int = 1
    """Ranks per sequence group (``parallel.sequence``; 1 = every rank is a data-parallel rank)."""

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} not in [0, {self.world_size}) ({self.launcher})")
        if not 0 <= self.local_rank < max(self.world_size, 1):
            raise ValueError(f"local rank {self.local_rank} >= world size {self.world_size} ({self.launcher})")
        if self.micro_batch_size < 1 or self.grad_accum < 1:
            raise ValueError(f"micro_batch_size {self.micro_batch_size} and grad_accum {self.grad_accum} must be >= 1")
        if self.sequence < 1 or self.world_size % self.sequence:
            raise ValueError(f"parallel.sequence={self.sequence} must divide the number of ranks {self.world_size} "
                             f"({self.launcher})")

    @property
    def data_parallel_size(self) -> int:
        """Ranks that read different data: world_size / sequence."""
        return self.world_size // self.sequence

    @property
    def data_parallel_rank(self) -> int:
        """Which data-parallel shard of the data this rank reads (the same on a sequence group's ranks)."""
        return self.rank // self.sequence

    @property
    def global_batch(self) -> int:
        """Distinct questions per optimizer step over all ranks."""
        return self.micro_batch_size * self.grad_accum * self.data_parallel_size

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, micro_batch_size: int, grad_accum: int, env: dict | None = None, sequence: int = 1
                 ) -> ParallelDims:
        info = world_info_from_env(env)
        return cls(info.rank, info.world_size, info.local_rank, info.launcher, micro_batch_size, grad_accum, sequence)


def export_torch_env(info: WorldInfo | ParallelDims, env: dict | None = None) -> None:
    """Map SLURM / MPI variables to the RANK / WORLD_SIZE / LOCAL_RANK that torch and DeepSpeed read.

    Under torchrun or the deepspeed launcher these are already set. MASTER_ADDR / MASTER_PORT
    must come from the launcher (scripts/slurm_train.sbatch exports them); a single process
    gets localhost and a fixed port.
    """
    env = os.environ if env is None else env
    env.setdefault("RANK", str(info.rank))
    env.setdefault("WORLD_SIZE", str(info.world_size))
    env.setdefault("LOCAL_RANK", str(info.local_rank))
    if info.world_size == 1:
        env.setdefault("MASTER_ADDR", "127.0.0.1")
        env.setdefault("MASTER_PORT", "29511")
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if not env.get(k)]
    if missing:
        raise RuntimeError(f"{' and '.join(missing)} not set for a {info.world_size}-process job started by "
                           f"{info.launcher}: export them (see scripts/slurm_train.sbatch)")


def local_world_size(dims: ParallelDims, env: dict | None = None) -> int:
    """Processes on this node, from the launcher's variables (1 for a single process)."""
    env = os.environ if env is None else env
    for name in ("LOCAL_WORLD_SIZE", "LOCAL_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE", "SLURM_NTASKS_PER_NODE"):
        value = env.get(name, "")
        digits = value.split("(")[0].split(",")[0]  # SLURM writes e.g. "8(x4)"
        if digits.isdigit() and int(digits) > 0:
            return int(digits)
    return dims.world_size if dims.launcher in ("none", "torchrun") else 1


class MasterUnreachable(RuntimeError):
    """This rank could not open a TCP connection to MASTER_ADDR:MASTER_PORT within the timeout."""


def _hosts_the_store(dims: ParallelDims, env: dict) -> bool:
    """Whether this process will serve the rendezvous store itself (rank 0, unless torchrun's agent
    already serves it: TORCHELASTIC_USE_AGENT_STORE), so there is nothing to connect to yet."""
    return dims.rank == 0 and env.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() != "true"


def wait_for_master(dims: ParallelDims, timeout_s: float, env: dict | None = None) -> float:
    """Try to open a TCP connection to MASTER_ADDR:MASTER_PORT until it succeeds or ``timeout_s`` passes.

    torch's store client retries a refused or unanswered connection for the whole process-group
    timeout (30 minutes) without a word, so a master address that resolves to the wrong host (two
    nodes sharing a hostname, a wrong interface) looks like a hang. A refused connection is retried
    (the master may not be listening yet); a connection that is neither accepted nor refused waits at
    most what is left of the timeout. Returns the seconds it took.

    Raises:
        MasterUnreachable: naming the address and port, where they came from, and the interface
            variables that choose the address the ranks talk over.
    """
    env = os.environ if env is None else env
    addr, port = env.get("MASTER_ADDR", ""), int(env.get("MASTER_PORT", "0") or 0)
    start = time.monotonic()
    if _hosts_the_store(dims, env) or dims.world_size == 1:
        return 0.0
    last: OSError | None = None
    while (left := timeout_s - (time.monotonic() - start)) > 0:
        try:
            with socket.create_connection((addr, port), timeout=min(max(left, 0.1), 10.0)):
                return time.monotonic() - start
        except OSError as e:  # refused, unreachable, timed out, or the name does not resolve
            last = e
            time.sleep(min(0.5, max(timeout_s - (time.monotonic() - start), 0.0)))
    ifnames = ", ".join(f"{k}={env[k]!r}" for k in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME") if env.get(k))
    raise MasterUnreachable(
        f"rank {dims.rank} of {dims.world_size} ({dims.launcher}) could not reach the master at {addr}:{port} "
        f"within {timeout_s:g} s (last error: {type(last).__name__}: {last}). The address and port come from "
        f"MASTER_ADDR={addr!r} and MASTER_PORT={port} (set by the launcher, or exported); the interface the ranks "
        f"talk over from GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME ({ifnames or 'neither is set'}). Check that "
        f"{addr} resolves to the master node's address as seen from this node, and that the port is open; "
        f"the wait is deepspeed.master_timeout_s or VQA_MASTER_TIMEOUT_S.")


def master_timeout(configured: float, env: dict | None = None) -> float:
    """The master-reachability timeout: VQA_MASTER_TIMEOUT_S when set, else the configured value."""
    env = os.environ if env is None else env
    value = env.get("VQA_MASTER_TIMEOUT_S")
    if value is None:
        return configured
    try:
        out = float(value)
    except ValueError:
        raise ValueError(f"VQA_MASTER_TIMEOUT_S={value!r} is not a number of seconds") from None
    if out <= 0:
        raise ValueError(f"VQA_MASTER_TIMEOUT_S={value!r} must be > 0")
    return out


LAUNCH_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME", "TORCH_EXTENSIONS_DIR",
                    "OMP_NUM_THREADS", "TOKENIZERS_PARALLELISM", "HF_HOME", "PYTHONPATH")
"""Environment variables a multi-node launch must carry to every rank (recorded per rank in ``hosts.json``)."""


def rank_table(dims: ParallelDims) -> list[dict]:
    """``[{"rank", "host", "pid", "env"}, ...]`` of every rank, gathered once after the process group exists
    (saved as ``hosts.json`` in the run folder): it names the ranks a lost node took with it, and shows which
    of :data:`LAUNCH_VARIABLES` reached which rank (the DeepSpeed launcher forwards few by itself)."""
    me = {"rank": dims.rank, "host": socket.gethostname(), "pid": os.getpid(),
          "env": {k: os.environ[k] for k in LAUNCH_VARIABLES if k in os.environ}}
    if not dist.is_initialized() or dims.world_size == 1:
        return [me]
    table: list[dict | None] = [None] * dims.world_size
    dist.all_gather_object(table, me)
    return [t for t in table if t is not None]


COMM_FAILURES = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "Connection refused",
                 "NCCL communicator was aborted", "Socket Timeout")
"""Parts of the messages gloo / NCCL raise when a peer rank is gone."""


def is_comm_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective that failed because a peer went away (not a bug of ours)."""
    return isinstance(exc, getattr(dist, "DistNetworkError", ())) or (
        isinstance(exc, RuntimeError) and any(m in str(exc) for m in COMM_FAILURES))


class Heartbeat:
    """Every rank counts up a key in the rendezvous store (MASTER_ADDR:MASTER_PORT) every ``interval_s`` from a
    thread of its own, so that after a failed collective a rank can tell the lost ranks (their count stopped)
    from the ones that are still there but blocked in the same broken collective (their count goes on).

    torchrun's agent serves that store, so it outlives the ranks of every node but the master's; under other
    launchers rank 0 serves it. One small store write per rank and interval.
    """

    def __init__(self, dims: ParallelDims, interval_s: float = 2.0, env: dict | None = None):
        env = os.environ if env is None else env
        self.dims, self.interval_s = dims, interval_s
        self.addr, self.port = env.get("MASTER_ADDR", "127.0.0.1"), int(env.get("MASTER_PORT", "0") or 0)
        run = f"{env.get('TORCHELASTIC_RUN_ID', 'run')}/{env.get('TORCHELASTIC_RESTART_COUNT', '0')}"
        self.prefix = f"vqa_heartbeat/{run}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="rank-heartbeat", daemon=True)
        self._thread.start()

    def _client(self, timeout_s: float) -> dist.TCPStore:
        return dist.TCPStore(self.addr, self.port, is_master=False, timeout=timedelta(seconds=timeout_s),
                             wait_for_workers=False)

    def _beat(self) -> None:
        try:
            store = self._client(30.0)
            while not self._stop.is_set():
                store.add(f"{self.prefix}/{self.dims.rank}", 1)
                self._stop.wait(self.interval_s)
        except Exception:  # noqa: BLE001 - the store is gone: the census will say so
            return

    def stop(self) -> None:
        self._stop.set()

    def silent_ranks(self, window_s: float | None = None) -> list[int]:
        """The ranks whose count did not move in ``window_s`` (default 3 intervals). Raises if the store is gone."""
        window_s = 3 * self.interval_s if window_s is None else window_s
        store = self._client(max(window_s, 5.0))
        keys = [f"{self.prefix}/{r}" for r in range(self.dims.world_size)]
        before = [store.add(k, 0) for k in keys]
        time.sleep(window_s)
        after = [store.add(k, 0) for k in keys]
        return [r for r, (a, b) in enumerate(zip(before, after)) if a == b]


def lost_ranks_report(dims: ParallelDims, table: list[dict], exc: BaseException, heartbeat: Heartbeat | None,
                      env: dict | None = None) -> str:
    """After a failed collective, one line for the user: which ranks are gone and on which hosts.

    The lost ranks are those whose :class:`Heartbeat` stopped; if the store itself does not answer, the
    master's node is the lost one.
    """
    env = os.environ if env is None else env
    addr, port = env.get("MASTER_ADDR", "?"), env.get("MASTER_PORT", "?")
    hosts = {t["rank"]: t["host"] for t in table}
    first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
    if heartbeat is None:
        return f"a collective failed (a peer rank is gone; no heartbeat to say which): {first}"
    try:
        lost = heartbeat.silent_ranks()
    except Exception as e:  # noqa: BLE001 - the store's host is gone too: that is the answer
        on_master = sorted(r for r, h in hosts.items() if h == hosts.get(0))
        return (f"lost the master's node {hosts.get(0, addr)} (ranks {', '.join(map(str, on_master))}; its "
                f"rendezvous store {addr}:{port} does not answer: {type(e).__name__}) after a collective failed: "
                f"{first}")
    if not lost:
        return f"a collective failed but every rank's heartbeat goes on: {first}"
    by_host: dict[str, list[int]] = {}
    for r in lost:
        by_host.setdefault(hosts.get(r, "?"), []).append(r)
    where = "; ".join(f"ranks {', '.join(map(str, rs))} on host {h}" for h, rs in by_host.items())
    return f"lost {where} (their heartbeat stopped; a collective failed: {first})"


def init_distributed(dims: ParallelDims, backend: str = "auto", master_timeout_s: float = 120.0) -> str:
    """Create the default process group through DeepSpeed and pick this rank's device.

    Args:
        dims: the checked layout.
        backend: "auto" (DeepSpeed's accelerator default: nccl on CUDA, gloo on CPU without
            oneCCL), or "nccl" / "gloo" / "ccl".
        master_timeout_s: how long to try reaching MASTER_ADDR:MASTER_PORT first
            (:func:`wait_for_master`; VQA_MASTER_TIMEOUT_S overrides it).

    Returns:
        The backend in use.

    Raises:
        MasterUnreachable: the master could not be reached in time (the message says where and why).
    """
    export_torch_env(dims)
    if not dist.is_initialized():
        wait_for_master(dims, master_timeout(master_timeout_s))
    accel = get_accelerator()
    if accel.device_name() != "cpu":
        accel.set_device(dims.local_rank)
    else:
        # DeepSpeed's CPU accelerator answers device_count() from LOCAL_SIZE (its own launcher sets
        # it) and otherwise runs `numactl --hardware` in a subprocess, which ZeRO-3 does for every
        # gradient reduction: a fork per bucket per step.
        os.environ.setdefault("LOCAL_SIZE", str(local_world_size(dims)))
    name = accel.communication_backend_name() if backend == "auto" else backend
    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend=name, auto_mpi_discovery=False, rank=dims.rank,
                                   world_size=dims.world_size)
        if accel.device_name() == "cpu":
            release_shm_workspace(dims.rank)
    return name


SHM_DIR = "/dev/shm"
SHM_PREFIX = "deepspeed_allreduce_buffer"


def shm_workspace_path(rank: int, env: dict | None = None) -> str:
    """The shared-memory file DeepSpeed's CPU comm op creates for ``rank`` (deepspeed/ops/csrc/cpu/comm/shm.cpp:
    ``deepspeed_allreduce_buffer_{uid}_{MASTER_ADDR}_{MASTER_PORT}_{rank}``, ~69 MB)."""
    env = os.environ if env is None else env
    return (f"{SHM_DIR}/{SHM_PREFIX}_{os.getuid()}_{env.get('MASTER_ADDR', '')}_"
            f"{env.get('MASTER_PORT', '')}_{rank}")


def release_shm_workspace(rank: int) -> bool:
    """Unlink this rank's DeepSpeed shm workspace once every local rank has mapped it.

    DeepSpeed 0.19.8's CPU comm op creates one ~69 MB file per rank in /dev/shm when all ranks are
    on one node and never unlinks it: each run left its files behind, tmpfs counts them as RAM, and
    a test suite of ~150 such runs filled a 24 GiB machine until compiles and jobs stalled. By the
    time ``deepspeed.init_distributed`` returns on every rank, each rank has opened all the others'
    files (shm_initialize loops until it can), so after a barrier the names can go: the mappings
    stay valid and the kernel frees the memory when the last process exits, however it exits.

    Returns True when a file was removed.
    """
    barrier()
    try:
        os.unlink(shm_workspace_path(rank))
        return True
    except FileNotFoundError:  # the op was not built or not used (ranks on several nodes)
        return False


def sweep_stale_shm_workspaces(shm_dir: str = SHM_DIR) -> list[str]:
    """Remove this user's DeepSpeed shm workspaces that no running process maps (left by runs that
    predate ``release_shm_workspace`` or were killed inside ``init_distributed``).

    Returns the removed file names.
    """
    prefix = f"{SHM_PREFIX}_{os.getuid()}_"
    try:
        names = [n for n in os.listdir(shm_dir) if n.startswith(prefix)]
    except FileNotFoundError:
        return []
    if not names:
        return []
    mapped: set[str] = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as f:
                mapped.update(line.rsplit("/", 1)[-1].split(" (deleted)")[0].strip() for line in f if prefix in line)
        except OSError:  # the process ended, or is not ours to read
            continue
    removed = []
    for name in names:
        if name in mapped:
            continue
        try:
            os.unlink(os.path.join(shm_dir, name))
            removed.append(name)
        except FileNotFoundError:
            pass
    return removed


def device() -> torch.device:
    """This rank's compute device (cuda:LOCAL_RANK on a GPU node, cpu otherwise)."""
    return torch.device(get_accelerator().current_device_name())


def all_reduce_sum(values: list[float]) -> list[float]:
    """Sum a few numbers over all ranks (float64 on CPU for gloo, exact for token counts)."""
    t = torch.tensor(values, dtype=torch.float64)
    if dist.is_initialized() and dist.get_world_size() > 1:
        if dist.get_backend() == "nccl":
            t = t.to(device())
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu().tolist()


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def broadcast_object(obj: object, src: int = 0) -> object:
    """Rank ``src``'s python object on every rank (e.g. a decision made on rank 0)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
