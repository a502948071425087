"""The frame budget in real training: 2 gloo ranks (torchrun), ZeRO-3, real shards of synthetic mp4s of 1, 2
and 3 seconds (``data_shards.synth.make``, ffmpeg-encoded, packed by ``data_shards.ingest.writer``) and one
video whose questions' options are too long for any prompt. Under ``data.fps: 2`` and 20 visual tokens (the
tiny model takes 4 a frame) the clips train at 2, 4 and 5 frames, mixed in the micro-batches of both ranks (the ranks run the vision tower and projector once per
micro-batch whatever the mix, or ZeRO-3 would hang), and the long-option samples are refused and counted."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from tests.train.engine_helpers import TINY, losses, run_torchrun

pytestmark = pytest.mark.slow

LENGTHS = {1.0: 0, 2.0: 1, 3.0: 2}
"""Video length in seconds -> synthetic seed (video ids differ by seed)."""


def make_budget_shards(root: Path, videos_per_length: int = 3, shards: int = 4) -> tuple[str, list[str]]:
    """Shards of synthetic videos of every length in :data:`LENGTHS`, plus one ("refused") whose options are
    far longer than ``task.max_prompt_len``. Returns the brace pattern and the refused video's qids."""
    from data_shards.ingest.writer import write_shards
    from data_shards.synth.make import make_synthetic

    merged = root / "merged"
    (merged / "videos").mkdir(parents=True)
    lines = []
    for seconds, seed in LENGTHS.items():
        src = root / f"synth_{seed}"
        records = make_synthetic(src, videos=videos_per_length + (seed == 0), seed=seed, width=64, height=64, fps=8,
                                 duration=seconds, questions_per_video=2, jobs=2)
        for path in (src / "videos").iterdir():
            shutil.copyfile(path, merged / "videos" / path.name)
        lines += [json.loads(line) for line in records.read_text().splitlines() if line.strip()]
    refused = lines[0]  # a 1-second video of seed 0, its options made enormous
    long_option = " ".join(["the purple diamond bounced off the left edge and then turned red"] * 30)
    for qa in refused["qas"]:
        qa["options"] = [f"{long_option} ({k})" for k in range(len(qa["options"]))]
    records_path = merged / "records.jsonl"
    records_path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    out = root / "shards"
    write_shards(records_path, merged / "videos", str(out / "train-%06d.tar"), max_count=math.ceil(len(lines) / shards),
                 log=lambda *a, **k: None)
    n = len(list(out.glob("train-*.tar")))
    assert n == shards, f"expected {shards} shards, the writer made {n}"
    return str(out / f"train-{{000000..{n - 1:06d}}}.tar"), [qa["qid"] for qa in refused["qas"]]


@pytest.fixture(scope="module")
def budget_shards(tmp_path_factory):
    return make_budget_shards(tmp_path_factory.mktemp("budget_dist"))


@pytest.mark.parametrize("packing", [False, True], ids=["padded", "packed"])
def test_two_ranks_train_clips_of_different_frame_counts_and_count_refusals(budget_shards, tmp_path, packing):
    urls, refused_qids = budget_shards
    run_dir = tmp_path / "run"
    args = ["--config", str(TINY), f"--data.urls={urls}", f"--run.output_dir={run_dir.parent}",
            f"--run.name={run_dir.name}", "--run.max_steps=3", "--checkpoint.interval_steps=0",
            f"--checkpoint.save_final={str(not packing).lower()}", "--logging.progress_bar=false",
            "--logging.tensorboard=false",
            "--data.fps=2", "--data.min_frames=2", "--data.max_frames=6", "--data.max_visual_tokens=20",
            "--data.epoch_batches=4"]
    if packing:  # rows of 2 or 3 clips at most (4 visual tokens a frame, 48 a row)
        args += ["--data.packing=true", "--data.max_visual_tokens_per_row=48"]
    proc = run_torchrun(2, *args, timeout=600)
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-6000:]}"
    got = losses(run_dir)
    assert sorted(got) == [1, 2, 3] and all(math.isfinite(v) for v in got.values()), got
    reports = [json.loads((run_dir / f"frame_budget_rank{r}.json").read_text()) for r in (0, 1)]
    counts = {int(k) for rep in reports for k in rep["frame_counts"]}
    # 1 s and 2 s at 2 fps; 3 s would be 6 frames, but the model's 4 tokens a frame cap it at 20 / 4 = 5
    assert counts == {2, 4, 5}, reports
    assert all(len(rep["frame_counts"]) >= 2 for rep in reports), reports  # each rank mixes counts
    over = sum(rep["loader_stats"]["over_budget"] for rep in reports)
    assert over >= len(refused_qids) and over == sum(rep["refused"] for rep in reports), reports
    named = [m for rep in reports for m in rep["refused_samples"]]
    assert {q for q in refused_qids if any(q in m for m in named)} == set(refused_qids), named
    assert all("min_frames 2" in m and "task.max_prompt_len 256" in m for m in named), named
    assert all(rep["loader_stats"]["corrupt_video"] == 0 for rep in reports)
    if packing:
        return
    # evaluation of the export on 2 ranks: the training config's budget, every question answered
    from train.export import main as export_main

    export_dir = tmp_path / "export"
    assert export_main(["--checkpoint", str(run_dir / "checkpoints"), "--out", str(export_dir)]) == 0
    out = tmp_path / "eval"
    proc = run_torchrun(2, "run", "--checkpoint", str(export_dir), "--shards", urls, "--out", str(out),
                        "--batch-size", "4", "--workers", "0", module="eval", timeout=600)
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-6000:]}"
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert {r["num_frames"] for r in records} == {2, 4, 5}, sorted({r["num_frames"] for r in records})
    assert set(refused_qids) <= {r["qid"] for r in records} and len({r["qid"] for r in records}) == len(records)
    assert json.loads((out / "run.json").read_text())["frames"] == "budget 2..5"
