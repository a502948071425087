"""The frame budget on the trainer's side, one process, clips decoded from real H.264 mp4s of different
lengths (``data.fps`` makes their frame counts differ):

* text and visual tokens match for every family with clips of different frame counts in one micro-batch:
  the assembled model (each clip's tokens exactly those of the clip alone, padded and packed), tiny Qwen2-VL /
  Qwen2.5-VL (a grid per video; transformers itself refuses features that do not match the tokens), tiny
  LLaVA-OneVision (clips trimmed to the micro-batch's smallest count);
* the prompt fit: a clip whose prompt is too long for its frames gets fewer frames, a sample whose prompt
  cannot hold even ``min_frames`` is refused, counted (``over_budget``) and named, from a real loader;
* the packer's second constraint (visual tokens per row); config errors that name the field; evaluation
  under the training budget.
"""

from __future__ import annotations

import dataclasses
import logging

import pytest
import torch

from data_shards.stream.budget import FrameBudget
from data_shards.stream.frames import decode_frames
from data_shards.stream.loader import LoaderConfig, build_loader
from tests.conftest import assert_close_report
from tests.data_shards.media_helpers import encode_testsrc_mp4, make_record, write_tar
from tests.train import exactness_worker as W
from tests.train.test_hf_vlm import _cfg
from train.config import ModelConfig, ProjectorConfig, TaskConfig, load_config
from train.config.sections import cross_problems
from train.frame_budget import BudgetFit, run_budget
from train.loss import TASK_QA, TASK_REASON, token_weights
from train.models import build_model
from train.packing import first_fit_decreasing
from train.tasks import build_examples

TASK = TaskConfig(mode="mtl", reasoning_source="gt", beta=0.7, max_prompt_len=256, max_target_len=64)
SECONDS = (1.0, 2.0, 3.0)
BUDGET = FrameBudget(min_frames=2, max_frames=6, fps=2.0, group=2, tokens_per_group=4)


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[float, bytes]:
    """Real mp4s (ffmpeg testsrc2, 8 fps, 64x64) of 1, 2 and 3 seconds."""
    out = tmp_path_factory.mktemp("budget_videos")
    return {s: encode_testsrc_mp4(out / f"{s}.mp4", size=(64, 64), seconds=s) for s in SECONDS}


@pytest.fixture(scope="module")
def clips(videos) -> list[torch.Tensor]:
    """The videos decoded under the budget (2 fps, groups of 2): 2, 4 and 6 frames of 32x32."""
    out = [decode_frames(videos[s], BUDGET, (32, 32), name=f"{s}s.mp4") for s in SECONDS]
    assert [c.shape[0] for c in out] == [2, 4, 6]
    return out


@pytest.fixture(scope="module")
def tok():
    return W.tokenizer()


def _samples(clips, n: int = 6) -> list[dict]:
    gen = torch.Generator().manual_seed(1234)
    return [{**W.question(i, gen), "frames": clips[i % len(clips)]} for i in range(n)]


def _weights(batch) -> torch.Tensor:
    n_qa, n_re = int((batch["task_ids"] == TASK_QA).sum()), int((batch["task_ids"] == TASK_REASON).sum())
    return token_weights(batch["task_ids"], n_qa, n_re, TASK.alpha, TASK.beta)


def _assembled(tok, **projector):
    torch.manual_seed(0)
    cfg = dataclasses.replace(ModelConfig(), projector=ProjectorConfig(temporal_stride=2, **projector))
    return build_model(cfg, tok)


def _placeholders_match(model, batch, examples, token_id):
    video = [ex for ex in examples if ex.frames is not None]
    per_row = (batch["input_ids"] == token_id).sum(dim=1).tolist()
    want = [model.frame_layout(int(ex.frames.shape[0]), (32, 32)).num_visual_tokens for ex in video]
    if batch.get("packed"):
        assert sum(per_row) == sum(want)
    else:
        assert per_row == want


