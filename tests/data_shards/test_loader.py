"""The streaming loader in one process (0 or 2 DataLoader workers) on real tars of real mp4s."""

from __future__ import annotations

import collections
import json
import logging
import os
from pathlib import Path

import pytest
import torch

from data_shards.stream.loader import LoaderConfig, build_loader, main
from tests.data_shards.media_helpers import encode_indexed_mp4, frame_index, make_record, make_shards, write_tar

SIZE = (24, 32)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """5 shards of 3, 1, 4, 2, 2 videos (12 videos, 30 questions) of one real 2 s testsrc2 mp4."""
    out = tmp_path_factory.mktemp("shards")
    paths, expected = make_shards(out, [3, 1, 4, 2, 2])
    return out, paths, expected


def cfg_for(urls, **kw) -> LoaderConfig:
    base = {"urls": urls, "num_frames": 3, "frame_size": SIZE, "micro_batch_size": 4, "num_workers": 2, "shuffle_buffer": 4,
                "log_every_s": 0.0}
    base.update(kw)
    return LoaderConfig(**base)


def pattern(out: Path, n: int) -> str:
    return str(out / f"shard-{{000000..{n - 1:06d}}}.tar")


def collect(loader) -> tuple[list[list[dict]], collections.Counter]:
    batches = [batch for batch in loader]
    return batches, collections.Counter(s["qid"] for b in batches for s in b)


def test_round_trip_every_question_exactly_once_per_epoch(shards):
    out, paths, expected = shards
    some = sorted(expected)[::3]
    reasoning = {q: {"qid": q, "refined": f"steps for {q}"} for q in some}
    loader = build_loader(cfg_for(pattern(out, len(paths))), rank=0, world_size=1, reasoning=reasoning)
    orders = []
    for epoch in range(2):
        batches, seen = collect(loader)
        assert seen == collections.Counter(list(expected)), f"epoch {epoch}: not every question exactly once"
        assert all(1 <= len(b) <= 4 for b in batches)
        assert sum(len(b) == 4 for b in batches) >= len(batches) - 2  # partial batch only at each worker's end
        for sample in (s for b in batches for s in b):
            want = expected[sample["qid"]]
            assert sample["answer"] == want["answer"]
            assert sample["__key__"] == want["key"] and sample["video_id"] == want["video_id"]
            assert sample["__url__"] in {str(p) for p in paths}
            assert sample["dataset"] == "synthetic" and sample["split"] == "train" and sample["qtype"] == "DO"
            assert sample["options"] == ["red", "green", "blue"] and sample["extra"]["j"] >= 0
            assert sample["frames"].dtype == torch.uint8 and tuple(sample["frames"].shape) == (3, 3, *SIZE)
            assert sample["reasoning"] == reasoning.get(sample["qid"])
        orders.append([s["qid"] for b in batches for s in b])
    assert orders[0] != orders[1], "shard order and shuffle buffer must change with the epoch"
    stats = loader.stats()
    assert stats["questions"] == 2 * len(expected) and stats["videos"] == 2 * 12 and stats["epochs"] == 2
    assert stats["reasoning_joined"] == 2 * len(some)
    assert stats["reasoning_missing"] == 2 * (len(expected) - len(some))
    assert all(stats[k] == 0 for k in ("missing_shard", "corrupt_tar", "corrupt_video", "bad_record"))


def test_same_seed_same_order_and_decode_off(shards):
    out, paths, _expected = shards
    cfg = cfg_for(pattern(out, len(paths)), num_workers=0, decode=False, seed=3)
    first = [s["qid"] for b in build_loader(cfg, 0, 1) for s in b]
    again = build_loader(cfg, 0, 1)
    batches = list(again)
    assert [s["qid"] for b in batches for s in b] == first
    assert all(s["frames"] is None for b in batches for s in b)
    assert again.stats()["videos"] == 12


@pytest.fixture(scope="module")
def broken(tmp_path_factory, shards):
    """Good shards + a corrupt tar + a good tar holding one corrupt mp4 + a missing shard name."""
    _out, paths, expected = shards
    bad = tmp_path_factory.mktemp("broken")
    (bad / "shard-000000.tar").write_bytes(os.urandom(20_000))  # corrupt tar
    video = paths[0].parent.joinpath("_src.mp4").read_bytes()
    good_key, bad_key = "synthetic__train__g0", "synthetic__train__g1"
    rec_good, rec_bad = make_record(good_key, "g0", 2), make_record(bad_key, "g1", 2)
    write_tar(bad / "shard-000001.tar", [(rec_good, video), (rec_bad, b"\x00\x00\x00\x18ftypmp42" + os.urandom(5000))])
    urls = [str(bad / "shard-000000.tar"), str(bad / "shard-000001.tar"), str(bad / "shard-000009.tar")]
    urls += [str(p) for p in paths]
    want = dict(expected)
    want.update({qa["qid"]: {"answer": qa["answer"]} for qa in rec_good["qas"]})
    return urls, want, [qa["qid"] for qa in rec_bad["qas"]]


