"""Video-caption pairs (stage-1 alignment data: WebVid, VideoChatGPT captions, your own) -> records.

Two input forms, one caption per line / row (several captions of one video become several
caption entries of its record):

- jsonl: ``{"video": "clips/abc.mp4", "caption": "a dog runs on a beach"}``; optional
  ``video_id`` (default: the file name without extension), ``start`` / ``end`` (seconds) and
  ``caption`` as a list of texts.
- csv: a ``caption`` (or WebVid's ``name``) column and a ``video`` (file) or ``video_id`` /
  ``videoid`` column (file ``{video_id}.mp4``); optional ``start`` / ``end`` columns.

Each caption is a schema entry with ``qtype: "caption"``, ``extra["caption"]``, no options and no
answer (see :mod:`data_shards.schema`); its qid is ``{dataset}/{split}/{video_id}/cap{k}``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from data_shards.ingest.converters.common import Row, parse_id, parse_number, parse_text
from data_shards.schema import CAPTION_QTYPE, QA, SchemaError, make_qid


def _row(dataset: str, split: str, source: str, video: str, video_id: str | None, caption: str, k: int,
         start: Any = None, end: Any = None) -> Row:
    video = parse_text(video, source, "video")
    vid = parse_id(video_id if video_id not in (None, "") else Path(video).stem, source, "video_id")
    text = parse_text(caption, source, "caption")
    window = [None if v in (None, "") else parse_number(float(v) if isinstance(v, str) else v, source, name)
              for name, v in (("start", start), ("end", end))]
    qa = QA(qid=make_qid(dataset, split, vid, f"cap{k}"), question="", options=[], answer=None,
            qtype=CAPTION_QTYPE, extra={"caption": text})
    return Row(source=source, video_id=vid, video=video, qa=qa, start=window[0], end=window[1])


def read_caption_rows(path: str | Path, split: str, dataset: str = "captions") -> list[Row]:
    """Parse a captions jsonl or csv (see the module doc) into one :class:`Row` per caption.

    Raises:
        SchemaError: naming the file, the line / row and the field.
    """
    path = Path(path)
    rows: list[Row] = []
    counts: dict[str, int] = {}

    def add(source: str, video: str, video_id: str | None, captions: Any, start: Any, end: Any) -> None:
        for text in captions if isinstance(captions, list) else [captions]:
            vid = video_id if video_id not in (None, "") else Path(str(video)).stem
            k = counts.get(str(vid), 0)
            counts[str(vid)] = k + 1
            rows.append(_row(dataset, split, source, video, video_id, text, k, start, end))

    if path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8-sig") as f:  # a BOM (spreadsheet exports) is not a header
            reader = csv.DictReader(f)
            cols = set(reader.fieldnames or [])
            cap_col = "caption" if "caption" in cols else "name" if "name" in cols else None
            id_col = next((c for c in ("video_id", "videoid") if c in cols), None)
            if cap_col is None or ("video" not in cols and id_col is None):
                raise SchemaError(f"{path}:1", "<header>", f"needs a caption (or name) column and a video or "
                                  f"video_id (or videoid) column, got {sorted(cols)}")
            for line, r in enumerate(reader, 2):
                vid = r.get(id_col) if id_col else None
                video = r.get("video") or f"{vid}.mp4"
                add(f"{path}:{line}", video, vid, r[cap_col], r.get("start"), r.get("end"))
        return rows
    with path.open(encoding="utf-8-sig") as f:
        for line, text in enumerate(f, 1):
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                raise SchemaError(f"{path}:{line}", "<line>", f"invalid JSON ({e.msg})") from None
            if not isinstance(obj, dict) or "video" not in obj or "caption" not in obj:
                raise SchemaError(f"{path}:{line}", "video" if "video" not in obj else "caption", "missing")
            add(f"{path}:{line}", obj["video"], obj.get("video_id"), obj["caption"], obj.get("start"), obj.get("end"))
    return rows