def test_assembled_ragged_batch_gives_every_clip_exactly_its_own_tokens(tok, clips):
    """Clips of 2, 4 and 6 frames in one micro-batch: every row's hidden states equal those of its example alone
    (the single-count path); centring and temporal positions per clip, as alone."""
    model = _assembled(tok, center=True, temporal_pos=3).eval()
    examples = [ex for s in _samples(clips) for ex in build_examples(s, TASK)]
    batch = model.collate(examples, TASK)
    assert batch["clip_frames"].tolist() == [int(ex.frames.shape[0]) for ex in examples]
    assert batch["pixel_values"].shape[1] == 6
    _placeholders_match(model, batch, examples, model.frame_token_id)
    with torch.no_grad():
        h = model.hidden_states(batch["input_ids"], batch["attention_mask"], pixel_values=batch["pixel_values"],
                                clip_frames=batch["clip_frames"])
        for row, ex in enumerate(examples):
            alone = model.collate([ex], TASK)
            assert "clip_frames" not in alone  # one count: the unchanged single-count path
            ref = model.hidden_states(alone["input_ids"], alone["attention_mask"], pixel_values=alone["pixel_values"])
            n = int(alone["attention_mask"].sum())
            assert_close_report(h[row, :n], ref[0, :n], rtol=1e-5, atol=1e-5, name=f"row {row} ({ex.qid})")


def test_assembled_ragged_packed_equals_padded_and_a_token_mismatch_is_refused(tok, clips):
    model = _assembled(tok, center=True)
    model.prepare_packing("mask")
    examples = [ex for s in _samples(clips) for ex in build_examples(s, TASK)]
    losses = []
    for batch in (model.collate(examples, TASK), model.collate(examples, TASK, packing=True, row_capacity=700)):
        _placeholders_match(model, batch, examples, model.frame_token_id)
        out = model(**model.model_inputs(batch, _weights(batch), torch.device("cpu")))
        losses.append((out["loss"].item(), int(out["n_tokens"])))
    assert losses[1][1] == losses[0][1] > 0
    assert losses[1][0] == pytest.approx(losses[0][0], rel=1e-5)
    batch = model.collate(examples, TASK)
    as_if_padded = {k: v for k, v in batch.items() if k != "clip_frames"}  # FLOPs count real frames, not padding
    assert model.batch_flops(batch) < model.batch_flops(as_if_padded)
    ids = batch["input_ids"].clone()
    ids[1, (ids[1] == model.frame_token_id).nonzero()[0]] = tok.pad_token_id  # one placeholder too few in row 1
    with pytest.raises(ValueError, match="frame placeholders"):
        model.hidden_states(ids, batch["attention_mask"], pixel_values=batch["pixel_values"],
                            clip_frames=batch["clip_frames"])


def test_packer_holds_the_visual_tokens_of_a_row_under_its_cap(tok, clips):
    assert first_fit_decreasing([5, 5, 5], 20, [8, 8, 4], 12) == [[0, 2], [1]]
    with pytest.raises(ValueError, match="data.max_visual_tokens_per_row=7"):
        first_fit_decreasing([5, 5], 20, [8, 4], 7)
    model = _assembled(tok)
    examples = [ex for s in _samples(clips) for ex in build_examples(s, TASK)]
    free = model.collate(examples, TASK, packing=True, row_capacity=700)
    capped = model.collate(examples, TASK, packing=True, row_capacity=700, visual_row_capacity=24)
    per_row = (capped["input_ids"] == model.frame_token_id).sum(dim=1)
    assert int(per_row.max()) <= 24 < int((free["input_ids"] == model.frame_token_id).sum(dim=1).max())
    _placeholders_match(model, capped, examples, model.frame_token_id)


