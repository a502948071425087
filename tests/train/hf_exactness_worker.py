"""One ZeRO-3 step of an existing HF video-LLM on 2 ranks x 2 accumulation steps (test_hf_vlm_dist.py).

    python -m torch.distributed.run --nproc_per_node 2 tests/train/hf_exactness_worker.py OUT MODEL_DIR [lora] [packed]
        [mixed]

Every rank loads the tiny VLM folder inside ``deepspeed.zero.Init``, takes its 2 micro-batches of
the fixed global batch of ``exactness_worker`` (the assembled model's test), runs
``train.engine.optimizer_step`` once with plain SGD, computes the logits of its first
micro-batch under ZeRO-3 after the step, and writes a ZeRO-3 checkpoint (``train.checkpoint.save``).
Rank 0 writes the gathered parameters before / after, the loss and its logits to ``OUT/result.pt``.
The test redoes the step in one process and exports the checkpoint. ``packed``: the ranks pack their
micro-batches (``data.packing``; the logits are still those of the unpacked first micro-batch, for the
export check). ``mixed``: text-only questions (``exactness_worker.TEXT_ONLY``): rank 0 has no video at all.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.train import exactness_worker as W  # noqa: E402

RECIPE = REPO / "configs" / "tiny_hf_qwen2vl_cpu.yaml"


def overrides(model_dir: str, out: str, lora: bool, packed: bool = False) -> list[str]:
    """The recipe's overrides of this test (also used by the one-process replay)."""
    items = [o for o in W.OVERRIDES] + [f"--model.hf.path={model_dir}", "--model.hf.freeze_vision=false",
                                        f"--run.output_dir={out}", "--run.name=hf_exact"]
    if packed:
        items += ["--data.packing=true", f"--data.max_tokens_per_row={W.PACKED_ROW}"]
    if lora:  # as the 7B recipes: LoRA adapters only (tower, projector and the LLM's base weights fixed),
        # decoder layers as ZeRO-3 leaves (re-gathered for backward only when their input needs grad),
        # activation checkpointing
        items += ["--model.lora.enabled=true", "--model.lora.r=4", "--model.hf.freeze_vision=true",
                  "--model.hf.freeze_projector=true", "--deepspeed.leaf_modules=[Qwen2DecoderLayer]",
                  "--model.gradient_checkpointing=true"]
    return items


def main(out: str, model_dir: str, lora: bool, packed: bool, mixed: bool = False) -> None:
    from train import checkpoint as ckpt
    from train.config import load_config
    from train.dist import ParallelDims, init_distributed
    from train.engine import build_engine, deepspeed_config, model_init_context, optimizer_step
    from train.loop import seed_everything
    from train.models import build_model
    from train.models.hf_vlm import load_processor
    from train.tasks import build_examples

    cfg = load_config(RECIPE, overrides(model_dir, out, lora, packed))
    dims = ParallelDims.from_env(cfg.data.micro_batch_size, cfg.deepspeed.gradient_accumulation_steps)
    assert dims.world_size == W.RANKS, f"run with {W.RANKS} ranks"
    torch.set_num_threads(1)
    init_distributed(dims, "gloo")
    proc = load_processor(cfg.model.hf)
    ds = deepspeed_config(cfg, dims)
    seed_everything(0)
    with model_init_context(ds, enabled=True):
        model = build_model(cfg.model, proc)
    if lora:  # peft starts lora_B at 0; a nonzero B makes the adapters count in the logits
        from deepspeed import zero

        lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
        with zero.GatheredParameters(lora_b, modifier_rank=0):
            if dims.rank == 0:
                for i, p in enumerate(lora_b):
                    p.data.copy_(torch.linspace(-0.05, 0.05, p.numel()).view_as(p) * (i + 1))
    engine = build_engine(model, cfg, ds)
    before = W.gather_state(model)
    if packed:
        print(f"rank {dims.rank}: packing: {model.prepare_packing(cfg.data.packing_sdpa)}", flush=True)
    examples = [[ex for q in W.micro_questions(dims.rank, m, mixed) for ex in build_examples(q, cfg.task)]
                for m in range(W.GAS)]
    micro = [model.collate(exs, cfg.task, packing=cfg.data.packing, row_capacity=cfg.row_capacity) for exs in examples]
    if packed:
        assert all(b["packed"] and int(b["segment_ids"].max()) >= 2 for b in micro), "a row holds several examples"
    stats = optimizer_step(engine, micro, cfg.task, dims.world_size, torch.device("cpu"))
    after = W.gather_state(model)
    model.eval()
    first = model.collate(examples[0], cfg.task)  # unpacked: the export check compares a plain forward
    logits = model.logits(first["input_ids"], first["attention_mask"], vision=first["vision"])
    ckpt.save(engine, cfg.checkpoint_dir, 1, {"step": 1, "samples": 0, "world_size": dims.world_size}, cfg, ds,
              1, dims.is_main)
    if dims.rank == 0:
        torch.save({"before": before, "after": after, "loss": stats.loss, "n_qa": stats.n_qa,
                    "n_reason": stats.n_reason, "lr": stats.lr, "logits": logits, "batch": first,
                    "rows": [int(b["input_ids"].shape[0]) for b in micro],
                    "trainable": model.trainable_summary()}, Path(out) / "result.pt")


if __name__ == "__main__":
    from data_shards.common.distenv import exit_process, shutdown

    main(sys.argv[1], sys.argv[2], "lora" in sys.argv[3:], "packed" in sys.argv[3:], "mixed" in sys.argv[3:])
    shutdown()
    exit_process(0)
