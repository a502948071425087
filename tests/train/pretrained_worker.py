"""Build the model from LOCAL pretrained parts inside deepspeed.zero.Init on 2 ranks (run by
test_engine_dist.py), the way the 7B recipe does, and write the gathered parameters (rank 0).

    python -m torch.distributed.run --nproc_per_node 2 tests/train/pretrained_worker.py PARTS_DIR

PARTS_DIR holds ``llm/`` and ``vision/`` written with ``save_pretrained``; the result goes to
``PARTS_DIR/gathered.pt``.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def main(root: Path) -> None:
    import torch

    from tests.train.exactness_worker import OVERRIDES, gather_state, tokenizer
    from train.config import load_config
    from train.dist import ParallelDims, init_distributed
    from train.engine import build_engine, deepspeed_config, model_init_context
    from train.models import build_model

    cfg = load_config(REPO / "configs" / "tiny_cpu.yaml",
                      OVERRIDES + [f"--model.llm.path={root}/llm", "--model.llm.config=null",
                                   f"--model.vision.path={root}/vision", "--model.vision.config=null"])
    dims = ParallelDims.from_env(cfg.data.micro_batch_size, cfg.deepspeed.gradient_accumulation_steps)
    torch.set_num_threads(1)
    init_distributed(dims, "gloo")
    ds = deepspeed_config(cfg, dims)
    with model_init_context(ds, enabled=True) as hf_ds:
        assert hf_ds is not None  # transformers sees ZeRO-3 and loads into the partitions
        model = build_model(cfg.model, tokenizer())
    build_engine(model, cfg, ds)
    state = gather_state(model)
    if dims.rank == 0:
        torch.save(state, root / "gathered.pt")


if __name__ == "__main__":
    from data_shards.common.distenv import exit_process, shutdown

    main(Path(sys.argv[1]))
    shutdown()
    exit_process(0)
