"""``python -m data_shards convert``: public annotation files -> schema-v1 records (jsonl).

Datasets and the files they read (details in ``data_shards/ingest/converters/``):

- ``nextqa``: ``{train,val,test}.csv``; video file ``{video_id}.mp4``.
- ``intentqa``: its ``{train,val,test}.csv`` (NExT-QA videos).
- ``star``: ``STAR_{split}.json``; one record per clip (a Charades video and a window).
- ``egoschema``: ``questions.json`` plus ``--answers subset_answers.json``; unanswered questions
  keep a null answer.
- ``captions``: video-caption pairs for stage-1 alignment (``task.mode: caption``), a jsonl
  ``{"video", "caption"}`` or a csv (WebVid's ``videoid,name`` works); ``--name`` sets the
  dataset name of the records (default ``captions``).

One record holds one video (STAR: one clip) and all of its questions, in first-seen order. Global
qids are ``{dataset}/{split}/{video_id}/{source_qid}`` and ``extra["source_qid"]`` keeps the
dataset's own question id. Bad rows raise :class:`~data_shards.schema.SchemaError` naming the
file, the row and the field; nothing is written then.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections import Counter
from pathlib import Path

from data_shards.ingest.converters.captions import read_caption_rows
from data_shards.ingest.converters.common import group_rows
from data_shards.ingest.converters.csvqa import read_csv_rows
from data_shards.ingest.converters.egoschema import read_egoschema_rows
from data_shards.ingest.converters.star import read_star_rows
from data_shards.schema import VideoRecord, write_records

DATASETS = ("nextqa", "intentqa", "star", "egoschema", "captions")
log = logging.getLogger(__name__)


def convert_with_notes(dataset: str, annotations: str | Path, split: str, answers: str | Path | None = None,
                       name: str | None = None) -> tuple[list[VideoRecord], list[str]]:
    """Like :func:`convert`, and also return notes that are not errors (e.g. unused answers).

    ``name``: the records' dataset name for ``captions`` (default "captions")."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; known: {', '.join(DATASETS)}")
    if "/" in split or not split.strip():
        raise ValueError(f"split must be a non-empty name without '/': {split!r}")
    if answers is not None and dataset != "egoschema":
        raise ValueError(f"--answers is only for egoschema ({dataset} files hold their answers)")
    notes: list[str] = []
    if dataset in ("nextqa", "intentqa"):
        rows = read_csv_rows(dataset, annotations, split)
    elif dataset == "star":
        rows = read_star_rows(annotations, split)
    elif dataset == "captions":
        name = name or "captions"
        if "/" in name or not name.strip():
            raise ValueError(f"--name must be a non-empty name without '/': {name!r}")
        return group_rows(read_caption_rows(annotations, split, name), name, split), notes
    else:
        rows, notes = read_egoschema_rows(annotations, split, answers)
    return group_rows(rows, dataset, split), notes


def convert(dataset: str, annotations: str | Path, split: str, answers: str | Path | None = None
            ) -> list[VideoRecord]:
    """Read one public annotation file into schema-v1 records.

    Args:
        dataset: one of ``nextqa``, ``intentqa``, ``star``, ``egoschema``.
        annotations: the dataset's own file (csv for NExT-QA/IntentQA, json for STAR/EgoSchema).
        split: the split name used in the global qids (``train``, ``val``, ``test`` ...).
        answers: EgoSchema only, ``subset_answers.json``.

    Returns:
        One record per video (STAR: per clip), in first-seen order.

    Raises:
        SchemaError: on a bad row, naming the file, the row and the field.
    """
    records, notes = convert_with_notes(dataset, annotations, split, answers)
    for note in notes:
        log.warning(note)
    return records


def summarize(records: list[VideoRecord]) -> dict:
    """Counts for a summary: videos, questions, questions per qtype, questions without answer."""
    qas = [qa for rec in records for qa in rec.qas]
    return {"videos": len(records), "questions": len(qas), "per_type": dict(Counter(qa.qtype for qa in qas)),
            "unanswered": sum(qa.answer is None for qa in qas)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m data_shards convert", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True, choices=DATASETS)
    p.add_argument("--annotations", required=True, type=Path, help="the dataset's annotation file")
    p.add_argument("--answers", type=Path, help="EgoSchema subset_answers.json")
    p.add_argument("--split", required=True, help="split name used in the qids (train, val, test ...)")
    p.add_argument("--name", help="captions: the dataset name written into the records (default captions)")
    p.add_argument("--out", required=True, type=Path, help="records jsonl to write (atomically)")
    args = p.parse_args(argv)
    if args.answers is not None and args.dataset != "egoschema":
        p.error("--answers is only for --dataset egoschema")
    if args.name is not None and args.dataset != "captions":
        p.error("--name is only for --dataset captions")
    try:
        records, notes = convert_with_notes(args.dataset, args.annotations, args.split, args.answers, args.name)
        write_records(records, args.out)
    except (ValueError, OSError) as e:  # SchemaError is a ValueError; its text names file, row, field
        print(f"error: {e}", file=sys.stderr)
        return 1
    s = summarize(records)
    print(f"{args.dataset}/{args.split}: {s['videos']} videos, {s['questions']} questions, "
          f"{s['unanswered']} without answer -> {args.out}")
    for qtype, n in sorted(s["per_type"].items()):
        print(f"  {qtype:<12} {n}")
    for note in notes:
        print(f"note: {note}")
    return 0
