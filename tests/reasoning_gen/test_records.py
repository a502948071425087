"""Reasoning records: validation, the append writer, partial-line repair, load_reasoning."""

from __future__ import annotations

import json

import pytest

from data_shards.reasoning_records import (
    AppendWriter,
    load_reasoning,
    make_record,
    read_reasoning_lines,
    repair_partial_line,
    validate_reasoning,
    write_jsonl_atomic,
)


def test_make_and_validate():
    rec = make_record("synthetic/val/v/q0", "t", "reasvqa-v1", raw="x", refined="y", teacher_answer=1,
                      teacher_correct=False, split="val")
    assert rec["status"] == "ok" and rec["error"] is None and rec["split"] == "val" and rec["created"].endswith("+00:00")
    with pytest.raises(ValueError, match=r"f.jsonl:3: field 'teacher_answer'"):
        validate_reasoning({**rec, "teacher_answer": "B"}, "f.jsonl:3")
    with pytest.raises(ValueError, match="field 'teacher_correct'"):
        validate_reasoning({**rec, "teacher_correct": 1}, "r")
    with pytest.raises(ValueError, match="field 'teacher_answer'"):
        validate_reasoning({**rec, "teacher_answer": True}, "r")  # a bool is not an option index
    with pytest.raises(ValueError, match="field 'created': missing"):
        validate_reasoning({k: v for k, v in rec.items() if k != "created"}, "r")
    with pytest.raises(ValueError, match="needs the error"):
        make_record("q", "t", "v", status="failed")
    with pytest.raises(ValueError, match="'status'"):
        make_record("q", "t", "v", status="maybe")


@pytest.mark.parametrize("tail", [b"", b'{"qid": "half', b"x" * 70000])
def test_repair_partial_line(tmp_path, tail):
    path = tmp_path / "r.jsonl"
    body = b"".join(json.dumps(make_record(f"q{i}", "t", "v", raw="r")).encode() + b"\n" for i in range(3))
    path.write_bytes(body + tail)
    assert repair_partial_line(path) == len(tail)
    assert path.read_bytes() == body
    only = tmp_path / "only.jsonl"
    only.write_bytes(b"x" * 100000)  # no newline at all: nothing whole survives
    assert repair_partial_line(only) == 100000 and only.read_bytes() == b""
    assert repair_partial_line(tmp_path / "missing.jsonl") == 0


def test_append_writer_repairs_then_appends(tmp_path):
    path = tmp_path / "d" / "r.jsonl"
    with AppendWriter(path) as w:
        assert w.repaired == 0
        assert w.write([make_record("q0", "t", "v", raw="a"), make_record("q1", "t", "v", raw="b")]) == 2
    with path.open("ab") as f:
        f.write(b'{"qid": "q2", "tea')  # a crash mid-line
    with AppendWriter(path) as w:
        assert w.repaired == len(b'{"qid": "q2", "tea')
        w.write([make_record("q2", "t", "v", raw="c")])
    assert [r["qid"] for _, r in read_reasoning_lines(path)] == ["q0", "q1", "q2"]


def test_load_reasoning_counts_and_joins(tmp_path):
    a = [make_record("q0", "t", "reasvqa-v1", raw="r0", refined="f0"),
         make_record("q1", "t", "reasvqa-v1", status="failed", error="HTTP 500"),
         make_record("q2", "t", "reasvqa-v1", status="failed", error="timeout"),
         make_record("q2", "t", "reasvqa-v1", raw="r2", refined="f2"),
         make_record("q0", "t", "reasvqa-v1", raw="again", refined="again")]
    b = [make_record("q0", "t", "vcot-v1", vcot=["c1", "c2"]), make_record("q3", "t", "vcot-v1", vcot=["c"])]
    write_jsonl_atomic(tmp_path / "a.jsonl", a)
    (tmp_path / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in b) + '{"qid": 1}\nnot json\n')
    stats: dict = {}
    got = load_reasoning([tmp_path / "a.jsonl", tmp_path / "b.jsonl"], stats)
    assert sorted(got) == ["q0", "q2", "q3"]
    assert got["q0"]["refined"] == "f0" and got["q0"]["vcot"] == ["c1", "c2"]
    assert got["q0"]["vcot_prompt_version"] == "vcot-v1" and got["q3"]["raw"] is None
    assert stats == {"files": 2, "ok": 3, "failed": 1, "duplicates": 1, "corrupt": 2}
    assert sorted(load_reasoning(tmp_path)) == ["q0", "q2", "q3"]  # a directory
    assert sorted(load_reasoning(str(tmp_path / "*.jsonl"))) == ["q0", "q2", "q3"]  # a glob
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_reasoning(tmp_path / "nope.jsonl")
