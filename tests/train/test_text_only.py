"""Text-only examples (``"frames": None``) beside video ones, one process, both model kinds.

* a text-only prompt has no frame placeholders; its batch has no clip (``pixel_values`` None);
* a micro-batch of text-only examples gives each of them the loss it has inside a mixed batch (the
  tower's dummy clip, which ZeRO-3 needs, changes no real token), and the tower's gradient from it is
  exactly 0 on every tower / projector parameter a video batch reaches, each of which still gets one
  (the 2-rank ZeRO-3 runs are in test_engine_dist.py and test_hf_vlm_dist.py, ``mixed``).
"""

from __future__ import annotations

import pytest
import torch

from tests.train import exactness_worker as W
from tests.train.test_hf_vlm import TASK, _cfg
from train.config import load_config
from train.models import build_model
from train.tasks import build_examples


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from train.testing.hf_tiny import write_tiny_vlm

    root = tmp_path_factory.mktemp("tiny_text_only")
    out = {f: build_model(_cfg(write_tiny_vlm(root / f, f)), None) for f in ("qwen2_vl", "llava_onevision")}
    cfg = load_config(W.REPO / "configs" / "tiny_cpu.yaml", W.OVERRIDES)
    out["assembled"] = build_model(cfg.model, W.tokenizer())
    return out


def _examples(text_only: bool, start: int) -> list:
    qs = W.global_batch()[start:start + 3]
    for q in qs if text_only else ():
        q["frames"] = None
    return [ex for q in qs for ex in build_examples(q, TASK)]


def _vision_params(model) -> dict[str, torch.nn.Parameter]:
    if hasattr(model, "part_of"):
        return {n: p for n, p in model.named_parameters()
                if model.part_of(n.removeprefix("vlm.")) in ("vision", "projector") and p.requires_grad}
    return {n: p for n, p in model.named_parameters() if n.startswith(("vision.", "projector.")) and p.requires_grad}


def _loss(model, batch, keep_rows: torch.Tensor) -> torch.Tensor:
    w = (batch["labels"] != -100).float() * keep_rows[:, None]
    kw = {k: batch[k] for k in ("input_ids", "attention_mask", "labels", "pixel_values", "vision") if k in batch}
    return model(loss_weight=w, **kw)["loss"]


@pytest.mark.parametrize("kind", ["assembled", "qwen2_vl", "llava_onevision"])
def test_text_only_batch_loss_as_in_a_mixed_batch_and_zero_tower_gradient(models, kind):
    model = models[kind]
    text = _examples(True, 0)
    assert all(ex.frames is None for ex in text) and len(text) >= 3
    only = model.collate(text, TASK)
    assert only["pixel_values"] is None
    assert 0 < model.batch_flops(only) < model.batch_flops(model.collate(_examples(False, 0), TASK))  # no tower work
    placeholder = model.processor.video_token_id if kind != "assembled" else model.frame_token_id
    n_rows = only["input_ids"].shape[0]
    real = only["attention_mask"].bool()
    assert not bool((only["input_ids"][real] == placeholder).any())  # no placeholder among the real tokens
    mixed = model.collate(text + _examples(False, 3), TASK)
    assert mixed["input_ids"].shape[0] > n_rows
    assert int((mixed["input_ids"][:n_rows] == placeholder).sum()) == 0
    assert int((mixed["input_ids"][n_rows:] == placeholder).sum()) > 0

    vision = _vision_params(model)
    model.zero_grad(set_to_none=True)
    video = model.collate(_examples(False, 3), TASK)
    _loss(model, video, torch.ones(video["input_ids"].shape[0])).backward()
    used = {n for n, p in vision.items() if p.grad is not None}  # what a video batch reaches
    model.zero_grad(set_to_none=True)
    loss_only = _loss(model, only, torch.ones(n_rows))
    loss_only.backward()
    assert used and {n for n, p in vision.items() if p.grad is not None} == used, "the same tower parameters"
    assert all(float(vision[n].grad.abs().max()) == 0.0 for n in used), "and their gradient is exactly 0"
    model.zero_grad(set_to_none=True)
    keep = torch.zeros(mixed["input_ids"].shape[0])
    keep[:n_rows] = 1
    with torch.no_grad():
        loss_mixed = _loss(model, mixed, keep)
    assert loss_only.item() == pytest.approx(loss_mixed.item(), rel=1e-5)
