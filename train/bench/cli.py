"""``python -m train bench`` (= ``python -m train.bench``): the throughput benchmarks' command line."""

from __future__ import annotations

import argparse
import json
import sys

from train.bench import packing
from train.bench.step import CSV_FIELDS, append_csv, run_bench, table
from train.config import ConfigError, split_overrides


def main(argv: list[str] | None = None) -> int:
    """``python -m train bench``: ours vs bare PyTorch step time, throughput and MFU."""
    p = argparse.ArgumentParser(prog="python -m train.bench", description=main.__doc__,
                                epilog="Other --section.field=value items override the config.")
    p.add_argument("--config", required=True)
    p.add_argument("--steps", type=int, default=20, help="measured optimizer steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--csv", default=None, help="append the result row here (e.g. docs/bench/train.csv)")
    p.add_argument("--compare-packing", action="store_true",
                   help="instead of ours vs bare: padded vs packed micro-batches (data.packing), alternating "
                        "on the same examples (train.bench.packing; e.g. --csv docs/bench/packing.csv)")
    args, rest = p.parse_known_args(argv)
    run, show, fields = ((packing.run_packing_bench, packing.packing_table, packing.CSV_FIELDS)
                         if args.compare_packing else (run_bench, table, CSV_FIELDS))
    try:
        result = run(args.config, split_overrides(rest), args.steps, args.warmup)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(show(result))
    print(json.dumps(result), flush=True)
    if args.csv:
        append_csv(args.csv, result, fields)
    return 0
