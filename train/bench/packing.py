"""Packing on vs off in one run: ``python -m train.bench --compare-packing ...``.

    python -m train.bench --compare-packing --config configs/tiny_cpu.yaml --steps 20 [--csv docs/bench/packing.csv]
    python -m train.bench --compare-packing --config configs/bench_1b_gpu.yaml --steps 30     (one GPU)

Every step takes the NEXT loader batches of the real trainer once (``gas`` micro-batches of
training sequences), collates them both ways - one right-padded row per sequence
(``train.tasks.collate``, the baseline) and packed rows (``train.packing.pack_collate``, rows of
``data.max_tokens_per_row``) - and runs the real DeepSpeed optimizer step
(``train.engine.optimizer_step``) on each, alternating which goes first, so machine load hits both
alike. Both are real training steps on the same model (it sees each batch twice; the timing does
not depend on the weights). Before the first step both forms of the first batch are run without
gradient: their losses must agree.

Reported per mode: median step time (forward + backward + optimizer step), process CPU time,
collate time, padding fraction (pad slots / all slots of the [rows, length] tensors), real
(non-pad) tokens/s, sequences/s, MFU (the same model FLOPs for both: padding is not useful work),
peak memory (GPU). ``tokens_per_s_ratio`` = packed / padded real tokens per second of compute.
"""

from __future__ import annotations

import statistics
import tempfile
from typing import Any

import torch

from train.bench.step import _timed, batch_flops, bench_trainer, device_peak, run_header, text_table
from train.engine import optimizer_step
from train.loss import count_task_tokens, token_weights

MODES = ("padded", "packed")


def _first_losses(trainer: Any, batches: dict[str, list[dict]]) -> dict[str, float]:
    """The step loss of each form of the same examples at the same weights (no gradient)."""
    task, out = trainer.cfg.task, {}
    with torch.no_grad():
        for mode, micro in batches.items():
            n_qa, n_re = count_task_tokens(micro)
            total = 0.0
            for mb in micro:
                w = token_weights(mb["task_ids"], n_qa, n_re, task.alpha, task.beta)
                total += float(trainer.engine(**trainer.model.model_inputs(mb, w, trainer.device))["loss"])
            out[mode] = total
    return out


def _next_examples(trainer: Any) -> list:
    for _ in range(100):  # a batch whose questions make no sequence is skipped, as a bench has no use for it
        examples = trainer.next_examples()
        if examples:
            return examples
    raise RuntimeError("100 loader batches in a row gave no training sequence (task.mode / reasoning?)")


def run_packing_bench(config: str, overrides: list[str], steps: int, warmup: int) -> dict:
    """Measure padded and packed steps, alternating, on the same examples; returns the record."""
    trainer = bench_trainer(config, overrides, 2 * (warmup + steps), tempfile.mkdtemp(prefix="pack-bench-"))
    cfg, dev = trainer.cfg, trainer.device
    if not trainer.model.supports_packing:
        raise SystemExit(f"--compare-packing: model.kind {cfg.model.kind} does not pack sequences")
    trainer.model.prepare_packing(cfg.data.packing_sdpa)  # both modes run it (unpacked rows: plain sdpa)
    gas = cfg.deepspeed.gradient_accumulation_steps
    keys = ("step_s", "cpu_s", "collate_s", "tokens", "slots", "rows", "examples", "flops", "peak_mem_gb")
    rec: dict[str, dict[str, list]] = {m: {k: [] for k in keys} for m in MODES}
    data_s, first = [], None
    for step in range(warmup + steps):
        examples, t_data, _ = _timed(lambda: [_next_examples(trainer) for _ in range(gas)], dev)
        batches, collate_s = {}, {}
        for mode in MODES:
            batches[mode], collate_s[mode], _ = _timed(
                lambda m=mode, x=examples: [trainer.collate_examples(e, packing=m == "packed") for e in x], dev)
        first = first or _first_losses(trainer, batches)
        for mode in (MODES if step % 2 == 0 else MODES[::-1]):
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            micro = batches[mode]
            stats, wall, cpu = _timed(lambda m=micro: optimizer_step(trainer.engine, m, cfg.task, 1, dev), dev)
            if step < warmup:
                continue
            r = rec[mode]
            for k, v in (("step_s", wall), ("cpu_s", cpu), ("collate_s", collate_s[mode]), ("tokens", stats.tokens),
                         ("slots", sum(mb["attention_mask"].numel() for mb in micro)),
                         ("rows", sum(mb["input_ids"].shape[0] for mb in micro)), ("examples", stats.examples),
                         ("flops", batch_flops(trainer.model, micro)),
                         ("peak_mem_gb", torch.cuda.max_memory_allocated(dev) / 1e9 if dev.type == "cuda"
                          else float("nan"))):
                r[k].append(v)
        if step >= warmup:
            data_s.append(t_data)
    return summarize_packing(cfg, trainer, rec, first, data_s, steps, warmup, config, overrides)


