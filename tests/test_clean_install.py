"""The install a new user does: our wheel into a fresh venv with only torch pinned, the newest releases
of everything else that the resolver picks, used from outside the repository (slow: about 1-2 minutes,
needs the package index).

It catches what the constraints file of scripts/setup_cpu.sh hides: a module of ours that overwrites or
shadows another distribution's (our Triton package was ``kernels``, which transformers 5.25 needs from
Hugging Face), and dependency releases that do not work together (torchcodec 0.14+ next to a CPU torch).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import REPO, has_ffmpeg

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not has_ffmpeg(), reason="needs the ffmpeg CLI")]

# One tiny forward from outside the repository: a real mp4 (ffmpeg) decoded by torchcodec, the tiny
# assembled model, the multi-task loss through vqa_kernels, and a backward pass.
FORWARD = textwrap.dedent("""
    import subprocess, sys
    import torch, transformers, deepspeed, webdataset, torchcodec, vqa_kernels
    from data_shards.stream.frames import decode_frames
    from train.config import ModelConfig, TaskConfig
    from train.loss import task_token_counts, token_weights
    from train.models import build_model
    from train.tasks import build_examples, collate
    from train.tokenizer import build_tokenizer

    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=64x48:rate=8",
                    "-t", "2", "-pix_fmt", "yuv420p", "clip.mp4"], check=True)
    frames = decode_frames("clip.mp4", 4, (32, 32))
    tok = build_tokenizer(corpus=["What colour is the ball? red blue green", "The ball is blue."] * 20,
                          vocab_size=300)
    torch.manual_seed(0)
    model = build_model(ModelConfig(), tok)
    sample = {"qid": "synthetic/train/v1/0", "frames": frames, "question": "What colour is the ball?",
              "options": ["red", "blue", "green"], "answer": 1, "extra": {},
              "reasoning": {"refined": "The ball is blue.", "raw": None}}
    cfg = TaskConfig(mode="mtl")
    b = collate(build_examples(sample, cfg), tok, cfg, model.frame_layout(frames.shape[0]))
    weights = token_weights(b["task_ids"], *task_token_counts(b["task_ids"]), 1.0, 0.5)
    out = model(pixel_values=b["pixel_values"], input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                labels=b["labels"], loss_weight=weights)
    loss = out["loss"] if isinstance(out, dict) else out.loss
    loss.backward()
    assert torch.isfinite(loss), loss
    assert vqa_kernels.__file__.startswith(sys.prefix), vqa_kernels.__file__
    print("forward ok", round(loss.item(), 4), "transformers", transformers.__version__, "torchcodec",
          torchcodec.__version__, "deepspeed", deepspeed.__version__)
""")


def _run(cmd: list[str], cwd, timeout: int = 900) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PIP_CONSTRAINT")}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_wheel_in_a_fresh_venv_with_only_torch_pinned(tmp_path):
    venv, work = tmp_path / "venv", tmp_path / "elsewhere"
    work.mkdir()
    _run([sys.executable, "-m", "venv", str(venv)], tmp_path)
    pip, py = [str(venv / "bin" / "python"), "-m", "pip"], str(venv / "bin" / "python")
    _run([*pip, "install", "-q", "torch==2.13.0"], tmp_path)  # the one pin; the CPU wheel where one is local
    _run([*pip, "wheel", "-q", "--no-deps", "-w", str(tmp_path / "wheel"), str(REPO)], tmp_path)
    (wheel,) = (tmp_path / "wheel").glob("videoqa_reasoning-*.whl")
    _run([*pip, "install", "-q", str(wheel)], tmp_path)
    assert "usage" in _run([py, "-m", "train", "--help"], work).lower()
    out = _run([py, "-c", FORWARD], work).strip().splitlines()  # deepspeed logs its accelerator on stdout
    assert out and out[-1].startswith("forward ok"), out
    print(out[-1])
