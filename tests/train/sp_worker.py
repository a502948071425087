"""One ZeRO-3 optimizer step with Ulysses sequence parallel on 2 ranks (run by test_sequence_parallel.py).

    python -m torch.distributed.run --nproc_per_node 2 tests/train/sp_worker.py OUT.pt FAMILY [MODEL_DIR] [packed] [kv1] [ragged]

Both ranks form one sequence group (``parallel.sequence: 2``, data parallel 1): they take the SAME 2
micro-batches (long-video questions, QA and reasoning sequences, see :data:`MICRO`), each runs its half of every
sequence through the LLM (``train.sequence_parallel``), and ``train.engine.optimizer_step`` runs once
with plain SGD under ZeRO-3. Rank 0 writes the gathered parameters before and after the step and the
reported loss; the test redoes the step in one process without sequence parallel (and without
DeepSpeed) on the whole batch. FAMILY: ``assembled`` (the tiny recipe), ``qwen2_vl`` or ``llava_onevision``
(the tiny folder MODEL_DIR). ``packed``: the micro-batches are packed (data.packing). ``kv1``: the assembled
LLM has one key/value head (fewer than the ranks). ``ragged``: clips of different frame counts in one
micro-batch (:data:`RAGGED`, the frame budget's batches).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.train import exactness_worker as W  # noqa: E402

GAS = 2
FRAMES = {"assembled": 48, "qwen2_vl": 64, "llava_onevision": 32}
"""A long clip for the tiny models (hundreds of visual tokens)."""
RECIPES = {"assembled": REPO / "configs" / "tiny_cpu.yaml", "qwen2_vl": REPO / "configs" / "tiny_hf_qwen2vl_cpu.yaml",
           "llava_onevision": REPO / "configs" / "tiny_hf_qwen2vl_cpu.yaml"}


def overrides(family: str, model_dir: str | None, packed: bool, sequence: int, kv1: bool = False) -> list[str]:
    """The recipe's overrides of this test (the one-process replay uses them with sequence 1)."""
    items = [o for o in W.OVERRIDES if not o.startswith(("--data.micro_batch_size", "--data.num_frames"))]
    items += ["--data.micro_batch_size=1", f"--data.num_frames={FRAMES[family]}", "--task.max_prompt_len=768",
              f"--parallel.sequence={sequence}"]
    if family != "assembled":
        items += [f"--model.hf.path={model_dir}", "--model.hf.freeze_vision=false"]
    if packed:
        items += ["--data.packing=true", "--data.max_tokens_per_row=2000"]
    if kv1:  # one key/value head for 2 ranks: Ulysses repeats it per query head before the all-to-all
        items += ["--model.llm.config.num_key_value_heads=1"]
    return items


MICRO = ((2,), (0, 5))
"""Questions of each micro-batch (``exactness_worker.question`` i): question 2 has no reasoning (one QA row),
question 0 has (QA + reasoning), 5 has not: 1 and 3 rows, so the split between the 2 ranks cuts through a
sequence (an even number of equal padded rows would be split at a row boundary)."""


def questions() -> list[list[dict]]:
    """The global batch: long-video questions per micro-batch, texts of different lengths."""
    gen = torch.Generator().manual_seed(99)
    out = []
    for ids in MICRO:
        qs = []
        for i in ids:
            q = W.question(i, gen)
            q["frames"] = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=gen)
            qs.append(q)
        out.append(qs)
    return out


RAGGED = {"synthetic/train/v0/q0": 32, "synthetic/train/v5/q0": 40}
"""``ragged``: frame counts of these questions' clips (as the frame budget gives them); the rest keep num_frames."""


def examples_of(q: dict, cfg, ragged: bool = False) -> list:
    from train.tasks import build_examples

    n = RAGGED.get(q["qid"], cfg.data.num_frames) if ragged else cfg.data.num_frames
    q = dict(q, frames=q["frames"][:n])
    return build_examples(q, cfg.task)


def main(out: str, family: str, model_dir: str | None, packed: bool, kv1: bool, ragged: bool) -> None:
    from train.config import load_config
    from train.dist import ParallelDims, init_distributed
    from train.engine import build_engine, deepspeed_config, model_init_context, optimizer_step
    from train.loop import seed_everything
    from train.models import build_model
    from train.sequence_parallel import sequence_groups

    cfg = load_config(RECIPES[family], overrides(family, model_dir, packed, 2, kv1))
    dims = ParallelDims.from_env(cfg.data.micro_batch_size, cfg.deepspeed.gradient_accumulation_steps,
                                 sequence=cfg.parallel.sequence)
    assert dims.world_size == 2 and dims.data_parallel_size == 1, "run with 2 ranks"
    torch.set_num_threads(1)
    init_distributed(dims, "gloo")
    sp = sequence_groups(dims.world_size, cfg.parallel.sequence, dims.rank)
    if family == "assembled":
        tok = W.tokenizer()
    else:
        from train.models.hf_vlm import load_processor

        tok = load_processor(cfg.model.hf)
    ds = deepspeed_config(cfg, dims)
    seed_everything(0)
    with model_init_context(ds, enabled=True):
        model = build_model(cfg.model, tok)
    print(f"rank {dims.rank}: {model.enable_sequence_parallel(sp)}", flush=True)
    engine = build_engine(model, cfg, ds)
    before = W.gather_state(model)
    micro = [model.collate([ex for q in qs for ex in examples_of(q, cfg, ragged)], cfg.task, packing=packed,
                           row_capacity=cfg.row_capacity) for qs in questions()]
    if packed:
        assert any(int(b["segment_ids"].max()) >= 2 for b in micro), "no row holds several sequences"
    stats = optimizer_step(engine, micro, cfg.task, dims.world_size, torch.device("cpu"), sequence_parallel=sp.size)
    after = W.gather_state(model)
    if dims.rank == 0:
        torch.save({"before": before, "after": after, "loss": stats.loss, "n_qa": stats.n_qa,
                    "n_reason": stats.n_reason, "lr": stats.lr, "examples": stats.examples,
                    "tokens": [int(b["attention_mask"].sum()) for b in micro],
                    "lengths": [int(b["input_ids"].numel()) for b in micro]}, out)


if __name__ == "__main__":
    from data_shards.common.distenv import exit_process, shutdown

    args = sys.argv[1:]
    flags = ("packed", "kv1", "ragged")
    main(args[0], args[1], args[2] if len(args) > 2 and args[2] not in flags else None, "packed" in args[2:],
         "kv1" in args[2:], "ragged" in args[2:])
    shutdown()
    exit_process(0)
