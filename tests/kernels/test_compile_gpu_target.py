"""The Triton kernels compiled for A100 (sm_80), H100 (sm_90) and B200 (sm_100) on a machine without
a GPU, every launch configuration the launchers can choose, and checked: no compile error, no register
spill, shared memory within the architecture's limit (``vqa_kernels.aot``).  Compiling also type-checks
what the interpreter does not (loop-carried types, constexpr branches, int64 row offsets).

The tests compile the busiest configurations (``aot.busiest``: the most elements per thread for the
register budget) for the three archs. Every configuration (708 per arch, under a minute an arch here):
``python -m vqa_kernels.aot --arch 90 --csv OUT.csv`` (exit 1 on any problem). A fresh TRITON_CACHE_DIR
per module makes every compile real.
"""

from __future__ import annotations

import os
import re

import pytest
import torch

triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402

from vqa_kernels import aot, cross_entropy  # noqa: E402

if type(triton.language.standard.sum).__name__ != "JITFunction":
    pytest.skip("triton was imported with TRITON_INTERPRET=1: this process cannot compile",
                allow_module_level=True)

JOBS = len(os.sched_getaffinity(0))


@triton.jit
def _smem_hog_kernel(a_ptr, b_ptr, c_ptr, K, BLOCK: tl.constexpr, BLOCK_K: tl.constexpr):
    """c = a @ b for one BLOCK x BLOCK tile; the software pipeline keeps num_stages - 1 tiles of a and b
    in shared memory, so large BLOCK_K and num_stages overflow it (a forced failure, never launched)."""
    offs = tl.arange(0, BLOCK)
    offs_k = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK, BLOCK), tl.float32)
    for k in range(0, K, BLOCK_K):
        a = tl.load(a_ptr + offs[:, None] * K + (k + offs_k)[None, :])
        b = tl.load(b_ptr + (k + offs_k)[:, None] * BLOCK + offs[None, :])
        acc += tl.dot(a, b)
    tl.store(c_ptr + offs[:, None] * BLOCK + offs[None, :], acc)


@pytest.fixture(scope="module", autouse=True)
def fresh_triton_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRITON_CACHE_DIR", str(tmp_path_factory.mktemp("triton_cache")))  # real compiles
        yield


@pytest.fixture(scope="module")
def configs() -> list[aot.LaunchConfig]:
    return aot.launch_configs()


@pytest.fixture(scope="module")
def busiest_results(configs) -> dict[int, list[aot.Result]]:
    results = aot.measure_all(aot.busiest(configs), aot.ARCHS, jobs=JOBS)
    return {arch: [r for r in results if r.arch == arch] for arch in aot.ARCHS}


def assert_all_fit(results: list[aot.Result], spills: bool = True) -> None:
    """No configuration has a problem (``spills=False``: other than register spills)."""
    errors = []
    for result in results:
        problems = [p for p in result.problems() if spills or not p.startswith("register spills")]
        if problems:
            errors.append(f"{result.config.label()} on sm_{result.arch}: " + "; ".join(problems))
    assert not errors, f"{len(errors)} of {len(results)} configurations fail:\n" + "\n".join(errors)


def test_configs_are_the_launchers(configs):
    """Every (BLOCK_V, num_warps, ONE_BLOCK) _launch_options picks, with every flag and dtype, is there."""
    fwd = [c for c in configs if c.name == "_weighted_ce_fwd_kernel"]
    for n_cols in (1, 7, 100, 4096, 32768, 32769, 151936, 1 << 20):
        block, warps, one_block = cross_entropy._launch_options(n_cols, torch.device("cuda"), None)
        found = {(c.signature[0][1], dict(c.constexprs)["SMOOTHING"], dict(c.constexprs)["Z_LOSS"],
                  dict(c.constexprs)["WRITE_GRAD"]) for c in fwd
                 if (c.block, c.num_warps, dict(c.constexprs)["ONE_BLOCK"]) == (block, warps, one_block)}
        assert len(found) == 3 * 8, f"n_cols={n_cols}: {len(found)} dtype/flag variants of {block, warps, one_block}"
    scale = {(c.signature[0][1], dict(c.constexprs)["PER_ROW"]) for c in configs if c.name == "_scale_rows_kernel"}
    assert len(scale) == 3 * 2
    assert {c.name for c in configs} == {"_weighted_ce_fwd_kernel", "_scale_rows_kernel"}


def test_configs_follow_a_changed_launcher(monkeypatch):
    monkeypatch.setattr(cross_entropy, "MAX_BLOCK_V", 8192)
    blocks = {c.block for c in aot.launch_configs(max_row_length=1 << 14) if c.name == "_weighted_ce_fwd_kernel"}
    assert max(blocks) == 8192


