"""Activation memory per rank with and without Ulysses sequence parallel, on the same long-video sample.

    torchrun --nproc_per_node 2 -m train.bench.sp_memory --config configs/tiny_cpu.yaml --frames 192 \\
        [--csv docs/bench/sp_memory.csv] [--section.field=value ...]

One launch measures ``parallel.sequence`` 1 and then the launch's world size (both under the config's ZeRO
stage, DeepSpeed engine built as the trainer builds it) on ONE question made here: ``--frames`` random
frames of ``data.frame_size`` and a fixed question, in ``task.mode: qa`` (one sequence). With sequence 1
every rank runs the whole sample (the baseline: what one rank holds without sequence parallel); with
sequence S each rank runs its 1/S slice of it through the LLM.

Measured per rank, forward of one micro-batch (then its backward, not measured):

* ``saved_mib``: bytes of the tensors autograd keeps for backward (``torch.autograd.graph.saved_tensors_hooks``;
  each storage counted once, parameters not counted): the activation memory, on any device;
* ``decoder_saved_mib``: the part saved while the LLM decoder runs (the part sequence parallel divides);
* ``cuda_peak_mib`` (GPU only): ``torch.cuda.max_memory_allocated`` during forward + backward minus what was
  allocated before the forward.

Rank 0 prints a table, a JSON line and appends rows to ``--csv``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import torch
import torch.distributed as tdist

from train.bench.step import append_csv, run_header
from train.config import load_config, split_overrides

CSV_FIELDS = ["config", "overrides", "commit", "device", "precision", "zero_stage", "sequence", "rank", "tokens",
              "rank_tokens", "visual_tokens", "saved_mib", "decoder_saved_mib", "cuda_peak_mib",
              "saved_ratio_vs_sp1", "decoder_ratio_vs_sp1"]
MIB = 2.0 ** 20


class SavedBytes:
    """Bytes autograd saves for backward while active; ``decoder`` counts those saved inside ``decoder``."""

    def __init__(self, decoder: torch.nn.Module) -> None:
        self.total = self.decoder = 0
        self._seen: set[int] = set()
        self._inside = 0
        decoder.register_forward_pre_hook(lambda *a: self._enter())
        decoder.register_forward_hook(lambda *a: self._leave())

    def _enter(self) -> None:
        self._inside += 1

    def _leave(self) -> None:
        self._inside -= 1

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        base = t._base if t._base is not None else t
        if isinstance(base, torch.nn.Parameter) or isinstance(t, torch.nn.Parameter):
            return t
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key not in self._seen and storage.nbytes():
            self._seen.add(key)
            self.total += storage.nbytes()
            if self._inside:
                self.decoder += storage.nbytes()
        return t

    @contextlib.contextmanager
    def count(self) -> Iterator[None]:
        self.total = self.decoder = 0
        self._seen.clear()
        with torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t):
            yield


def _question(frames: int, size: list[int]) -> dict:
    gen = torch.Generator().manual_seed(0)
    return {"qid": "bench/long/q0", "video_id": "long", "dataset": "bench", "split": "train",
            "question": "What does the red ball do after it passes the blue square near the end of the video?",
            "options": ["it stops", "it turns left", "it turns right", "it leaves the scene"], "answer": 2,
            "qtype": "TN", "extra": {}, "reasoning": None, "__key__": "long", "__url__": "bench",
            "frames": torch.randint(0, 256, (frames, 3, *size), dtype=torch.uint8, generator=gen)}


def _build(cfg: Any, dims: Any) -> tuple[Any, Any]:
    from train.engine import build_engine, deepspeed_config, model_init_context
    from train.loop import seed_everything
    from train.models import build_model
    from train.models.registry import load_tokenizer
    from train.tokenizer import build_tokenizer

    tok = load_tokenizer(cfg.model)
    if tok is None:  # the assembled model: a local BPE on the bench's own texts
        q = _question(1, [8, 8])
        tok = build_tokenizer(None, corpus=[q["question"], *q["options"]] * 4, vocab_size=cfg.tokenizer.vocab_size)
    ds = deepspeed_config(cfg, dims)
    seed_everything(0)
    with model_init_context(ds, cfg.deepspeed.zero_init):
        model = build_model(cfg.model, tok)
    return model, build_engine(model, cfg, ds)


def measure(cfg: Any, sequence: int, frames: int) -> dict:
    """One rank's numbers for ``parallel.sequence = sequence`` (process group already up)."""
    from train.dist import ParallelDims
    from train.loss import TASK_QA, token_weights
    from train.sequence_parallel import sequence_groups
    from train.tasks import build_examples

    cfg.parallel.sequence = sequence
    dims = ParallelDims.from_env(cfg.data.micro_batch_size, 1, sequence=sequence)
    model, engine = _build(cfg, dims)
    if sequence > 1:
        model.enable_sequence_parallel(sequence_groups(dims.world_size, sequence, dims.rank))
    q = _question(frames, list(cfg.data.frame_size))
    batch = model.collate(build_examples(q, cfg.task), cfg.task)
    n_qa = int((batch["task_ids"] == TASK_QA).sum())
    w = token_weights(batch["task_ids"], n_qa, 0, cfg.task.alpha, cfg.task.beta)
    device = engine.device
    inputs = model.model_inputs(batch, w, device)
    decoder = model.decoder_module()
    counter = SavedBytes(decoder)
    for measured in (False, True):  # the first pass warms up (ZeRO-3 traces its prefetch order)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
        with counter.count():
            loss = engine(**inputs)["loss"]
        engine.backward(loss)
        engine.step()
        if measured and device.type == "cuda":
            peak = (torch.cuda.max_memory_allocated(device) - before) / MIB
    tokens = int(batch["attention_mask"].sum())
    layout = model.frame_layout(frames, tuple(cfg.data.frame_size))
    out = {"sequence": sequence, "rank": dims.rank, "tokens": tokens,
           "rank_tokens": -(-int(batch["input_ids"].numel()) // sequence), "visual_tokens": layout.num_visual_tokens,
           "saved_mib": counter.total / MIB, "decoder_saved_mib": counter.decoder / MIB,
           "cuda_peak_mib": peak if device.type == "cuda" else ""}
    del engine, model
    return out


def main(argv: list[str] | None = None) -> int:
    """Activation memory per rank, parallel.sequence 1 vs the world size, on one long-video sample."""
    from train.dist import ParallelDims, init_distributed

    p = argparse.ArgumentParser(prog="python -m train.bench.sp_memory", description=main.__doc__,
                                epilog="Other --section.field=value items override the config.")
    p.add_argument("--config", required=True)
    p.add_argument("--frames", type=int, default=192, help="frames of the sample's clip")
    p.add_argument("--csv", default=None, help="append the rows here (e.g. docs/bench/sp_memory.csv)")
    args, rest = p.parse_known_args(argv)
    fixed = ["--task.mode=qa", "--data.micro_batch_size=1", f"--data.num_frames={args.frames}",
             "--deepspeed.gradient_accumulation_steps=1"]
    overrides = split_overrides(rest) + fixed
    cfg = load_config(args.config, overrides)
    dims = ParallelDims.from_env(1, 1)
    if dims.world_size < 2:
        print("error: launch with torchrun --nproc_per_node S (S >= 2): the ranks form one sequence group",
              file=sys.stderr)
        return 2
    init_distributed(dims, cfg.deepspeed.backend)
    rows = []
    for sequence in (1, dims.world_size):
        mine = measure(cfg, sequence, args.frames)
        gathered: list[Any] = [None] * dims.world_size
        tdist.all_gather_object(gathered, mine)
        rows += gathered
    if dims.rank == 0:
        base = {r["rank"]: r for r in rows if r["sequence"] == 1}
        where = SimpleNamespace(device=torch.device("cuda" if torch.cuda.is_available() else "cpu"))
        header = run_header(cfg, where, 0, 0, args.config, overrides)
        print(f"{'sp':>3} {'rank':>4} {'tokens':>7} {'rank tok':>8} {'saved MiB':>10} {'decoder MiB':>12} "
              f"{'vs sp1':>7} {'decoder vs sp1':>15} {'cuda peak MiB':>14}")
        for r in rows:
            b = base[r["rank"]]
            r["saved_ratio_vs_sp1"] = r["saved_mib"] / b["saved_mib"]
            r["decoder_ratio_vs_sp1"] = r["decoder_saved_mib"] / b["decoder_saved_mib"]
            print(f"{r['sequence']:>3} {r['rank']:>4} {r['tokens']:>7} {r['rank_tokens']:>8} {r['saved_mib']:>10.2f} "
                  f"{r['decoder_saved_mib']:>12.2f} {r['saved_ratio_vs_sp1']:>7.3f} {r['decoder_ratio_vs_sp1']:>15.3f} "
                  f"{r['cuda_peak_mib'] if r['cuda_peak_mib'] == '' else round(r['cuda_peak_mib'], 1):>14}")
        print(json.dumps({"header": header, "rows": rows}), flush=True)
        if args.csv:
            for r in rows:
                append_csv(args.csv, {**header, **r}, CSV_FIELDS)
    tdist.barrier()
    return 0


if __name__ == "__main__":
    from data_shards.common.distenv import exit_process, shutdown

    code = main()
    shutdown()
    exit_process(code)
