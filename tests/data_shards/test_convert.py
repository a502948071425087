"""Converters on the real annotation excerpts: counts, qids, answers, STAR matching, bad input.

The expected numbers below were counted by reading the fixture files row by row; each test also
recounts with the csv module, so a fixture change shows up as a disagreement, not a silent pass.
"""

from __future__ import annotations

import csv
import json
from collections import Counter

import pytest

from data_shards.ingest.convert import convert, main, summarize
from data_shards.schema import SchemaError, read_records

NEXTQA = "nextqa_val_head60.csv"
INTENTQA = "intentqa_val_head60.csv"
STAR = "star_format_sample.json"
EGO = "egoschema_format_sample.json"
EGO_ANSWERS = "egoschema_subset_answers_sample.json"


def _qas(records):
    return [qa for rec in records for qa in rec.qas]


def _csv_counts(path, video_col):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return Counter(r["type"] for r in rows), len({r[video_col] for r in rows}), rows


def test_nextqa_counts_and_fields(annotations_dir):
    recs = convert("nextqa", annotations_dir / NEXTQA, "val")
    counts = Counter(qa.qtype for qa in _qas(recs))
    # Read off the file: 60 rows, 5 videos with two questions each (7508439506, 6895608152,
    # 3943634344, 6329077812, 7533369046), hence 55 videos.
    assert counts == {"CW": 26, "CH": 7, "TN": 13, "TP": 1, "TC": 5, "DC": 1, "DL": 4, "DO": 3}
    assert len(recs) == 55
    by_csv, n_videos, rows = _csv_counts(annotations_dir / NEXTQA, "video")
    assert counts == by_csv and len(recs) == n_videos
    assert recs[0].video_id == "4010069381" and recs[0].video == "4010069381.mp4"
    assert recs[0].meta == {"frame_count": 369, "width": 640, "height": 480}
    q = {qa.qid: qa for qa in _qas(recs)}
    assert len(q) == 60
    first = q["nextqa/val/4010069381/6"]
    assert (first.answer, first.qtype, first.options[0]) == (0, "CH", "roll the handle")
    assert first.extra == {"source_qid": "6"}
    where = q["nextqa/val/7508439506/4"]  # csv line 21
    assert (where.answer, where.qtype, where.options[where.answer]) == (4, "DL", "bed room")
    tp = q["nextqa/val/6329077812/7"]  # csv line 57, the only TP
    assert (tp.answer, tp.qtype, tp.options[tp.answer]) == (4, "TP", "take napkin")
    two = next(r for r in recs if r.video_id == "7508439506")
    assert [qa.extra["source_qid"] for qa in two.qas] == ["1", "4"]
    assert [q[f"nextqa/val/{r['video']}/{r['qid']}"].answer for r in rows] == [int(r["answer"]) for r in rows]


def test_intentqa_counts_and_extra(annotations_dir):
    recs = convert("intentqa", annotations_dir / INTENTQA, "val")
    counts = Counter(qa.qtype for qa in _qas(recs))
    # Three videos have two questions (8090435597, 3976362264, 3060710599): 57 videos.
    assert counts == {"CW": 34, "CH": 12, "TN": 12, "TP": 2}
    assert len(recs) == 57
    by_csv, n_videos, _ = _csv_counts(annotations_dir / INTENTQA, "video_id")
    assert counts == by_csv and len(recs) == n_videos
    q = {qa.qid: qa for qa in _qas(recs)}
    first = q["intentqa/val/13884124143/1"]
    assert first.answer == 4 and first.options[4] == "move left right to balance"
    assert first.extra == {"source_qid": "1", "action": "left", "lemma": "leave", "lemma_id": 130}
    tp = q["intentqa/val/3954996353/2"]  # csv line 29
    assert (tp.qtype, tp.answer, tp.options[3], tp.extra["lemma_id"]) == ("TP", 3, "count down", 87)


