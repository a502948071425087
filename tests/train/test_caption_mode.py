"""Stage-1 alignment: task.mode caption (frames -> caption), projector init from a stage-1 export.

The multi-process part (stage 1 under ZeRO-3 from real caption shards, then stage 2 starting
from its projector) is the slow test at the end.
"""

from __future__ import annotations

import json
import subprocess

import pytest
import torch

from tests.conftest import assert_close_report
from tests.train.engine_helpers import REPO, SYNTH, env_for_launch, losses, torchrun_cmd
from train.config import TaskConfig
from train.loss import TASK_QA
from train.tasks import build_examples, collate

CAPTION = {"qid": "webvid/train/v1/cap0", "video_id": "v1", "dataset": "webvid", "split": "train", "question": "",
           "options": [], "answer": None, "qtype": "caption", "extra": {"caption": "a red ball rolls left"},
           "frames": torch.zeros(4, 3, 32, 32, dtype=torch.uint8), "reasoning": None}
QUESTION = {"qid": "synthetic/train/v1/q0", "video_id": "v1", "dataset": "synthetic", "split": "train",
            "question": "What moved?", "options": ["ball", "box"], "answer": 0, "qtype": "TN",
            "extra": {"reasoning": "The ball moved."}, "frames": CAPTION["frames"], "reasoning": None}


def test_caption_mode_builds_caption_examples_and_skips_questions():
    cap = TaskConfig(mode="caption")
    (ex,) = build_examples(CAPTION, cap)
    assert (ex.task, ex.task_id, ex.target, ex.options) == ("caption", TASK_QA, "a red ball rolls left", [])
    assert build_examples(QUESTION, cap) == []
    assert build_examples(CAPTION, TaskConfig(mode="mtl", reasoning_source="gt")) == []  # QA modes skip captions
    assert [e.task for e in build_examples(QUESTION, TaskConfig(mode="mtl", reasoning_source="gt"))] == ["qa",
                                                                                                        "reasoning"]
    with pytest.raises(ValueError, match=r"webvid/train/v1/cap0: field 'extra.caption'"):
        build_examples({**CAPTION, "extra": {}}, cap)


def test_caption_prompt_has_no_question_or_options_lines_and_the_caption_is_the_target():
    from train.config import ModelConfig
    from train.tokenizer import build_tokenizer

    tok = build_tokenizer(None, corpus=["a red ball rolls left", "Describe the video briefly."], vocab_size=300)
    cfg = TaskConfig(mode="caption")
    batch = collate(build_examples(CAPTION, cfg), tok, cfg, ModelConfig().frame_layout(4))
    text = tok.decode(batch["input_ids"][0], skip_special_tokens=True)
    assert "Question:" not in text and "Options:" not in text and "Describe the video briefly." in text
    assert tok.decode(batch["labels"][0][batch["labels"][0] != -100], skip_special_tokens=True) == \
        " a red ball rolls left"


def test_projector_init_from_a_stage1_export_and_its_errors(tmp_path):
    from safetensors.torch import save_file

    from train.config import ModelConfig
    from train.models import build_model
    from train.tokenizer import build_tokenizer

    tok = build_tokenizer(None)
    src = build_model(ModelConfig(), tok)
    save_file({k: v.detach().clone() + 0.5 for k, v in src.projector.state_dict().items()},
              str(tmp_path / "projector.safetensors"))
    cfg = ModelConfig()
    cfg.projector.init_from = str(tmp_path)
    got = build_model(cfg, tok).projector.state_dict()
    for k, v in src.projector.state_dict().items():
        assert_close_report(got[k], v + 0.5, rtol=0, atol=0, name=k)
    cfg.projector.pool = [1, 1]
    cfg.projector.hidden = 16
    with pytest.raises(ValueError, match="does not fit this projector"):
        build_model(cfg, tok)
    cfg.projector.init_from = str(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="model.projector.init_from"):
        build_model(cfg, tok)


