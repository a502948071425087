"""Helpers of the trainer (T2) tests: real synthetic shards, the tiny recipe, 2-rank launches.

Shards are REAL: ``data_shards.synth.make.make_synthetic`` renders and ffmpeg-encodes mp4s and
``data_shards.ingest.writer.write_shards`` packs them into WebDataset tars (contract 1) + sizes.json.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "tiny_cpu.yaml"
SYNTH = dict(width=64, height=64, fps=8, duration=2.0, questions_per_video=3, jobs=2)
"""Synthetic videos of the trainer tests: small and short (decoded to 4 frames of 32x32)."""


def make_shards(root: Path, videos: int = 8, shards: int = 4, seed: int = 0) -> str:
    """Synthetic videos -> ``shards`` tar files (+ sizes.json) under ``root/shards``; returns the brace pattern."""
    from data_shards.ingest.writer import write_shards
    from data_shards.synth.make import make_synthetic

    src = root / "synth"
    records = make_synthetic(src, videos=videos, seed=seed, **SYNTH)
    out = root / "shards"
    write_shards(records, src / "videos", str(out / "train-%06d.tar"), max_count=-(-videos // shards),
                 log=lambda *a, **k: None)
    n = len(list(out.glob("train-*.tar")))
    assert n == shards, f"expected {shards} shards, the writer made {n}"
    return str(out / f"train-{{000000..{n - 1:06d}}}.tar")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_tree(pid: int) -> list[int]:
    """SIGKILL a launcher and every process under it (torchrun starts each rank in its own session,
    so killing torchrun's process group would leave the ranks running). Returns the killed pids."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = root.children(recursive=True) + [root]
    except psutil.NoSuchProcess:
        return []
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=30)
    return [p.pid for p in procs]


def env_for_launch() -> dict:
    env = dict(os.environ)
    env.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))
    env["TOKENIZERS_PARALLELISM"] = "false"
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def torchrun_cmd(nproc: int, *args: str, module: str | None = "train") -> list[str]:
    """``python -m torch.distributed.run --nproc_per_node N -m MODULE ARGS`` on a free port
    (``module=None``: ARGS start with a script path)."""
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
            "--master_port", str(free_port()), *(["-m", module] if module else []), *args]


def run_torchrun(nproc: int, *args: str, timeout: float = 300, module: str = "train") -> subprocess.CompletedProcess:
    return subprocess.run(torchrun_cmd(nproc, *args, module=module), cwd=REPO, env=env_for_launch(),
                          capture_output=True, text=True, timeout=timeout)


GOLDEN_STEPS, CKPT_EVERY = 8, 4
"""The trainer tests run the tiny recipe for 8 steps with checkpoints at 4 and 8 (= the golden run)."""
GOLDEN = REPO / "tests" / "train" / "golden" / "tiny_cpu_losses.json"


def tiny_overrides(urls: str, run_dir: Path, **extra: object) -> list[str]:
    """Overrides that point the tiny recipe at test shards and a tmp run dir (the golden run's args)."""
    items = [f"--data.urls={urls}", f"--run.output_dir={run_dir.parent}", f"--run.name={run_dir.name}",
             f"--run.max_steps={GOLDEN_STEPS}", f"--checkpoint.interval_steps={CKPT_EVERY}",
             "--logging.progress_bar=false"]
    items += [f"--{k}={v}" for k, v in extra.items()]
    return items


def losses(run_dir: Path) -> dict[int, float]:
    """step -> loss from a run's metrics.jsonl (a resumed run appends: the last record of a step wins)."""
    from train.metrics import read_metrics

    return {r["step"]: r["loss"] for r in read_metrics(run_dir / "metrics.jsonl")}


def shm_workspaces() -> set[str]:
    """This user's DeepSpeed CPU-comm shm files in /dev/shm (each run used to leave one per rank)."""
    import os

    from train.dist import SHM_DIR, SHM_PREFIX

    prefix = f"{SHM_PREFIX}_{os.getuid()}_"
    return {n for n in os.listdir(SHM_DIR) if n.startswith(prefix)}
