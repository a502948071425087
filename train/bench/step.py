"""Trainer throughput: our DeepSpeed ZeRO-3 step vs a bare PyTorch loop, same run.

    python -m train.bench --config configs/tiny_cpu.yaml --steps 20 [--csv docs/bench/train.csv]
    python -m train.bench --config configs/bench_1b_gpu.yaml --steps 30      (one GPU)
    python -m train.bench --compare-packing --config ...    (padded vs packed: train/bench/packing.py)

OURS is the real trainer (``train.loop.Trainer``: streaming loader -> tasks.collate ->
``engine.optimizer_step`` with DeepSpeed, ZeRO stage/precision from the config). BARE is the
same model architecture with the SAME initial weights, run on the SAME collated micro-batches
(the ones ours just consumed) with the same weighted loss, plain ``torch.optim.AdamW``,
gradient clipping and LR schedule, no DeepSpeed, one process. The two alternate step by step
so that a change in machine load hits both alike; step times are medians. Process CPU time is
reported beside wall time: on a shared CPU machine it is the figure other processes cannot move.

``ratio`` = ours / bare median COMPUTE step time (forward + backward + optimizer over the
gradient-accumulation micro-batches); the bare loop replays cached batches, so data loading
is reported separately for ours (``data_wait_frac``). MFU = model FLOPs (``train.flops``:
unpadded sequences, LM head on target tokens) / step time with data wait / peak FLOP/s
(``mfu_compute`` leaves the data wait out); peak from a table of GPUs (dense bf16/fp16 tensor
core, fp32 for fp32 runs) or, on CPU, a measured fp32 matmul peak with this process's threads.
Only one process: launch without torchrun.
"""

from __future__ import annotations

import csv
import os
import resource
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import deepspeed
import torch

from train.config import load_config
from train.engine import lr_factor, optimizer_step, param_groups
from train.loop import Trainer, seed_everything
from train.loss import count_task_tokens, token_weights
from train.models import build_model

# Dense peak FLOP/s (bf16/fp16 tensor core, fp32 non-tensor) by device-name substring.
GPU_PEAKS = {
    "H200": (989e12, 67e12), "H100 SXM": (989e12, 67e12), "H100 PCIe": (756e12, 51e12), "H100": (989e12, 67e12),
    "A100": (312e12, 19.5e12), "L40S": (362e12, 91.6e12), "A10G": (125e12, 31.2e12), "L4": (121e12, 30.3e12),
    "V100": (125e12, 15.7e12), "RTX 4090": (165e12, 82.6e12),
}


def cpu_matmul_peak(n: int = 1024, seconds: float = 1.0) -> float:
    """Measured fp32 matmul FLOP/s of this process (its torch threads), best of repeated runs."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best, t_end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        a @ b
        best = max(best, 2 * n ** 3 / (time.perf_counter() - t0))
    return best


def device_peak(device: torch.device, precision: str) -> tuple[float, str]:
    """(peak FLOP/s, where it came from)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, (half, fp32) in GPU_PEAKS.items():
            if key in name:
                kind = "fp32" if precision == "fp32" else "bf16"
                return (fp32 if kind == "fp32" else half), f"table: {key} {kind}"
        return float("nan"), f"no table entry for {name}"
    return cpu_matmul_peak(), f"measured fp32 matmul, {torch.get_num_threads()} thread(s)"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def batch_flops(model: Any, micro: list[dict]) -> float:
    """Model FLOPs of one optimizer step's micro-batches (``VideoLLM.batch_flops``: no padding)."""
    return sum(model.batch_flops(mb) for mb in micro)


class BareLoop:
    """The baseline: the same model and loss in plain PyTorch (AdamW, clipping, schedule)."""

    def __init__(self, trainer: Any, init_state: dict[str, torch.Tensor]) -> None:
        cfg = trainer.cfg
        self.cfg, self.device = cfg, trainer.device
        seed_everything(cfg.run.seed)
        self.model = build_model(cfg.model, trainer.tokenizer)
        # init_state holds parameters only (gathered from the ZeRO-3 shards); buffers are rebuilt
        # by build_model. Every parameter must come from ours: the same starting weights.
        result = self.model.load_state_dict(init_state, strict=False)
        params = {n for n, _ in self.model.named_parameters()}
        missing = sorted(set(result.missing_keys) & params)
        if missing or result.unexpected_keys:
            raise RuntimeError(f"bare loop: weights differ from ours (missing {missing[:5]}, "
                               f"unexpected {result.unexpected_keys[:5]})")
        self.model.to(self.device).train()
        o = cfg.optim
        self.opt = torch.optim.AdamW(param_groups(self.model, o.weight_decay), lr=o.lr, betas=tuple(o.betas),
                                     eps=o.eps)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: lr_factor(s, o, cfg.run.max_steps))
        prec = cfg.deepspeed.precision
        self.autocast = None if prec == "fp32" else (torch.bfloat16 if prec == "bf16" else torch.float16)

    def step(self, micro: list[dict]) -> float:
        task = self.cfg.task
        n_qa, n_re = count_task_tokens(micro)
        total = torch.zeros((), device=self.device)
        for mb in micro:
            w = token_weights(mb["task_ids"], n_qa, n_re, task.alpha, task.beta)
            with torch.autocast(self.device.type, dtype=self.autocast, enabled=self.autocast is not None):
                loss = self.model(**self.model.model_inputs(mb, w, self.device))["loss"]
            loss.backward()
            total += loss.detach().float()  # summed on the device: one sync per step, as ours
        if self.cfg.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        return float(total)


