"""Reasoning records (contract 5): the schema, the crash-safe append writer, and the reader.

One JSON object per line, one line per question::

    {"qid": str, "teacher": str, "prompt_version": str,
     "raw": str | null, "refined": str | null,
     "teacher_answer": int | null, "teacher_correct": bool | null,
     "vcot": [str, ...] | null, "created": str (ISO 8601 UTC),
     "status": "ok" | "failed", "error": str | null, ...extras}

A ReasVQA record has ``raw``/``refined``; a vCoT record has ``vcot`` (its prompt version starts
with ``vcot``). Files are append-only: a generation job writes whole lines with one ``write``
and flushes them, so a crash can only leave a partial LAST line, which
:func:`repair_partial_line` cuts off at the next start. :func:`load_reasoning` joins a
ReasVQA record and a vCoT record of the same qid into one dict, keeps only ``status == "ok"``
lines, and reports failed, duplicate and corrupt lines.
"""

from __future__ import annotations

import datetime as _dt
import glob
import json
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from data_shards.common.atomic import atomic_write_lines

log = logging.getLogger(__name__)

FIELDS: dict[str, tuple] = {
    "qid": (str,), "teacher": (str,), "prompt_version": (str,), "raw": (str, type(None)),
    "refined": (str, type(None)), "teacher_answer": (int, type(None)), "teacher_correct": (bool, type(None)),
    "vcot": (list, type(None)), "created": (str,), "status": (str,), "error": (str, type(None)),
}
STATUSES = ("ok", "failed")


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def make_record(qid: str, teacher: str, prompt_version: str, *, raw: str | None = None, refined: str | None = None,
                teacher_answer: int | None = None, teacher_correct: bool | None = None,
                vcot: list[str] | None = None, status: str = "ok", error: str | None = None,
                **extra: Any) -> dict:
    """A validated reasoning record; ``extra`` keys (e.g. ``split``, ``refine``) are kept as they are."""
    rec = {"qid": qid, "teacher": teacher, "prompt_version": prompt_version, "raw": raw, "refined": refined,
           "teacher_answer": teacher_answer, "teacher_correct": teacher_correct, "vcot": vcot,
           "created": now_iso(), "status": status, "error": error, **extra}
    validate_reasoning(rec)
    return rec


def validate_reasoning(obj: Any, source: str = "<reasoning record>") -> None:
    """Check one reasoning record; raises ValueError naming ``source`` and the field."""
    if not isinstance(obj, dict):
        raise ValueError(f"{source}: expected a JSON object, got {type(obj).__name__}")
    for name, types in FIELDS.items():
        if name not in obj:
            raise ValueError(f"{source}: field {name!r}: missing")
        value = obj[name]
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            raise ValueError(f"{source}: field {name!r}: got {type(value).__name__} {value!r:.60}")
    if obj["status"] not in STATUSES:
        raise ValueError(f"{source}: field 'status': {obj['status']!r} is not one of {STATUSES}")
    if obj["status"] == "failed" and not obj["error"]:
        raise ValueError(f"{source}: field 'error': a failed record needs the error")
    if obj["vcot"] is not None and not all(isinstance(c, str) for c in obj["vcot"]):
        raise ValueError(f"{source}: field 'vcot': every caption must be a string")


def kind(rec: dict) -> str:
    """``"vcot"`` for transitional-caption records, ``"reasoning"`` for ReasVQA chains."""
    return "vcot" if rec.get("prompt_version", "").startswith("vcot") else "reasoning"


def repair_partial_line(path: str | Path) -> int:
    """Cut a partial last line (left by a crash mid-write) off ``path``.

    Returns:
        The number of bytes removed (0 when the file ends with a newline or does not exist).
    """
    path = Path(path)
    if not path.exists():
        return 0
    size = path.stat().st_size
    if size == 0:
        return 0
    with path.open("rb+") as f:
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return 0
        # Walk back block by block to the last newline.
        pos, block = size, 1 << 16
        cut = 0
        while pos > 0:
            start = max(0, pos - block)
            f.seek(start)
            chunk = f.read(pos - start)
            nl = chunk.rfind(b"\n")
            if nl >= 0:
                cut = start + nl + 1
                break
            pos = start
        f.truncate(cut)
        f.flush()
        os.fsync(f.fileno())
    return size - cut


