"""Shard lists: a local glob (``/data/shards/nextqa_train-*.tar``) becomes the files it matches, sorted.

Brace ranges (``{000000..000255}``) are expanded by the callers (webdataset's ``expand_urls``); a
recipe that names shards by a glob stays right whatever number of shards ``--max-size`` gave the writer.
"""

from __future__ import annotations

import glob
import json
import re
from pathlib import Path


def glob_local(url: str) -> list[str]:
    """The sorted files a local glob pattern matches; anything else (no wildcard, a ``pipe:`` or remote
    URL) as given. A glob that matches nothing is kept as given, so that it is reported as missing."""
    if any(c in url for c in "*?[") and ":" not in url.split("/", 1)[0]:
        return sorted(glob.glob(url)) or [url]
    return [url]


WRITING = ".writing"
"""Suffix of the marker a shard write leaves in its folder until it has finished (``sizes.json``
written, stale shards removed): shards of an interrupted rewrite mix two datasets."""


def writing_marker(pattern: str) -> Path:
    """The marker file of a write of ``pattern`` (``out/train-%06d.tar`` -> ``out/.train-%06d.tar.writing``)."""
    p = Path(pattern)
    return p.parent / f".{p.name}{WRITING}"


def unfinished_writes(urls: list[str]) -> list[str]:
    """One line per local shard folder holding the marker of a write that has not finished, naming the
    marker and the first of its shards among ``urls`` (empty: every write finished)."""
    found: dict[Path, str] = {}
    markers: dict[Path, list[tuple[Path, re.Pattern]]] = {}
    for url in urls:
        if ":" in url.split("/", 1)[0]:
            continue  # remote: cannot be checked
        shard = Path(url)
        if shard.parent not in markers:
            markers[shard.parent] = []
            for m in sorted(shard.parent.glob(f".*{WRITING}")) if shard.parent.is_dir() else []:
                try:
                    markers[shard.parent].append((m, re.compile(json.loads(m.read_text())["regex"])))
                except (OSError, ValueError, KeyError, re.error):
                    markers[shard.parent].append((m, re.compile(r".*")))  # unreadable: assume it covers all
        for marker, regex in markers[shard.parent]:
            if marker not in found and regex.match(shard.name):
                found[marker] = (f"{url}: its folder holds {marker}, left by a shard write that has not finished "
                                 "(running, or interrupted: its shards may mix two writes); rerun that "
                                 "`data_shards write` to the end first")
    return list(found.values())
