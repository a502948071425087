"""The record schema: one record per video, holding all of that video's questions.

A record (``SCHEMA_VERSION`` 1) is a JSON object::

    {"schema_version": 1, "video_id": str, "dataset": str, "split": str,
     "video": str,                 # path (relative to a video root) or tar member name
     "start": float | null,        # clip window in seconds (STAR); null = whole video
     "end": float | null,
     "meta": {...},                # free per-video extras (frame_count, width, height, ...)
     "qas": [{"qid": "{dataset}/{split}/{video_id}/{source_qid}",
              "question": str, "options": [str, ...], "answer": int | null,
              "qtype": str, "extra": {...}}]}

``qid`` is globally unique. ``answer`` is an index into ``options`` or null when the public
annotations hold no answer (most of EgoSchema): never a guess. ``qtype`` keeps the dataset's own
code (CW, TP, Interaction, ...).

Video-caption pairs (stage-1 alignment data, ``task.mode: caption``) use the same records: an
entry with ``qtype: "caption"`` holds its text in ``extra["caption"]`` (a non-empty string), has
``options: []``, ``answer: null`` and a ``question`` that may be empty (an optional prompt).

Validation errors name the source (file and line / row) and the field, so a bad annotation row
can be found without a debugger.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from data_shards.common.atomic import atomic_write_lines

SCHEMA_VERSION = 1
OPTION_LETTERS = "ABCDEFGHIJ"
CAPTION_QTYPE = "caption"
"""qtype of a video-caption pair (the caption is in ``extra["caption"]``)."""


class SchemaError(ValueError):
    """A record or annotation row that does not fit the schema.

    The message always starts with ``{source}: field {field}:`` so that it names the file, the
    row and the field.
    """

    def __init__(self, source: str, fieldname: str, message: str):
        self.source = source
        self.field = fieldname
        super().__init__(f"{source}: field {fieldname!r}: {message}")


def make_qid(dataset: str, split: str, video_id: str, source_qid: str | int) -> str:
    """The global question id ``{dataset}/{split}/{video_id}/{source_qid}``."""
    return f"{dataset}/{split}/{video_id}/{source_qid}"


def split_qid(qid: str) -> tuple[str, str, str, str]:
    """Inverse of :func:`make_qid`: ``(dataset, split, video_id, source_qid)``."""
    parts = qid.split("/")
    if len(parts) != 4 or not all(parts):
        raise ValueError(f"not a global qid (dataset/split/video_id/qid): {qid!r}")
    return parts[0], parts[1], parts[2], parts[3]


@dataclass
class QA:
    """One multiple-choice question about a video."""

    qid: str
    """Global id, ``{dataset}/{split}/{video_id}/{source_qid}``."""
    question: str
    """The question text."""
    options: list[str]
    """The answer options, in the dataset's order (2 to 10)."""
    answer: int | None
    """Index of the correct option; None when the annotations hold no answer."""
    qtype: str
    """The dataset's own question-type code (NExT-QA CW/TN/..., STAR Interaction/...)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Dataset-specific extras (e.g. ``source_qid``, synthetic ``reasoning``)."""


@dataclass
class VideoRecord:
    """One video and all of its questions: the unit stored in a shard sample."""

    video_id: str
    dataset: str
    split: str
    video: str
    """Video file: a path relative to the video root, or the member name inside a shard."""
    qas: list[QA]
    start: float | None = None
    """Clip start in seconds (STAR); None means the whole video."""
    end: float | None = None
    """Clip end in seconds; None means the whole video."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Per-video extras: frame_count, width, height, fps, duration ..."""
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: Any, source: str = "<record>") -> VideoRecord:
        """Validate ``obj`` and build a record; raises :class:`SchemaError` naming ``source``."""
        validate_record(obj, source)
        qas = [QA(**qa) for qa in obj["qas"]]
        fields = {k: v for k, v in obj.items() if k != "qas"}
        return cls(qas=qas, **fields)


_RECORD_FIELDS = {
    "schema_version": int, "video_id": str, "dataset": str, "split": str, "video": str,
    "qas": list, "start": (int, float, type(None)), "end": (int, float, type(None)), "meta": dict,
}
_QA_FIELDS = {
    "qid": str, "question": str, "options": list, "answer": (int, type(None)), "qtype": str,
    "extra": dict,
}


def _check_fields(obj: Any, spec: dict, source: str, prefix: str) -> None:
    if not isinstance(obj, dict):
        raise SchemaError(source, prefix or "<root>", f"expected an object, got {type(obj).__name__}")
    for name, typ in spec.items():
        path = f"{prefix}{name}"
        if name not in obj:
            raise SchemaError(source, path, "missing")
        value = obj[name]
        if isinstance(value, bool) or not isinstance(value, typ):
            want = typ.__name__ if isinstance(typ, type) else " | ".join(t.__name__ for t in typ)
            raise SchemaError(source, path, f"expected {want}, got {type(value).__name__} {value!r:.60}")
    unknown = sorted(set(obj) - set(spec))
    if unknown:
        raise SchemaError(source, f"{prefix}{unknown[0]}", "unknown field")


