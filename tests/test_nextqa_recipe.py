"""docs/TRAINING.md's NExT-QA path, run as written on CPU with only the sizes changed (slow, a few minutes).

The real-format slice: the 60 rows of NExT-QA's public val.csv (tests/fixtures), one synthetic video per
NExT-QA video id, stored VidOR-style (``FOLDER/VIDOR_ID.mp4``) behind a ``map_vid_vidorID.json``. Then
the documented commands: convert, write (through the id map), inspect, teacher generation (the
transformers backend with a tiny random LLaVA instead of a 38B teacher), merge, training with the
Qwen2.5-VL recipe (2 gloo ranks, the accumulation for their count, fp32, tiny sizes), export, eval run
with the official NExT-QA groups. The shard lists are globs, as in the docs.
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO, has_ffmpeg
from tests.train.engine_helpers import env_for_launch, torchrun_cmd

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not has_ffmpeg(), reason="needs the ffmpeg CLI")]
RECIPE = REPO / "configs" / "qwen25vl7b_lora_nextqa_multinode.yaml"


def _run(cmd: list[str], timeout: int = 600) -> str:
    proc = subprocess.run(cmd, cwd=REPO, env=env_for_launch(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)}\nexit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc.stdout


def _py(*args: str, timeout: int = 600) -> str:
    return _run([sys.executable, "-m", *args], timeout)


def _nextqa_slice(fixtures, root):
    """The fixture CSV as train.csv and val.csv, a video per id under VidOR-style folders, the id map."""
    rows = list(csv.DictReader((fixtures / "nextqa_val_head60.csv").open()))
    data = root / "nextqa"
    (data / "videos").mkdir(parents=True)
    for split in ("train", "val"):
        (data / f"{split}.csv").write_text((fixtures / "nextqa_val_head60.csv").read_text())
    vid_map = {}
    for i, vid in enumerate(dict.fromkeys(r["video"] for r in rows)):
        rel = f"{1000 + i % 3}/{vid}"  # FOLDER/VIDOR_ID, no extension, as NExT-QA's map_vid_vidorID.json
        (data / "videos" / rel).parent.mkdir(exist_ok=True)
        subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                        f"testsrc=size=64x48:rate=8,hue=h={i * 37 % 360}", "-t", "2", "-pix_fmt", "yuv420p",
                        str(data / "videos" / f"{rel}.mp4")], check=True)
        vid_map[vid] = rel
    (data / "map_vid_vidorID.json").write_text(json.dumps(vid_map))
    return data, rows


def test_nextqa_commands_as_documented(annotations_dir, tmp_path):
    from tests.reasoning_gen.tiny_vlm import build_tiny_llava
    from train.testing.hf_tiny import write_tiny_vlm

    data, rows = _nextqa_slice(annotations_dir, tmp_path)
    rec, shards, reasoning = tmp_path / "records", tmp_path / "shards", tmp_path / "reasoning"
    # 1. annotations -> records -> shards (a small --max-size: several shards, named by a glob from here on)
    for split in ("train", "val"):
        _py("data_shards", "convert", "--dataset", "nextqa", "--annotations", str(data / f"{split}.csv"),
            "--split", split, "--out", str(rec / f"nextqa_{split}.jsonl"))
        _py("data_shards", "write", "--records", str(rec / f"nextqa_{split}.jsonl"), "--videos", str(data / "videos"),
            "--video-map", str(data / "map_vid_vidorID.json"), "--out", str(shards / f"nextqa_{split}-%06d.tar"),
            "--max-size", "200K")
    train_glob, val_glob = str(shards / "nextqa_train-*.tar"), str(shards / "nextqa_val-*.tar")
    assert len(list(shards.glob("nextqa_train-*.tar"))) > 1
    types = _py("data_shards", "inspect", train_glob).split("question types:")[1]
    assert sum(int(n) for n in re.findall(r" (\d+)", types)) == len(rows), types  # every question in the shards
    # 2. teacher reasoning (a tiny random Qwen2.5-VL as the teacher), merged
    teacher = build_tiny_llava(tmp_path / "teacher", [r["question"] + " " + r["a0"] for r in rows])
    _py("reasoning_gen", "generate", "--shards", train_glob, "--backend", "transformers", "--model", str(teacher),
        "--opt", "max_new_tokens=12", "--frames", "4", "--size", "28x28", "--records",
        str(rec / "nextqa_train.jsonl"), "--out", str(reasoning / "nextqa_raw"), "--workers", "0", "--no-progress",
        "--max-failed-frac", "1.0")
    _py("reasoning_gen", "merge", str(reasoning / "nextqa_raw"), "--out", str(reasoning / "nextqa_train.refined.jsonl"),
        "--ok-only")
    assert (reasoning / "nextqa_train.refined.jsonl").read_text().strip()
    # 3. the recipe on 2 ranks: accumulation 256 / (4 x 2) would be 32; the sizes are cut to minutes here
    student = write_tiny_vlm(tmp_path / "student", "qwen2_5_vl", seed=0)
    sizes = [f"--model.hf.path={student}", "--model.hf.video_fps=2", "--model.lora.r=4", "--model.lora.alpha=8",
             "--model.attn_implementation=sdpa", "--data.num_frames=4", "--data.frame_size=[56,56]",
             "--data.micro_batch_size=2", "--data.num_workers=0", "--data.shuffle_buffer=8", "--data.epoch_batches=4",
             "--task.max_prompt_len=512", "--task.max_target_len=48", "--deepspeed.precision=fp32",
             "--deepspeed.gradient_accumulation_steps=2", "--deepspeed.overlap_comm=false",
             "--deepspeed.reduce_bucket_size=5000000", "--deepspeed.prefetch_bucket_size=5000000",
             "--deepspeed.param_persistence_threshold=0", "--optim.warmup_steps=1", "--run.max_steps=3",
             f"--run.output_dir={tmp_path / 'runs'}", f"--checkpoint.dir={tmp_path / 'ckpt'}",
             "--checkpoint.interval_steps=0", "--logging.progress_bar=false", "--run.num_threads=1"]
    paths = [f"--data.urls=[\"{train_glob}\"]", f"--data.reasoning=[\"{reasoning / 'nextqa_train.refined.jsonl'}\"]"]
    out = _run(torchrun_cmd(2, "--config", str(RECIPE), *paths, *sizes), timeout=900)
    assert "trained 3 steps" in out, out[-2000:]
    # 4. export (merged LoRA, bf16) and eval with the official groups
    _py("train", "export", "--checkpoint", str(tmp_path / "ckpt"), "--out", str(tmp_path / "export"), "--dtype", "bf16")
    _py("eval", "run", "--checkpoint", str(tmp_path / "export"), "--shards", val_glob, "--out", str(tmp_path / "res"),
        "--mode", "loglik", "--annotations", str(rec / "nextqa_val.jsonl"), "--threads", "1")
    scores = json.loads((tmp_path / "res" / "scores.json").read_text())
    assert scores["count"] == len(rows)  # every val question scored, grouped the official way
    assert {"C", "T", "D"} <= set(scores["per_type"])
