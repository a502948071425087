"""Files that appear whole or not at all: write a temp file in the same folder, then rename.

A crash, a full disk or a kill -9 in the middle of a write leaves the previous file (or none)
under the final name, never a truncated one; the temp file is removed when the write raises.
Used for every file the project rewrites in place (configs, sizes.json, records, reasoning merges,
checkpoint markers, reports, encoded videos), so that nothing already written is lost.

- :func:`atomic_path`: a context manager yielding the temp path, for any writer (ffmpeg too).
- :class:`PendingFile`: the same as an object, for a file whose writing spans several calls
  (an encoder fed frame by frame): :meth:`~PendingFile.commit` or :meth:`~PendingFile.discard`.
- :func:`atomic_write_bytes` / ``_text`` / ``_json`` / ``_lines``: whole contents at once, fsync'ed.

Temp files are named ``.{name}.{8 hex digits}{suffix}`` (hidden, never matching the final name's
patterns) and get the permissions of any new file (0o666 less the umask), so the renamed file is
as readable as one written in place.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class PendingFile:
    """A new temp file next to ``path`` that becomes ``path`` on :meth:`commit`.

    Args:
        path: the final path (its folder is created when missing).
        suffix: the temp file's name ends with this.

    Attributes:
        path: the final path.
        tmp: the temp path to write (created empty, so it is reserved for this writer).
    """

    def __init__(self, path: str | Path, suffix: str = ".tmp"):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(100):
            tmp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}{suffix}")
            try:
                # O_EXCL: never another writer's temp file; mode 0o666: the umask applies, as for open()
                os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            except FileExistsError:
                continue
            self.tmp = tmp
            return
        raise FileExistsError(f"{self.path}: no free temp file name next to it")

    def commit(self) -> Path:
        """Rename the temp file onto ``path``; returns ``path``."""
        if not self.tmp.exists():
            raise FileNotFoundError(f"{self.path}: the temp file {self.tmp.name} was not written")
        os.replace(self.tmp, self.path)
        return self.path

    def discard(self) -> None:
        """Remove the temp file (if it is still there); ``path`` stays as it was."""
        self.tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temp path next to ``path``; rename it onto ``path`` when the block ends normally.

    The caller writes the temp path any way it likes (a tool such as ffmpeg may write it). When the
    block raises, or leaves no file behind, the temp file is removed and ``path`` is untouched.
    """
    pending = PendingFile(path, suffix)
    try:
        yield pending.tmp
        pending.commit()
    finally:
        pending.discard()


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (fsync'ed before the rename)."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any, indent: int | None = 2) -> Path:
    """Write ``obj`` as JSON (with a final newline) to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")


def atomic_write_lines(path: str | Path, lines: Iterator[str] | list[str]) -> int:
    """Write one string per line to ``path`` atomically; returns the number of lines.

    ``lines`` may be a generator that raises (e.g. while validating): ``path`` is then untouched.
    """
    n = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(line + "\n")
            n += 1
        f.flush()
        os.fsync(f.fileno())
    return n
