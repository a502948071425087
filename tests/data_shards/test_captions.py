"""Video-caption pairs (stage-1 alignment data): converter, schema entries, bad input, real shards."""

from __future__ import annotations

import json

import pytest

from data_shards.ingest.convert import convert, main
from data_shards.schema import CAPTION_QTYPE, SchemaError, read_records, validate_record


def test_jsonl_and_webvid_csv_become_caption_entries(tmp_path):
    jl = tmp_path / "caps.jsonl"
    jl.write_text(json.dumps({"video": "clips/a1.mp4", "caption": "a dog runs on a beach"}) + "\n\n"
                  + json.dumps({"video": "clips/a1.mp4", "caption": ["the dog stops", "it barks"]}) + "\n"
                  + json.dumps({"video": "b.mp4", "video_id": "bee", "caption": "a bee", "start": 1.0, "end": 3.5}) + "\n")
    recs = convert("captions", jl, "train")
    assert [r.video_id for r in recs] == ["a1", "bee"]
    a1 = recs[0]
    assert a1.video == "clips/a1.mp4" and a1.dataset == "captions"
    assert [qa.qid for qa in a1.qas] == ["captions/train/a1/cap0", "captions/train/a1/cap1", "captions/train/a1/cap2"]
    assert [qa.extra["caption"] for qa in a1.qas] == ["a dog runs on a beach", "the dog stops", "it barks"]
    assert all(qa.qtype == CAPTION_QTYPE and qa.options == [] and qa.answer is None for qa in a1.qas)
    assert (recs[1].start, recs[1].end) == (1.0, 3.5)
    csv_path = tmp_path / "webvid.csv"  # WebVid's columns
    csv_path.write_text("videoid,contentUrl,duration,page_dir,name\n123,http://x,PT00H00M11S,dir,Aerial shot of a lake\n")
    out = tmp_path / "recs.jsonl"
    assert main(["--dataset", "captions", "--annotations", str(csv_path), "--split", "train", "--name", "webvid",
                 "--out", str(out)]) == 0
    (rec,) = list(read_records(out))
    assert (rec.dataset, rec.video, rec.qas[0].qid) == ("webvid", "123.mp4", "webvid/train/123/cap0")
    assert rec.qas[0].extra["caption"] == "Aerial shot of a lake"
    # the same file with a UTF-8 byte-order mark (as spreadsheet exports write it) reads the same
    bom = tmp_path / "webvid_bom.csv"
    bom.write_bytes(b"\xef\xbb\xbf" + csv_path.read_bytes())
    assert [r.to_json() for r in convert("captions", bom, "train")] == \
        [r.to_json() for r in convert("captions", csv_path, "train")]


def test_bad_caption_input_names_file_line_and_field(tmp_path):
    jl = tmp_path / "bad.jsonl"
    jl.write_text(json.dumps({"video": "a.mp4", "caption": "ok"}) + "\n" + json.dumps({"video": "b.mp4", "caption": " "}))
    with pytest.raises(SchemaError, match=r"bad\.jsonl:2: field 'caption': empty"):
        convert("captions", jl, "train")
    jl.write_text(json.dumps({"caption": "no video"}))
    with pytest.raises(SchemaError, match=r"bad\.jsonl:1: field 'video': missing"):
        convert("captions", jl, "train")
    c = tmp_path / "bad.csv"
    c.write_text("video,text\na.mp4,hello\n")
    with pytest.raises(SchemaError, match=r"needs a caption \(or name\) column"):
        convert("captions", c, "train")
    rec = {"schema_version": 1, "video_id": "v", "dataset": "d", "split": "s", "video": "v.mp4", "start": None,
           "end": None, "meta": {}, "qas": [{"qid": "d/s/v/cap0", "question": "", "options": ["x", "y"],
                                              "answer": None, "qtype": "caption", "extra": {"caption": "hi"}}]}
    with pytest.raises(SchemaError, match=r"field 'qas\[0\]\.options': a caption entry has no options"):
        validate_record(rec, "r.jsonl:1")
    rec["qas"][0].update(options=[], extra={})
    with pytest.raises(SchemaError, match=r"field 'qas\[0\]\.extra\.caption'"):
        validate_record(rec, "r.jsonl:1")
    with pytest.raises(SystemExit):  # --name belongs to --dataset captions only
        main(["--dataset", "nextqa", "--annotations", str(c), "--split", "x", "--name", "n", "--out", "o.jsonl"])
