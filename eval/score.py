"""``python -m eval score``: multiple-choice accuracy, overall and per official question group.

Predictions are a json object ``{qid: option index}``. Keys are our global qids
(``nextqa/val/4010069381/6``) or the dataset's own question keys: ``{video}_{qid}`` for NExT-QA,
IntentQA and the synthetic set (``4010069381_6``, the key of NExT-QA's result files),
``question_id`` for STAR, ``q_uid`` for EgoSchema. A value may also be NExT-QA's result entry
``{"prediction": i, ...}``.

Every question with a gold answer is scored: a missing prediction counts as wrong, and so does an
invalid one (not an int, out of range, or two keys of one question that disagree); both are
counted and reported. Predictions for qids that are not in the annotations are counted as
``unknown`` and ignored. Questions without a gold answer (most of EgoSchema) are not scored:
``unscored`` says how many.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from data_shards.common.atomic import atomic_write_json
from data_shards.ingest.convert import convert
from data_shards.schema import VideoRecord, read_records, split_qid
from eval.groups import grouping_for

DATASETS = ("nextqa", "intentqa", "star", "egoschema", "synthetic")
N_EXAMPLES = 5  # ids listed per problem kind in the result


def native_keys(dataset: str, video_id: str, source_qid: str) -> str:
    """The dataset's own key for a question (see the module docstring)."""
    return source_qid if dataset in ("star", "egoschema") else f"{video_id}_{source_qid}"


def _resolve(records: list[VideoRecord], predictions: dict[str, Any], dataset: str):
    """Map prediction keys onto global qids: ``(value per qid, invalid qids, unknown keys)``."""
    native: dict[str, str | None] = {}
    known: set[str] = set()
    for rec in records:
        for qa in rec.qas:
            known.add(qa.qid)
            key = native_keys(dataset, rec.video_id, split_qid(qa.qid)[3])
            native[key] = None if key in native else qa.qid  # a key used twice identifies nothing
    values: dict[str, Any] = {}
    invalid: set[str] = set()
    unknown: list[str] = []
    for key, value in predictions.items():
        qid = key if key in known else native.get(key)
        if qid is None:
            unknown.append(key)
            continue
        if isinstance(value, dict) and "prediction" in value:
            value = value["prediction"]
        if qid in values and values[qid] != value:
            invalid.add(qid)  # two keys of one question that disagree: no single answer
        values[qid] = value
    return values, invalid, unknown


def score(records: Iterable[VideoRecord], predictions: dict[str, Any], dataset: str) -> dict[str, Any]:
    """Accuracy of ``predictions`` on ``records`` with the dataset's official grouping.

    Args:
        records: schema-v1 records of ``dataset`` (one or more splits).
        predictions: key (global qid or native key) -> predicted option index.
        dataset: ``nextqa``, ``intentqa``, ``star``, ``egoschema`` or ``synthetic``.

    Returns:
        ``{"dataset", "overall": percent | None, "per_type": {group: percent | None},
        "counts": {group: n}, "correct": {group: k}, "count": questions scored,
        "correct_total", "missing", "invalid", "unknown", "unscored", "examples": {kind: [ids]}}``,
        plus ``"overall_pooled"`` for STAR, whose ``overall`` is the mean of its four type
        accuracies (its leaderboard's "Mean"). A percent is None when its group has no question.

    Raises:
        ValueError: on a record of another dataset or a qtype the grouping does not know.
    """
    grouping = grouping_for(dataset)
    records = list(records)
    values, conflicting, unknown = _resolve(records, predictions, dataset)
    counts = dict.fromkeys(grouping.groups, 0)
    correct = dict.fromkeys(grouping.groups, 0)
    problems: dict[str, list[str]] = {"missing": [], "invalid": [], "unknown": unknown}
    unscored = 0
    for rec in records:
        if rec.dataset != dataset:
            raise ValueError(f"record of video {rec.video_id!r} is from dataset {rec.dataset!r}, not {dataset!r}")
        for qa in rec.qas:
            group = grouping.type_to_group.get(qa.qtype)
            if group is None:
                raise ValueError(f"{qa.qid}: qtype {qa.qtype!r} has no {dataset} group "
                                 f"(known: {', '.join(grouping.type_to_group)})")
            if qa.answer is None:
                unscored += 1
                continue
            counts[group] += 1
            pred = values.get(qa.qid)
            if qa.qid not in values:
                problems["missing"].append(qa.qid)
            elif (qa.qid in conflicting or isinstance(pred, bool) or not isinstance(pred, int)
                  or not 0 <= pred < len(qa.options)):
                problems["invalid"].append(qa.qid)
            elif pred == qa.answer:
                correct[group] += 1
    for name, members in grouping.super_groups.items():
        counts[name] = sum(counts[g] for g in members)
        correct[name] = sum(correct[g] for g in members)
    total, right = sum(counts[g] for g in grouping.groups), sum(correct[g] for g in grouping.groups)
    result = {
        "dataset": dataset, "overall": _pct(right, total),
        "per_type": {g: _pct(correct[g], counts[g]) for g in counts},
        "counts": counts, "correct": correct, "count": total, "correct_total": right,
        **{kind: len(ids) for kind, ids in problems.items()}, "unscored": unscored,
        "examples": {kind: ids[:N_EXAMPLES] for kind, ids in problems.items() if ids},
    }
    if grouping.overall_is_mean_over_types:
        accs = [result["per_type"][g] for g in grouping.groups if counts[g]]
        result["overall_pooled"] = result["overall"]
        result["overall"] = sum(accs) / len(accs) if accs else None
    return result


