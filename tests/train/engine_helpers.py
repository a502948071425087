"""Helpers of the trainer (T2) tests: real synthetic shards, the tiny recipe, 2-rank launches.

Shards are REAL: ``data_shards.synth.make_synthetic`` renders and ffmpeg-encodes mp4s; they are
packed into WebDataset tars by ``data_shards.writer.write_shards`` when that exists, else by
``webdataset.TarWriter`` following contract 1 (key without dots, ``{key}.mp4`` + ``{key}.json``).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "tiny_cpu.yaml"


def _pack_with_tarwriter(records_path: Path, videos_dir: Path, out: Path, n_shards: int) -> str:
    import re

    import webdataset as wds

    records = [json.loads(line) for line in records_path.read_text().splitlines() if line.strip()]
    per = -(-len(records) // n_shards)
    for s in range(n_shards):
        with wds.TarWriter(str(out / f"train-{s:06d}.tar")) as sink:
            for rec in records[s * per:(s + 1) * per]:
                key = re.sub(r"[^A-Za-z0-9_-]", "-", f"{rec['dataset']}__{rec['split']}__{rec['video_id']}")
                video = (videos_dir / rec["video"]).read_bytes()
                rec = {**rec, "video": f"{key}.mp4"}
                sink.write({"__key__": key, "mp4": video, "json": json.dumps(rec).encode()})
    return str(out / f"train-{{000000..{n_shards - 1:06d}}}.tar")


def make_shards(root: Path, videos: int = 8, shards: int = 4, seed: int = 0) -> str:
    """Synthetic videos -> ``shards`` tar files under ``root/shards``; returns the brace pattern."""
    from data_shards.synth import make_synthetic

    src = root / "synth"
    records = make_synthetic(src, videos=videos, seed=seed, width=64, height=64, fps=8, duration=2.0,
                             questions_per_video=3, jobs=2)
    out = root / "shards"
    out.mkdir(parents=True, exist_ok=True)
    try:
        from data_shards.writer import write_shards  # noqa: F401
    except ImportError:
        return _pack_with_tarwriter(Path(records), src / "videos", out, shards)
    return _write_with_writer(Path(records), src / "videos", out, shards)


def _write_with_writer(records: Path, videos: Path, out: Path, shards: int) -> str:
    from data_shards import writer

    argv = ["--records", str(records), "--videos", str(videos), "--out", str(out), "--prefix", "train",
            "--shards", str(shards)]
    try:
        writer.main(argv)
    except SystemExit:
        return _pack_with_tarwriter(records, videos, out, shards)
    tars = sorted(out.glob("*.tar"))
    if len(tars) < 2:
        return _pack_with_tarwriter(records, videos, out, shards)
    return "::".join(str(t) for t in tars) if len(tars) != shards else str(tars[0]).rsplit("-", 1)[0] + \
        f"-{{000000..{len(tars) - 1:06d}}}.tar"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env_for_launch() -> dict:
    env = dict(os.environ)
    env.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))
    env["TOKENIZERS_PARALLELISM"] = "false"
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def torchrun_cmd(nproc: int, *args: str, module: str = "train") -> list[str]:
    """``python -m torch.distributed.run --nproc_per_node N -m MODULE ARGS`` on a free port."""
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
            "--master_port", str(free_port()), "-m", module, *args]


def run_torchrun(nproc: int, *args: str, timeout: float = 300, module: str = "train") -> subprocess.CompletedProcess:
    return subprocess.run(torchrun_cmd(nproc, *args, module=module), cwd=REPO, env=env_for_launch(),
                          capture_output=True, text=True, timeout=timeout)


def tiny_overrides(urls: str, run_dir: Path, **extra: object) -> list[str]:
    """Overrides that point the tiny recipe at test shards and a tmp run dir."""
    items = [f"--data.urls={urls}", f"--run.output_dir={run_dir.parent}", f"--run.name={run_dir.name}",
             "--logging.progress_bar=false", "--logging.tensorboard=false"]
    items += [f"--{k}={v}" for k, v in extra.items()]
    return items


def losses(run_dir: Path) -> list[float]:
    from train.metrics import read_metrics

    return [r["loss"] for r in read_metrics(run_dir / "metrics.jsonl")]