class AppendWriter:
    """Append whole records to a jsonl file; each line reaches the OS in one ``write``.

    Opening repairs a partial last line first (``.repaired`` holds the bytes cut).
    """

    def __init__(self, path: str | Path, fsync: bool = True):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.repaired = repair_partial_line(self.path)
        self._fsync = fsync
        # Unbuffered binary append: a line is one write() syscall, never split across two.
        self._f = open(self.path, "ab", buffering=0)

    def write(self, records: Iterable[dict]) -> int:
        data = b"".join(json.dumps(r, ensure_ascii=False).encode("utf-8") + b"\n" for r in records)
        if data:
            self._f.write(data)
            if self._fsync:
                os.fsync(self._f.fileno())
        return data.count(b"\n")

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> AppendWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_jsonl_atomic(path: str | Path, records: Iterable[dict]) -> int:
    """Write records to ``path`` through a temp file renamed at the end; returns the count."""
    return atomic_write_lines(path, (json.dumps(r, ensure_ascii=False) for r in records))


def read_reasoning_lines(path: str | Path, counts: dict | None = None,
                         validate: bool = True) -> Iterator[tuple[int, dict]]:
    """Yield ``(line number, record)``; corrupt or invalid lines are logged, counted and skipped.

    ``counts["corrupt"]`` (and ``counts["partial_tail"]`` for an unterminated last line) grow
    in place.
    """
    counts = {} if counts is None else counts
    with open(path, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    tail_partial = bool(lines and lines[-1])
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            if validate:
                validate_reasoning(obj, f"{path}:{lineno}")
        except (ValueError, UnicodeDecodeError) as e:
            key = "partial_tail" if tail_partial and lineno == len(lines) else "corrupt"
            counts[key] = counts.get(key, 0) + 1
            log.warning("%s:%d: skipped %s line: %s", path, lineno, key.replace("_", " "), str(e)[:200])
            continue
        yield lineno, obj


def expand_paths(paths: str | Path | Iterable[str | Path]) -> list[Path]:
    """Files from paths, directories (their ``*.jsonl``) and glob patterns, in sorted order."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            out += sorted(p.glob("*.jsonl"))
        elif any(c in str(p) for c in "*?["):
            out += [Path(x) for x in sorted(glob.glob(str(p)))]
        elif p.exists():
            out.append(p)
        else:
            raise FileNotFoundError(f"reasoning records not found: {p}")
    return out


def load_reasoning(paths: str | Path | Iterable[str | Path], stats: dict | None = None) -> dict[str, dict]:
    """Read reasoning records into ``{qid: record}`` for the loader / trainer / eval.

    Only ``status == "ok"`` lines count. The first ok ReasVQA record and the first ok vCoT record
    of a qid are joined (the vCoT captions go into ``vcot`` of the ReasVQA record). Failed lines
    without a later success, duplicate ok lines and corrupt lines are counted in ``stats``
    (when given) and reported through logging.

    Args:
        paths: files, directories of ``*.jsonl`` or glob patterns.
        stats: filled with ``files, ok, failed, duplicates, corrupt`` counts.
    """
    counts: dict = {}
    by_kind: dict[str, dict[str, dict]] = {"reasoning": {}, "vcot": {}}
    failed: set[tuple[str, str]] = set()
    dup = 0
    files = expand_paths(paths)
    for path in files:
        for _, rec in read_reasoning_lines(path, counts):
            table = by_kind[kind(rec)]
            if rec["status"] != "ok":
                failed.add((kind(rec), rec["qid"]))
            elif rec["qid"] in table:
                dup += 1
            else:
                table[rec["qid"]] = rec
    out = dict(by_kind["reasoning"])
    for qid, rec in by_kind["vcot"].items():
        if qid in out:
            out[qid] = {**out[qid], "vcot": rec["vcot"], "vcot_prompt_version": rec["prompt_version"]}
        else:
            out[qid] = rec
    n_failed = sum(1 for k, q in failed if q not in by_kind[k])
    result = {"files": len(files), "ok": len(out), "failed": n_failed, "duplicates": dup,
              "corrupt": counts.get("corrupt", 0) + counts.get("partial_tail", 0)}
    if stats is not None:
        stats.update(result)
    msg = ", ".join(f"{k} {v}" for k, v in result.items())
    (log.warning if n_failed or dup or result["corrupt"] else log.info)("load_reasoning: %s", msg)
    return out
