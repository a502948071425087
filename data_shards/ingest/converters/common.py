"""Helpers shared by the dataset converters: value parsing with located errors, grouping by video.

Every error is a :class:`~data_shards.schema.SchemaError` whose source names the file and the row
(``path:LINE`` for csv, ``path[INDEX]`` for json lists) and whose field names the column or key.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from data_shards.schema import QA, SchemaError, VideoRecord, validate_record

# pandas writes an integer column holding a NaN as floats ("3.0"); accept that, nothing looser.
_INT_RE = re.compile(r"[+-]?\d+(\.0+)?")


def parse_int(value: Any, source: str, fieldname: str) -> int:
    """An int from a csv cell (``"3"``, ``"3.0"``) or a json value (``3``); bools are refused."""
    if isinstance(value, bool):
        raise SchemaError(source, fieldname, f"expected an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and _INT_RE.fullmatch(value.strip()):
        return int(value.strip().split(".")[0])
    raise SchemaError(source, fieldname, f"expected an integer, got {value!r:.60}")


def parse_number(value: Any, source: str, fieldname: str) -> float:
    """A finite json number (seconds); bools and strings are refused."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SchemaError(source, fieldname, f"expected a number, got {value!r:.60}")
    return float(value)


def parse_text(value: Any, source: str, fieldname: str) -> str:
    """A non-empty string, stripped of surrounding whitespace."""
    if not isinstance(value, str):
        raise SchemaError(source, fieldname, f"expected a string, got {type(value).__name__} {value!r:.60}")
    if not value.strip():
        raise SchemaError(source, fieldname, "empty")
    return value.strip()


def parse_id(value: Any, source: str, fieldname: str) -> str:
    """An id usable inside a global qid: non-empty, no '/', int-like floats (``"123.0"``) fixed."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # a json id written as a number
    text = parse_text(value, source, fieldname)
    if re.fullmatch(r"\d+\.0+", text):
        text = text.split(".")[0]
    if "/" in text or any(c.isspace() for c in text):
        raise SchemaError(source, fieldname, f"id must not contain '/' or whitespace: {text!r}")
    return text


def check_answer(answer: int, n_options: int, source: str, fieldname: str) -> int:
    if not 0 <= answer < n_options:
        raise SchemaError(source, fieldname, f"answer {answer} out of range for {n_options} options")
    return answer


@dataclass
class Row:
    """One converted question with the video-level fields of the row it came from."""

    source: str
    """Where the row is, e.g. ``val.csv:17`` or ``STAR_val.json[3]``; used in errors."""
    video_id: str
    video: str
    qa: QA
    start: float | None = None
    end: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def group_rows(rows: Iterable[Row], dataset: str, split: str) -> list[VideoRecord]:
    """One record per ``video_id`` holding all its questions, videos in first-seen order.

    Raises:
        SchemaError: on a qid seen twice, or on rows of one video whose video-level fields
            (file, clip window, meta) disagree, naming both rows; on a record that breaks the
            schema (e.g. a clip whose end is not after its start), naming its first row.
    """
    records: dict[str, VideoRecord] = {}
    first_source: dict[str, str] = {}
    qid_source: dict[str, str] = {}
    for row in rows:
        qid = row.qa.qid
        if qid in qid_source:
            raise SchemaError(row.source, "qid",
                              f"duplicate question {qid!r}: the same video and qid are already at {qid_source[qid]}")
        qid_source[qid] = row.source
        rec = records.get(row.video_id)
        if rec is None:
            records[row.video_id] = VideoRecord(video_id=row.video_id, dataset=dataset, split=split,
                                                video=row.video, qas=[row.qa], start=row.start, end=row.end,
                                                meta=dict(row.meta))
            first_source[row.video_id] = row.source
            continue
        for name in ("video", "start", "end", "meta"):
            if getattr(rec, name) != getattr(row, name):
                raise SchemaError(row.source, name, f"video {row.video_id!r} has {name}={getattr(row, name)!r} "
                                  f"here but {getattr(rec, name)!r} at {first_source[row.video_id]}")
        rec.qas.append(row.qa)
    # Check the schema here, where the error can still name the annotation row, not at write time.
    for video_id, rec in records.items():
        validate_record(rec.to_json(), first_source[video_id])
    return list(records.values())
