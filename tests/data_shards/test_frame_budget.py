"""The frame budget in the loader: frame counts chosen per clip (caps, fps x duration, visual tokens, the
model's temporal group), on real H.264 mp4s of different lengths in real tars; refusals counted and named."""

from __future__ import annotations

import logging

import pytest

from data_shards.stream.budget import FrameBudget, OverBudget, subsample
from data_shards.stream.loader import LoaderConfig, build_loader
from tests.data_shards.media_helpers import encode_indexed_mp4, frame_index, make_record, write_tar

SIZE = (24, 32)


def test_choose_takes_the_largest_count_within_every_cap():
    b = FrameBudget(min_frames=2, max_frames=16, fps=2.0, max_tokens=None, group=1)
    assert [b.choose(d) for d in (0.4, 1.0, 2.0, 3.3, 100.0, None)] == [2, 2, 4, 6, 16, 16]  # min wins over fps
    b = FrameBudget(min_frames=3, max_frames=15, fps=None, max_tokens=None, group=2)
    assert (b.lowest, b.highest, b.choose(None)) == (4, 14, 14)  # rounded to whole groups, never padded
    assert b.counts(9) == [4, 6, 8]
    # tokens: ceil(n / group) * 4 + 1 <= 29 -> 7 groups -> 14 frames; 28 -> 6 groups -> 12 frames
    assert FrameBudget(1, 64, max_tokens=29, group=2, tokens_per_group=4, extra_tokens=1).choose(None) == 14
    assert FrameBudget(1, 64, max_tokens=28, group=2, tokens_per_group=4, extra_tokens=1).choose(None) == 12
    b = FrameBudget(2, 64, fps=1.0, max_tokens=28, group=2, tokens_per_group=4, extra_tokens=1)
    assert [b.choose(d) for d in (1.0, 5.9, 9.0, 60.0)] == [2, 4, 8, 12]  # fps and tokens together
    assert subsample(8, 4) == [1, 3, 5, 7] and subsample(5, 5) == [0, 1, 2, 3, 4]


def test_budgets_no_clip_can_meet_are_config_errors_naming_the_field():
    problems = dict(FrameBudget(4, 16, max_tokens=8, group=2, tokens_per_group=4, extra_tokens=1).problems())
    assert "max_visual_tokens" in problems and "min_frames 4" in problems["max_visual_tokens"]
    assert "max_frames" in dict(FrameBudget(1, 1, group=2).problems())
    with pytest.raises(OverBudget, match="clip.mp4: no frame count fits"):
        FrameBudget(4, 16, max_tokens=7, group=2, tokens_per_group=4).choose(3.0, "clip.mp4")
    cfg = LoaderConfig(urls="x.tar", num_frames=8, min_frames=9, fps=1.0)
    assert dict(cfg.problems())["min_frames"].startswith("9 is above num_frames 8")
    bad = dict(LoaderConfig(urls="x.tar", max_visual_tokens=0, fps=-1.0, max_frames=0).problems())
    assert {"max_visual_tokens", "fps", "max_frames"} <= set(bad)
    assert "no effect without a frame budget" in dict(LoaderConfig(urls="x.tar", min_frames=2).problems())["min_frames"]
    assert LoaderConfig(urls="x.tar").frame_budget() is None and not LoaderConfig(urls="x.tar").problems()


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """One tar of three real mp4s at 10 fps: 1 s, 2 s and 3 s (frame i has grey level i)."""
    out = tmp_path_factory.mktemp("budget_clips")
    samples = []
    for n in (10, 20, 30):
        key = f"synthetic__train__len{n}"
        samples.append((make_record(key, f"len{n}", 1), encode_indexed_mp4(out / f"{n}.mp4", num_frames=n, fps=10,
                                                                           size=SIZE)))
    write_tar(out / "clips-000000.tar", samples)
    return str(out / "clips-000000.tar")


def _frames_by_video(loader) -> dict[str, list[int]]:
    return {s["video_id"]: [frame_index(f) for f in s["frames"]] for batch in loader for s in batch}


@pytest.mark.parametrize("workers", [0, 1])  # one shard: one worker at most
def test_loader_decodes_each_clip_at_its_own_budgeted_count(clips, workers):
    # fps 2 -> 2, 4, 6 frames; group 2 keeps them even; tokens per group 3 + 1 extra <= 10 -> 3 groups max
    cfg = LoaderConfig(urls=clips, num_frames=4, frame_size=SIZE, micro_batch_size=8, num_workers=workers,
                       shuffle_buffer=0, fps=2.0, min_frames=2, max_frames=12, max_visual_tokens=10)
    budget = cfg.frame_budget(group=2, tokens_per_group=3, extra_tokens=1)
    got = _frames_by_video(build_loader(cfg, rank=0, world_size=1, frame_budget=budget))
    # frames at the middles of equal segments of each clip (the frame index is the grey level)
    assert got == {"len10": [2, 7], "len20": [2, 7, 12, 17], "len30": [2, 7, 12, 17, 22, 27]}, got
    # the same clips with the budget off: num_frames each, exactly as before
    off = LoaderConfig(urls=clips, num_frames=4, frame_size=SIZE, micro_batch_size=8, num_workers=0, shuffle_buffer=0)
    assert {v: len(f) for v, f in _frames_by_video(build_loader(off, rank=0, world_size=1)).items()} == {
        "len10": 4, "len20": 4, "len30": 4}


def test_loader_without_a_model_layout_counts_one_token_per_frame_and_checks_the_budget(clips):
    cfg = LoaderConfig(urls=clips, num_frames=16, frame_size=SIZE, micro_batch_size=8, num_workers=0,
                       shuffle_buffer=0, max_visual_tokens=5)
    assert {v: len(f) for v, f in _frames_by_video(build_loader(cfg, rank=0, world_size=1)).items()} == {
        "len10": 5, "len20": 5, "len30": 5}
    with pytest.raises(ValueError, match="LoaderConfig.max_visual_tokens 5 visual tokens cannot hold min_frames"):
        build_loader(cfg, rank=0, world_size=1, frame_budget=cfg.frame_budget(tokens_per_group=8))
    with pytest.raises(ValueError, match="frame_budget but the config has none"):
        build_loader(LoaderConfig(urls=clips), rank=0, world_size=1, frame_budget=FrameBudget(1, 4))


def test_refused_samples_are_counted_named_and_the_stream_goes_on(clips, caplog):
    cfg = LoaderConfig(urls=clips, num_frames=4, frame_size=SIZE, micro_batch_size=8, num_workers=0,
                       shuffle_buffer=0, fps=2.0, log_every_s=0.0)
    loader = build_loader(cfg, rank=0, world_size=1)
    with caplog.at_level(logging.WARNING, logger="data_shards.stream.loader"):
        batches = list(loader)
        loader.refuse("synthetic/train/len30/q0 (video len30, clips-000000.tar: sample synthetic__train__len30): "
                      "its prompt cannot hold min_frames 2")
    stats = loader.stats()
    assert stats["over_budget"] == 1 and stats["questions"] == 3 and len(batches) == 1
    assert loader.refused() == [m for m in loader.refused() if "synthetic__train__len30" in m] and loader.refused()
    assert any("skipped over_budget" in r.getMessage() and "synthetic/train/len30/q0" in r.getMessage()
               for r in caplog.records)
