"""Fixtures of the reasoning_gen tests: real synthetic videos written into real shards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import has_ffmpeg


@pytest.fixture(scope="session")
def synthetic_shards(tmp_path_factory) -> dict:
    """12 synthetic videos (48 questions) encoded with ffmpeg, in 6 WebDataset shards of 2 videos.

    Returns:
        {"pattern": brace pattern of the shards, "records": records.jsonl path, "qids": all qids,
         "answers": qid -> answer, "options": qid -> options}
    """
    if not has_ffmpeg():
        pytest.skip("needs the ffmpeg CLI")
    from data_shards.ingest.writer import write_shards
    from data_shards.synth.make import make_synthetic

    root = tmp_path_factory.mktemp("synthetic")
    records = make_synthetic(root / "data", videos=12, seed=4, split="val", width=32, height=32, fps=8,
                             duration=1.5, questions_per_video=4, preset="ultrafast", jobs=2)
    summary = write_shards(records, root / "data" / "videos", str(root / "shards" / "val-%06d.tar"), max_count=2,
                           log=lambda *a: None)
    n = len(summary["shards"])
    qas = [qa for line in Path(records).read_text().splitlines() for qa in json.loads(line)["qas"]]
    return {"pattern": str(root / "shards" / f"val-{{000000..{n - 1:06d}}}.tar"), "records": str(records),
            "qids": [qa["qid"] for qa in qas], "answers": {qa["qid"]: qa["answer"] for qa in qas},
            "options": {qa["qid"]: qa["options"] for qa in qas}, "shards": n}