def validate_record(obj: Any, source: str = "<record>") -> None:
    """Check one record against schema version 1.

    Args:
        obj: the parsed JSON object.
        source: where it came from, e.g. ``"records.jsonl:17"``; used in error messages.

    Raises:
        SchemaError: naming ``source`` and the first offending field.
    """
    _check_fields(obj, _RECORD_FIELDS, source, "")
    if obj["schema_version"] != SCHEMA_VERSION:
        raise SchemaError(source, "schema_version",
                          f"unsupported version {obj['schema_version']} (this code reads {SCHEMA_VERSION})")
    for name in ("video_id", "dataset", "split", "video"):
        if not obj[name].strip():
            raise SchemaError(source, name, "empty")
    if "/" in obj["dataset"] or "/" in obj["split"] or "/" in obj["video_id"]:
        bad = next(n for n in ("dataset", "split", "video_id") if "/" in obj[n])
        raise SchemaError(source, bad, f"must not contain '/': {obj[bad]!r}")
    start, end = obj["start"], obj["end"]
    for name, value in (("start", start), ("end", end)):
        if value is not None and (not math.isfinite(value) or value < 0):
            raise SchemaError(source, name, f"must be a finite number >= 0, got {value!r}")
    if start is not None and end is not None and end <= start:
        raise SchemaError(source, "end", f"clip end {end} is not after start {start}")
    if not obj["qas"]:
        raise SchemaError(source, "qas", "a record needs at least one question")
    prefix = f"{obj['dataset']}/{obj['split']}/{obj['video_id']}/"
    seen: set[str] = set()
    for i, qa in enumerate(obj["qas"]):
        _check_fields(qa, _QA_FIELDS, source, f"qas[{i}].")
        qid = qa["qid"]
        if not qid.startswith(prefix) or len(qid) == len(prefix) or "/" in qid[len(prefix):]:
            raise SchemaError(source, f"qas[{i}].qid", f"{qid!r} is not of the form {prefix}<qid>")
        if qid in seen:
            raise SchemaError(source, f"qas[{i}].qid", f"duplicate qid {qid!r} in one record")
        seen.add(qid)
        if qa["qtype"] == CAPTION_QTYPE:
            _check_caption(qa, source, f"qas[{i}].")
            continue
        opts = qa["options"]
        if not 2 <= len(opts) <= len(OPTION_LETTERS):
            raise SchemaError(source, f"qas[{i}].options", f"needs 2..{len(OPTION_LETTERS)} options, got {len(opts)}")
        for j, opt in enumerate(opts):
            if not isinstance(opt, str) or not opt.strip():
                raise SchemaError(source, f"qas[{i}].options[{j}]", f"must be a non-empty string, got {opt!r}")
        if not qa["question"].strip():
            raise SchemaError(source, f"qas[{i}].question", "empty")
        ans = qa["answer"]
        if ans is not None and not 0 <= ans < len(opts):
            raise SchemaError(source, f"qas[{i}].answer", f"index {ans} out of range for {len(opts)} options")
        if not qa["qtype"].strip():
            raise SchemaError(source, f"qas[{i}].qtype", "empty")


def _check_caption(qa: dict, source: str, prefix: str) -> None:
    caption = qa["extra"].get("caption")
    if not isinstance(caption, str) or not caption.strip():
        raise SchemaError(source, f"{prefix}extra.caption", f"a caption entry needs a non-empty text, "
                                                             f"got {caption!r:.60}")
    if qa["options"]:
        raise SchemaError(source, f"{prefix}options", "a caption entry has no options")
    if qa["answer"] is not None:
        raise SchemaError(source, f"{prefix}answer", "a caption entry has no answer")


def read_records(path: str | Path) -> Iterator[VideoRecord]:
    """Read and validate a records jsonl file, one record per line (blank lines allowed).

    Raises:
        SchemaError: on invalid JSON or an invalid record, naming ``path:line``; also on a qid
            seen twice anywhere in the file.
    """
    path = Path(path)
    seen: dict[str, int] = {}
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            source = f"{path}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise SchemaError(source, "<line>", f"invalid JSON ({e.msg} at column {e.colno})") from None
            rec = VideoRecord.from_json(obj, source)
            for qa in rec.qas:
                if qa.qid in seen:
                    raise SchemaError(source, "qas.qid", f"qid {qa.qid!r} already used on line {seen[qa.qid]}")
                seen[qa.qid] = lineno
            yield rec


def write_records(records: Iterable[VideoRecord], path: str | Path) -> int:
    """Validate and write records as jsonl, atomically.

    An invalid record raises :class:`SchemaError` naming it, and ``path`` stays as it was
    (:func:`~data_shards.common.atomic.atomic_write_lines`: no temp file is left either).

    Returns:
        The number of records written.
    """
    path = Path(path)

    def lines() -> Iterator[str]:
        for n, rec in enumerate(records):
            obj = rec.to_json()
            validate_record(obj, f"{path} (record {n + 1}, video {rec.video_id!r})")
            yield json.dumps(obj, ensure_ascii=False)

    return atomic_write_lines(path, lines())
