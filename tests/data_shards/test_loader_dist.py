"""Two real ranks (processes) x 2 DataLoader workers each: disjoint shards, equal batch counts, no hang.

Each rank is a subprocess running this file as a script; rank and world size come from the
launcher variables (RANK / WORLD_SIZE) or from a gloo process group. A run that would leave a
rank waiting in a collective is caught by the subprocess timeout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 150


def child(out: str, urls: str, mode: str, epochs: int, epoch_batches: int | None) -> None:
    """One rank: iterate ``epochs`` epochs, write what it saw to ``out`` (json)."""
    import torch
    import torch.distributed as dist

    from data_shards.stream.loader import LoaderConfig, build_loader

    if mode == "gloo":
        dist.init_process_group("gloo", timeout=__import__("datetime").timedelta(seconds=60))
    cfg = LoaderConfig(urls=urls, num_frames=2, frame_size=(16, 16), micro_batch_size=3, num_workers=2, shuffle_buffer=3,
                       epoch_batches=epoch_batches, seed=5)
    loader = build_loader(cfg)  # rank / world from RANK, WORLD_SIZE (both modes set them)
    seen = []
    for _ in range(epochs):
        keys, batches = [], 0
        for batch in loader:
            batches += 1
            keys += [s["__key__"] + "|" + s["qid"] for s in batch]
            if mode == "gloo":  # a collective per batch: a rank that ran dry would hang its peer
                n = torch.tensor([len(batch)])
                dist.all_reduce(n)
        seen.append({"batches": batches, "keys": keys})
    if mode == "gloo":
        total = torch.tensor([sum(e["batches"] for e in seen)])
        dist.all_reduce(total)
        dist.destroy_process_group()
    Path(out).write_text(json.dumps({"rank": loader.rank, "world": loader.world_size, "epochs": seen,
                                     "stats": loader.stats()}))


def run_ranks(tmp_path: Path, urls: str, mode: str, epochs: int, epoch_batches: int | None) -> list[dict]:
    procs = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(29500 + os.getpid() % 2000), PYTHONPATH=str(REPO))
        out = tmp_path / f"rank{rank}.json"
        cmd = [sys.executable, __file__, str(out), urls, mode, str(epochs), str(epoch_batches or 0)]
        procs.append((subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       text=True), out))
    results = []
    for proc, out in procs:
        try:
            text, _ = proc.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            for p, _ in procs:
                p.kill()
            pytest.fail(f"rank process hung for {TIMEOUT_S} s (a rank ran dry or a collective waited)")
        assert proc.returncode == 0, f"rank failed:\n{text[-3000:]}"
        results.append(json.loads(out.read_text()))
    return results


@pytest.fixture(scope="module")
def uneven(tmp_path_factory):
    from tests.data_shards.media_helpers import make_shards

    out = tmp_path_factory.mktemp("dist")
    _paths, expected = make_shards(out, [1, 5, 2, 3, 1], questions=2)  # 12 videos, 30 questions
    return str(out / "shard-{000000..000004}.tar"), expected


@pytest.mark.slow
def test_two_ranks_one_pass_read_disjoint_shards_exactly_once(tmp_path, uneven):
    urls, expected = uneven
    ranks = run_ranks(tmp_path, urls, "env", epochs=1, epoch_batches=None)
    assert [(r["rank"], r["world"]) for r in ranks] == [(0, 2), (1, 2)]
    per_rank = [[k.split("|") for k in r["epochs"][0]["keys"]] for r in ranks]
    videos = [{key for key, _ in seen} for seen in per_rank]
    assert videos[0] and videos[1] and not videos[0] & videos[1], "ranks must read disjoint shards"
    qids = [qid for seen in per_rank for _, qid in seen]
    assert sorted(qids) == sorted(expected), "over both ranks: every question exactly once"


@pytest.mark.slow
def test_uneven_shards_same_batches_per_rank_under_collectives(tmp_path, uneven):
    urls, _expected = uneven
    ranks = run_ranks(tmp_path, urls, "gloo", epochs=2, epoch_batches=7)
    for r in ranks:
        assert [e["batches"] for e in r["epochs"]] == [7, 7], r["epochs"]
        assert all(len(e["keys"]) == 7 * 3 for e in r["epochs"]), "full batches only"
        assert r["stats"]["batches"] == 14 and r["stats"]["epochs"] == 2
    # shard split for pass 0: the ranks' first batches come from disjoint shards
    firsts = [{k.split("|")[0] for k in r["epochs"][0]["keys"][:3]} for r in ranks]
    assert not firsts[0] & firsts[1]


if __name__ == "__main__":
    out_, urls_, mode_, epochs_, eb_ = sys.argv[1:6]
    child(out_, urls_, mode_, int(epochs_), int(eb_) or None)