def test_corrupt_tar_corrupt_video_and_missing_shard_are_skipped_and_counted(broken):
    urls, want, bad_qids = broken
    loader = build_loader(cfg_for(urls), rank=0, world_size=1)
    _, seen = collect(loader)
    assert seen == collections.Counter(list(want)), "every good question exactly once, nothing from the bad video"
    assert not set(bad_qids) & set(seen)
    stats = loader.stats()  # counted inside 2 worker processes, read in the main one
    assert (stats["corrupt_tar"], stats["corrupt_video"], stats["missing_shard"]) == (1, 1, 1), stats
    assert stats["shards"] == len(urls)


def test_skips_are_logged_with_a_rate_limit(broken, caplog):
    urls, _want, _ = broken
    caplog.set_level(logging.WARNING, logger="data_shards.stream.loader")
    loader = build_loader(cfg_for(urls, num_workers=0, log_every_s=3600.0), 0, 1)
    list(loader)
    list(loader)  # second epoch: the same three failures again, within the hour: not logged again
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipped")]
    assert len(lines) == 3, lines
    assert any("corrupt_video" in m and "synthetic__train__g1.mp4" in m for m in lines)
    assert any("missing_shard" in m and "shard-000009.tar" in m for m in lines)
    assert any("corrupt_tar" in m and "shard-000000.tar" in m for m in lines)
    assert loader.stats()["corrupt_video"] == 2
    assert any("epoch 1" in r.getMessage() and "2 corrupt_tar" in r.getMessage() for r in caplog.records)


def test_incomplete_samples_and_bad_records_are_counted(tmp_path, shards):
    _out, paths, _expected = shards
    video = paths[0].parent.joinpath("_src.mp4").read_bytes()
    import webdataset as wds

    with wds.TarWriter(str(tmp_path / "odd.tar")) as sink:
        sink.write({"__key__": "synthetic__train__lonely", "mp4": video})  # no record
        rec = make_record("synthetic__train__novideo", "novideo", 1)
        sink.write({"__key__": "synthetic__train__novideo", "json": json.dumps(rec).encode()})  # no video
        sink.write({"__key__": "synthetic__train__badjson", "json": b"{not json", "mp4": video})
        rec = make_record("synthetic__train__noqas", "noqas", 1)
        rec["qas"] = []
        sink.write({"__key__": "synthetic__train__noqas", "json": json.dumps(rec).encode(), "mp4": video})
        rec = make_record("synthetic__train__ok", "ok", 2)
        sink.write({"__key__": "synthetic__train__ok", "json": json.dumps(rec).encode(), "mp4": video})
    loader = build_loader(cfg_for(str(tmp_path / "odd.tar"), num_workers=0), 0, 1)
    _, seen = collect(loader)
    assert set(seen) == {"synthetic/train/ok/q0", "synthetic/train/ok/q1"}
    stats = loader.stats()
    assert (stats["incomplete_sample"], stats["bad_record"]) == (2, 2), stats


def test_pipe_urls(shards):
    out, paths, expected = shards
    urls = [f"pipe:cat {p}" for p in paths] + [f"pipe:cat {out / 'no-such-shard.tar'}"]
    loader = build_loader(cfg_for(urls), 0, 1)
    _, seen = collect(loader)
    assert seen == collections.Counter(list(expected))
    assert loader.stats()["missing_shard"] == 1


def test_epoch_batches_repeats_passes_with_full_batches(shards):
    out, paths, expected = shards
    loader = build_loader(cfg_for(pattern(out, len(paths)), epoch_batches=11, micro_batch_size=4), 0, 1)
    batches, seen = collect(loader)
    assert len(batches) == 11 and len(loader) == 11
    assert all(len(b) == 4 for b in batches), "no partial batch in the middle of a repeated stream"
    assert set(seen) == set(expected)  # 44 questions > 30: every question, some twice
    assert loader.stats()["batches"] == 11


def test_resampling(shards):
    out, _paths, expected = shards
    loader = build_loader(cfg_for(pattern(out, 2), resample=True, epoch_batches=7, num_workers=2), 0, 1)
    epochs = [collect(loader) for _ in range(2)]
    for batches, seen in epochs:
        assert len(batches) == 7 and all(len(b) == 4 for b in batches)
        assert set(seen) <= set(expected) and max(seen.values()) >= 2  # drawn with replacement
    assert [s["qid"] for b in epochs[0][0] for s in b] != [s["qid"] for b in epochs[1][0] for s in b]


