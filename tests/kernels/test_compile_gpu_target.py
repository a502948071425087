"""The compiled (GPU) path of the Triton kernels, checked on a machine without a GPU: triton
compiles them for an H100 (sm_90) down to a cubin, which type-checks what the interpreter does
not (loop-carried types, constexpr branches, int64 row offsets)."""

from __future__ import annotations

import pytest

triton = pytest.importorskip("triton")
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from vqa_kernels import cross_entropy  # noqa: E402
from vqa_kernels._backend import kernel_for  # noqa: E402

if type(triton.language.standard.sum).__name__ != "JITFunction":
    pytest.skip("triton was imported with TRITON_INTERPRET=1: this process cannot compile",
                allow_module_level=True)
# The compiled variants, whatever mode the module happened to be imported in.
_weighted_ce_fwd_kernel = kernel_for(cross_entropy._weighted_ce_fwd_kernel, interpret=False)
_scale_rows_kernel = kernel_for(cross_entropy._scale_rows_kernel, interpret=False)

H100 = GPUTarget("cuda", 90, 32)
FWD_SIG = {"x_ptr": "*bf16", "x_stride": "i64", "g_ptr": "*bf16", "g_stride": "i64",
           "target_ptr": "*i64", "weight_ptr": "*fp32", "loss_ptr": "*fp32", "lse_ptr": "*fp32",
           "n_rows": "i32", "n_cols": "i32", "ignore_index": "i32", "label_smoothing": "fp32",
           "z_loss": "fp32", "SMOOTHING": "constexpr", "Z_LOSS": "constexpr",
           "WRITE_GRAD": "constexpr", "ONE_BLOCK": "constexpr", "BLOCK_V": "constexpr"}


@pytest.mark.parametrize("one_block", [True, False], ids=["one-block", "blocked"])
def test_forward_kernel_compiles_for_h100(one_block, tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))  # really compile, not a cache hit
    flags = {"SMOOTHING": True, "Z_LOSS": True, "WRITE_GRAD": True, "ONE_BLOCK": one_block,
             "BLOCK_V": 32768}
    kernel = triton.compile(ASTSource(_weighted_ce_fwd_kernel, FWD_SIG, constexprs=flags),
                            target=H100, options={"num_warps": 32})
    assert kernel.asm["cubin"], "no cubin"
    row_loop = next(line for line in kernel.asm["ttir"].splitlines() if "scf.for %row" in line)
    assert row_loop.rstrip().endswith(": i64 {"), f"row index is not int64: {row_loop.strip()}"


def test_scale_kernel_compiles_for_h100(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    sig = {"g_ptr": "*bf16", "g_stride": "i64", "out_ptr": "*bf16", "out_stride": "i64",
           "scale_ptr": "*fp32", "n_cols": "i32", "PER_ROW": "constexpr", "BLOCK_V": "constexpr"}
    kernel = triton.compile(ASTSource(_scale_rows_kernel, sig, constexprs={"PER_ROW": True, "BLOCK_V": 4096}),
                            target=H100, options={"num_warps": 8})
    assert kernel.asm["cubin"]
