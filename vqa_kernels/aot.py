"""The Triton kernels compiled ahead of time for GPUs this machine need not have, and their resources checked.

``triton.compile`` lowers a kernel for any NVIDIA target without a GPU (PTX, then the ``ptxas``
shipped in the triton wheel), so every launch configuration our launchers can choose is compiled for
sm_80 (A100), sm_90 (H100/H200) and sm_100 (B200) and its cubin read with the wheel's ``cuobjdump
--dump-resource-usage``.  ``tests/kernels/test_compile_gpu_target.py`` fails on a compile error, a
register spill, or shared memory over the architecture's limit; the CLI prints a table and writes
one CSV row per configuration::

    python -m vqa_kernels.aot --arch 90 --csv docs/bench/kernel_resources_sm90.csv

**Configurations come from the launchers themselves.**  :func:`launch_configs` runs the host functions
of ``vqa_kernels.cross_entropy`` (``_forward`` / ``_backward``) on small CPU tensors with a recorder
in place of the kernel, for row lengths 2**k and 2**k + 1 up to 2**20 (every BLOCK_V and num_warps the
launcher derives from the row length, rows divisible by 16 and not), the three dtypes and every
SMOOTHING / Z_LOSS / WRITE_GRAD (PER_ROW for the scale kernel); triton's own argument binder then
specialises each recorded call as a GPU launch would (pointer and integer divisibility by 16 included)
and identical specialisations are compiled once.  A change of ``_launch_options`` or of the launch
arguments shows up here without editing this file.  :func:`liger_configs` does the same with
Liger-Kernel's host functions (an optional dependency) for a side-by-side table.

**What is read** (cuobjdump on the cubin; on a GPU ``CompiledKernel.n_regs`` / ``n_spills`` hold the
same numbers, but triton only fills them when it loads the binary on a device): REG (registers per
thread), STACK + LOCAL (local memory per thread: where ptxas puts spilled registers; triton's
``n_spills`` is this size / 4, CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES in triton/backends/nvidia/driver.c),
SHARED (static shared memory; ptxas sets aside 1 KiB there on sm_90/sm_100 for kernels that use
shared memory) and ``metadata.shared`` (the dynamic shared memory triton requests at launch).

**Theoretical occupancy** per SM (the CUDA occupancy calculator's model; largest shared-memory
carveout; W = num_warps, R = registers per thread, S = static + dynamic shared bytes)::

    regs_per_warp   = ceil(R * 32 / 256) * 256                         # allocated per warp, 256 at a time
    blocks_by_regs  = floor(floor(65536 / regs_per_warp) / W)           # 64 K registers per SM
    smem_per_block  = ceil((S + 1024) / 128) * 128                      # + 1 KiB reserved per block
    blocks_by_smem  = floor(smem_per_sm / smem_per_block)               # 164 KiB (sm_80), 228 KiB (sm_90, sm_100)
    blocks_by_warps = min(32, floor(64 / W))                            # 64 warps, 32 blocks per SM
    blocks          = min(blocks_by_regs, blocks_by_smem, blocks_by_warps)
    occupancy       = blocks * W / 64                                   # resident warps / maximum
"""

from __future__ import annotations

import argparse
import csv
import functools
import importlib
import importlib.metadata
import itertools
import math
import os
import re
import subprocess
import tempfile
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from unittest import mock

import torch
import triton
from triton import knobs
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.jit import create_function_from_signature

from vqa_kernels import cross_entropy
from vqa_kernels._backend import kernel_for

ARCHS = (80, 90, 100)
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
CSV_PATH = Path("docs/bench/kernel_resources_sm90.csv")
# Row lengths 2**k and 2**k + 1 up to this: no vocabulary is larger, and the launchers depend on the
# row length only through its next power of two and (through triton's specialisation) divisibility by 16.
MAX_ROW_LENGTH = 1 << 20
# Rows in a replayed launch: only the persistent row loop's bound; 3 is neither 1 (a constant to triton)
# nor divisible by 16, like the active-row count of a fused-linear chunk.
N_ROWS = 3
# Liger's side of the table: Qwen2.5-VL-7B (configs/qwen25vl7b_lora_nextqa_multinode.yaml): vocab, hidden.
LIGER_VOCAB, LIGER_HIDDEN = 152064, 3584