def test_frames_follow_the_record_window(tmp_path):
    video = encode_indexed_mp4(tmp_path / "idx.mp4", num_frames=30, fps=10, size=(32, 32), gop=10)
    rec = make_record("synthetic__train__w", "w", 1)
    rec["start"], rec["end"] = 1.0, 2.0
    write_tar(tmp_path / "w.tar", [(rec, video)])
    batch = next(iter(build_loader(cfg_for(str(tmp_path / "w.tar"), num_frames=5, num_workers=0), 0, 1)))
    assert [frame_index(f) for f in batch[0]["frames"]] == [11, 13, 15, 17, 19]


def test_config_errors(shards):
    out, paths, _ = shards
    with pytest.raises(ValueError, match=r"5 shard\(s\) for 3 rank\(s\) x 2 worker\(s\)"):
        build_loader(cfg_for(pattern(out, len(paths))), rank=0, world_size=3)
    with pytest.raises(ValueError, match="resample=True.*epoch_batches"):
        build_loader(cfg_for(pattern(out, 5), resample=True), 0, 1)
    with pytest.raises(ValueError, match="no shard URL"):
        build_loader(cfg_for(""), 0, 1)
    with pytest.raises(ValueError, match="rank 2 is not in"):
        build_loader(cfg_for(pattern(out, 5)), rank=2, world_size=2)
    with pytest.raises(TypeError, match="one-pass"):
        len(build_loader(cfg_for(pattern(out, 5)), 0, 1))


def test_rank_from_environment(shards, monkeypatch):
    out, _paths, _expected = shards
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    loader = build_loader(cfg_for(pattern(out, 4), num_workers=1))
    assert (loader.rank, loader.world_size) == (1, 2)
    _, seen = collect(loader)
    urls = {s for s in loader.source.my_shards(0)}
    assert len(urls) == 2 and seen, "rank 1 of 2 reads 2 of the 4 shards"


def test_cli_prints_batches_and_stats(shards, capsys):
    out, _paths, _ = shards
    assert main([pattern(out, 5), "--frames", "2", "--size", "16x24", "--batch-size", "3", "--workers", "1",
                 "--max-batches", "2"]) == 0
    text = capsys.readouterr().out
    assert text.count("batch ") == 2 and "(2, 3, 16, 24)" in text
    stats = json.loads(text.strip().splitlines()[-1].removeprefix("stats: "))
    assert stats["batches"] == 2


def test_synth_write_load_round_trip(tmp_path):
    """synth -> writer -> loader: every question exactly once, answers and extras equal the records'."""
    from data_shards.ingest.writer import write_shards
    from data_shards.schema import read_records
    from data_shards.synth.make import make_synthetic

    records_path = make_synthetic(tmp_path / "syn", videos=6, seed=1, width=64, height=48, fps=8, duration=3.0)
    summary = write_shards(records_path, tmp_path / "syn" / "videos", str(tmp_path / "sh" / "train-%06d.tar"),
                           max_count=2, log=lambda *a: None)
    assert len(summary["shards"]) == 3 and not summary["skipped"]
    want = {qa.qid: (rec, qa) for rec in read_records(records_path) for qa in rec.qas}
    loader = build_loader(cfg_for(str(tmp_path / "sh" / "train-{000000..000002}.tar"), num_frames=4,
                                  frame_size=(32, 40)), rank=0, world_size=1)
    _, seen = collect(loader)
    assert seen == collections.Counter(list(want))
    for sample in (s for b in build_loader(cfg_for(str(tmp_path / "sh" / "train-{000000..000002}.tar"),
                                                   num_frames=4, frame_size=None, num_workers=0), 0, 1) for s in b):
        rec, qa = want[sample["qid"]]
        assert (sample["answer"], sample["options"], sample["qtype"]) == (qa.answer, qa.options, qa.qtype)
        assert sample["extra"] == qa.extra and sample["question"] == qa.question
        assert sample["video_id"] == rec.video_id and sample["dataset"] == "synthetic"
        assert sample["frames"].dtype == torch.uint8 and tuple(sample["frames"].shape) == (4, 3, 48, 64)