def _caption_shards(root) -> str:
    """Real caption shards: synthetic mp4s, one caption per video (its first question's true steps)."""
    from data_shards.ingest.convert import convert
    from data_shards.ingest.writer import write_shards
    from data_shards.schema import read_records, write_records
    from data_shards.synth.make import make_synthetic

    records = list(read_records(make_synthetic(root / "synth", videos=8, seed=0, **SYNTH)))
    lines = [json.dumps({"video": r.video, "caption": " ".join(r.qas[0].extra["reasoning_steps"])}) for r in records]
    (root / "caps.jsonl").write_text("\n".join(lines) + "\n")
    write_records(convert("captions", root / "caps.jsonl", "train"), root / "caption_records.jsonl")
    write_shards(root / "caption_records.jsonl", root / "synth" / "videos", str(root / "shards" / "train-%06d.tar"), max_count=2,
                 log=lambda *a, **k: None)
    return str(root / "shards" / "train-{000000..000003}.tar")


@pytest.mark.slow
def test_stage1_caption_run_trains_only_the_projector_then_stage2_starts_from_it(tmp_path):
    """Stage 1 (ZeRO-3, 2 ranks, frozen tower + LLM) on real caption shards: loss falls on a repeated
    batch; its export's projector then initialises a stage-2 QA run under ZeRO-3 (zero.Init), checked
    by a stage-2 step with SGD lr 1e-12 (the exported stage-2 projector equals stage 1's)."""
    from safetensors.torch import load_file

    from train.export import main as export_main

    urls = _caption_shards(tmp_path)
    stage1 = REPO / "configs" / "stage1_caption_tiny_cpu.yaml"
    common = ["--logging.progress_bar=false", "--checkpoint.interval_steps=0", "--data.shuffle_buffer=0",
              "--data.shuffle_shards=false", "--data.epoch_batches=1", "--deepspeed.gradient_accumulation_steps=1",
              f"--run.output_dir={tmp_path / 'runs'}"]
    args = ["--config", str(stage1), f"--data.urls={urls}", "--run.name=s1", "--run.max_steps=5",
            "--optim.warmup_steps=0", "--optim.schedule=constant", "--optim.lr=3e-2", *common]
    proc = subprocess.run(torchrun_cmd(2, *args), cwd=REPO, env=env_for_launch(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-5000:]
    seq = [v for _, v in sorted(losses(tmp_path / "runs" / "s1").items())]
    # only the projector learns (a random frozen LLM behind it): a steady, modest fall
    assert len(seq) == 5 and all(b < a for a, b in zip(seq, seq[1:])) and seq[-1] < seq[0] - 0.1, seq
    assert export_main(["--checkpoint", str(tmp_path / "runs" / "s1" / "checkpoints"), "--out",
                        str(tmp_path / "s1_export")]) == 0
    aligned = load_file(str(tmp_path / "s1_export" / "projector.safetensors"))

    args = ["--config", str(REPO / "configs" / "tiny_cpu.yaml"), f"--data.urls={urls}", "--task.mode=caption",
            "--run.name=s2", "--run.max_steps=1", f"--model.projector.init_from={tmp_path / 's1_export'}",
            "--optim.name=sgd", "--optim.lr=1e-12", "--optim.warmup_steps=0", *common]
    proc = subprocess.run(torchrun_cmd(2, *args), cwd=REPO, env=env_for_launch(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert export_main(["--checkpoint", str(tmp_path / "runs" / "s2" / "checkpoints"), "--out",
                        str(tmp_path / "s2_export")]) == 0
    got = load_file(str(tmp_path / "s2_export" / "projector.safetensors"))
    for k, v in aligned.items():
        assert_close_report(got[k], v, rtol=0, atol=1e-9, name=f"stage-2 projector {k}")


def test_a_projector_leaf_behind_a_frozen_tower_is_refused():
    """DeepSpeed re-gathers a ZeRO-3 leaf's weights for backward only when its input needs grad."""
    from train.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"deepspeed\.leaf_modules: Projector as a ZeRO-3 leaf needs"):
        load_config(REPO / "configs" / "tiny_cpu.yaml", ["--model.vision.freeze=true"])
    assert load_config(REPO / "configs" / "stage1_caption_tiny_cpu.yaml").model.vision.freeze