@dataclass(frozen=True)
class ArchLimits:
    """Per-SM limits of one compute capability.

    Sources: the Ampere, Hopper and Blackwell tuning guides (docs.nvidia.com/cuda/ampere-tuning-guide,
    hopper-tuning-guide, blackwell-tuning-guide, "Occupancy" and "Shared Memory"): 64 K 32-bit registers
    and at most 255 per thread, 64 resident warps and 32 resident blocks per SM on sm_80/sm_90/sm_100;
    shared memory up to 164 KiB per SM and 163 KiB per block on A100, 228 KiB and 227 KiB on H100 and
    B200.  1 KiB per block reserved for the system: CUDA C++ Programming Guide, compute capability 8.x /
    9.0 shared memory (``cudaDevAttrReservedSharedMemoryPerBlock``).  Allocation units (registers per
    warp, shared bytes): the CUDA Occupancy Calculator's GPU data for these capabilities.
    """

    gpu: str
    smem_per_sm: int
    max_smem_per_block: int
    regs_per_sm: int = 65536
    max_regs_per_thread: int = 255
    reg_alloc_unit: int = 256
    max_warps_per_sm: int = 64
    max_blocks_per_sm: int = 32
    reserved_smem_per_block: int = 1024
    smem_alloc_unit: int = 128


LIMITS = {
    80: ArchLimits("A100", smem_per_sm=164 * 1024, max_smem_per_block=163 * 1024),
    90: ArchLimits("H100/H200", smem_per_sm=228 * 1024, max_smem_per_block=227 * 1024),
    100: ArchLimits("B200", smem_per_sm=228 * 1024, max_smem_per_block=227 * 1024),
}


@dataclass(frozen=True)
class LaunchConfig:
    """One compiled variant of a kernel: what triton's JIT would compile for one launch.

    ``kernel`` is "module:function"; ``signature`` / ``constexprs`` / ``div16`` (arguments specialised as
    divisible by 16) / ``options`` (num_warps ...) are the JIT's specialisation, and equality ignores
    ``example``, the first launch seen with it (e.g. "bf16 [3, 151936] label_smoothing=0.1").
    """

    kernel: str
    signature: tuple[tuple[str, str], ...]
    constexprs: tuple[tuple[str, object], ...]
    div16: tuple[str, ...]
    options: tuple[tuple[str, object], ...]
    example: str = field(default="", compare=False)

    @property
    def name(self) -> str:
        return self.kernel.rsplit(":", 1)[1]

    @property
    def num_warps(self) -> int:
        return dict(self.options).get("num_warps", 4)

    @property
    def block(self) -> int:
        """The column block (BLOCK_V, or Liger's BLOCK_SIZE): elements one program holds at once; 1 if none."""
        consts = dict(self.constexprs)
        return consts.get("BLOCK_V", consts.get("BLOCK_SIZE", 1))

    def label(self) -> str:
        consts = " ".join(f"{k}={v}" for k, v in self.constexprs)
        return f"{self.example} num_warps={self.num_warps} {consts}".strip()


@dataclass(frozen=True)
class Resources:
    """Resources of one cubin, per thread (registers, local memory) and per block (shared memory)."""

    regs: int
    spill_bytes: int
    static_smem: int
    dynamic_smem: int

    @property
    def smem(self) -> int:
        return self.static_smem + self.dynamic_smem


@dataclass(frozen=True)
class Occupancy:
    blocks_per_sm: int
    warps_per_sm: int
    fraction: float
    limiter: str


