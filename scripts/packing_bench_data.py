"""The demo's training data for the packing bench: synthetic videos -> shards -> the synthetic
teacher's refined reasoning, exactly as ``python -m eval demo`` (default preset) builds them, but
only the data steps (no training).

    python scripts/packing_bench_data.py --out /tmp/packdemo --train-videos 32
    python -m train.bench --compare-packing --config configs/demo_cpu.yaml \
        --data.urls='/tmp/packdemo/shards/train/train-{000000..000003}.tar' \
        --data.reasoning='["/tmp/packdemo/reasoning/t33_refined.jsonl"]' --task.reasoning_source=refined

Prints the shard pattern and the reasoning file.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    from eval.study.demo import Demo, presets

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--train-videos", type=int, default=32)
    args = p.parse_args(argv)
    study = dataclasses.replace(presets()["default"], train_videos=args.train_videos, val_videos=1, runs=[])
    demo = Demo(study, args.out, nproc=1)
    demo.data()
    name, rates = next(iter(study.teachers.items()))
    demo.teacher(name, rates)
    print(demo.shards("train"))
    print(args.out / "reasoning" / f"{name}_refined.jsonl")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
