"""Shard lists: a local glob (``/data/shards/nextqa_train-*.tar``) becomes the files it matches, sorted.

Brace ranges (``{000000..000255}``) are expanded by the callers (webdataset's ``expand_urls``); a
recipe that names shards by a glob stays right whatever number of shards ``--max-size`` gave the writer.
"""

from __future__ import annotations

import glob


def glob_local(url: str) -> list[str]:
    """The sorted files a local glob pattern matches; anything else (no wildcard, a ``pipe:`` or remote
    URL) as given. A glob that matches nothing is kept as given, so that it is reported as missing."""
    if any(c in url for c in "*?[") and ":" not in url.split("/", 1)[0]:
        return sorted(glob.glob(url)) or [url]
    return [url]