def summarize_packing(cfg: Any, trainer: Any, rec: dict, first: dict, data_s: list, steps: int, warmup: int,
                      config: str, overrides: list[str]) -> dict:
    """Medians per mode, padding fractions, rates and the packed / padded ratios."""

    peak, peak_src = device_peak(trainer.device, cfg.deepspeed.precision)
    out = run_header(cfg, trainer, steps, warmup, config, overrides)
    out.update({"bench": "packing", "max_tokens_per_row": cfg.row_capacity, "peak_flops": peak,
                "peak_source": peak_src, "data_s": statistics.median(data_s),
                "packing_attention": trainer.model.packing_attention})
    for mode, r in rec.items():
        step_s = statistics.median(r["step_s"])
        per_step = {k: sum(r[k]) / len(r[k]) for k in ("tokens", "slots", "rows", "examples", "flops")}
        out.update({f"{mode}_step_s": step_s, f"{mode}_step_cpu_s": statistics.median(r["cpu_s"]),
                    f"{mode}_collate_s": statistics.median(r["collate_s"]),
                    f"{mode}_padding_frac": 1.0 - sum(r["tokens"]) / sum(r["slots"]),
                    f"{mode}_rows_per_step": per_step["rows"], f"{mode}_slots_per_step": per_step["slots"],
                    f"{mode}_tokens_per_s": per_step["tokens"] / step_s,
                    f"{mode}_samples_per_s": per_step["examples"] / step_s,
                    f"{mode}_mfu": per_step["flops"] / step_s / peak, f"{mode}_peak_mem_gb": max(r["peak_mem_gb"]),
                    f"{mode}_first_step_loss": first[mode]})
    out["real_tokens_per_step"] = sum(rec["packed"]["tokens"]) / len(rec["packed"]["tokens"])
    out["tokens_per_s_ratio"] = out["packed_tokens_per_s"] / out["padded_tokens_per_s"]
    out["step_time_ratio"] = out["packed_step_s"] / out["padded_step_s"]
    out["cpu_time_ratio"] = out["packed_step_cpu_s"] / out["padded_step_cpu_s"]
    return out


def packing_table(r: dict) -> str:
    """The human-readable comparison printed by ``python -m train.bench --compare-packing``."""

    def row(label: str, key: str, fmt: str) -> tuple[str, str, str]:
        return label, format(r[f"padded_{key}"], fmt), format(r[f"packed_{key}"], fmt)

    rows = [("", "padded (baseline)", "packed"),
            ("step time, compute (median)", f"{r['padded_step_s'] * 1e3:.1f} ms", f"{r['packed_step_s'] * 1e3:.1f} ms"),
            ("step CPU time (median)", f"{r['padded_step_cpu_s'] * 1e3:.1f} ms",
             f"{r['packed_step_cpu_s'] * 1e3:.1f} ms"),
            ("collate (median)", f"{r['padded_collate_s'] * 1e3:.1f} ms", f"{r['packed_collate_s'] * 1e3:.1f} ms"),
            row("padding fraction", "padding_frac", ".3f"), row("rows per step", "rows_per_step", ".1f"),
            row("token slots per step", "slots_per_step", ",.0f"), row("real tokens/s", "tokens_per_s", ",.0f"),
            row("sequences/s", "samples_per_s", ",.2f"), row("MFU (compute)", "mfu", ".4f"),
            row("peak memory (GB, GPU)", "peak_mem_gb", ".2f"), row("first-batch loss", "first_step_loss", ".6f"),
            ("real tokens/s ratio packed / padded", "1", f"{r['tokens_per_s_ratio']:.3f}"),
            ("step time ratio packed / padded", "1", f"{r['step_time_ratio']:.3f}")]
    head = (f"train.bench --compare-packing on {r['device']}, {r['precision']}, ZeRO-{r['zero_stage']}, "
            f"gas {r['gas']}, {r['steps']} steps (+{r['warmup']} warm-up), rows of {r['max_tokens_per_row']} tokens, "
            f"{r['real_tokens_per_step']:,.0f} real tokens per step; packed attention: {r['packing_attention']}")
    return text_table(head, rows)


CSV_FIELDS = ["commit", "config", "overrides", "device", "threads", "precision", "zero_stage", "gas", "steps",
              "max_tokens_per_row", "real_tokens_per_step", "padded_step_s", "packed_step_s", "step_time_ratio",
              "cpu_time_ratio", "padded_padding_frac", "packed_padding_frac", "padded_tokens_per_s",
              "packed_tokens_per_s", "tokens_per_s_ratio", "padded_mfu", "packed_mfu", "padded_peak_mem_gb",
              "packed_peak_mem_gb", "packing_attention"]