@pytest.fixture(scope="module")
def hf_folders(tmp_path_factory):
    from train.testing.hf_tiny import write_tiny_vlm

    root = tmp_path_factory.mktemp("tiny_vlms_budget")
    return {f: write_tiny_vlm(root / f, f) for f in ("qwen2_vl", "qwen2_5_vl", "llava_onevision")}


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_qwen_takes_a_grid_per_clip_of_its_own_frame_count(hf_folders, clips, family):
    model = build_model(_cfg(hf_folders[family]), None)
    examples = [ex for s in _samples(clips) for ex in build_examples(s, TASK)]
    losses = []
    for batch in (model.collate(examples, TASK), model.collate(examples, TASK, packing=True, row_capacity=700)):
        grids = batch["vision"]["video_grid_thw"]
        order = batch["qids"]  # packed order differs: match clips by qid
        by_qid = {ex.qid: int(ex.frames.shape[0]) for ex in examples}
        assert grids[:, 0].tolist() == [by_qid[q] // 2 for q in order]  # temporal patches of 2 frames, no padding
        _placeholders_match(model, batch, examples, model.processor.video_token_id)  # packed: in total
        # transformers refuses video features that do not match the video tokens: the forward is the check
        out = model(**model.model_inputs(batch, _weights(batch), torch.device("cpu")))
        losses.append(out["loss"].item())
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)


def test_llava_onevision_clips_are_trimmed_to_the_smallest_count_of_the_micro_batch(hf_folders, clips):
    model = build_model(_cfg(hf_folders["llava_onevision"]), None)
    assert model.same_frames_per_batch
    samples = _samples(clips)
    with pytest.raises(ValueError, match="one frame count per micro-batch"):
        model.collate([ex for s in samples for ex in build_examples(s, TASK)], TASK)
    refused = []
    fit = BudgetFit(model, dataclasses.replace(BUDGET, group=1, tokens_per_group=1), TASK.max_prompt_len,
                    lambda s: build_examples(s, TASK), refused.append)
    examples = fit.examples(samples)
    assert not refused and {int(ex.frames.shape[0]) for ex in examples} == {2} and fit.n_trimmed == 4
    # the trimmed clips are frames of the decoded ones (segment middles), not new ones
    six = next(ex for ex in examples if ex.qid == samples[2]["qid"]).frames
    assert torch.equal(six, clips[2][[1, 4]])
    for batch in (model.collate(examples, TASK), model.collate(examples, TASK, packing=True, row_capacity=700)):
        assert batch["vision"]["pixel_values_videos"].shape[1] == 2
        _placeholders_match(model, batch, examples, model.processor.video_token_id)
        model(**model.model_inputs(batch, _weights(batch), torch.device("cpu")))


LONG = ["the small red ball that moved to the left and then turned blue near the square",
        "a blue square that stayed in the middle of the frame the whole time without moving",
        "a green circle bouncing off the top edge twice before it left the picture"]


@pytest.fixture(scope="module")
def shard(tmp_path_factory, videos) -> str:
    """A real tar: three 3-second videos; v_short has short options, v_long long ones, v_huge enormous ones."""
    out = tmp_path_factory.mktemp("budget_shard")
    samples = []
    for vid, options in (("v_short", ["red", "green", "blue"]), ("v_long", LONG), ("v_huge", [" ".join(LONG * 6)] * 3)):
        key = f"synthetic__train__{vid}"
        rec = make_record(key, vid, 1)
        rec["qas"][0].update(options=options, extra={"reasoning": "The ball moves left. So the answer is (A)."})
        samples.append((rec, videos[3.0]))
    write_tar(out / "budget-000000.tar", samples)
    return str(out / "budget-000000.tar")


def _min_prompt_len(model, examples, n: int) -> int:
    lo, hi = 8, 4096
    while lo < hi:
        mid = (lo + hi) // 2
        if all(model.prompt_fits(ex, n, mid) for ex in examples):
            hi = mid
        else:
            lo = mid + 1
    return lo


