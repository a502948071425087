"""Count what WebDataset shards hold: videos, questions, question types, bytes.

``python -m data_shards inspect 'out/train-{000000..000003}.tar' 'out/val-*.tar' [--json]``

The tars are read directly with :mod:`tarfile` as a stream (video bytes are skipped, not read),
so it works on shards of any size. Problems are reported, never fatal: a missing or unreadable
tar, a truncated member, a ``.json`` that is not a valid schema-v1 record, a key with ``.`` or
``/`` in it, or a sample without its record or its video. The exit status is 1 when there was
any problem, else 0.
"""

from __future__ import annotations

import argparse
import json
import sys
import tarfile
from collections import Counter
from pathlib import Path

from webdataset.shardlists import expand_urls

from data_shards.common.urls import glob_local
from data_shards.ingest.video_io import VIDEO_EXTS
from data_shards.schema import SchemaError, validate_record

_COUNTS = ("samples", "videos", "questions", "video_bytes", "bytes")


def expand_shards(patterns: list[str] | str) -> list[str]:
    """Brace-expand (``{000000..000009}``, ``::`` lists) and glob each pattern, in order.

    A pattern that matches no file is kept as is, so that it is reported as missing.
    """
    out = [f for pat in ([patterns] if isinstance(patterns, str) else patterns) for u in expand_urls(pat)
           for f in glob_local(u)]
    return list(dict.fromkeys(out))


def inspect_tar(path: str) -> dict:
    """Counts for one tar: samples, videos, questions, qtypes, video_bytes, bytes, errors."""
    res = {k: 0 for k in _COUNTS} | {"qtypes": Counter(), "errors": []}
    members: dict[str, set[str]] = {}
    last = None

    def error(member: str | None, text: str) -> None:
        res["errors"].append({"shard": path, "member": member, "error": text})

    try:
        res["bytes"] = Path(path).stat().st_size
        with tarfile.open(path, "r|*") as tf:
            for m in tf:
                last = m.name
                if not m.isfile():
                    continue
                key, dot, ext = Path(m.name).name.partition(".")
                if "/" in m.name or not dot:
                    error(m.name, "member name is not {key}.{ext} (a key holds no '/' and no '.')")
                    continue
                members.setdefault(key, set()).add(ext)
                if ext in VIDEO_EXTS:
                    res["videos"] += 1
                    res["video_bytes"] += m.size
                elif ext == "json":
                    _count_record(tf.extractfile(m).read(), f"{path}:{m.name}", res, error, m.name)
    except FileNotFoundError:
        error(None, "missing file")
    except (tarfile.TarError, OSError, EOFError) as e:
        error(last, f"unreadable tar after member {last!r}: {type(e).__name__}: {e}")
    for key, exts in members.items():
        has_video = any(e in VIDEO_EXTS for e in exts)
        if "json" in exts and has_video:
            res["samples"] += 1
        else:
            error(key, f"incomplete sample (members: {sorted(exts)}; needs .json and one of {VIDEO_EXTS})")
    return res


def _count_record(data: bytes, source: str, res: dict, error, name: str) -> None:
    try:
        rec = json.loads(data)
        validate_record(rec, source)
    except (json.JSONDecodeError, UnicodeDecodeError, SchemaError) as e:
        error(name, f"bad record: {e}")
        return
    res["questions"] += len(rec["qas"])
    res["qtypes"].update(f"{rec['dataset']}:{qa['qtype']}" for qa in rec["qas"])


def inspect_shards(urls: list[str] | str) -> dict:
    """Inspect shards given as brace patterns / globs / paths.

    Returns:
        {"shards": {url: {samples, videos, questions, video_bytes, bytes, qtypes}},
         "total": {samples, videos, questions, video_bytes, bytes, shards},
         "qtypes": {"dataset:qtype": count}, "errors": [{"shard", "member", "error"}]}.
    """
    shards, errors, qtypes = {}, [], Counter()
    total = {k: 0 for k in _COUNTS}
    for url in expand_shards(urls):
        r = inspect_tar(url)
        errors += r.pop("errors")
        qtypes.update(r["qtypes"])
        r["qtypes"] = dict(sorted(r["qtypes"].items()))
        shards[url] = r
        for k in _COUNTS:
            total[k] += r[k]
    total["shards"] = len(shards)
    return {"shards": shards, "total": total, "qtypes": dict(sorted(qtypes.items())), "errors": errors}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m data_shards inspect", description=__doc__.split("\n")[0])
    p.add_argument("shards", nargs="+", help="shard paths, brace patterns or globs")
    p.add_argument("--json", action="store_true", help="print the result as json")
    a = p.parse_args(argv)
    res = inspect_shards(a.shards)
    if a.json:
        print(json.dumps(res, indent=1))
        return 1 if res["errors"] else 0
    print(f"{'shard':<40} {'videos':>7} {'questions':>9} {'video MB':>9} {'MB':>9}")
    rows = list(res["shards"].items()) + [("total", res["total"])]
    for name, r in rows:
        print(f"{Path(name).name if name != 'total' else name:<40} {r['videos']:>7} {r['questions']:>9} "
              f"{r['video_bytes'] / 1e6:>9.2f} {r['bytes'] / 1e6:>9.2f}")
    print("question types: " + ", ".join(f"{k} {v}" for k, v in res["qtypes"].items()))
    for e in res["errors"]:
        print(f"error: {e['shard']}: {e['member'] or '-'}: {e['error']}", file=sys.stderr)
    if res["errors"]:
        print(f"{len(res['errors'])} problem(s) found", file=sys.stderr)
    return 1 if res["errors"] else 0