def test_star_answer_matching_clips_and_no_situations(annotations_dir, tmp_path):
    recs = convert("star", annotations_dir / STAR, "val")
    # A1B2C has two questions on different windows: two clip records.
    assert [r.video_id for r in recs] == ["A1B2C_11.1_19.6", "D3E4F_0_7.3", "A1B2C_3.2_9.9", "G5H6I_20_31.5"]
    assert [r.video for r in recs] == ["A1B2C.mp4", "D3E4F.mp4", "A1B2C.mp4", "G5H6I.mp4"]
    assert [(r.start, r.end) for r in recs] == [(11.1, 19.6), (0.0, 7.3), (3.2, 9.9), (20.0, 31.5)]
    assert recs[0].meta == {"source_video_id": "A1B2C"}
    qas = _qas(recs)
    assert [qa.qtype for qa in qas] == ["Interaction", "Sequence", "Prediction", "Feasibility"]
    # "The book." is choice 1, "Ate the medicine." 1, "Open the laptop." 0, "Put down the dish." 2.
    assert [qa.answer for qa in qas] == [1, 1, 0, 2]
    assert qas[0].qid == "star/val/A1B2C_11.1_19.6/Interaction_T1_13"
    assert qas[0].extra["source_qid"] == "Interaction_T1_13"
    assert qas[0].extra["question_program"][2] == {"function": "Filter_Actions_with_Verb", "value_input": ["put"]}
    out = tmp_path / "star.jsonl"
    assert main(["--dataset", "star", "--annotations", str(annotations_dir / STAR), "--split", "val",
                 "--out", str(out)]) == 0
    text = out.read_text()
    assert "situations" not in text and "rel_pairs" not in text and "bbox" not in text


def test_star_matching_normalises_and_orders_by_choice_id(annotations_dir, tmp_path):
    items = json.loads((annotations_dir / STAR).read_text())
    items[0]["answer"] = "  the   BOOK "
    items[0]["choices"] = list(reversed(items[0]["choices"]))  # choice_id order must win
    path = tmp_path / "STAR_val.json"
    path.write_text(json.dumps(items))
    qa = convert("star", path, "val")[0].qas[0]
    assert qa.options == ["The pillow.", "The book.", "The cup/glass/bottle.", "The clothes."]
    assert qa.answer == 1


def test_star_hidden_answers_give_null(annotations_dir, tmp_path):
    items = json.loads((annotations_dir / STAR).read_text())
    for it in items:
        del it["answer"]
    path = tmp_path / "STAR_test.json"
    path.write_text(json.dumps(items))
    assert summarize(convert("star", path, "test"))["unanswered"] == 4


def test_egoschema_null_answers(annotations_dir):
    recs = convert("egoschema", annotations_dir / EGO, "test", answers=annotations_dir / EGO_ANSWERS)
    assert [r.video_id for r in recs] == ["0074f737-11cb-497d-8d07-77c3a8127391",
                                          "00b9a0de-c59e-49cb-a127-6081e2fb8c8e",
                                          "ffffffff-0000-4000-8000-000000000001"]
    qas = _qas(recs)
    assert [qa.answer for qa in qas] == [3, 4, None]
    assert qas[0].options[3] == "C is cleaning dishes."
    assert qas[0].qid == "egoschema/test/0074f737-11cb-497d-8d07-77c3a8127391/0074f737-11cb-497d-8d07-77c3a8127391"
    assert {qa.qtype for qa in qas} == {"EgoSchema"}
    assert recs[0].meta == {"google_drive_id": "1a2b3c4d5e"} and recs[0].video.endswith("127391.mp4")
    no_answers = convert("egoschema", annotations_dir / EGO, "test")
    assert [qa.answer for qa in _qas(no_answers)] == [None, None, None]


def test_cli_writes_valid_jsonl(annotations_dir, tmp_path, capsys):
    out = tmp_path / "sub" / "nextqa_val.jsonl"
    assert main(["--dataset", "nextqa", "--annotations", str(annotations_dir / NEXTQA), "--split", "val",
                 "--out", str(out)]) == 0
    recs = list(read_records(out))
    assert len(recs) == 55 and sum(len(r.qas) for r in recs) == 60
    assert not (tmp_path / "sub" / "nextqa_val.jsonl.tmp").exists()
    printed = capsys.readouterr().out
    assert "55 videos, 60 questions, 0 without answer" in printed and "CW           26" in printed
    out2 = tmp_path / "ego.jsonl"
    assert main(["--dataset", "egoschema", "--annotations", str(annotations_dir / EGO), "--answers",
                 str(annotations_dir / EGO_ANSWERS), "--split", "test", "--out", str(out2)]) == 0
    assert "3 videos, 3 questions, 1 without answer" in capsys.readouterr().out
    assert [qa.answer for r in read_records(out2) for qa in r.qas] == [3, 4, None]


def _corrupt_csv(src, dst, line, column, value):
    """Copy a csv, setting ``column`` of file line ``line`` (header = line 1) to ``value``."""
    with open(src, newline="") as f:
        rows = list(csv.reader(f))
    rows[line - 1][rows[0].index(column)] = value
    with open(dst, "w", newline="") as f:
        csv.writer(f).writerows(rows)


