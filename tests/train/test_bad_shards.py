"""The trainer's own reading of shards (tokenizer corpus, preflight) skips and names bad shards."""

from __future__ import annotations

import logging

import pytest

from tests.conftest import has_ffmpeg
from tests.data_shards.media_helpers import make_shards

pytestmark = pytest.mark.skipif(not has_ffmpeg(), reason="needs the ffmpeg CLI")


def test_truncated_and_empty_shards_are_skipped_and_named_on_the_tokenizer_corpus_path(tmp_path, caplog):
    from train.datastream import corpus_texts

    paths, _ = make_shards(tmp_path, [2, 2])
    whole = paths[0].read_bytes()
    trunc, zero = tmp_path / "trunc.tar", tmp_path / "zero.tar"
    trunc.write_bytes(whole[: len(whole) // 2])  # cut inside a member
    zero.write_bytes(b"")
    caplog.set_level(logging.WARNING, logger="train.data")
    texts = corpus_texts([str(zero), str(trunc), str(paths[1])], max_videos=100)
    assert any("What" in t or "?" in t for t in texts) and len(texts) > 4
    msgs = [r.getMessage() for r in caplog.records]
    assert any(str(zero) in m and "not a readable tar" in m for m in msgs), msgs
    assert any(str(trunc) in m and "not a readable tar" in m for m in msgs), msgs
