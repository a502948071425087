"""Padding-free packing (data.packing): the bin packer, the packed batch layout, the same loss and
gradients as the padded batch, no attention across examples, config checks, and (GPU only) the
flash-attn varlen path.

The model is the tiny recipe's (fp32); the batch is the 2x2 exactness test's global batch: 8 questions
with different lengths, some without answer or reasoning, one distinct clip each.
"""

from __future__ import annotations

import pytest
import torch

from tests.conftest import assert_close_report
from tests.train import exactness_worker as W
from train.config import ConfigError, load_config
from train.loss import TASK_QA, TASK_REASON, token_weights
from train.models import build_model
from train.packing import (
    block_causal_mask,
    distinct_clips,
    first_fit_decreasing,
    pack_collate,
    padding_fraction,
    varlen_kwargs,
)
from train.tasks import build_examples, collate

PACKED = ("position_ids", "segment_ids", "clip_index")
CAPACITY = 700  # three or four of the batch's sequences per row


@pytest.fixture(scope="module")
def setup():
    torch.set_num_threads(1)
    cfg = load_config(W.REPO / "configs" / "tiny_cpu.yaml", W.OVERRIDES)
    tok = W.tokenizer()
    examples = [ex for q in W.global_batch() for ex in build_examples(q, cfg.task)]
    return cfg, tok, examples


def _model(cfg, tok, attn="sdpa"):
    """The tiny model with attention ``attn``; "sdpa_varlen" = sdpa switched to one call per packed sequence."""
    torch.manual_seed(0)
    cfg.model.attn_implementation = "sdpa" if attn == "sdpa_varlen" else attn
    model = build_model(cfg.model, tok)
    if attn == "sdpa_varlen":
        assert model.use_sdpa_varlen() == "sdpa_varlen"
    assert model.causal_lm.config._attn_implementation == attn
    return model


def _inputs(batch: dict, beta: float = 0.7) -> dict:
    n_qa, n_re = int((batch["task_ids"] == TASK_QA).sum()), int((batch["task_ids"] == TASK_REASON).sum())
    out = {k: batch[k] for k in ("pixel_values", "input_ids", "attention_mask", "labels")}
    out["loss_weight"] = token_weights(batch["task_ids"], n_qa, n_re, 1.0, beta)
    out.update({k: batch[k] for k in PACKED if k in batch})
    return out


def test_first_fit_decreasing_places_longest_first_into_the_first_bin_with_room():
    # longest first: 7 -> bin 0 (room 3); 5 -> new bin 1 (room 5); 4 -> bin 1 (room 1); 3 -> bin 0; 2 -> new bin 2
    assert first_fit_decreasing([5, 3, 7, 2, 4], 10) == [[2, 1], [0, 4], [3]]
    lengths = [int(x) for x in torch.randint(1, 50, (200,))]
    bins = first_fit_decreasing(lengths, 64)
    assert sorted(i for b in bins for i in b) == list(range(200))
    assert all(sum(lengths[i] for i in b) <= 64 for b in bins)
    # first fit: the item placed last (the shortest) went into the first bin with room for it, so every
    # bin before that one is left with less room than it needs
    last = sorted(range(200), key=lambda i: -lengths[i])[-1]
    where = next(k for k, b in enumerate(bins) if last in b)
    assert all(64 - sum(lengths[i] for i in b) < lengths[last] for b in bins[:where])
    with pytest.raises(ValueError, match="max_tokens_per_row=10"):
        first_fit_decreasing([4, 11], 10)


def test_distinct_clips_by_value_not_adjacency():
    a, b = torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.ones(2, 3, 4, 4, dtype=torch.uint8)
    index, clips = distinct_clips([a, b, a.clone(), b])
    assert index == [0, 1, 0, 1] and len(clips) == 2


