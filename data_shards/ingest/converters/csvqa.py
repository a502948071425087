"""NExT-QA and IntentQA: csv annotation files, one row per question, five options ``a0..a4``.

NExT-QA ``{train,val,test}.csv`` columns:
``video,frame_count,width,height,question,answer,qid,type,a0,a1,a2,a3,a4``.
IntentQA uses ``video_id`` for ``video`` and adds ``action,lemma,lemma_id`` (kept in ``extra``).
``answer`` is the index 0..4 of the right option. ``qid`` numbers the questions *within one video*,
so the source key of a question is ``{video}_{qid}`` (the key of NExT-QA's own result files).

Video files: the NExT-QA release stores videos in VidOR folders found through a separate
``map_vid_vidorID.json``; the record holds ``{video_id}.mp4`` (a flat name) and the shard writer's
video lookup is where that map, if needed, is applied. IntentQA reuses the NExT-QA videos.
"""

from __future__ import annotations

import csv
from pathlib import Path

from data_shards.ingest.converters.common import Row, check_answer, parse_id, parse_int, parse_text
from data_shards.schema import QA, SchemaError, make_qid

NEXTQA_TYPES = ("CW", "CH", "TN", "TP", "TC", "DC", "DL", "DO")
INTENTQA_TYPES = ("CW", "CH", "TN", "TP")
OPTION_COLUMNS = ("a0", "a1", "a2", "a3", "a4")
_COMMON = ("frame_count", "width", "height", "question", "answer", "qid", "type") + OPTION_COLUMNS
SPECS = {
    # dataset -> (video column, all required columns, allowed types, extra columns kept in qa.extra)
    "nextqa": ("video", ("video",) + _COMMON, NEXTQA_TYPES, ()),
    "intentqa": ("video_id", ("video_id",) + _COMMON + ("action", "lemma", "lemma_id"), INTENTQA_TYPES,
                 ("action", "lemma", "lemma_id")),
}


def native_key(video_id: str, source_qid: str) -> str:
    """The question key of NExT-QA / IntentQA result files: ``{video}_{qid}``."""
    return f"{video_id}_{source_qid}"


def read_csv_rows(dataset: str, path: str | Path, split: str) -> list[Row]:
    """Parse a NExT-QA or IntentQA csv into one :class:`Row` per question.

    Raises:
        SchemaError: naming ``path:LINE`` (the header is line 1) and the column, on a missing
            column or value, an extra value, a non-integer or out-of-range answer, an unknown
            type or an empty option.
    """
    video_col, columns, types, extra_cols = SPECS[dataset]
    path = Path(path)
    rows: list[Row] = []
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames
        if not header:
            raise SchemaError(f"{path}:1", "<header>", "empty file: no header row")
        missing = [c for c in columns if c not in header]
        if missing:
            raise SchemaError(f"{path}:1", missing[0], f"missing column (header has {', '.join(header)})")
        for raw in reader:
            source = f"{path}:{reader.line_num}"
            if None in raw:
                raise SchemaError(source, "<row>", f"{len(header) + len(raw[None])} values for {len(header)} columns")
            for col in columns:
                if raw[col] is None:
                    raise SchemaError(source, col, f"missing value (row has fewer than {len(header)} values)")
            rows.append(_row(dataset, raw, source, split, video_col, types, extra_cols))
    return rows


def _row(dataset: str, raw: dict, source: str, split: str, video_col: str, types: tuple[str, ...],
         extra_cols: tuple[str, ...]) -> Row:
    video_id = parse_id(raw[video_col], source, video_col)
    source_qid = str(parse_int(raw["qid"], source, "qid"))
    options = [parse_text(raw[c], source, c) for c in OPTION_COLUMNS]
    answer = check_answer(parse_int(raw["answer"], source, "answer"), len(options), source, "answer")
    qtype = raw["type"].strip()
    if qtype not in types:
        raise SchemaError(source, "type", f"unknown {dataset} question type {qtype!r} (known: {', '.join(types)})")
    extra: dict = {"source_qid": source_qid}
    for col in extra_cols:
        extra[col] = parse_int(raw[col], source, col) if col == "lemma_id" else raw[col].strip()
    qa = QA(qid=make_qid(dataset, split, video_id, source_qid),
            question=parse_text(raw["question"], source, "question"),
            options=options, answer=answer, qtype=qtype, extra=extra)
    meta = {c: parse_int(raw[c], source, c) for c in ("frame_count", "width", "height")}
    return Row(source=source, video_id=video_id, video=f"{video_id}.mp4", qa=qa, meta=meta)