@dataclass(frozen=True)
class Result:
    """A configuration compiled for one architecture: its resources, or why it did not compile."""

    config: LaunchConfig
    arch: int
    resources: Resources | None = None
    error: str | None = None

    def problems(self) -> list[str]:
        """What breaks the check: a compile error, spills, shared memory over the limit, no room on an SM."""
        if self.resources is None:
            return [f"compile error: {self.error}"]
        r, lim = self.resources, LIMITS[self.arch]
        out = []
        if r.spill_bytes:
            out.append(f"register spills: {r.spill_bytes} bytes of local memory per thread ({r.regs} registers)")
        if r.smem > lim.max_smem_per_block:
            out.append(f"shared memory {r.smem} B > {lim.max_smem_per_block} B per block ({lim.gpu})")
        if occupancy(r, self.config.num_warps, lim).blocks_per_sm == 0:
            out.append(f"not one block fits on an SM ({r.regs} registers x {32 * self.config.num_warps} threads, "
                       f"{r.smem} B shared)")
        return out


class KernelCheckError(Exception):
    """A configuration that would not run as compiled (message: kernel, configuration, arch, problems)."""


def occupancy(res: Resources, num_warps: int, lim: ArchLimits) -> Occupancy:
    """Theoretical occupancy of one block shape on one SM (formula in the module docstring)."""
    regs_per_warp = max(1, math.ceil(res.regs * 32 / lim.reg_alloc_unit)) * lim.reg_alloc_unit
    by = {"warps": min(lim.max_blocks_per_sm, lim.max_warps_per_sm // num_warps),
          "registers": (lim.regs_per_sm // regs_per_warp) // num_warps if res.regs <= lim.max_regs_per_thread else 0,
          "shared memory": lim.smem_per_sm // (math.ceil((res.smem + lim.reserved_smem_per_block)
                                                        / lim.smem_alloc_unit) * lim.smem_alloc_unit)}
    limiter = min(by, key=by.get)
    blocks = by[limiter]
    return Occupancy(blocks, blocks * num_warps, blocks * num_warps / lim.max_warps_per_sm, limiter)


def check(result: Result) -> Result:
    """Raise :class:`KernelCheckError` naming kernel, configuration and arch when ``result`` has problems."""
    problems = result.problems()
    if problems:
        raise KernelCheckError(f"{result.config.name} [{result.config.label()}] on sm_{result.arch}: "
                               + "; ".join(problems))
    return result


# ---- configurations ---------------------------------------------------------------------------------

class _Recorder:
    """Stands in for a kernel in a replayed host function: ``kernel[grid](*args, **kwargs)`` is recorded."""

    def __init__(self, kernel, calls: list):
        self.kernel, self.calls = kernel, calls

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.calls.append((self.kernel, args, kwargs))


@functools.cache
def _binder(jit):
    backend = make_backend(GPUTarget("cuda", 90, 32))  # NVIDIA specialisation does not depend on the arch
    return backend, create_function_from_signature(jit.signature, jit.params, backend)


def specialise(kernel, args: tuple, kwargs: dict, example: str) -> LaunchConfig:
    """The JIT's specialisation of one launch (triton 3.7's binder, as ``JITFunction.run`` calls it)."""
    jit = kernel_for(kernel, interpret=False)
    backend, binder = _binder(jit)
    bound, spec, options = binder(*args, **kwargs)  # options: the launch options given (num_warps ...)
    _, signature, constexprs, attrs = jit._pack_args(backend, kwargs, bound, spec, options)
    names = jit.arg_names
    return LaunchConfig(
        kernel=f"{jit.fn.__module__}:{jit.fn.__name__}",
        signature=tuple(signature.items()),
        constexprs=tuple((names[path[0]], v) for path, v in sorted(constexprs.items())),
        div16=tuple(names[path[0]] for path, a in sorted(attrs.items()) if ["tt.divisibility", 16] in a),
        options=tuple(sorted(options.items())),
        example=example,
    )


def record(module, kernels: Iterable[str], example: str, host: Callable, *args, **kwargs) -> list[tuple]:
    """Run ``host(*args, **kwargs)`` with the kernels ``module.<name>`` replaced by recorders.

    Returns:
        [(kernel, args, kwargs, example)] for every launch, ready for :func:`specialise`.
    """
    calls: list[tuple] = []
    patches = {n: _Recorder(getattr(module, n), calls) for n in kernels}
    if hasattr(module, "kernel_for"):  # our launchers pick the compiled or interpreted variant through it
        patches["kernel_for"] = lambda kernel, interpret: kernel
    with mock.patch.multiple(module, **patches):
        host(*args, **kwargs)
    return [(kernel, a, kw, example) for kernel, a, kw in calls]


