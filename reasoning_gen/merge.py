"""``python -m reasoning_gen merge DIR --out merged.jsonl``: rank files -> one file per split.

Rank files ``DIR/{split}.rank{r:05d}.jsonl`` are read (never modified); per (qid, kind) the
first ok record is kept; duplicate ok records (a qid generated twice, e.g. after a change of
world size) are reported and dropped; a failed record is kept only when the qid has no ok one.
Corrupt lines and a partial last line are skipped and reported. Output is sorted by qid and
written atomically.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from data_shards.reasoning_records import kind, read_reasoning_lines, write_jsonl_atomic

_RANK_FILE = re.compile(r"^(?P<split>.+)\.rank\d+\.jsonl$")


def rank_files(directory: str | Path) -> dict[str, list[Path]]:
    """Rank files by split."""
    out: dict[str, list[Path]] = {}
    for path in sorted(Path(directory).glob("*.rank*.jsonl")):
        m = _RANK_FILE.match(path.name)
        if m:
            out.setdefault(m.group("split"), []).append(path)
    return out


def merge_files(paths: list[Path], ok_only: bool = False) -> tuple[list[dict], dict]:
    """Merge records of several files: one per (qid, kind); returns them sorted by qid and counts."""
    counts = {"lines": 0, "duplicates": 0, "failed_superseded": 0, "failed_kept": 0, "corrupt": 0}
    ok: dict[tuple[str, str], dict] = {}
    failed: dict[tuple[str, str], dict] = {}
    dup_examples: list[str] = []
    for path in paths:
        bad: dict = {}
        for _, rec in read_reasoning_lines(path, bad):
            counts["lines"] += 1
            key = (rec["qid"], kind(rec))
            if rec["status"] != "ok":
                failed[key] = rec
            elif key in ok:
                counts["duplicates"] += 1
                if len(dup_examples) < 3:
                    dup_examples.append(f"{rec['qid']} ({path.name})")
            else:
                ok[key] = rec
        counts["corrupt"] += bad.get("corrupt", 0) + bad.get("partial_tail", 0)
    counts["failed_superseded"] = sum(1 for k in failed if k in ok)
    kept_failed = {} if ok_only else {k: r for k, r in failed.items() if k not in ok}
    counts["failed_kept"] = len(kept_failed)
    merged = sorted([*ok.values(), *kept_failed.values()], key=lambda r: (r["qid"], kind(r)))
    counts["records"], counts["ok"] = len(merged), len(ok)
    counts["duplicate_examples"] = dup_examples
    return merged, counts


def output_path(out: str, split: str, splits: int) -> Path:
    """``--out`` for one split: ``{split}`` in it is filled; with several splits, the split is added."""
    if "{split}" in out:
        return Path(out.format(split=split))
    path = Path(out)
    if path.suffix != ".jsonl" or path.is_dir():
        return path / f"{split}.jsonl"
    return path if splits == 1 else path.with_name(f"{path.stem}.{split}{path.suffix}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m reasoning_gen merge", description=__doc__.split("\n")[0])
    p.add_argument("dir", help="directory with {split}.rank{r:05d}.jsonl files")
    p.add_argument("--out", required=True,
                   help="merged.jsonl (one split), a name with {split}, or a directory ({split}.jsonl)")
    p.add_argument("--ok-only", action="store_true", help="leave failed records out")
    args = p.parse_args(argv)
    groups = rank_files(args.dir)
    if not groups:
        print(f"error: no rank files (*.rank*.jsonl) in {args.dir}")
        return 1
    failed_all = []
    for split, paths in groups.items():
        merged, c = merge_files(paths, args.ok_only)
        out = output_path(args.out, split, len(groups))
        write_jsonl_atomic(out, merged)
        print(f"{split}: {len(paths)} rank file(s), {c['lines']} lines -> {c['records']} records in {out} "
              f"(ok {c['ok']}, failed kept {c['failed_kept']}, failed then retried {c['failed_superseded']}, "
              f"duplicates dropped {c['duplicates']}, corrupt lines {c['corrupt']})")
        if c["duplicates"]:
            print(f"  duplicate qids (kept the first): {', '.join(c['duplicate_examples'])}")
        if c["ok"] == 0:
            failed_all.append(split)
    if failed_all:  # written anyway (the errors are in it), but nothing there can be trained on
        print(f"error: every record failed in split(s) {', '.join(failed_all)} of {args.dir}: no reasoning to "
              f"train on (see the 'error' fields; rerun generate with --retry-failed)", file=sys.stderr)
        return 1
    return 0