def test_packed_batch_layout(setup):
    cfg, tok, examples = setup
    layout = cfg.model.frame_layout(cfg.data.num_frames)
    padded = collate(examples, tok, cfg.task, layout)
    packed = pack_collate(examples, tok, cfg.task, layout, CAPACITY)
    R, L = packed["input_ids"].shape
    assert R < padded["input_ids"].shape[0] and L <= CAPACITY and packed["n_examples"] == len(examples)
    assert padding_fraction(packed) < padding_fraction(padded)
    assert int(packed["segment_ids"].max()) >= 3  # several examples share a row
    # every example of the padded batch appears once, with the same tokens, labels and task ids
    by_key = {}
    for i, (qid, task) in enumerate(zip(padded["qids"], padded["tasks"])):
        n = int(padded["attention_mask"][i].sum())
        by_key[(qid, task)] = (padded["input_ids"][i, :n], padded["labels"][i, :n], padded["task_ids"][i, :n])
    j = 0
    for r in range(R):
        for s in range(1, int(packed["segment_ids"][r].max()) + 1):
            pos = (packed["segment_ids"][r] == s).nonzero().squeeze(1)
            assert torch.equal(pos, torch.arange(int(pos[0]), int(pos[0]) + len(pos)))  # contiguous
            assert torch.equal(packed["position_ids"][r, pos], torch.arange(len(pos)))  # restart per example
            ids, labels, tids = by_key.pop((packed["qids"][j], packed["tasks"][j]))
            assert torch.equal(packed["input_ids"][r, pos], ids)
            assert torch.equal(packed["labels"][r, pos], labels) and torch.equal(packed["task_ids"][r, pos], tids)
            assert packed["labels"][r, pos[0]] == -100  # first token is a prompt token: no target across examples
            assert packed["example_lengths"][j] == len(pos)
            frames = next(ex.frames for ex in examples if ex.qid == packed["qids"][j])
            assert torch.equal(packed["pixel_values"][packed["clip_index"][j]], frames)
            j += 1
    assert not by_key and j == len(examples)
    # QA and reasoning of one question share one clip: 8 questions -> 8 clips for 12 sequences
    assert packed["pixel_values"].shape[0] == len({ex.qid for ex in examples}) < len(examples)
    pad = packed["attention_mask"] == 0
    assert bool((packed["segment_ids"][pad] == 0).all()) and bool((packed["labels"][pad] == -100).all())


@pytest.mark.parametrize("attn", ["sdpa_varlen", "sdpa", "eager"])
def test_packing_on_and_off_give_the_same_loss_and_gradients(setup, attn):
    """fp32; tolerance rtol 1e-5 on the loss, atol 1e-6 + rtol 1e-5 on every gradient: the only
    differences are summation orders (attention over other key sets, the tower on another clip order)."""
    cfg, tok, examples = setup
    model = _model(cfg, tok, attn)
    layout = model.frame_layout(cfg.data.num_frames)
    grads, losses = [], []
    for batch in (collate(examples, tok, cfg.task, layout), pack_collate(examples, tok, cfg.task, layout, CAPACITY)):
        model.zero_grad(set_to_none=True)
        loss = model(**_inputs(batch))["loss"]
        loss.backward()
        losses.append(loss.item())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    assert any(n.startswith("vision.") for n in grads[0]) and any(n.startswith("projector.") for n in grads[0])
    for name, g in grads[0].items():
        assert_close_report(grads[1][name], g, rtol=1e-5, atol=1e-6, name=name)


@pytest.mark.parametrize("attn", ["sdpa_varlen", "sdpa", "eager"])
def test_a_token_never_attends_to_another_example(setup, attn):
    """Perturb the FIRST example of a shared row (its text tokens and its clip): the logits of every
    other example, in that row and elsewhere, stay the same; its own logits change."""
    cfg, tok, examples = setup
    model = _model(cfg, tok, attn).eval()
    layout = model.frame_layout(cfg.data.num_frames)
    batch = pack_collate(examples, tok, cfg.task, layout, CAPACITY)
    kw = {k: batch[k] for k in ("pixel_values", "input_ids", "attention_mask", *PACKED)}
    before = model.logits(**kw)
    row = int((batch["segment_ids"].max(1).values >= 2).nonzero()[0])  # a row holding several examples
    j = sum(int(batch["segment_ids"][r].max()) for r in range(row))  # its first example, packed order
    target = batch["segment_ids"] == 0
    target[:] = False
    target[row] = batch["segment_ids"][row] == 1
    text = target & (batch["input_ids"] != model.frame_token_id)
    g = torch.Generator().manual_seed(7)
    kw["input_ids"] = batch["input_ids"].clone()
    kw["input_ids"][text] = torch.randint(5, 300, (int(text.sum()),), generator=g)
    new_clip = torch.randint(0, 256, (1, *batch["pixel_values"].shape[1:]), dtype=torch.uint8, generator=g)
    kw["pixel_values"] = torch.cat([batch["pixel_values"], new_clip])
    kw["clip_index"] = batch["clip_index"].clone()
    kw["clip_index"][j] = batch["pixel_values"].shape[0]  # its clip only (its QA twin keeps the shared one)
    after = model.logits(**kw)
    others = (~target) & (batch["segment_ids"] > 0)
    assert int(others[row].sum()) > 0  # later examples of the same row: plain causal attention would see it
    assert_close_report(after[others], before[others], rtol=0, atol=1e-6, name="other examples' logits")
    assert float((after[target] - before[target]).abs().max()) > 1e-2, "the perturbation did not reach its example"