def _dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def launch_configs(max_row_length: int = MAX_ROW_LENGTH) -> list[LaunchConfig]:
    """Every distinct compiled variant our launchers can launch (see the module docstring)."""
    lengths = sorted({n for k in range(max_row_length.bit_length()) for n in (1 << k, (1 << k) + 1)})
    kernels = ("_weighted_ce_fwd_kernel", "_scale_rows_kernel")
    target, weight = torch.zeros(N_ROWS, dtype=torch.int64), torch.ones(N_ROWS)
    calls = []
    for dtype in DTYPES:
        for n_cols in lengths:
            logits = torch.empty(N_ROWS, n_cols, dtype=dtype)
            example = f"{_dtype_name(dtype)} [{N_ROWS}, {n_cols}]"
            for smoothing, z_loss, grad in itertools.product((0.0, 0.1), (0.0, 1e-4), (None, logits)):
                calls += record(cross_entropy, kernels, example, cross_entropy._forward, logits, target, weight,
                                label_smoothing=smoothing, z_loss=z_loss, grad=grad)
            for scale in (torch.tensor(2.0), torch.full((N_ROWS,), 2.0)):
                calls += record(cross_entropy, kernels, example, cross_entropy._backward, logits, scale)
    return list(dict.fromkeys(specialise(*c) for c in calls))


def liger_configs() -> tuple[list[LaunchConfig], str | None]:
    """Liger-Kernel's CE and fused-linear CE launches at Qwen2.5-VL-7B's shape, or ([], why not).

    Replays ``cross_entropy_forward`` / ``_backward`` and ``fused_linear_cross_entropy_forward`` /
    ``_backward`` (per dtype; plain and with label smoothing + z-loss) with recorders for the kernels.
    On a CPU Liger's device probe is not Blackwell, so its launchers pick the non-Blackwell num_warps.
    """
    try:  # optional dependency: the comparison is skipped without it
        lce = importlib.import_module("liger_kernel.ops.cross_entropy")
        lflce = importlib.import_module("liger_kernel.ops.fused_linear_cross_entropy")
        version = importlib.metadata.version("liger-kernel")
    except Exception as exc:  # ImportError, or a Liger built against another torch/triton
        return [], f"liger_kernel not importable: {type(exc).__name__}: {exc}"
    ce, mul = "liger_cross_entropy_kernel", "element_mul_kernel"
    target = torch.zeros(N_ROWS, dtype=torch.int64)
    calls = []
    for dtype in DTYPES:
        ce_example = f"{_dtype_name(dtype)} [{N_ROWS}, {LIGER_VOCAB}] liger {version} CE"
        flce_example = ce_example.replace(" CE", " FLCE")
        for smoothing, z_scale in ((0.0, 0.0), (0.1, 1e-4)):
            logits = torch.zeros(N_ROWS, LIGER_VOCAB, dtype=dtype, requires_grad=True)
            calls += record(lce, [ce, mul], ce_example, lce.cross_entropy_forward, logits, target, None, -100,
                            z_scale, smoothing, "mean", None, z_scale > 0)
            calls += record(lce, [ce, mul], ce_example, lce.cross_entropy_backward, logits, torch.tensor(2.0))
            hidden = torch.zeros(N_ROWS, 8, dtype=dtype, requires_grad=True)  # the head GEMM is torch's
            lm_weight = torch.zeros(LIGER_VOCAB, 8, dtype=dtype, requires_grad=True)
            calls += record(lflce, [ce], flce_example, lflce.fused_linear_cross_entropy_forward, hidden, lm_weight,
                            target, lse_square_scale=z_scale, label_smoothing=smoothing, return_z_loss=z_scale > 0)
            grads = [torch.zeros(n, LIGER_HIDDEN, dtype=dtype) for n in (N_ROWS, 16)]  # grad_input, grad_weight
            calls += record(lflce, [mul], f"{_dtype_name(dtype)} [16, {LIGER_HIDDEN}] liger {version} FLCE",
                            lflce.fused_linear_cross_entropy_backward, torch.tensor(2.0), *grads, None)
    return list(dict.fromkeys(specialise(*c) for c in calls)), None


