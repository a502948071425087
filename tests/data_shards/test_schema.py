"""The record schema: valid records round-trip; bad input names the file, line and field."""

from __future__ import annotations

import json

import pytest

from data_shards.common.distenv import world_info_from_env
from data_shards.schema import QA, SchemaError, VideoRecord, make_qid, read_records, split_qid, write_records


def _record(video_id="v1", n=2) -> VideoRecord:
    qas = [QA(qid=make_qid("nextqa", "val", video_id, i), question=f"why {i}?", options=["a", "b", "c"],
              answer=i % 3, qtype="CW") for i in range(n)]
    return VideoRecord(video_id=video_id, dataset="nextqa", split="val", video=f"{video_id}.mp4", qas=qas)


def test_round_trip(tmp_path):
    recs = [_record("v1"), _record("v2", 3)]
    path = tmp_path / "r.jsonl"
    assert write_records(recs, path) == 2
    back = list(read_records(path))
    assert [r.to_json() for r in back] == [r.to_json() for r in recs]
    assert split_qid(back[1].qas[2].qid) == ("nextqa", "val", "v2", "2")


@pytest.mark.parametrize(
    "mutate, field, words",
    [
        (lambda o: o["qas"][1].update(answer=7), "qas[1].answer", "out of range"),
        (lambda o: o["qas"][0].pop("options"), "qas[0].options", "missing"),
        (lambda o: o["qas"][0].update(options=["a", ""]), "qas[0].options[1]", "non-empty"),
        (lambda o: o.update(video_id=""), "video_id", "empty"),
        (lambda o: o.update(start=5.0, end=2.0), "end", "not after start"),
        (lambda o: o["qas"][1].update(qid="nextqa/val/OTHER/1"), "qas[1].qid", "not of the form"),
        (lambda o: o.update(colour="red"), "colour", "unknown field"),
        (lambda o: o["qas"][0].update(answer=True), "qas[0].answer", "expected"),
        (lambda o: o.update(schema_version=9), "schema_version", "unsupported"),
    ],
)
def test_bad_record_names_file_line_and_field(tmp_path, mutate, field, words):
    good, bad = _record("v1").to_json(), _record("v2").to_json()
    mutate(bad)
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(SchemaError) as err:
        list(read_records(path))
    msg = str(err.value)
    assert msg.startswith(f"{path}:2: field {field!r}"), msg
    assert words in msg


def test_invalid_json_and_duplicate_qid(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(_record().to_json()) + "\n{not json\n")
    with pytest.raises(SchemaError, match=r"r\.jsonl:2: .*invalid JSON"):
        list(read_records(path))
    line = json.dumps(_record().to_json())
    path.write_text(line + "\n" + line + "\n")
    with pytest.raises(SchemaError, match=r"r\.jsonl:2: .*already used on line 1"):
        list(read_records(path))


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "r.jsonl"
    write_records([_record("v1")], path)
    before = path.read_text()
    broken = _record("v2")
    broken.qas[0].answer = 99
    with pytest.raises(SchemaError, match="v2"):
        write_records([_record("v3"), broken], path)
    assert path.read_text() == before


def test_world_info_from_env():
    assert world_info_from_env({}).world_size == 1
    w = world_info_from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (w.rank, w.world_size, w.local_rank, w.launcher) == (3, 4, 1, "torchrun")
    w = world_info_from_env({"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1"})
    assert (w.rank, w.world_size, w.launcher) == (5, 8, "slurm")
    with pytest.raises(ValueError, match="RANK='x'"):
        world_info_from_env({"RANK": "x", "WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match="not in"):
        world_info_from_env({"RANK": "2", "WORLD_SIZE": "2"})