def test_prompt_fit_gives_fewer_frames_or_refuses_and_counts_the_sample(tok, shard, caplog):
    model = _assembled(tok)
    cfg = LoaderConfig(urls=shard, num_frames=4, frame_size=(32, 32), micro_batch_size=8, num_workers=0,
                       shuffle_buffer=0, fps=2.0, min_frames=2, max_frames=6, log_every_s=0.0)
    budget = cfg.frame_budget(group=2, tokens_per_group=4)
    loader = build_loader(cfg, rank=0, world_size=1, frame_budget=budget)
    (batch,) = list(loader)
    by_video = {s["video_id"]: s for s in batch}
    assert {int(s["frames"].shape[0]) for s in batch} == {6}  # the loader's choice: 3 s x 2 fps
    long_ex = build_examples(by_video["v_long"], TASK)
    limit = _min_prompt_len(model, long_ex, 4)  # v_long fits 4 frames, not 6, under this prompt length
    assert _min_prompt_len(model, long_ex, 6) > limit >= _min_prompt_len(model, build_examples(by_video["v_short"],
                                                                                                TASK), 6)
    task = dataclasses.replace(TASK, max_prompt_len=limit)
    fit = BudgetFit(model, budget, limit, lambda s: build_examples(s, task), loader.refuse)
    with caplog.at_level(logging.WARNING, logger="data_shards.stream.loader"):
        examples = fit.examples(batch)
    counts = {ex.qid.split("/")[2]: int(ex.frames.shape[0]) for ex in examples}
    assert counts == {"v_short": 6, "v_long": 4}, counts
    assert fit.frame_counts == {6: 1, 4: 1} and fit.n_refused == 1
    assert loader.stats()["over_budget"] == 1
    (message,) = loader.refused()
    assert "synthetic/train/v_huge/q0" in message and "synthetic__train__v_huge" in message and shard in message
    assert any("v_huge" in r.getMessage() for r in caplog.records)
    out = model.collate(examples, task)  # every prompt fits: no PromptTooLong, tokens match the clips
    _placeholders_match(model, out, examples, model.frame_token_id)
    model(**model.model_inputs(out, _weights(out), torch.device("cpu")))


def test_budget_config_errors_name_the_field(tok, tmp_path):
    base = ["--data.urls=/unused.tar", "--data.frame_size=[32,32]", "--model.projector.temporal_stride=2"]
    cfg = load_config(W.REPO / "configs" / "tiny_cpu.yaml", base + ["--data.max_visual_tokens=6",
                                                                     "--data.min_frames=4"])
    with pytest.raises(ValueError, match="data.max_visual_tokens 6 visual tokens cannot hold min_frames 4"):
        run_budget(cfg, _assembled(tok))
    cfg = load_config(W.REPO / "configs" / "tiny_cpu.yaml", base + ["--data.max_visual_tokens=64", "--data.fps=2"])
    assert run_budget(cfg, _assembled(tok)) == FrameBudget(1, 4, 2.0, 64, 2, 4, 0)
    with pytest.raises(ValueError, match="data.max_visual_tokens_per_row: caps packed rows"):
        load_config(W.REPO / "configs" / "tiny_cpu.yaml", base + ["--data.max_visual_tokens_per_row=8"])
    cfg = load_config(W.REPO / "configs" / "tiny_cpu.yaml", base + ["--data.fps=2"])
    cfg.task.use_vcot = True
    assert "task.use_vcot" in dict(cross_problems(cfg))
    assert run_budget(load_config(W.REPO / "configs" / "tiny_cpu.yaml", base), _assembled(tok)) is None


def test_evaluation_uses_the_training_budget(tok, clips):
    from eval.run import by_frame_count, eval_frame_budget

    config = {"data": {"max_visual_tokens": 10, "fps": 2.0, "min_frames": 2, "max_frames": 8},
              "task": {"max_prompt_len": 256}}
    lcfg = LoaderConfig(urls="x.tar", num_frames=4, frame_size=(32, 32))
    got, budget = eval_frame_budget(lcfg, config, _assembled(tok), None)
    assert (got.max_visual_tokens, got.fps, got.min_frames, got.max_frames) == (10, 2.0, 2, 8)
    assert budget == FrameBudget(2, 8, 2.0, 10, 2, 4, 0) and budget.highest == 4
    assert eval_frame_budget(lcfg, config, _assembled(tok), 4) == (lcfg, None)  # --frames given: no budget
    samples = _samples(clips, 5)
    groups = by_frame_count(samples)
    assert [[int(s["frames"].shape[0]) for s in g] for g in groups] == [[2, 2], [4, 4], [6]]