def _gather_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:

    with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
        return {n: p.detach().float().cpu().clone() for n, p in model.named_parameters()}


def _peak_mem_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KiB -> GB (whole process)


def _timed(fn: Any, device: torch.device) -> tuple[Any, float, float]:
    """(result, wall seconds, process CPU seconds) of fn() (synchronized on a GPU)."""
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    sync(device)
    return out, time.perf_counter() - w0, time.process_time() - c0


def bench_trainer(config: str, overrides: list[str], max_steps: int, tmp: str) -> Any:
    """The real trainer of a bench run: no checkpoints or logs, no warmup, one process."""

    fixed = [f"--run.output_dir={tmp}", "--checkpoint.interval_steps=0", "--checkpoint.save_final=false",
             "--logging.progress_bar=false", "--logging.jsonl=false", "--logging.tensorboard=false",
             f"--run.max_steps={max_steps}", "--optim.warmup_steps=0"]
    trainer = Trainer(load_config(config, overrides + fixed))
    if trainer.dims.world_size != 1:
        raise SystemExit("train.bench runs one process: launch without torchrun")
    return trainer


def run_bench(config: str, overrides: list[str], steps: int, warmup: int) -> dict:
    """Measure ours and bare, alternating step by step on the same batches; returns the record."""

    trainer = bench_trainer(config, overrides, warmup + steps, tempfile.mkdtemp(prefix="train-bench-"))
    cfg = trainer.cfg
    bare = BareLoop(trainer, _gather_state(trainer.model))
    gas, dev = cfg.deepspeed.gradient_accumulation_steps, trainer.device
    keys = ("ours_s", "ours_cpu_s", "data_s", "bare_s", "bare_cpu_s", "flops", "tokens", "examples", "frames")
    rec: dict[str, list] = {k: [] for k in keys}
    first_losses = None
    for step in range(warmup + steps):
        # Alternate ours and bare every step (same batches), so that load from other processes on a
        # shared machine hits both alike.
        micro, data_s, _ = _timed(lambda: [trainer.next_micro_batch() for _ in range(gas)], dev)
        stats, ours_s, ours_cpu = _timed(lambda m=micro: optimizer_step(trainer.engine, m, cfg.task, 1, dev), dev)
        loss, bare_s, bare_cpu = _timed(lambda m=micro: bare.step(m), dev)
        first_losses = first_losses or (stats.loss, loss)
        if step >= warmup:
            for k, v in zip(keys, (ours_s, ours_cpu, data_s, bare_s, bare_cpu, batch_flops(trainer.model, micro),
                                   stats.tokens, stats.examples, stats.frames)):
                rec[k].append(v)
    return summarize(cfg, trainer, rec, first_losses, steps, warmup, config, overrides)


def run_header(cfg: Any, trainer: Any, steps: int, warmup: int, config: str, overrides: list[str]) -> dict:
    """What every bench record starts with: commit, config, device, precision, layout."""
    dev = trainer.device
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).resolve().parent).stdout.strip()
    except OSError:
        commit = ""
    return {
        "config": config, "overrides": " ".join(overrides), "commit": commit,
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({os.cpu_count()} cores)",
        "threads": torch.get_num_threads(), "precision": cfg.deepspeed.precision,
        "zero_stage": cfg.deepspeed.zero_stage,
        "gas": cfg.deepspeed.gradient_accumulation_steps, "micro_batch_questions": cfg.data.micro_batch_size,
        "steps": steps, "warmup": warmup}


