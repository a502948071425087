"""Benchmark of the weighted CE and fused linear CE kernels against named baselines.

    python -m vqa_kernels.bench                                  # GPU: small -> (16k, 4096, 151936) bf16
    python -m vqa_kernels.bench --shapes 16384x4096x151936 --kernels ce --modes full
    TRITON_INTERPRET=1 python -m vqa_kernels.bench               # CPU: tiny shapes, functional check

Providers: ours-triton (the Triton path, interpreted on CPU), ours-triton-inplace (CE with the
gradient written into the logits, Liger's memory behaviour), ours-triton-bf16acc (FLCE with the
lm_weight-gradient accumulator in the weight dtype, as Liger), torch-eager (fp32 logits as a
HuggingFace loss does), torch-compile (the eager function under torch.compile), liger (when
importable; it has no per-token weights, so it runs the unweighted loss), torch-chunked (our
pure-PyTorch chunked path).  Modes: forward (a training forward: inputs require grad, so ours makes
the gradient here), full (forward + backward), backward (derived: full - forward).

Units: ms is the median (triton.testing.do_bench on GPU, a median of --reps runs on CPU).  CE
GB/s = the minimal traffic of a fused CE, read logits + write their gradient (2 N V bytes/elem),
over the time; "vs_copy" compares with a device-to-device copy of the logits measured in the same
run (target on H100: >= 0.85 for ours, full, at 16k x 151936 bf16).  FLCE TFLOP/s counts the GEMMs
(forward 2NHV, backward 4NHV, full 6NHV).  peak_mb is the memory allocated above the inputs during
one full step (CUDA: max_memory_allocated; CPU: the torch profiler's allocation timeline), and
mem_vs_eager its ratio to torch-eager (target: FLCE <= 1/8).  Every row is appended to the CSV
with the device, commit and shape.
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import os
import platform
import statistics
import subprocess
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from vqa_kernels import _backend
from vqa_kernels._common import CEOptions, FLCEOptions
from vqa_kernels.autograd import FusedLinearWeightedCrossEntropyFunction, WeightedCrossEntropyFunction
from vqa_kernels.reference import (
    fused_linear_weighted_cross_entropy_chunked,
    fused_linear_weighted_cross_entropy_eager,
    weighted_cross_entropy_chunked,
    weighted_cross_entropy_eager,
)

PROVIDERS = ("ours-triton", "ours-triton-inplace", "ours-triton-bf16acc", "torch-eager", "torch-compile",
             "liger", "torch-chunked")
MODES = ("forward", "backward", "full")
GPU_SHAPES = "2048x4096x32000,8192x4096x151936,16384x4096x151936"
CPU_SHAPES = "64x32x1000,256x64x5003"
CSV_PATH = Path(__file__).resolve().parent.parent / "docs" / "bench" / "kernels.csv"
FIELDS = ["date", "device", "commit", "kernel", "provider", "mode", "n", "h", "v", "dtype", "ms",
          "gb_per_s", "tflop_per_s", "peak_mb", "vs_copy", "mem_vs_eager", "backend", "note"]
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}


def parse_shapes(text: str) -> list[tuple[int, int, int]]:
    """"NxHxV,..." -> [(N, H, V), ...] (H is unused by the CE kernel)."""
    shapes = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        parts = item.lower().split("x")
        if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise ValueError(f"bad shape {item!r}: expected NxHxV with positive integers")
        shapes.append(tuple(int(p) for p in parts))
    return shapes


def _liger():
    try:  # optional: liger-kernel is a comparison provider, not a dependency
        from liger_kernel.transformers import LigerCrossEntropyLoss, LigerFusedLinearCrossEntropyLoss
    except ModuleNotFoundError:
        return None  # not installed: the provider is simply not offered
    except Exception as e:  # installed but broken: say so, or the comparison silently lacks it
        warnings.warn(f"liger_kernel is installed but does not import ({type(e).__name__}: {e}); "
                      "the liger provider is left out", stacklevel=2)
        return None
    return LigerCrossEntropyLoss, LigerFusedLinearCrossEntropyLoss


def available_providers() -> list[str]:
    return [p for p in PROVIDERS if p != "liger" or _liger() is not None]


def _ours_ce(inplace: bool, block_v: int | None = None):
    from vqa_kernels.cross_entropy import TRITON_ROWS  # triton may be missing: only the Triton providers need it

    opts = CEOptions(inplace=inplace, block_v=block_v)
    return lambda x, y, w: WeightedCrossEntropyFunction.apply(x, y, w, opts, TRITON_ROWS)


def _ours_flce(chunk_size: int | None, accum_dtype: torch.dtype | None = None):
    from vqa_kernels.cross_entropy import TRITON_ROWS  # triton may be missing: only the Triton providers need it

    opts = FLCEOptions(chunk_size=chunk_size, accum_dtype=accum_dtype)
    return lambda h, lm, y, w: FusedLinearWeightedCrossEntropyFunction.apply(h, lm, None, y, w, opts,
                                                                             TRITON_ROWS)


def loss_fn(kernel: str, provider: str, chunk_size: int | None = None) -> Callable:
    """The loss callable of a provider: (x, y, w) for "ce", (h, lm_weight, y, w) for "flce".

    ``chunk_size`` applies to our fused linear CE (Triton and chunked torch).
    """
    if provider.startswith("ours-triton-bv"):  # a BLOCK_V override of our CE kernel (tuning: --block-v)
        if kernel != "ce":
            raise ValueError(f"{provider}: block overrides apply to the CE kernel only")
        return _ours_ce(inplace=False, block_v=int(provider.removeprefix("ours-triton-bv")))
    if provider.startswith("ours-triton"):
        if kernel == "flce":
            return _ours_flce(chunk_size, torch.bfloat16 if provider.endswith("bf16acc") else None)
        return _ours_ce(inplace=provider.endswith("inplace"))
    eager = weighted_cross_entropy_eager if kernel == "ce" else fused_linear_weighted_cross_entropy_eager
    if provider == "torch-eager":
        return eager
    if provider == "torch-compile":
        return torch.compile(eager)
    if provider == "torch-chunked":
        if kernel == "ce":
            return weighted_cross_entropy_chunked
        return lambda h, lm, y, w: fused_linear_weighted_cross_entropy_chunked(h, lm, y, w, chunk_size=chunk_size)
    if provider == "liger":
        ce_cls, flce_cls = _liger()
        if kernel == "ce":
            mod = ce_cls(reduction="sum")
            return lambda x, y, w: mod(x, y)
        mod = flce_cls(reduction="sum")
        return lambda h, lm, y, w: mod(lm, h, y)
    raise ValueError(f"unknown provider {provider!r}; known: {PROVIDERS}")


def make_inputs(kernel: str, n: int, h: int, v: int, dtype, device) -> tuple[list[torch.Tensor], list]:
    """Fresh inputs made on ``device`` (leaves requiring grad first) and the rest of the arguments."""
    gen = torch.Generator(device=device).manual_seed(0)
    target = torch.randint(0, v, (n,), generator=gen, device=device)
    target[: n // 8] = -100  # some ignored rows, as prompts give
    weight = torch.rand(n, generator=gen, device=device)
    rest = [target, weight]
    if kernel == "ce":
        logits = torch.randn(n, v, generator=gen, device=device, dtype=dtype).mul_(2)
        return [logits.requires_grad_()], rest
    hidden = torch.randn(n, h, generator=gen, device=device, dtype=dtype).requires_grad_()
    lm = torch.randn(v, h, generator=gen, device=device, dtype=dtype).mul_(h ** -0.5).requires_grad_()
    return [hidden, lm], rest


def median_ms(fn: Callable[[], object], device: torch.device, reps: int) -> float:
    """Median wall time in ms: do_bench on CUDA, a median of ``reps`` timed calls elsewhere."""
    if device.type == "cuda":
        import triton.testing  # triton may be missing; CUDA timing needs it

        return float(triton.testing.do_bench(fn, return_mode="median"))
    fn()  # warm-up (compilation, allocator)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def peak_extra_mb(fn: Callable[[], object], device: torch.device) -> float:
    """Memory allocated above what was live before, at the peak of one ``fn()`` call, in MiB."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    # CPU has no max_memory_allocated: replay the profiler's allocation/free events in time order.
    # (Per-op "self" memory is no timeline: frees of a child's temporaries land on the parent op.)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    allocation = torch._C._profiler._EventType.Allocation
    events, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        if node.tag == allocation:
            events.append((node.start_time_ns, node.extra_fields.alloc_size))
    live = peak = 0
    for _, delta in sorted(events):
        live += delta
        peak = max(peak, live)
    return peak / 2**20