@pytest.mark.parametrize("column, value, words", [
    ("answer", "two", "expected an integer"),
    ("answer", "1.5", "expected an integer"),
    ("answer", "5", "out of range"),
    ("a3", "  ", "empty"),
    ("type", "XX", "unknown nextqa question type"),
    ("frame_count", "", "expected an integer"),
])
def test_nextqa_bad_cell_names_file_line_field(annotations_dir, tmp_path, column, value, words):
    bad = tmp_path / "bad_val.csv"
    _corrupt_csv(annotations_dir / NEXTQA, bad, 8, column, value)
    with pytest.raises(SchemaError) as e:
        convert("nextqa", bad, "val")
    assert f"{bad}:8" in str(e.value) and repr(column) in str(e.value) and words in str(e.value)
    assert e.value.field == column


def test_csv_missing_column_short_row_and_duplicate(annotations_dir, tmp_path):
    lines = (annotations_dir / INTENTQA).read_text().splitlines()
    no_col = tmp_path / "no_lemma.csv"
    no_col.write_text("\n".join([lines[0].replace(",lemma_id", "")] + [r.rsplit(",", 1)[0] for r in lines[1:]]))
    with pytest.raises(SchemaError, match=r"no_lemma\.csv:1: field 'lemma_id': missing column"):
        convert("intentqa", no_col, "val")
    short = tmp_path / "short.csv"
    short.write_text("\n".join(lines[:4] + [lines[4].rsplit(",", 3)[0]] + lines[5:]))
    with pytest.raises(SchemaError, match=r"short\.csv:5: field 'action': missing value"):
        convert("intentqa", short, "val")
    dup = tmp_path / "dup.csv"
    dup.write_text("\n".join(lines[:10] + [lines[2]]))  # line 11 repeats line 3
    with pytest.raises(SchemaError) as e:
        convert("intentqa", dup, "val")
    assert f"{dup}:11" in str(e.value) and f"{dup}:3" in str(e.value) and "duplicate" in str(e.value)


@pytest.mark.parametrize("mutate, field, words", [
    (lambda it: it.update(answer="The lamp."), "answer", "matches no choice"),
    (lambda it: it["choices"][2].update(choice="the book"), "answer", "matches 2 choices"),
    (lambda it: it.pop("video_id"), "video_id", "missing key"),
    (lambda it: it.update(start="11.1"), "start", "expected a number"),
    (lambda it: it.update(question_id="Other_T1_1"), "question_id", "type prefix"),
    (lambda it: it["choices"][3].update(choice=""), "choices[3].choice", "empty"),
    (lambda it: it.update(end=5.0), "end", "not after start"),
])
def test_star_bad_item_names_file_index_field(annotations_dir, tmp_path, mutate, field, words):
    items = json.loads((annotations_dir / STAR).read_text())
    mutate(items[0])
    bad = tmp_path / "STAR_bad.json"
    bad.write_text(json.dumps(items))
    with pytest.raises(SchemaError) as e:
        convert("star", bad, "val")
    assert str(e.value).startswith(f"{bad}[0]") and e.value.field == field and words in str(e.value)


def test_egoschema_bad_input(annotations_dir, tmp_path):
    items = json.loads((annotations_dir / EGO).read_text())
    items[1]["option 2"] = ""
    bad = tmp_path / "questions.json"
    bad.write_text(json.dumps(items))
    with pytest.raises(SchemaError, match=r"questions\.json\[1\] \(q_uid 00b9a0de-.*\): field 'option 2': empty"):
        convert("egoschema", bad, "test")
    answers = tmp_path / "answers.json"
    answers.write_text(json.dumps({"0074f737-11cb-497d-8d07-77c3a8127391": 7}))
    with pytest.raises(SchemaError, match=r"answers\.json.*0074f737.*out of range"):
        convert("egoschema", annotations_dir / EGO, "test", answers=answers)
    answers.write_text(json.dumps({"0074f737-11cb-497d-8d07-77c3a8127391": "3"}))
    with pytest.raises(SchemaError, match="expected an integer"):
        convert("egoschema", annotations_dir / EGO, "test", answers=answers)
    items = json.loads((annotations_dir / EGO).read_text())
    items.append(dict(items[0]))
    bad.write_text(json.dumps(items))
    with pytest.raises(SchemaError, match=r"questions\.json\[3\].*duplicate.*questions\.json\[0\]"):
        convert("egoschema", bad, "test")


def test_cli_error_is_one_clear_line_and_nothing_written(annotations_dir, tmp_path, capsys):
    out = tmp_path / "out.jsonl"
    out.write_text("previous content\n")
    bad = tmp_path / "bad.csv"
    _corrupt_csv(annotations_dir / NEXTQA, bad, 30, "answer", "9")
    assert main(["--dataset", "nextqa", "--annotations", str(bad), "--split", "val", "--out", str(out)]) == 1
    assert capsys.readouterr().err == f"error: {bad}:30: field 'answer': answer 9 out of range for 5 options\n"
    assert out.read_text() == "previous content\n"
