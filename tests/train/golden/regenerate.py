"""Regenerate tiny_cpu_losses.json: the tiny recipe's per-step losses on 2 CPU ranks (gloo, ZeRO-3).

    python tests/train/golden/regenerate.py

Run it ONLY when a change is meant to move the loss curve (model, tasks, tokenizer, loss, data
order or the synthetic generator), and say why in the commit. It writes the shards the tests
write (tests/train/engine_helpers.make_shards) into a temp dir and runs exactly the command the
test runs, recorded in the file.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO))

from tests.train.engine_helpers import (  # noqa: E402
    GOLDEN,
    GOLDEN_STEPS,
    SYNTH,
    TINY,
    losses,
    make_shards,
    run_torchrun,
    tiny_overrides,
)


def main() -> int:
    import deepspeed
    import torch

    from data_shards.synth.make import GENERATOR_VERSION

    with tempfile.TemporaryDirectory() as tmp:
        urls = make_shards(Path(tmp))
        run_dir = Path(tmp) / "runs" / "golden"
        args = ["--config", str(TINY.relative_to(REPO)), *tiny_overrides(urls, run_dir)]
        proc = run_torchrun(2, *args)
        if proc.returncode != 0:
            print(proc.stdout[-3000:], proc.stderr[-5000:], file=sys.stderr)
            return 1
        got = losses(run_dir)
    record = {
        "what": "per-step loss (alpha*mean_QA + beta*mean_reason over the global batch) of configs/tiny_cpu.yaml, "
                "2 CPU ranks, gloo, ZeRO-3, fp32",
        "command": "torchrun --nproc_per_node 2 -m train --config configs/tiny_cpu.yaml "
                   + " ".join(a.replace(tmp, "$TMP") for a in args[2:]),
        "data": f"tests/train/engine_helpers.make_shards: 8 synthetic videos ({SYNTH}), seed 0, 4 shards",
        "regenerate": "python tests/train/golden/regenerate.py",
        "tolerance": {"rtol": 1e-4, "atol": 1e-5,
                      "why": "same CPU: bit-identical; another CPU may pick other SIMD kernels (last-bit fp32 drift)"},
        "versions": {"torch": torch.__version__, "deepspeed": deepspeed.__version__,
                     "synth_generator": GENERATOR_VERSION},
        "losses": [got[s] for s in range(1, GOLDEN_STEPS + 1)],
    }
    GOLDEN.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {GOLDEN}: {record['losses']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