def copy_ms(n: int, v: int, dtype, device, reps: int) -> float:
    src = torch.randn(n, v, device=device, dtype=dtype)
    dst = torch.empty_like(src)
    return median_ms(lambda: dst.copy_(src), device, reps)


def bench_case(kernel, provider, shape, dtype, device, reps, chunk_size=None) -> dict:
    """Time forward and full, measure peak memory; returns ms per mode and peak MiB."""
    n, h, v = shape
    fn = loss_fn(kernel, provider, chunk_size)
    leaves, rest = make_inputs(kernel, n, h, v, dtype, device)

    def forward():
        return fn(*leaves, *rest)

    def full():
        for t in leaves:
            t.grad = None
        forward().backward()

    fwd = median_ms(forward, device, reps)
    tot = median_ms(full, device, reps)
    for t in leaves:  # freed before the memory baseline, not inside the measured step
        t.grad = None
    peak = peak_extra_mb(lambda: forward().backward(), device)
    return {"forward": fwd, "full": tot, "backward": max(tot - fwd, 0.0), "peak_mb": peak}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu {platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def git_commit() -> str:
    """The commit measured: VQA_COMMIT when set (a copied tree, such as a lent GPU machine's, may carry an
    unrelated .git), else git's HEAD with -dirty for uncommitted kernel changes."""
    if os.environ.get("VQA_COMMIT"):
        return os.environ["VQA_COMMIT"]
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "vqa_kernels"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha, dirty = "", ""
    return (sha or "unknown") + ("-dirty" if dirty else "")


def case_rows(kernel, shape, dtype, device, providers, modes, reps, meta, chunk_size=None) -> list[dict]:
    """All rows for one (kernel, shape): providers x modes, plus derived ratios."""
    n, h, v = shape
    elem = torch.finfo(dtype).bits // 8
    results = {}
    for provider in providers:
        if (kernel, provider) in (("flce", "ours-triton-inplace"), ("ce", "ours-triton-bf16acc")) or (
                kernel == "flce" and provider.startswith("ours-triton-bv")):
            continue  # FLCE is always in place on its private chunks; CE has no accumulator; blocks: CE only
        try:
            results[provider] = bench_case(kernel, provider, shape, dtype, device, reps, chunk_size)
        except Exception as exc:  # OOM of the eager baseline at big shapes, a Liger API change ...
            results[provider] = {"error": f"{type(exc).__name__}: {str(exc)[:120]}"}
        if device.type == "cuda":
            torch.cuda.empty_cache()
    copy = copy_ms(n, v, dtype, device, reps) if kernel == "ce" else None
    eager_peak = results.get("torch-eager", {}).get("peak_mb")
    rows = []
    if copy is not None:
        rows.append({**meta, "kernel": kernel, "provider": "copy", "mode": "copy", "ms": copy,
                     "gb_per_s": 2 * n * v * elem / copy / 1e6, "backend": "torch"})
    for provider, res in results.items():
        backend = meta["ours_backend"] if provider.startswith("ours") else provider
        for mode in modes:
            row = {**meta, "kernel": kernel, "provider": provider, "mode": mode, "backend": backend}
            if "error" in res:
                rows.append({**row, "note": res["error"]})
                continue
            ms = res[mode]
            row.update(ms=ms, peak_mb=res["peak_mb"])
            if kernel == "ce":
                row["gb_per_s"] = 2 * n * v * elem / ms / 1e6 if ms > 0 else None
                row["vs_copy"] = copy / ms if ms > 0 and mode == "full" else None
            else:
                flops = {"forward": 2, "backward": 4, "full": 6}[mode] * n * h * v
                row["tflop_per_s"] = flops / ms / 1e9 if ms > 0 else None
            if eager_peak:
                row["mem_vs_eager"] = res["peak_mb"] / eager_peak
            if provider == "liger":
                row["note"] = (row.get("note", "") + " unweighted (Liger has no per-token weights)").strip()
            rows.append(row)
    for row in rows:
        row.update(n=n, h=h if kernel == "flce" else "", v=v)
    return rows


def _fmt(value, spec: str) -> str:
    return "" if value is None or value == "" else format(value, spec)


def print_table(rows: list[dict]) -> None:
    head = f"{'kernel':6} {'provider':20} {'mode':8} {'N':>7} {'H':>5} {'V':>7} {'ms':>10} " \
           f"{'GB/s':>8} {'TFLOP/s':>8} {'peak MiB':>9} {'vs copy':>7} {'mem/eager':>9}  note"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['kernel']:6} {r['provider']:20} {r['mode']:8} {r['n']:>7} {str(r['h']):>5} "
              f"{r['v']:>7} {_fmt(r.get('ms'), '10.3f'):>10} {_fmt(r.get('gb_per_s'), '8.1f'):>8} "
              f"{_fmt(r.get('tflop_per_s'), '8.2f'):>8} {_fmt(r.get('peak_mb'), '9.1f'):>9} "
              f"{_fmt(r.get('vs_copy'), '7.2f'):>7} {_fmt(r.get('mem_vs_eager'), '9.3f'):>9}  "
              f"{r.get('note', '')}")