def summarize(cfg: Any, trainer: Any, rec: dict, first_losses: tuple, steps: int, warmup: int,
              config: str, overrides: list[str]) -> dict:
    """Medians, rates, MFU and the ratio ours / bare."""
    dev = trainer.device
    med = {k: statistics.median(rec[k]) for k in ("ours_s", "ours_cpu_s", "data_s", "bare_s", "bare_cpu_s")}
    step_total = med["ours_s"] + med["data_s"]
    per_step = {k: sum(rec[k]) / len(rec[k]) for k in ("flops", "tokens", "examples", "frames")}
    peak, peak_src = device_peak(dev, cfg.deepspeed.precision)
    return {
        **run_header(cfg, trainer, steps, warmup, config, overrides), "bench": "train",
        "ours_step_s": med["ours_s"], "bare_step_s": med["bare_s"], "ratio": med["ours_s"] / med["bare_s"],
        "ours_step_cpu_s": med["ours_cpu_s"], "bare_step_cpu_s": med["bare_cpu_s"],
        "ratio_cpu_time": med["ours_cpu_s"] / med["bare_cpu_s"],
        "ours_step_with_data_s": step_total, "data_wait_frac": med["data_s"] / step_total,
        "tokens_per_s": per_step["tokens"] / step_total, "samples_per_s": per_step["examples"] / step_total,
        "frames_per_s": per_step["frames"] / step_total,
        "tokens_per_s_compute": per_step["tokens"] / med["ours_s"],
        "bare_tokens_per_s": per_step["tokens"] / med["bare_s"],
        "flops_per_step": per_step["flops"], "peak_flops": peak, "peak_source": peak_src,
        # MFU over the whole step (data wait included), as a run achieves it; the compute-only
        # figure and the bare loop's (cached batches) beside it
        "mfu": per_step["flops"] / step_total / peak, "mfu_compute": per_step["flops"] / med["ours_s"] / peak,
        "bare_mfu": per_step["flops"] / med["bare_s"] / peak,
        "peak_mem_gb": _peak_mem_gb(dev),
        "first_step_loss_ours": first_losses[0], "first_step_loss_bare": first_losses[1],
        "attention": list(getattr(trainer.model, "attention_report", ("?", "?"))),
    }


def table(r: dict) -> str:
    rows = [("", "ours (DeepSpeed)", "bare PyTorch"),
            ("step time, compute (median)", f"{r['ours_step_s'] * 1e3:.1f} ms", f"{r['bare_step_s'] * 1e3:.1f} ms"),
            ("ratio ours / bare", f"{r['ratio']:.3f}", "1"),
            ("step CPU time (median)", f"{r['ours_step_cpu_s'] * 1e3:.1f} ms", f"{r['bare_step_cpu_s'] * 1e3:.1f} ms"),
            ("ratio of CPU time", f"{r['ratio_cpu_time']:.3f}", "1"),
            ("step time with data", f"{r['ours_step_with_data_s'] * 1e3:.1f} ms", "(cached batches)"),
            ("data wait fraction", f"{r['data_wait_frac']:.3f}", "-"),
            ("tokens/s", f"{r['tokens_per_s']:,.0f}", f"{r['bare_tokens_per_s']:,.0f}"),
            ("samples/s", f"{r['samples_per_s']:,.2f}", "-"),
            ("frames/s", f"{r['frames_per_s']:,.1f}", "-"),
            ("MFU (step with data)", f"{r['mfu']:.4f}", "-"),
            ("MFU (compute only)", f"{r['mfu_compute']:.4f}", f"{r['bare_mfu']:.4f}"),
            ("peak memory", f"{r['peak_mem_gb']:.2f} GB", "(same process)"),
            ("first-step loss", f"{r['first_step_loss_ours']:.6f}", f"{r['first_step_loss_bare']:.6f}")]
    head = (f"train.bench on {r['device']}, {r['precision']}, ZeRO-{r['zero_stage']}, gas {r['gas']}, "
            f"{r['steps']} steps (+{r['warmup']} warm-up), "
            f"peak {r['peak_flops'] / 1e12:.3g} TFLOP/s ({r['peak_source']})")
    return text_table(head, rows)


def text_table(head: str, rows: list[tuple[str, ...]]) -> str:
    """``head``, then ``rows`` as aligned `` | ``-separated columns, a rule under the first row."""
    w = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [" | ".join(c.ljust(w[i]) for i, c in enumerate(row)) for row in rows]
    return "\n".join([head, lines[0], "-" * len(lines[0]), *lines[1:]])


CSV_FIELDS = ["commit", "config", "overrides", "device", "threads", "precision", "zero_stage", "gas", "steps",
              "ours_step_s", "bare_step_s", "ratio", "ratio_cpu_time", "data_wait_frac", "tokens_per_s",
              "samples_per_s", "frames_per_s", "mfu", "peak_flops", "peak_mem_gb", "mfu_compute"]


def append_csv(path: str | Path, r: dict, fields: list[str] | None = None) -> None:
    """Append the record's ``fields`` (default: the ours-vs-bare CSV_FIELDS) as a row; header if new."""
    fields = fields or CSV_FIELDS
    path = Path(path)
    new = not path.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
