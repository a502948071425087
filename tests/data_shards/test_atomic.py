"""data_shards.common.atomic: a file is replaced whole or not at all, and no temp file is left behind."""

from __future__ import annotations

import json
import os
import stat

import pytest

from data_shards.common.atomic import (
    PendingFile,
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_lines,
    atomic_write_text,
)


def _names(folder):
    return sorted(p.name for p in folder.iterdir())


def test_a_write_that_raises_leaves_the_old_file_and_no_temp_file(tmp_path):
    path = tmp_path / "sizes.json"
    path.write_text("old\n")
    with pytest.raises(RuntimeError, match="disk gone"), atomic_path(path) as tmp:
        assert tmp.parent == tmp_path and tmp.name != path.name
        tmp.write_text("half of the new")
        raise RuntimeError("disk gone")
    assert path.read_text() == "old\n"
    assert _names(tmp_path) == ["sizes.json"]


def test_a_successful_write_replaces_the_file(tmp_path):
    path = tmp_path / "sizes.json"
    path.write_text("old\n")
    with atomic_path(path) as tmp:
        tmp.write_text("new\n")
        assert path.read_text() == "old\n", "nothing changes under the final name before the block ends"
    assert path.read_text() == "new\n"
    assert _names(tmp_path) == ["sizes.json"]


def test_a_block_that_leaves_no_file_is_an_error_and_changes_nothing(tmp_path):
    """E.g. a tool that removed its output on failure without the caller noticing."""
    path = tmp_path / "clip.mp4"
    path.write_bytes(b"old")
    with pytest.raises(FileNotFoundError, match="clip.mp4"), atomic_path(path) as tmp:
        tmp.unlink()
    assert path.read_bytes() == b"old" and _names(tmp_path) == ["clip.mp4"]


def test_the_folder_is_made_and_the_new_file_gets_ordinary_permissions(tmp_path):
    path = tmp_path / "a" / "b" / "records.jsonl"
    old = os.umask(0o022)
    try:
        atomic_write_text(path, "x\n")
    finally:
        os.umask(old)
    assert path.read_text() == "x\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644, "as readable as a file written in place (not 0600)"


def test_whole_content_helpers(tmp_path):
    assert atomic_write_bytes(tmp_path / "b", b"\x00\x01") == tmp_path / "b"
    assert (tmp_path / "b").read_bytes() == b"\x00\x01"
    atomic_write_text(tmp_path / "t", "é\n")
    assert (tmp_path / "t").read_bytes() == "é\n".encode()
    atomic_write_json(tmp_path / "j", {"a": [1]}, indent=1)
    assert (tmp_path / "j").read_text() == json.dumps({"a": [1]}, indent=1) + "\n"
    assert atomic_write_lines(tmp_path / "l", ["x", "y"]) == 2
    assert (tmp_path / "l").read_text() == "x\ny\n"
    assert _names(tmp_path) == ["b", "j", "l", "t"]


def test_lines_from_a_generator_that_raises_leave_the_old_file(tmp_path):
    path = tmp_path / "records.jsonl"
    path.write_text("old\n")

    def lines():
        yield "first"
        raise ValueError("record 2: field 'qas': missing")

    with pytest.raises(ValueError, match="record 2"):
        atomic_write_lines(path, lines())
    assert path.read_text() == "old\n" and _names(tmp_path) == ["records.jsonl"]


def test_pending_file_spans_several_calls(tmp_path):
    """The object form (an encoder fed frame by frame): commit renames, discard removes."""
    path = tmp_path / "v.mp4"
    kept = PendingFile(path)
    dropped = PendingFile(path)
    assert kept.tmp != dropped.tmp and kept.tmp.exists() and dropped.tmp.exists()
    kept.tmp.write_bytes(b"kept")
    dropped.tmp.write_bytes(b"dropped")
    dropped.discard()
    assert not path.exists()
    assert kept.commit() == path and path.read_bytes() == b"kept"
    kept.discard()  # after a commit: nothing left to remove, and the file stays
    assert _names(tmp_path) == ["v.mp4"]