def test_worker_with_only_bad_shards_falls_back_and_keeps_the_batch_count(tmp_path, shards):
    _, paths, expected = shards
    (tmp_path / "bad.tar").write_bytes(os.urandom(4096))
    # 2 workers: one gets the good shard, the other only the corrupt one (seed-independent: 2 shards)
    urls = [str(paths[0]), str(tmp_path / "bad.tar")]
    loader = build_loader(cfg_for(urls, epoch_batches=6, micro_batch_size=2, shuffle_shards=False), 0, 1)
    batches, seen = collect(loader)
    assert len(batches) == 6 and all(len(b) == 2 for b in batches)
    assert set(seen) <= {q for q, v in expected.items() if v["key"] in {"synthetic__train__v0", "synthetic__train__v1",
                                                                        "synthetic__train__v2"}}
    assert loader.stats()["corrupt_tar"] >= 1
    with pytest.raises(RuntimeError, match="gave no readable sample"):
        list(build_loader(cfg_for([str(tmp_path / "bad.tar")] * 2, epoch_batches=2, num_workers=0), 0, 1))


@pytest.mark.parametrize("resample", [False, True], ids=["passes", "resample"])
def test_worker_whose_tar_holds_only_corrupt_videos_does_not_spin_forever(tmp_path, shards, resample):
    """A readable tar whose every video is corrupt: the tar samples are read fine but none decodes.
    The worker must widen to other shards (or, with nothing else, raise), not loop forever."""
    _, paths, expected = shards
    bad_video = b"\x00\x00\x00\x18ftypmp42" + os.urandom(3000)
    recs = [make_record(f"synthetic__train__x{i}", f"x{i}", 1) for i in range(3)]
    write_tar(tmp_path / "badvideos.tar", [(r, bad_video) for r in recs])
    urls = [str(paths[0]), str(tmp_path / "badvideos.tar")]
    # 2 workers, no shard shuffling: worker 1 holds only the tar of corrupt videos; shuffle buffer on
    loader = build_loader(cfg_for(urls, epoch_batches=6, micro_batch_size=2, shuffle_shards=False, resample=resample,
                                  timeout_s=120), 0, 1)
    batches, seen = collect(loader)
    assert len(batches) == 6 and all(len(b) == 2 for b in batches)
    first_shard = {"synthetic__train__v0", "synthetic__train__v1", "synthetic__train__v2"}  # paths[0]
    assert {expected[q]["key"] for q in seen} <= first_shard
    assert loader.stats()["corrupt_video"] >= 1
    with pytest.raises(RuntimeError, match="gave no readable sample"):
        list(build_loader(cfg_for([str(tmp_path / "badvideos.tar")], epoch_batches=2, num_workers=0,
                                  resample=resample), 0, 1))


def test_pipeline_pickles_for_spawned_workers(shards):
    """Workers started with "spawn" receive the pipeline pickled: no closures or lambdas in it."""
    import io
    from multiprocessing.reduction import ForkingPickler

    out, paths, _ = shards
    for resample in (False, True):
        loader = build_loader(cfg_for(pattern(out, len(paths)), resample=resample, epoch_batches=3), 0, 1,
                              reasoning={"x": {"qid": "x"}})
        buf = io.BytesIO()
        ForkingPickler(buf).dump(loader.dataset)
        assert buf.tell() > 0


def test_decoder_threads_are_chosen_per_machine(monkeypatch):
    from data_shards.stream.loader import auto_decode_threads

    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert auto_decode_threads(2, cores=2) == 1  # a worker per core: one thread each (measured best)
    assert auto_decode_threads(0, cores=2) == 1
    assert auto_decode_threads(2, cores=16) == 7  # one core left for the main process, the rest shared out
    assert auto_decode_threads(4, local_ranks=8, cores=16) == 1
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert auto_decode_threads(2, cores=16) == 3


def test_expand_urls_globs_local_shards_in_order(tmp_path):
    """A recipe names the writer's shards by a glob (their count depends on --max-size), never a hard-coded
    range; a glob matching nothing stays as given so that it is reported as missing."""
    from data_shards.stream.loader import expand_urls

    for i in (2, 0, 10, 1):
        (tmp_path / f"nextqa_train-{i:06d}.tar").write_bytes(b"")
    (tmp_path / "nextqa_val-000000.tar").write_bytes(b"")
    got = expand_urls(str(tmp_path / "nextqa_train-*.tar"))
    assert got == [str(tmp_path / f"nextqa_train-{i:06d}.tar") for i in (0, 1, 2, 10)]
    assert expand_urls([str(tmp_path / "nextqa_val-*.tar"), str(tmp_path / "x-{000000..000001}.tar")]) == [
        str(tmp_path / "nextqa_val-000000.tar"), str(tmp_path / "x-000000.tar"), str(tmp_path / "x-000001.tar")]
    assert expand_urls(str(tmp_path / "none-*.tar")) == [str(tmp_path / "none-*.tar")]
    assert expand_urls("pipe:curl -s https://host/shard-[ab].tar") == ["pipe:curl -s https://host/shard-[ab].tar"]