@pytest.mark.parametrize("arch", aot.ARCHS, ids=lambda a: f"sm_{a}")
def test_busiest_configs_compile_within_shared_memory(arch, busiest_results):
    assert busiest_results[arch], "no configuration compiled"
    assert_all_fit(busiest_results[arch], spills=False)


# Until the H200 tuning (one program of 4 warps per row, 4096-column blocks) the 32-warp, 32768-column
# launches spilled 8-72 B a thread (16 / 36 / 58 of 852 variants on sm_80 / 90 / 100); now none does.
@pytest.mark.parametrize("arch", aot.ARCHS, ids=lambda a: f"sm_{a}")
def test_busiest_configs_do_not_spill(arch, busiest_results):
    assert_all_fit(busiest_results[arch])


def test_forced_spill_fails_the_check():
    """BLOCK_V=131072 in one block (the launcher's block_v override): 128 fp32 values per thread against
    at most 64 registers at 32 warps must spill, and the check must say which kernel, config and arch."""
    x = torch.empty(aot.N_ROWS, 131072, dtype=torch.bfloat16)
    calls = aot.record(cross_entropy, ["_weighted_ce_fwd_kernel"], "bf16 forced", cross_entropy._forward, x,
                       torch.zeros(aot.N_ROWS, dtype=torch.int64), torch.ones(aot.N_ROWS), grad=x, block_v=131072)
    result = aot.measure(aot.specialise(*calls[0]), 90)
    with pytest.raises(aot.KernelCheckError, match=r"_weighted_ce_fwd_kernel \[bf16 forced num_warps=32 "
                       r".*ONE_BLOCK=True BLOCK_V=131072\] on sm_90: register spills: \d+ bytes"):
        aot.check(result)


def test_forced_shared_memory_overflow_fails_the_check():
    """A 128 x 128 x 256 fp16 tile pipelined over 3 stages needs 256 KiB of shared memory: over A100's
    163 KiB per block."""
    h, o = torch.empty(16, dtype=torch.float16), torch.empty(16)
    config = aot.specialise(_smem_hog_kernel, (h, h, o, 4096), {"BLOCK": 128, "BLOCK_K": 256, "num_warps": 8,
                                                                 "num_stages": 3}, "fp16 forced")
    with pytest.raises(aot.KernelCheckError, match=r"_smem_hog_kernel \[fp16 forced num_warps=8 BLOCK=128 "
                       r"BLOCK_K=256\] on sm_80: shared memory \d+ B > 166912 B per block \(A100\)"):
        aot.check(aot.measure(config, 80))


def test_row_offsets_are_int64(configs):
    """The row offsets are computed in int64: row * stride overflows int32 beyond 2**31 elements."""
    config = next(c for c in aot.busiest(configs) if c.name == "_weighted_ce_fwd_kernel")
    ttir = aot.compile_config(config, 90).asm["ttir"]
    offsets = [line.strip() for line in ttir.splitlines() if re.match(r"\s*%[xg]_row\S* = arith\.muli", line)]
    assert any(line.startswith("%x_row") for line in offsets), f"no logits row offset in the TTIR: {offsets}"
    assert all(line.split(" loc(")[0].endswith(": i64") for line in offsets), f"row offsets not int64: {offsets}"


@pytest.mark.parametrize(("regs", "warps", "smem", "blocks", "limiter"), [
    (64, 32, 1152, 1, "registers"),      # 64 x 1024 threads = the whole register file
    (32, 4, 0, 16, "warps"),             # 16 blocks x 4 warps = 64 warps
    (40, 4, 0, 12, "registers"),         # 1280 registers a warp: 51 warps -> 12 blocks of 4
    (16, 4, 20 * 1024, 10, "shared memory"),  # 21 KiB with the reserved KiB: 228 // 21 = 10
])
def test_occupancy_on_sm90(regs, warps, smem, blocks, limiter):
    occ = aot.occupancy(aot.Resources(regs=regs, spill_bytes=0, static_smem=0, dynamic_smem=smem), warps,
                        aot.LIMITS[90])
    assert (occ.blocks_per_sm, occ.limiter) == (blocks, limiter)
    assert occ.fraction == blocks * warps / 64


def test_liger_kernels_compile_beside_ours():
    """The CLI's comparison: Liger-Kernel's CE and fused-linear-CE launches, compiled the same way."""
    pytest.importorskip("liger_kernel")
    liger, why_not = aot.liger_configs()
    assert why_not is None and liger, why_not
    firsts = list({c.name: c for c in reversed(liger)}.values())
    assert {c.name for c in firsts} == {"liger_cross_entropy_kernel", "element_mul_kernel"}
    for result in aot.measure_all(firsts, [90]):
        assert result.resources is not None, result.error
