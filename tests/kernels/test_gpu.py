"""Compiled Triton kernels on a CUDA GPU (skipped without one): multi-block rows, int64 offsets
beyond 2**31 elements, the fused op at a real vocabulary size."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import assert_close_report
from tests.kernels.conftest import TOL
from vqa_kernels import fused_linear_weighted_cross_entropy, weighted_cross_entropy
from vqa_kernels.attention import select_attention
from vqa_kernels.reference import ce_rows_torch, fused_linear_weighted_cross_entropy_eager, weighted_cross_entropy_eager

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_gpu_ce_multi_block_vocab(dtype, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    n, v = 300, 151936  # > MAX_BLOCK_V: the blocked online-softmax loop
    logits = (torch.randn(n, v, device="cuda") * 4).to(dtype)
    target = torch.randint(0, v, (n,), device="cuda")
    target[::9] = -100
    weight = torch.rand(n, device="cuda")
    g = torch.rand(n, device="cuda")
    leaf = logits.clone().requires_grad_(True)
    loss = weighted_cross_entropy(leaf, target, weight, reduction="none", z_loss=1e-4, label_smoothing=0.1)
    loss.backward(g)
    ref_leaf = logits.float().requires_grad_(True)
    ref = weighted_cross_entropy_eager(ref_leaf, target, weight, reduction="none", z_loss=1e-4,
                                       label_smoothing=0.1)
    ref.backward(g)
    assert_close_report(loss, ref, **TOL[dtype], name="loss")
    assert_close_report(leaf.grad, ref_leaf.grad, **TOL[dtype], name="grad")


@pytest.mark.parametrize("block_v", [None, 8192, 16384, 32768], ids=lambda b: f"bv{b}")
def test_gpu_ce_block_choices(block_v, monkeypatch):
    """Every BLOCK_V the launcher or a tuning override can pick at V = 32000 (one block at 32768, the
    blocked loop below it) gives the eager loss and gradient, with label smoothing and z-loss."""
    from vqa_kernels._common import CEOptions
    from vqa_kernels.autograd import WeightedCrossEntropyFunction
    from vqa_kernels.cross_entropy import TRITON_ROWS

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    n, v = 512, 32000
    logits = (torch.randn(n, v, device="cuda") * 3).bfloat16()
    target = torch.randint(0, v, (n,), device="cuda")
    target[::7] = -100
    weight = torch.rand(n, device="cuda")
    leaf = logits.clone().requires_grad_(True)
    opts = CEOptions(z_loss=1e-4, label_smoothing=0.1, block_v=block_v)
    loss = WeightedCrossEntropyFunction.apply(leaf, target, weight, opts, TRITON_ROWS)
    loss.backward()
    ref_leaf = logits.float().requires_grad_(True)
    ref = weighted_cross_entropy_eager(ref_leaf, target, weight, z_loss=1e-4, label_smoothing=0.1)
    ref.backward()
    assert_close_report(loss, ref, rtol=1e-3, atol=1e-2, name="loss")
    assert_close_report(leaf.grad, ref_leaf.grad, **TOL[torch.bfloat16], name="grad")


def test_gpu_ce_int64_offsets():
    """N * V > 2**31: rows past the int32 range must be read and written at the right place."""
    n, v = 17000, 131000
    assert n * v > 2**31
    logits = torch.randn(n, v, device="cuda", dtype=torch.bfloat16)
    target = torch.randint(0, v, (n,), device="cuda")
    weight = torch.rand(n, device="cuda")
    leaf = logits.requires_grad_(True)
    loss = weighted_cross_entropy(leaf, target, weight, reduction="none", inplace=False)
    loss.backward(torch.ones(n, device="cuda"))
    tail = slice(n - 64, n)
    grad_ref = torch.empty_like(logits[tail])
    ref, _ = ce_rows_torch(logits[tail].detach(), target[tail], weight[tail], grad=grad_ref)
    assert_close_report(loss[tail], ref, **TOL[torch.bfloat16], name="loss of the last rows")
    assert_close_report(leaf.grad[tail], grad_ref, **TOL[torch.bfloat16], name="grad of the last rows")


def test_gpu_fused_linear_bf16():
    n, h, v = 1024, 512, 32007
    hidden = torch.randn(n, h, device="cuda", dtype=torch.bfloat16)
    lm_weight = (torch.randn(v, h, device="cuda") / h ** 0.5).bfloat16()
    bias = (torch.randn(v, device="cuda") * 0.1).bfloat16()
    target = torch.randint(0, v, (n,), device="cuda")
    target[:100] = -100
    weight = torch.rand(n, device="cuda") / n
    got, want = [], []
    for fn, out, kw in [(fused_linear_weighted_cross_entropy, got, {"chunk_size": 256}),
                        (fused_linear_weighted_cross_entropy_eager, want, {})]:
        leaves = [t.clone().requires_grad_(True) for t in (hidden, lm_weight, bias)]
        loss = fn(leaves[0], leaves[1], target, weight, leaves[2], z_loss=1e-4, **kw)
        loss.backward()
        out += [loss.detach()] + [t.grad for t in leaves]
    for name, a, b in zip(["loss", "grad_hidden", "grad_lm_weight", "grad_bias"], got, want):
        assert_close_report(a, b, rtol=3e-2, atol=3e-2, name=name)


def test_gpu_select_attention_reports():
    impl, reason = select_attention("cuda")
    assert impl in ("flash_attention_2", "sdpa") and reason