def append_csv(rows: list[dict], path: Path) -> None:
    """Append rows (header written when the file is new); floats rounded for a readable diff."""
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists() or path.stat().st_size == 0
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
        if new:
            writer.writeheader()
        for r in rows:
            writer.writerow({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in r.items()})


def main(argv: list[str] | None = None) -> int:
    """CLI: benchmark the kernels, print a table, append the rows to the CSV."""
    p = argparse.ArgumentParser(prog="python -m vqa_kernels.bench", description=__doc__.split("\n")[0])
    p.add_argument("--kernels", default="ce,flce", help="comma list of ce, flce")
    p.add_argument("--providers", default=None, help=f"comma list of {', '.join(PROVIDERS)} "
                   "(default: all available; torch-compile is skipped on CPU unless named)")
    p.add_argument("--modes", default=",".join(MODES), help="comma list of forward, backward, full")
    p.add_argument("--shapes", default=None, help=f"NxHxV list (GPU default {GPU_SHAPES}; "
                   f"CPU default {CPU_SHAPES})")
    p.add_argument("--dtype", default=None, choices=sorted(DTYPES), help="default bf16 on GPU, fp32 on CPU")
    p.add_argument("--reps", type=int, default=5, help="timed runs per case on CPU")
    p.add_argument("--chunk-size", type=int, default=None, help="rows per chunk of our FLCE (default: auto)")
    p.add_argument("--block-v", default="", help="comma list of BLOCK_V overrides (powers of two) for our CE "
                   "kernel, each run as provider ours-triton-bvN beside the automatic choice (tuning)")
    p.add_argument("--csv", default=str(CSV_PATH), help="CSV to append to ('' to skip)")
    p.add_argument("--device", default=None, help="default cuda when available, else cpu")
    args = p.parse_args(argv)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    on_gpu = device.type == "cuda"
    dtype = DTYPES[args.dtype or ("bf16" if on_gpu else "fp32")]
    kernels_ = [k for k in args.kernels.split(",") if k]
    modes = [m for m in args.modes.split(",") if m]
    if set(kernels_) - {"ce", "flce"} or set(modes) - set(MODES):
        p.error(f"--kernels must be ce/flce and --modes among {MODES}")
    if args.providers:
        providers = [q for q in args.providers.split(",") if q]
        unknown = set(providers) - set(PROVIDERS)
        if unknown:
            p.error(f"unknown providers {sorted(unknown)}; known: {PROVIDERS}")
        if "liger" in providers and _liger() is None:
            print("note: liger_kernel is not importable; skipping the liger provider")
            providers.remove("liger")
    else:
        providers = [q for q in available_providers() if on_gpu or q != "torch-compile"]
    for b in filter(None, args.block_v.split(",")):
        if not b.isdigit() or int(b) & (int(b) - 1) or int(b) == 0:
            p.error(f"--block-v: {b!r} is not a power of two")
        providers.append(f"ours-triton-bv{int(b)}")
    shapes = parse_shapes(args.shapes or (GPU_SHAPES if on_gpu else CPU_SHAPES))
    ours = "triton" if on_gpu else "triton-interpret"
    note = "" if on_gpu else "CPU run: functional check, not a performance number"
    meta = {"date": _dt.datetime.now().isoformat(timespec="seconds"), "device": device_name(device),
            "commit": git_commit(), "dtype": str(dtype).replace("torch.", ""), "ours_backend": ours,
            "note": note}
    print(f"device: {meta['device']}  commit: {meta['commit']}  dtype: {meta['dtype']}  "
          f"ours: {ours}  (public API backend here: {_backend.backend(device)})")
    rows = []
    for kernel in kernels_:
        for shape in shapes:
            rows += case_rows(kernel, shape, dtype, device, providers, modes, args.reps, meta,
                              args.chunk_size)
    print_table(rows)
    if args.csv:
        append_csv(rows, Path(args.csv))
        print(f"appended {len(rows)} rows to {args.csv}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
