"""fused_linear_weighted_cross_entropy (Triton row kernel / chunked torch) against the eager
reference (materialized logits) and against F.cross_entropy on the materialized logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import assert_close_report
from tests.kernels.conftest import TOL
from vqa_kernels import fused_linear_weighted_cross_entropy
from vqa_kernels.reference import fused_linear_weighted_cross_entropy_eager

# bf16 gradients of lm_weight sum over all rows: one more rounding than the per-row ones.
FLCE_TOL = {torch.float32: {"rtol": 1e-4, "atol": 1e-5}, torch.bfloat16: {"rtol": 3e-2, "atol": 3e-2}}


def make_problem(n, h, v, dtype, device, *, bias):
    hidden = torch.randn(n, h).to(dtype).to(device)
    lm_weight = (torch.randn(v, h) / h ** 0.5 * 2).to(dtype).to(device)
    b = (torch.randn(v) * 0.5).to(dtype).to(device) if bias else None
    target = torch.randint(0, v, (n,))
    target[::4] = -100  # e.g. prompt / video tokens
    weight = torch.rand(n) * 2
    weight[2] = 0.0
    return hidden, lm_weight, b, target.to(device), weight.to(device)


def run(fn, hidden, lm_weight, bias, target, weight, grad_output, **opts):
    leaves = [t.detach().clone().requires_grad_(True) if t is not None else None
              for t in (hidden, lm_weight, bias)]
    loss = fn(leaves[0], leaves[1], target, weight, leaves[2], **opts)
    loss.backward(grad_output)
    return [loss.detach()] + [t.grad if t is not None else None for t in leaves]


def check_all(got, want, dtype, label):
    for name, a, b in zip(["loss", "grad_hidden", "grad_lm_weight", "grad_bias"], got, want):
        if b is None:
            assert a is None, f"{label}: {name} should be None"
            continue
        tol = TOL[dtype] if name == "loss" else FLCE_TOL[dtype]
        assert a.dtype == (torch.float32 if name == "loss" else dtype), f"{label}: {name} dtype"
        assert_close_report(a, b, **tol, name=f"{label} {name}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("reduction", ["sum", "none"])
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("chunk_size,z_loss,smoothing", [(None, 0.0, 0.0), (5, 1e-3, 0.1)])
def test_fused_against_eager(backend_device, dtype, reduction, bias, chunk_size, z_loss, smoothing):
    _, dev = backend_device
    n, h, v = 23, 32, 301
    problem = make_problem(n, h, v, dtype, dev, bias=bias)
    g = torch.rand(n, device=dev) * 3 if reduction == "none" else torch.tensor(0.7, device=dev)
    opts = dict(reduction=reduction, z_loss=z_loss, label_smoothing=smoothing)
    got = run(fused_linear_weighted_cross_entropy, *problem, g, chunk_size=chunk_size, **opts)
    want = run(fused_linear_weighted_cross_entropy_eager, *problem, g, **opts)
    check_all(got, want, dtype, "vs eager")
    # Against torch's cross_entropy on logits made in the same dtype.
    hidden, lm_weight, b, target, weight = problem
    leaves = [t.detach().clone().requires_grad_(True) if t is not None else None
              for t in (hidden, lm_weight, b)]
    logits = F.linear(leaves[0], leaves[1], leaves[2]).float()
    rows = F.cross_entropy(logits, target, reduction="none", label_smoothing=smoothing)
    rows = (rows + z_loss * torch.logsumexp(logits, -1) ** 2 * (target != -100)) * weight
    (rows.sum() if reduction == "sum" else rows).backward(g)
    ce_want = [rows.sum().detach() if reduction == "sum" else rows.detach()]
    ce_want += [t.grad if t is not None else None for t in leaves]
    check_all(got, ce_want, dtype, "vs F.cross_entropy")


def test_zero_grad_output_rows_and_fresh_state(backend_device):
    """reduction="none" with grad_output 0 on some rows (they must not contribute), twice in a row
    with fresh inputs (no state may leak from the first call into the second)."""
    _, dev = backend_device
    for seed in (1, 2):
        torch.manual_seed(seed)
        problem = make_problem(17, 16, 130, torch.float32, dev, bias=True)
        g = torch.rand(17, device=dev)
        g[::3] = 0.0
        got = run(fused_linear_weighted_cross_entropy, *problem, g, reduction="none", chunk_size=4)
        want = run(fused_linear_weighted_cross_entropy_eager, *problem, g, reduction="none")
        check_all(got, want, torch.float32, f"seed {seed}")


@pytest.mark.parametrize("accum_dtype", [None, torch.bfloat16], ids=["fp32acc", "bf16acc"])
def test_accumulator_dtype_option(backend_device, accum_dtype):
    """Many chunks (10) of bf16 rows: the lm_weight gradient stays within the bf16 tolerance with
    the default fp32 running sum and with the opt-in bf16 one."""
    _, dev = backend_device
    problem = make_problem(80, 16, 200, torch.bfloat16, dev, bias=True)
    got = run(fused_linear_weighted_cross_entropy, *problem, None, chunk_size=6,
              accum_dtype=accum_dtype)
    want = run(fused_linear_weighted_cross_entropy_eager, *problem, None)
    check_all(got, want, torch.bfloat16, f"accum {accum_dtype}")


def test_only_some_inputs_need_grad_and_no_grad(backend_device):
    _, dev = backend_device
    hidden, lm_weight, b, target, weight = make_problem(12, 16, 90, torch.float32, dev, bias=True)
    frozen = lm_weight.clone()  # e.g. a frozen LM head: only hidden gets a gradient
    h = hidden.clone().requires_grad_(True)
    loss = fused_linear_weighted_cross_entropy(h, frozen, target, weight, b)
    loss.backward()
    h_ref = hidden.clone().requires_grad_(True)
    fused_linear_weighted_cross_entropy_eager(h_ref, frozen, target, weight, b).backward()
    assert_close_report(h.grad, h_ref.grad, **FLCE_TOL[torch.float32], name="grad_hidden")
    with torch.no_grad():
        value = fused_linear_weighted_cross_entropy(hidden, lm_weight, target, weight, b)
    want = fused_linear_weighted_cross_entropy_eager(hidden, lm_weight, target, weight, b)
    assert_close_report(value, want, **TOL[torch.float32], name="no-grad loss")


def test_fused_bad_inputs(backend_device):
    _, dev = backend_device
    hidden, lm_weight, _, target, weight = make_problem(6, 8, 20, torch.float32, dev, bias=False)
    with pytest.raises(TypeError, match="must share"):
        fused_linear_weighted_cross_entropy(hidden, lm_weight.double(), target, weight)
    with pytest.raises(ValueError, match=r"lm_weight must be \[V, 8\]"):
        fused_linear_weighted_cross_entropy(hidden, lm_weight[:, :4], target, weight)
    with pytest.raises(ValueError, match="chunk_size"):
        fused_linear_weighted_cross_entropy(hidden, lm_weight, target, weight, chunk_size=0)
    target = target.clone()
    target[3] = -5
    with pytest.raises(ValueError, match=r"target\[3\] = -5"):
        fused_linear_weighted_cross_entropy(hidden, lm_weight, target, weight)