def test_block_mask_and_varlen_boundaries():
    seg = torch.tensor([[1, 1, 2, 2, 2, 0], [1, 1, 1, 1, 2, 2]])
    m = block_causal_mask(seg)[:, 0]
    assert m.shape == (2, 6, 6) and m.dtype == torch.bool
    assert m[0, 3].tolist() == [False, False, True, True, False, False]
    assert m[0, 5].tolist() == [False] * 5 + [True]  # padding sees only padding: no empty softmax row
    f = block_causal_mask(seg, torch.float32)
    assert f[0, 0, 3, 0] == torch.finfo(torch.float32).min and f[0, 0, 3, 2] == 0
    kw = varlen_kwargs(seg)
    assert kw["cu_seq_lens_q"].tolist() == [0, 2, 5, 6, 10, 12] and kw["max_length_q"] == 4
    assert kw["cu_seq_lens_q"].dtype == torch.int32


def test_config_packing_off_by_default_and_checked():
    tiny = W.REPO / "configs" / "tiny_cpu.yaml"
    cfg = load_config(tiny, ["--data.urls=/x.tar"])
    assert cfg.data.packing is False and cfg.row_capacity == cfg.task.max_prompt_len + cfg.task.max_target_len
    cfg = load_config(tiny, ["--data.urls=/x.tar", "--data.packing=true", "--data.max_tokens_per_row=1000"])
    assert cfg.data.packing and cfg.row_capacity == 1000
    with pytest.raises(ConfigError, match=r"data\.max_tokens_per_row: 300 cannot hold the longest sequence"):
        load_config(tiny, ["--data.urls=/x.tar", "--data.packing=true", "--data.max_tokens_per_row=300"])
    assert load_config(W.REPO / "configs" / "tiny_hf_qwen2vl_cpu.yaml", ["--data.packing=true"]).data.packing
    with pytest.raises(ConfigError, match=r"data\.packing: expected true or false"):
        load_config(tiny, ["--data.packing=sometimes"])


@pytest.mark.gpu
def test_flash_attn_varlen_packed_equals_padded_on_cuda(setup):
    """flash_attention_2 on CUDA (bf16): packed rows run flash-attn's varlen kernel with cu_seqlens and
    give the padded batch's loss (bf16 tolerance rtol 2e-2) and no cross-example attention."""
    pytest.importorskip("flash_attn")
    cfg, tok, examples = setup
    model = _model(cfg, tok, "flash_attention_2").to("cuda", torch.bfloat16)
    assert model.causal_lm.config._attn_implementation == "flash_attention_2"
    assert "varlen" in model.packing_attention
    layout = model.frame_layout(cfg.data.num_frames)
    losses = []
    for batch in (collate(examples, tok, cfg.task, layout), pack_collate(examples, tok, cfg.task, layout, CAPACITY)):
        inputs = {k: v.cuda() for k, v in _inputs(batch).items()}
        with torch.no_grad():
            losses.append(model(**inputs)["loss"].float().item())
    assert losses[1] == pytest.approx(losses[0], rel=2e-2)
    batch = pack_collate(examples, tok, cfg.task, layout, CAPACITY)
    kw = {k: batch[k].cuda() for k in ("pixel_values", "input_ids", "attention_mask", *PACKED)}
    full = model.logits(**kw)
    seg = batch["segment_ids"].cuda()
    kw2 = dict(kw, input_ids=kw["input_ids"].clone())
    first = (seg == 1) & (kw["input_ids"] != model.frame_token_id)
    kw2["input_ids"][first] = 7
    changed = model.logits(**kw2)
    others = seg >= 2
    assert float((changed[others] - full[others]).abs().max()) < 1e-3


def test_sdpa_varlen_runs_plain_sdpa_on_unpacked_batches(setup):
    """Switching to sdpa_varlen changes nothing for unpacked inputs (eval, generation, padded training):
    the same logits, bit for bit."""
    cfg, tok, examples = setup
    plain, varlen = _model(cfg, tok, "sdpa").eval(), _model(cfg, tok, "sdpa_varlen").eval()
    batch = collate(examples[:4], tok, cfg.task, plain.frame_layout(cfg.data.num_frames))
    kw = {"pixel_values": batch["pixel_values"], "input_ids": batch["input_ids"],
          "attention_mask": batch["attention_mask"]}
    assert torch.equal(plain.logits(**kw), varlen.logits(**kw))
