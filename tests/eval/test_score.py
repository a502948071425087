"""The scorer on the real NExT-QA / IntentQA excerpts, with expected numbers counted by hand.

Hand counts (read off the fixture files, row by row; rows numbered from 1 below the header):

NExT-QA val head 60: CW 26, CH 7, TN 13, TP 1 (csv line 57), TC 5, DC 1, DL 4, DO 3.
  Gold answer 0 on rows 1 (CH), 19, 33, 36, 39 (CW), 32, 47 (DO): all-zero predictions get
  Why 4/26, How 1/7, Bef&Aft 0/14, When 0/5, Cnt 0/1, Loc 0/4, Other 2/3,
  C 5/33, T 0/19, D 2/8, overall 7/60.
  Odd rows (1, 3, ..., 59) hold CW x15, CH x5, TN x3, TC x2, DC x1, DL x2, DO x2 (30 rows), so
  "gold on odd rows, wrong on even rows" gets Why 15/26, How 5/7, Bef&Aft 3/14, When 2/5, Cnt 1/1,
  Loc 2/4, Other 2/3, C 20/33, T 5/19, D 5/8, overall 30/60.
IntentQA val head 60: CW 34, CH 12, TN 12, TP 2.
  Gold 0 on rows 9, 29, 41 (CW), 18, 59 (CH), 11 (TN): all zeros -> CW 3/34, CH 2/12, TP&TN 1/14,
  total 6/60. Odd rows hold CW x19, CH x6, TN x5: -> CW 19/34, CH 6/12, TP&TN 5/14, total 30/60.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import random

import pytest

from data_shards.ingest.convert import convert
from data_shards.ingest.convert import main as convert_main
from data_shards.schema import QA, VideoRecord, make_qid
from eval import __main__ as eval_cli
from eval.score import format_table, load_annotations, main, score

NEXTQA = "nextqa_val_head60.csv"
INTENTQA = "intentqa_val_head60.csv"


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _pcts(fractions):
    return {k: pytest.approx(100 * a / b, rel=1e-12) for k, (a, b) in fractions.items()}


def _alternating(rows, video_col):
    """Native-key predictions: gold on odd rows (index 0, 2, ...), a wrong option on even rows."""
    return {f"{r[video_col]}_{r['qid']}": int(r["answer"]) if i % 2 == 0 else (int(r["answer"]) + 1) % 5
            for i, r in enumerate(rows)}


def test_nextqa_all_zero_predictions(annotations_dir):
    recs = convert("nextqa", annotations_dir / NEXTQA, "val")
    res = score(recs, {qa.qid: 0 for r in recs for qa in r.qas}, "nextqa")
    assert res["per_type"] == _pcts({"Why": (4, 26), "How": (1, 7), "Bef&Aft": (0, 14), "When": (0, 5),
                                     "Cnt": (0, 1), "Loc": (0, 4), "Other": (2, 3),
                                     "C": (5, 33), "T": (0, 19), "D": (2, 8)})
    assert res["overall"] == pytest.approx(100 * 7 / 60, rel=1e-12)
    assert res["counts"]["Bef&Aft"] == 14  # TP merged into TN
    assert (res["count"], res["missing"], res["invalid"], res["unknown"]) == (60, 0, 0, 0)


def test_nextqa_every_other_row_native_keys(annotations_dir):
    rows = _rows(annotations_dir / NEXTQA)
    res = score(convert("nextqa", annotations_dir / NEXTQA, "val"), _alternating(rows, "video"), "nextqa")
    assert res["per_type"] == _pcts({"Why": (15, 26), "How": (5, 7), "Bef&Aft": (3, 14), "When": (2, 5),
                                     "Cnt": (1, 1), "Loc": (2, 4), "Other": (2, 3),
                                     "C": (20, 33), "T": (5, 19), "D": (5, 8)})
    assert res["overall"] == 50.0 and res["unknown"] == 0 and res["missing"] == 0


def _official_nextqa(rows, preds):
    """The logic of NExT-QA's official multiple-choice evaluation, written out independently.

    Questions are keyed ``{video}_{qid}`` and grouped by type with TP counted as TN; the group
    accuracies are pooled by the first letter of the type (C, T, D) and over everything.
    """
    groups = {t: [] for t in ("CW", "CH", "TN", "TC", "DC", "DL", "DO")}
    for r in rows:
        groups["TN" if r["type"] == "TP" else r["type"]].append((f"{r['video']}_{r['qid']}", int(r["answer"])))
    acc, cnt = {}, {}
    for t, items in groups.items():
        hits = sum(preds[key] == gold for key, gold in items)
        for name in (t, t[0], "all"):
            acc[name] = acc.get(name, 0) + hits
            cnt[name] = cnt.get(name, 0) + len(items)
    names = {"CW": "Why", "CH": "How", "TN": "Bef&Aft", "TC": "When", "DC": "Cnt", "DL": "Loc", "DO": "Other",
             "C": "C", "T": "T", "D": "D"}
    return {names[t]: acc[t] * 100.0 / cnt[t] for t in names}, acc["all"] * 100.0 / cnt["all"]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_nextqa_grouping_matches_official_logic(annotations_dir, seed):
    rows = _rows(annotations_dir / NEXTQA)
    rng = random.Random(seed)
    preds = {f"{r['video']}_{r['qid']}": rng.choice([int(r["answer"]), rng.randrange(5)]) for r in rows}
    per_type, overall = _official_nextqa(rows, preds)
    res = score(convert("nextqa", annotations_dir / NEXTQA, "val"), preds, "nextqa")
    assert res["per_type"] == {k: pytest.approx(v, rel=1e-12) for k, v in per_type.items()}
    assert res["overall"] == pytest.approx(overall, rel=1e-12)
    assert list(res["per_type"]) == list(per_type)  # report order: Why How Bef&Aft When Cnt Loc Other C T D


def test_intentqa_hand_checked(annotations_dir):
    recs = convert("intentqa", annotations_dir / INTENTQA, "val")
    zeros = score(recs, {qa.qid: 0 for r in recs for qa in r.qas}, "intentqa")
    assert zeros["per_type"] == _pcts({"CW": (3, 34), "CH": (2, 12), "TP&TN": (1, 14)})
    assert zeros["overall"] == 10.0
    alt = score(recs, _alternating(_rows(annotations_dir / INTENTQA), "video_id"), "intentqa")
    assert alt["per_type"] == _pcts({"CW": (19, 34), "CH": (6, 12), "TP&TN": (5, 14)})
    assert alt["overall"] == 50.0 and alt["count"] == 60


def test_missing_invalid_unknown_are_counted_wrong(annotations_dir):
    recs = convert("nextqa", annotations_dir / NEXTQA, "val")
    gold = {qa.qid: qa.answer for r in recs for qa in r.qas}
    qids = list(gold)
    preds = dict(gold)
    for q in qids[:3]:
        del preds[q]                                  # missing: wrong
    preds[qids[3]] = str(gold[qids[3]])               # "2" is not an int
    preds[qids[4]] = 5                                # out of range for 5 options
    preds[qids[5]] = True                             # bool is not an index
    preds["nextqa/val/0000000000/1"] = 1              # unknown qid
    preds["123_4"] = 0                                # unknown native key
    res = score(recs, preds, "nextqa")
    assert (res["missing"], res["invalid"], res["unknown"]) == (3, 3, 2)
    assert res["count"] == 60 and res["correct_total"] == 54
    assert res["overall"] == pytest.approx(90.0)
    assert res["examples"]["missing"] == qids[:3]
    assert res["examples"]["invalid"] == qids[3:6]
    assert res["examples"]["unknown"] == ["nextqa/val/0000000000/1", "123_4"]


def test_two_keys_of_one_question(annotations_dir):
    recs = convert("nextqa", annotations_dir / NEXTQA, "val")
    gold = {qa.qid: qa.answer for r in recs for qa in r.qas}
    agree = score(recs, {**gold, "4010069381_6": 0}, "nextqa")  # same as the global key: fine
    assert agree["overall"] == 100.0 and agree["invalid"] == 0
    clash = score(recs, {**gold, "4010069381_6": 3}, "nextqa")
    assert clash["invalid"] == 1 and clash["examples"]["invalid"] == ["nextqa/val/4010069381/6"]
    official = score(recs, {"4010069381_6": {"answer": 0, "prediction": 0}}, "nextqa")  # result-file entry
    assert official["correct_total"] == 1 and official["missing"] == 59


def test_egoschema_scores_only_the_answered_subset(annotations_dir):
    recs = convert("egoschema", annotations_dir / "egoschema_format_sample.json", "test",
                   answers=annotations_dir / "egoschema_subset_answers_sample.json")
    uids = [r.video_id for r in recs]
    res = score(recs, {uids[0]: 3, uids[1]: 0, uids[2]: 1}, "egoschema")  # native q_uid keys
    assert (res["count"], res["correct_total"], res["unscored"], res["missing"]) == (2, 1, 1, 0)
    assert res["overall"] == 50.0 and res["per_type"] == {"EgoSchema": 50.0}
    none = score(recs, {}, "egoschema")
    assert (none["count"], none["missing"], none["overall"]) == (2, 2, 0.0)


def test_star_types_and_mean(annotations_dir):
    recs = convert("star", annotations_dir / "star_format_sample.json", "val")
    # gold: Interaction 1, Sequence 1, Prediction 0, Feasibility 2; native question_id keys
    preds = {"Interaction_T1_13": 1, "Sequence_T3_977": 0, "Prediction_T1_201": 0, "Feasibility_T4_55": 2}
    res = score(recs, preds, "star")
    assert res["per_type"] == {"Interaction": 100.0, "Sequence": 0.0, "Prediction": 100.0, "Feasibility": 100.0}
    assert res["overall"] == 75.0 and res["overall_pooled"] == 75.0
    # unequal type counts: overall is the leaderboard's mean of the four type accuracies, not the
    # accuracy pooled over questions (the STAR papers' "Avg")
    extra = []
    for i, rec in enumerate(recs):
        if rec.qas[0].qtype == "Interaction":
            for j in range(3):
                qa = dataclasses.replace(rec.qas[0], qid=f"{rec.qas[0].qid}_copy{i}{j}")
                extra.append(dataclasses.replace(rec, video_id=f"{rec.video_id}_copy{j}", qas=[qa]))
    res = score(recs + extra, {**preds, **{r.qas[0].qid: 0 for r in extra}}, "star")  # the 3 copies wrong
    assert res["counts"]["Interaction"] == 4 and res["per_type"]["Interaction"] == 25.0
    assert res["overall"] == pytest.approx((25.0 + 0.0 + 100.0 + 100.0) / 4)
    assert res["overall_pooled"] == pytest.approx(100.0 * 3 / 7)
    table = format_table(res)
    assert "pooled" in table and "56.25" in table and "42.86" in table


def test_synthetic_uses_nextqa_grouping_and_errors():
    def rec(vid, qtypes, dataset="synthetic"):
        return VideoRecord(video_id=vid, dataset=dataset, split="train", video=f"{vid}.mp4", qas=[
            QA(qid=make_qid(dataset, "train", vid, i), question="q?", options=["a", "b", "c"], answer=1, qtype=t)
            for i, t in enumerate(qtypes)])
    recs = [rec("v0", ["CW", "TP", "TN"]), rec("v1", ["DC"])]
    res = score(recs, {"v0_0": 1, "v0_1": 1, "v0_2": 0, "synthetic/train/v1/0": 2}, "synthetic")
    assert res["counts"]["Bef&Aft"] == 2 and res["per_type"]["Bef&Aft"] == 50.0
    assert res["per_type"]["How"] is None and res["per_type"]["T"] == 50.0 and res["overall"] == 50.0
    with pytest.raises(ValueError, match="qtype 'XX' has no synthetic group"):
        score([rec("v2", ["XX"])], {}, "synthetic")
    with pytest.raises(ValueError, match="from dataset 'nextqa', not 'synthetic'"):
        score([rec("v3", ["CW"], dataset="nextqa")], {}, "synthetic")


def test_cli_json_records_and_original_file(annotations_dir, tmp_path, capsys):
    records = tmp_path / "nextqa_val.jsonl"
    assert convert_main(["--dataset", "nextqa", "--annotations", str(annotations_dir / NEXTQA), "--split", "val",
                         "--out", str(records)]) == 0
    preds = tmp_path / "preds.json"
    preds.write_text(json.dumps(_alternating(_rows(annotations_dir / NEXTQA), "video")))
    out = tmp_path / "res" / "score.json"
    assert main(["--dataset", "nextqa", "--annotations", str(records), "--predictions", str(preds),
                 "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Bef&Aft" in printed and "50.00" in printed
    data = json.loads(out.read_text())
    assert {"overall", "per_type", "count", "missing", "invalid", "unknown"} <= set(data)
    assert data["overall"] == 50.0 and data["count"] == 60 and data["missing"] == 0
    assert set(data["per_type"]) == {"Why", "How", "Bef&Aft", "When", "Cnt", "Loc", "Other", "C", "T", "D"}
    # The original csv gives the same result; its split ("val") is read from the file name.
    out2 = tmp_path / "score2.json"
    assert eval_cli.main(["score", "--dataset", "nextqa", "--annotations", str(annotations_dir / NEXTQA),
                          "--predictions", str(preds), "--json", str(out2)]) == 0
    assert json.loads(out2.read_text()) == data


def test_load_annotations_split_rules(annotations_dir, tmp_path):
    recs = load_annotations(annotations_dir / "egoschema_format_sample.json", "egoschema")
    assert recs[0].split == "test"
    odd = tmp_path / "annotations.csv"
    odd.write_text((annotations_dir / NEXTQA).read_text())
    with pytest.raises(ValueError, match="pass --split"):
        load_annotations(odd, "nextqa")
    assert load_annotations(odd, "nextqa", split="dev")[0].qas[0].qid == "nextqa/dev/4010069381/6"


def test_cli_bad_predictions_file(annotations_dir, tmp_path, capsys):
    preds = tmp_path / "preds.json"
    preds.write_text("[1, 2]")
    args = ["--dataset", "nextqa", "--annotations", str(annotations_dir / NEXTQA), "--predictions", str(preds)]
    assert main(args) == 1
    assert "preds.json: predictions must be a json object" in capsys.readouterr().err
    preds.write_text('{"a": 1,')
    assert main(args) == 1
    assert "preds.json:1: invalid JSON" in capsys.readouterr().err


def test_dispatcher_missing_module_is_clear(monkeypatch, capsys):
    monkeypatch.setitem(eval_cli.COMMANDS, "later", ("eval.not_written_yet", "a later command"))
    assert eval_cli.main(["later"]) == 2
    assert "module eval.not_written_yet is missing" in capsys.readouterr().err
    assert eval_cli.main([]) == 2 and eval_cli.main(["--help"]) == 0
