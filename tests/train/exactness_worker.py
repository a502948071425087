"""One ZeRO-3 optimizer step on 2 ranks x 2 accumulation steps (run by test_engine_dist.py).

    python -m torch.distributed.run --nproc_per_node 2 tests/train/exactness_worker.py OUT.pt [--packing]

Every rank builds the tiny model (deepspeed.zero.Init), takes its 2 micro-batches of the
fixed global batch (:func:`global_batch`), runs ``train.engine.optimizer_step`` once with plain
SGD, and rank 0 writes the gathered parameters before and after the step plus the reported loss.
The test recomputes the step in one process on the whole batch without DeepSpeed (unpacked).
With ``--packing`` every micro-batch is packed (``train.packing.pack_collate``, rows of
``PACKED_ROW`` tokens, several sequences per row) before the same step.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

OVERRIDES = ["--data.urls=/unused.tar", "--optim.name=sgd", "--optim.lr=0.5", "--optim.momentum=0",
             "--optim.weight_decay=0", "--optim.grad_clip=0", "--optim.warmup_steps=0", "--optim.schedule=constant",
             "--deepspeed.gradient_accumulation_steps=2", "--data.micro_batch_size=2", "--task.mode=mtl",
             "--task.reasoning_source=gt", "--task.beta=0.7", "--data.num_frames=4", "--data.frame_size=[32,32]"]
RANKS, GAS, MICRO = 2, 2, 2
PACKED_ROW = 700


def question(i: int, gen: torch.Generator) -> dict:
    """Question sample i (contract 3). Varied: some have no answer, some no reasoning, texts differ in length."""
    words = ["red", "ball", "moves", "left", "then", "right", "square", "turns", "blue", "circle"]
    n = 3 + (i * 5) % 7
    text = " ".join(words[(i + j) % len(words)] for j in range(n))
    reasoning = None if i % 3 == 2 else " ".join([text] * (1 + i % 4)) + f". So the answer is ({'ABC'[i % 3]})."
    return {"qid": f"synthetic/train/v{i}/q0", "video_id": f"v{i}", "dataset": "synthetic", "split": "train",
            "question": f"What happened {i}: {text}?", "options": ["the red ball", "a blue square", f"item {i}"],
            "answer": None if i % 4 == 3 else i % 3, "qtype": "TN",
            "extra": {"reasoning": reasoning} if reasoning else {},
            "frames": torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=gen),
            "reasoning": None, "__key__": f"k{i}", "__url__": "mem"}


TEXT_ONLY = (0, 1, 2, 3, 4)
"""Questions made text-only (``"frames": None``) by ``mixed=True``: rank 0's micro-batches have no video at
all, rank 1's first is mixed (one text-only question, one with video), its second all video."""


def global_batch(mixed: bool = False) -> list[dict]:
    gen = torch.Generator().manual_seed(1234)
    qs = [question(i, gen) for i in range(RANKS * GAS * MICRO)]
    for i in TEXT_ONLY if mixed else ():
        qs[i]["frames"] = None
    return qs


def micro_questions(rank: int, micro: int, mixed: bool = False) -> list[dict]:
    start = (rank * GAS + micro) * MICRO
    return global_batch(mixed)[start:start + MICRO]


def tokenizer():
    from train.tokenizer import build_tokenizer, corpus_from_samples

    return build_tokenizer(None, corpus=list(corpus_from_samples(global_batch())), vocab_size=300)


def gather_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Full parameter values (every rank must call it under ZeRO-3)."""
    import deepspeed

    params = list(model.parameters())
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        return {n: p.detach().clone().float() for n, p in model.named_parameters()}


def main(out: str, packing: bool = False, mixed: bool = False) -> None:
    from train.config import load_config
    from train.dist import ParallelDims, init_distributed
    from train.engine import build_engine, deepspeed_config, model_init_context, optimizer_step
    from train.loop import seed_everything
    from train.models import build_model
    from train.packing import pack_collate
    from train.tasks import build_examples, collate

    cfg = load_config(REPO / "configs" / "tiny_cpu.yaml", OVERRIDES)
    dims = ParallelDims.from_env(cfg.data.micro_batch_size, cfg.deepspeed.gradient_accumulation_steps)
    assert dims.world_size == RANKS, f"run with {RANKS} ranks"
    torch.set_num_threads(1)
    init_distributed(dims, "gloo")
    tok = tokenizer()
    ds = deepspeed_config(cfg, dims)
    seed_everything(0)
    with model_init_context(ds, enabled=True):
        model = build_model(cfg.model, tok)
    if packing:  # as the trainer does with data.packing (packing_sdpa per_sequence)
        model.use_sdpa_varlen()
    engine = build_engine(model, cfg, ds)
    before = gather_state(model)
    layout = model.frame_layout(cfg.data.num_frames)
    micro = []
    for m in range(GAS):
        examples = [ex for q in micro_questions(dims.rank, m, mixed) for ex in build_examples(q, cfg.task)]
        micro.append(pack_collate(examples, tok, cfg.task, layout, PACKED_ROW) if packing
                     else collate(examples, tok, cfg.task, layout))
    if packing:
        assert max(int(mb["segment_ids"].max()) for mb in micro) >= 2, "no row holds two sequences"
    stats = optimizer_step(engine, micro, cfg.task, dims.world_size, torch.device("cpu"))
    after = gather_state(model)
    if dims.rank == 0:
        torch.save({"before": before, "after": after, "loss": stats.loss, "n_qa": stats.n_qa,
                    "n_reason": stats.n_reason, "lr": stats.lr}, out)


if __name__ == "__main__":
    from data_shards.common.distenv import exit_process, shutdown

    main(sys.argv[1], packing="--packing" in sys.argv[2:], mixed="--mixed" in sys.argv[2:])
    shutdown()
    exit_process(0)