def _pct(k: int, n: int) -> float | None:
    return 100.0 * k / n if n else None


def load_annotations(path: str | Path, dataset: str, split: str | None = None,
                     answers: str | Path | None = None) -> list[VideoRecord]:
    """Our records jsonl, or the dataset's original annotation file (run through ``convert``).

    A ``.jsonl`` file, or a file whose first character is ``{``, is read as records (and kept to
    ``split`` when given); a ``.csv`` file or a json list is an original file, whose split is
    ``split``, else a ``train``/``val``/``test`` word in the file name, else (EgoSchema) ``test``.
    """
    path = Path(path)
    with path.open(encoding="utf-8-sig") as f:
        head = f.read(4096).lstrip()
    if path.suffix == ".jsonl" or (path.suffix != ".csv" and head.startswith("{")):
        records = list(read_records(path))
        if split is not None:
            records = [r for r in records if r.split == split]
            if not records:
                raise ValueError(f"{path}: no record of split {split!r}")
        return records
    if dataset == "synthetic":
        raise ValueError(f"{path}: synthetic annotations are records jsonl (python -m data_shards synth)")
    if split is None:
        found = re.search(r"(?:^|[^a-z])(train|val|test)(?:[^a-z]|$)", path.stem.lower())
        if found is None and dataset != "egoschema":
            raise ValueError(f"{path}: cannot tell the split from the file name; pass --split")
        split = found.group(1) if found else "test"
    return convert(dataset, path, split, answers=answers)


def load_predictions(path: str | Path) -> dict[str, Any]:
    """A json object key -> option index; a clear error naming the file otherwise."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(data, dict):  # bad file content, not a caller's type error
        raise ValueError(  # noqa: TRY004
            f"{path}: predictions must be a json object {{qid: option index}}, got {type(data).__name__}")
    return data


def format_table(result: dict[str, Any]) -> str:
    """The result as a plain-text table: one row per group, then overall."""
    def pct(x):
        return "-" if x is None else f"{x:.2f}"
    lines = [f"{'group':<12} {'correct':>8} {'count':>7} {'acc %':>7}"]
    for g, acc in result["per_type"].items():
        lines.append(f"{g:<12} {result['correct'][g]:>8} {result['counts'][g]:>7} {pct(acc):>7}")
    if "overall_pooled" in result:
        lines.append(f"{'pooled':<12} {result['correct_total']:>8} {result['count']:>7} "
                     f"{pct(result['overall_pooled']):>7}")
        lines.append(f"{'overall':<12} {'(mean':>8} {'of types)':>7} {pct(result['overall']):>7}")
    else:
        lines.append(f"{'overall':<12} {result['correct_total']:>8} {result['count']:>7} "
                     f"{pct(result['overall']):>7}")
    lines.append(f"missing {result['missing']} (wrong), invalid {result['invalid']} (wrong), "
                 f"unknown {result['unknown']} (ignored), unscored {result['unscored']} (no gold answer)")
    for kind, ids in result["examples"].items():
        lines.append(f"  {kind}: {', '.join(ids)}{' ...' if result[kind] > len(ids) else ''}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval score", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True, choices=DATASETS)
    p.add_argument("--annotations", required=True, type=Path, help="records jsonl or the original file")
    p.add_argument("--predictions", required=True, type=Path, help="json {qid: option index}")
    p.add_argument("--split", help="split name (original files: default from the file name)")
    p.add_argument("--answers", type=Path, help="EgoSchema subset_answers.json (with questions.json)")
    p.add_argument("--json", type=Path, help="write the result as json here")
    args = p.parse_args(argv)
    try:
        records = load_annotations(args.annotations, args.dataset, args.split, args.answers)
        result = score(records, load_predictions(args.predictions), args.dataset)
    except (ValueError, OSError) as e:  # SchemaError is a ValueError; its text names file, row, field
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{args.dataset}: {args.annotations} <- {args.predictions}")
    print(format_table(result))
    if args.json is not None:
        atomic_write_json(args.json, result)
    return 0