def busiest(configs: Iterable[LaunchConfig]) -> list[LaunchConfig]:
    """Per kernel, the configurations with the most elements per thread for their register budget.

    A thread holds BLOCK / (32 num_warps) elements and may use min(255, 65536 / (32 num_warps))
    registers: where that ratio is largest, a kernel runs out of registers first.  This is the quick
    subset the default test compiles for every arch (all dtypes, flags and alignments of those blocks).
    It is a heuristic, not a bound: ptxas also spills a few bytes now and then well under the budget
    (measured: 8 bytes at 32 registers, 128 threads), which only the full set finds.
    """
    def pressure(c: LaunchConfig) -> float:
        threads = 32 * c.num_warps
        return c.block / threads / min(255, 65536 // threads)

    configs = list(configs)
    top = {}
    for c in configs:
        top[c.kernel] = max(top.get(c.kernel, 0.0), pressure(c))
    return [c for c in configs if pressure(c) == top[c.kernel]]


# ---- compile and measure ----------------------------------------------------------------------------

def _resolve(kernel: str):
    module, name = kernel.split(":")
    return kernel_for(getattr(importlib.import_module(module), name), interpret=False)


def compile_config(config: LaunchConfig, arch: int):
    """triton.compile of one configuration for sm_<arch>: the CompiledKernel (cubin in ``.asm``)."""
    fn = _resolve(config.kernel)
    names = fn.arg_names
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in config.div16}
    src = ASTSource(fn, dict(config.signature), constexprs=dict(config.constexprs), attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=dict(config.options))


_USAGE = re.compile(r"Function (\S+):\s*REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")


