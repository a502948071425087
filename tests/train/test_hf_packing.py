"""Packing for existing HF video-LLMs (model.kind hf_vlm), one process, tiny random Qwen2-VL, Qwen2.5-VL
and LLaVA-OneVision folders (``train.testing.hf_tiny``):

* the packed layout: every example once, contiguous, its own tokens, labels, task ids and video;
* Qwen's 3-D M-RoPE positions of every packed example equal the positions transformers computes for
  the same example in the padded batch (the most reported packing bug: positions continuing across
  examples, or temporal positions not restarting);
* packed == padded: the same loss and the same gradients (vision tower, merger / projector, LLM), with
  a block-diagonal mask per row (sdpa, eager) and with the flattened layout flash-attn takes (rows as
  one sequence, boundaries from the restarting text positions; run here with transformers' SDPA,
  which builds its mask from the same positions);
* isolation: changing one example's text and video changes no other example's logits.
"""

from __future__ import annotations

import pytest
import torch

from tests.conftest import assert_close_report
from tests.train import exactness_worker as W
from tests.train.test_hf_vlm import FAMILIES, TASK, _cfg, _weights
from train.models import build_model
from train.tasks import build_examples

CAPACITY = 600


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from train.testing.hf_tiny import write_tiny_vlm

    root = tmp_path_factory.mktemp("tiny_vlms_packing")
    return {f: write_tiny_vlm(root / f, f) for f in FAMILIES}


def _examples(n_questions: int = 6) -> list:
    return [ex for q in W.global_batch()[:n_questions] for ex in build_examples(q, TASK)]


def _model(folder, attn: str = "sdpa"):
    model = build_model(_cfg(folder), None)
    model.hf_model.model.language_model.config._attn_implementation = attn
    return model


def _inputs(batch: dict) -> dict:
    keys = ("input_ids", "attention_mask", "labels", "position_ids", "segment_ids")
    return {"loss_weight": _weights(batch), "vision": batch["vision"], **{k: batch[k] for k in keys if k in batch}}


@pytest.mark.parametrize("family", FAMILIES)
def test_packed_layout_keeps_every_example_whole_with_its_own_video(folders, family):
    model = _model(folders[family])
    examples = _examples()
    padded = model.collate(examples, TASK)
    packed = model.collate(examples, TASK, packing=True, row_capacity=CAPACITY)
    assert packed["packed"] and packed["n_examples"] == len(examples)
    assert packed["input_ids"].shape[0] < len(examples)  # several examples share a row
    assert int(packed["segment_ids"].max()) >= 2
    by_key = {(q, t): i for i, (q, t) in enumerate(zip(padded["qids"], padded["tasks"]))}
    video = model.processor.video_token_id
    for j, (r, a, n) in enumerate(model._spans(packed["segment_ids"])):
        i = by_key.pop((packed["qids"][j], packed["tasks"][j]))
        m = padded["attention_mask"][i].bool()
        assert torch.equal(packed["input_ids"][r, a:a + n], padded["input_ids"][i][m])
        assert torch.equal(packed["labels"][r, a:a + n], padded["labels"][i][m])
        assert torch.equal(packed["task_ids"][r, a:a + n], padded["task_ids"][i][m])
        assert torch.equal(packed["position_ids"][r, a:a + n], torch.arange(n))
        assert packed["labels"][r, a] == -100  # no target predicted across two examples
        assert int((packed["input_ids"][r, a:a + n] == video).sum()) == int((padded["input_ids"][i] == video).sum())
        assert torch.equal(packed["pixel_values"][j], padded["pixel_values"][i])
    assert not by_key
    assert model.batch_flops(packed) == pytest.approx(model.batch_flops(padded), rel=1e-12)  # padding is not work
    if family != "llava_onevision":  # one video grid per example, in packed order
        assert packed["vision"]["video_grid_thw"].shape[0] == len(examples)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_mrope_positions_of_each_packed_example_are_those_of_its_padded_run(folders, family):
    model = _model(folders[family])
    examples = _examples()
    padded = model.collate(examples, TASK)
    packed = model.collate(examples, TASK, packing=True, row_capacity=CAPACITY)
    base = model.hf_model.model
    grids = {k: v for k, v in padded["vision"].items() if k != "pixel_values_videos"}
    want = base.compute_3d_position_ids(input_ids=padded["input_ids"], image_grid_thw=None, inputs_embeds=torch.zeros(
        *padded["input_ids"].shape, 1), attention_mask=padded["attention_mask"], cache=None, **grids)  # [3, B, L]
    got = model.packed_position_ids(packed["input_ids"], packed["position_ids"], packed["segment_ids"],
                                    packed["vision"])
    assert got.shape == (4, *packed["input_ids"].shape)
    assert torch.equal(got[0], packed["position_ids"])  # text positions first, as transformers' packed layout
    by_key = {(q, t): i for i, (q, t) in enumerate(zip(padded["qids"], padded["tasks"]))}
    starts_above_zero = 0
    for j, (r, a, n) in enumerate(model._spans(packed["segment_ids"])):
        i = by_key[(packed["qids"][j], packed["tasks"][j])]
        m = padded["attention_mask"][i].bool()
        assert torch.equal(got[1:, r, a:a + n], want[:, i][:, m]), (family, j)
        starts_above_zero += a > 0
    assert starts_above_zero > 0  # some examples start mid-row, and still get their own positions
    # video tokens have distinct temporal positions (more than one temporal patch), so the test can fail
    vid = packed["input_ids"] == model.processor.video_token_id
    assert got[1][vid].unique().numel() > 1


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("layout", ["rows-sdpa", "rows-eager", "flat"])
def test_packed_equals_padded_loss_and_gradients(folders, family, layout):
    """fp32; rtol 1e-5 on the loss, atol 1e-6 + rtol 1e-5 on every gradient (summation order only)."""
    model = _model(folders[family], "eager" if layout == "rows-eager" else "sdpa")
    if layout == "flat":  # the inputs flash_attention_2 gets, run by transformers' SDPA (mask from positions)
        model.packed_layout = lambda: "flat"
    examples = _examples()
    losses, grads = [], []
    for batch in (model.collate(examples, TASK),
                  model.collate(examples, TASK, packing=True, row_capacity=CAPACITY)):
        model.zero_grad(set_to_none=True)
        out = model(**_inputs(batch))
        out["loss"].backward()
        losses.append((out["loss"].item(), int(out["n_tokens"])))
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert losses[1][1] == losses[0][1] > 0
    assert losses[1][0] == pytest.approx(losses[0][0], rel=1e-5)
    assert grads[0].keys() == grads[1].keys()
    parts = {model.part_of(n.removeprefix("vlm.")) for n in grads[0]}
    assert {"vision", "projector", "llm"} <= parts, parts
    for name, g in grads[0].items():
        assert_close_report(grads[1][name], g, rtol=1e-5, atol=1e-6, name=name)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava_onevision"])
def test_a_packed_example_never_sees_another(folders, family):
    """Change the text and the video of the first example of a shared row: the logits of every other
    example stay the same, its own change."""
    model = _model(folders[family]).eval()
    examples = _examples()
    batch = model.collate(examples, TASK, packing=True, row_capacity=CAPACITY)
    spans = model._spans(batch["segment_ids"])
    kw = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids", "segment_ids")}
    before = model.logits(vision=batch["vision"], **kw)
    j = next(k for k, (r, a, n) in enumerate(spans) if a == 0 and int(batch["segment_ids"][r].max()) >= 2)
    r, a, n = spans[j]
    ids = batch["input_ids"].clone()
    video = model.processor.video_token_id
    text = torch.zeros_like(ids, dtype=torch.bool)
    text[r, a + 1:a + n] = True
    text &= ids != video
    ids[text] = torch.randint(10, 200, (int(text.sum()),), generator=torch.Generator().manual_seed(3))
    vision = dict(batch["vision"])
    pv = vision["pixel_values_videos"].clone()
    if family == "llava_onevision":  # [E, T, 3, H, W]
        pv[j] = torch.randn(pv[j].shape, generator=torch.Generator().manual_seed(4))
    else:  # patch rows of every video, concatenated in packed order
        per = vision["video_grid_thw"].prod(-1).tolist()
        lo = sum(per[:j])
        pv[lo:lo + per[j]] = torch.randn(pv[lo:lo + per[j]].shape, generator=torch.Generator().manual_seed(4))
    vision["pixel_values_videos"] = pv
    if "mm_token_type_ids" in vision:
        model.processor.add_token_types(vision, ids, batch["attention_mask"])
    kw["input_ids"] = ids
    after = model.logits(vision=vision, **kw)
    mine = torch.zeros(ids.shape, dtype=torch.bool)
    mine[r, a:a + n] = True
    real = batch["attention_mask"].bool()
    assert not torch.allclose(after[mine], before[mine], atol=1e-4)
    assert_close_report(after[real & ~mine], before[real & ~mine], rtol=1e-5, atol=1e-5, name="other examples")


@pytest.mark.gpu
@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava_onevision"])
def test_flash_attn_packed_rows_equal_padded_on_cuda(folders, family):
    """flash_attention_2 on CUDA (bf16): packed rows run flattened, with the varlen boundaries transformers
    finds where the text positions restart, and give the padded batch's loss (bf16: rtol 2e-2); changing the
    first example of a shared row leaves every other example's logits alone."""
    pytest.importorskip("flash_attn")
    from train.config import ModelConfig, load_section

    cfg = load_section(ModelConfig, {"kind": "hf_vlm", "attn_implementation": "flash_attention_2",
                                     "hf": {"path": str(folders[family]), "freeze_vision": False}}, "model")
    model = build_model(cfg, None, device="cuda", dtype=torch.bfloat16).to("cuda").eval()
    assert model.packed_layout() == "flat" and "varlen" in model.packing_attention
    examples = _examples()

    def cuda(batch):
        out = {k: v.cuda() for k, v in _inputs(batch).items() if isinstance(v, torch.Tensor)}
        return {**out, "vision": {k: v.cuda() for k, v in batch["vision"].items()}}

    padded = model.collate(examples, TASK)
    packed = model.collate(examples, TASK, packing=True, row_capacity=CAPACITY)
    with torch.no_grad():
        losses = [model(**cuda(b))["loss"].float().item() for b in (padded, packed)]
    assert losses[1] == pytest.approx(losses[0], rel=2e-2)
    kw = {k: v for k, v in cuda(packed).items() if k in ("input_ids", "attention_mask", "position_ids",
                                                         "segment_ids", "vision")}
    full = model.logits(**kw)
    seg = packed["segment_ids"].cuda()
    first = (seg == 1) & (kw["input_ids"] != model.processor.video_token_id)
    first[:, 0] = False  # keep each row's first token (the chat template's start)
    kw2 = dict(kw, input_ids=kw["input_ids"].clone())
    kw2["input_ids"][first] = 7
    changed = model.logits(**kw2)
    others = seg >= 2
    assert bool(others.any()) and float((changed[others] - full[others]).abs().max()) < 1e-3