def read_resources(compiled) -> Resources:
    """Registers, local memory and shared memory of a compiled kernel, from its cubin (cuobjdump)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "kernel.cubin")
        path.write_bytes(compiled.asm["cubin"])
        out = subprocess.run([knobs.nvidia.cuobjdump.path, "--dump-resource-usage", str(path)],
                             check=True, capture_output=True, text=True).stdout
    match = next((m for m in _USAGE.finditer(out) if m[1] == compiled.name), None)
    if match is None:
        raise RuntimeError(f"no resource usage for {compiled.name} in cuobjdump's output:\n{out}")
    regs, stack, static, local = (int(g) for g in match.groups()[1:])
    return Resources(regs=regs, spill_bytes=stack + local, static_smem=static,
                     dynamic_smem=compiled.metadata.shared)


def measure(config: LaunchConfig, arch: int) -> Result:
    """Compile and read one configuration; a compile error is kept in the result, not raised."""
    try:
        compiled = compile_config(config, arch)
    except Exception as exc:  # CompilationError, PTXASError, MLIR pass failures: all mean "does not build"
        return Result(config, arch, error=f"{type(exc).__name__}: {str(exc).strip()[:2000]}")
    return Result(config, arch, resources=read_resources(compiled))


def measure_all(configs: list[LaunchConfig], archs: Iterable[int], jobs: int = 1) -> list[Result]:
    """:func:`measure` of every configuration for every arch, in ``jobs`` processes (compiling is CPU-bound)."""
    pairs = [(c, arch) for arch in archs for c in configs]
    if jobs <= 1 or len(pairs) <= 1:
        return [measure(c, arch) for c, arch in pairs]
    # spawn, not fork: the parent may hold torch's and LLVM's threads
    with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as pool:
        return list(pool.map(measure, *zip(*pairs), chunksize=4))


# ---- report -----------------------------------------------------------------------------------------

FIELDS = ["arch", "gpu", "kernel", "example", "block", "num_warps", "constexprs", "div16", "regs",
          "spill_bytes", "static_smem", "dynamic_smem", "blocks_per_sm", "occupancy", "limiter", "status"]


def row(result: Result) -> dict:
    c, lim = result.config, LIMITS[result.arch]
    out = {"arch": f"sm_{result.arch}", "gpu": lim.gpu, "kernel": c.name, "example": c.example, "block": c.block,
           "num_warps": c.num_warps, "constexprs": " ".join(f"{k}={v}" for k, v in c.constexprs),
           "div16": " ".join(c.div16), "status": "; ".join(result.problems()) or "ok"}
    if result.resources is not None:
        r = result.resources
        occ = occupancy(r, c.num_warps, lim)
        out.update(regs=r.regs, spill_bytes=r.spill_bytes, static_smem=r.static_smem, dynamic_smem=r.dynamic_smem,
                   blocks_per_sm=occ.blocks_per_sm, occupancy=f"{occ.fraction:.3f}", limiter=occ.limiter)
    return out


def summary(results: list[Result]) -> str:
    """A markdown table: one line per kernel, block and num_warps, ranges over dtypes, flags and alignment."""
    groups: dict[tuple, list[dict]] = {}
    for res in results:
        c = res.config
        one_block = dict(c.constexprs).get("ONE_BLOCK")
        key = (f"sm_{res.arch}", c.name + ("" if one_block is None else f" ONE_BLOCK={one_block}"),
               c.block, c.num_warps)
        groups.setdefault(key, []).append(row(res))

    def span(rows, col, fmt="{}"):
        vals = [r[col] for r in rows if col in r]
        lo, hi = min(vals, key=float), max(vals, key=float)
        return fmt.format(lo) if lo == hi else f"{fmt.format(lo)}-{fmt.format(hi)}"

    lines = ["| arch | kernel | block | warps | variants | regs/thread | spill B/thread | shared B | "
             "occupancy | failing |", "|---|---|---|---|---|---|---|---|---|---|"]
    for (arch, name, block, warps), rows in sorted(groups.items()):
        failing = sum(r["status"] != "ok" for r in rows)
        compiled = [r for r in rows if "regs" in r]
        stats = ([span(compiled, "regs"), span(compiled, "spill_bytes"),
                  span([{"s": r["static_smem"] + r["dynamic_smem"]} for r in compiled], "s"),
                  span(compiled, "occupancy")] if compiled else ["-"] * 4)
        lines.append(f"| {arch} | {name} | {block} | {warps} | {len(rows)} | " + " | ".join(stats)
                     + f" | {failing} |")
    return "\n".join(lines)


def write_csv(results: list[Result], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(row(r) for r in results)


def main(argv: list[str] | None = None) -> int:
    """CLI: compile, print a markdown table, write the CSV; exit 1 when one of OUR configurations fails."""
    p = argparse.ArgumentParser(prog="python -m vqa_kernels.aot", description=__doc__.split("\n")[0])
    p.add_argument("--arch", type=int, action="append", choices=ARCHS, help="repeatable (default: 90)")
    p.add_argument("--csv", type=Path, default=None, help=f"write every row here (e.g. {CSV_PATH})")
    p.add_argument("--configs", choices=("all", "busiest"), default="all",
                   help="every launch configuration, or only the busiest() subset")
    p.add_argument("--no-liger", action="store_true", help="leave Liger-Kernel's kernels out")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="compile processes")
    args = p.parse_args(argv)

    ours = launch_configs()
    if args.configs == "busiest":
        ours = busiest(ours)
    liger, why_not = ([], "--no-liger") if args.no_liger else liger_configs()
    if why_not:
        print(f"note: Liger-Kernel's kernels skipped ({why_not})")
    results = measure_all(ours + liger, args.arch or [90], args.jobs)
    print(summary(results))
    failing = [r for r in results if r.problems()]
    for r in failing:
        print(f"FAIL {r.config.name} [{r.config.label()}] sm_{r.arch}: {'; '.join(r.problems())}")
    print(f"{len(results)} compiled variants, {len(failing)} failing "
          f"({sum(r.config in liger for r in failing)} of them Liger's)")
    if args.csv:
        write_csv(results, args.csv)
        print(f"wrote {len(results)} rows to {args.csv}")
    return int(any(r.config not in liger for r in failing))


if __name__ == "__main__":
    raise SystemExit(main())
