"""weighted_cross_entropy: Triton kernel (interpreted on CPU) and the chunked torch path, against
the eager reference and against torch.nn.functional.cross_entropy(reduction="none") * weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import assert_close_report
from tests.kernels.conftest import TOL, make_rows, poisoned
from vqa_kernels import weighted_cross_entropy
from vqa_kernels.reference import ce_rows_torch, scale_rows_torch, weighted_cross_entropy_eager


def torch_formula(logits, target, weight, *, ignore_index=-100, z_loss=0.0, label_smoothing=0.0):
    """F.cross_entropy(reduction="none") * weight, plus the z-loss term on non-ignored rows."""
    x = logits.float()
    ce = F.cross_entropy(x, target, reduction="none", ignore_index=ignore_index,
                         label_smoothing=label_smoothing)
    if z_loss:
        ce = ce + z_loss * torch.logsumexp(x, dim=-1) ** 2 * (target != ignore_index)
    return ce * weight


def loss_and_grad(fn, logits, target, weight, grad_output, **opts):
    """Run ``fn`` with autograd on a fresh leaf copy of logits; returns (loss, d loss / d logits)."""
    leaf = logits.detach().clone().requires_grad_(True)
    loss = fn(leaf, target, weight, **opts)
    loss.backward(grad_output)
    return loss.detach(), leaf.grad


def grad_output_for(reduction, n, device):
    # Non-uniform per-row grad_output for "none" (Liger issue #968), a non-unit scalar for "sum".
    return torch.rand(n, device=device) * 3 if reduction == "none" else torch.tensor(0.7, device=device)


CASES = [  # (n, v, z_loss, label_smoothing)
    (13, 257, 0.0, 0.0),
    (9, 1000, 1e-3, 0.0),
    (11, 333, 0.0, 0.1),
    (6, 64, 2e-3, 0.25),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("reduction", ["sum", "none"])
@pytest.mark.parametrize("n,v,z_loss,smoothing", CASES)
def test_public_against_references(backend_device, dtype, reduction, n, v, z_loss, smoothing):
    _, dev = backend_device
    logits, target, weight = make_rows(n, v, dtype, dev)
    g = grad_output_for(reduction, n, dev)
    opts = dict(reduction=reduction, z_loss=z_loss, label_smoothing=smoothing)
    loss, grad = loss_and_grad(weighted_cross_entropy, logits, target, weight, g, **opts)
    ref_loss, ref_grad = loss_and_grad(weighted_cross_entropy_eager, logits.float(), target, weight, g, **opts)
    tol = TOL[dtype]
    assert loss.dtype == torch.float32 and grad.dtype == dtype
    assert_close_report(loss, ref_loss, **tol, name="loss vs eager")
    assert_close_report(grad, ref_grad, **tol, name="grad vs eager")
    # And against torch's own cross_entropy, autograd included.
    leaf = logits.detach().float().requires_grad_(True)
    rows = torch_formula(leaf, target, weight, z_loss=z_loss, label_smoothing=smoothing)
    (rows.sum() if reduction == "sum" else rows).backward(g)
    assert_close_report(loss, rows.sum() if reduction == "sum" else rows, **tol, name="loss vs F.ce")
    assert_close_report(grad, leaf.grad, **tol, name="grad vs F.ce")
    # Ignored and zero-weight rows: exactly zero loss and gradient.
    skipped = (target == -100) | (weight == 0)
    if reduction == "none":
        assert torch.all(loss[skipped] == 0)
    assert torch.all(grad[skipped] == 0)


@pytest.mark.parametrize("inplace", [False, True])
def test_inplace_option(backend_device, inplace):
    _, dev = backend_device
    logits, target, weight = make_rows(8, 100, torch.float32, dev)
    leaf = logits.clone().requires_grad_(True)
    work = leaf * 1.0  # a non-leaf whose producer (mul by a constant) saves nothing of its output
    loss = weighted_cross_entropy(work, target, weight, inplace=inplace)
    kept = torch.equal(work.detach(), logits)
    assert kept is (not inplace), "inplace=False must leave the logits untouched"
    loss.backward()
    _, ref_grad = loss_and_grad(weighted_cross_entropy_eager, logits, target, weight, None)
    assert_close_report(leaf.grad, ref_grad, **TOL[torch.float32], name="grad")


@pytest.mark.parametrize("inplace", [False, True])
def test_strided_logits(backend_device, inplace):
    """Rows with a gap (a slice of a wider buffer) and transposed storage (stride(1) != 1)."""
    _, dev = backend_device
    logits, target, weight = make_rows(7, 90, torch.float32, dev)
    _, ref_grad = loss_and_grad(weighted_cross_entropy_eager, logits, target, weight, None)
    wide = torch.cat([logits, torch.randn(7, 13, device=dev)], dim=1)
    for view in (wide[:, :90], logits.t().contiguous().t()):
        leaf = view.detach().requires_grad_(True) if not inplace else None
        x = leaf if leaf is not None else view.clone().requires_grad_(True)
        weighted_cross_entropy(x, target, weight, inplace=inplace).backward()
        assert_close_report(x.grad, ref_grad, **TOL[torch.float32], name=f"grad strides {view.stride()}")


@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_inplace_gradient_is_the_logits_storage(backend_device, reduction):
    """With inplace, the leaf's .grad is the overwritten logits buffer itself, not a copy of it (autograd
    copies a returned gradient that is the leaf tensor: 4.7 GB at 16k x 151936 bf16, measured on an H200)."""
    _, dev = backend_device
    logits, target, weight = make_rows(6, 70, torch.float32, dev)
    leaf = logits.clone().requires_grad_(True)
    loss = weighted_cross_entropy(leaf, target, weight, inplace=True, reduction=reduction)
    loss.backward(None if reduction == "sum" else torch.rand(6, device=dev))
    assert leaf.grad.data_ptr() == leaf.data_ptr(), "the gradient was copied out of the logits buffer"


def test_inplace_refuses_to_corrupt_saved_logits(backend_device):
    _, dev = backend_device
    logits, target, weight = make_rows(4, 50, torch.float32, dev)
    leaf = logits.clone().requires_grad_(True)
    work = torch.exp(leaf)  # exp saves its OUTPUT for backward: overwriting it must not go unnoticed
    loss = weighted_cross_entropy(work, target, weight, inplace=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


@pytest.mark.slow  # ~7 s in the interpreter on a shared CPU
def test_odd_shape_3x423_rows_vocab_1000(backend_device):
    """The issue's odd shape: 3 x 423 rows, vocab 1000 (not a power of two), fp32, sum."""
    _, dev = backend_device
    logits, target, weight = make_rows(3 * 423, 1000, torch.float32, dev, ignore_every=7)
    loss, grad = loss_and_grad(weighted_cross_entropy, logits, target, weight, None, z_loss=1e-4)
    ref_loss, ref_grad = loss_and_grad(weighted_cross_entropy_eager, logits, target, weight, None,
                                       z_loss=1e-4)
    assert_close_report(loss, ref_loss, rtol=1e-5, atol=1e-3, name="loss")  # a sum of 1269 rows
    assert_close_report(grad, ref_grad, **TOL[torch.float32], name="grad")


def test_custom_ignore_index_and_all_ignored(backend_device):
    _, dev = backend_device
    logits, target, weight = make_rows(10, 40, torch.float32, dev, ignore_every=0)
    target[::2] = 3  # class 3 doubles as the ignore value, as torch allows
    loss, grad = loss_and_grad(weighted_cross_entropy, logits, target, weight, None, ignore_index=3)
    ref_loss, ref_grad = loss_and_grad(weighted_cross_entropy_eager, logits, target, weight, None,
                                       ignore_index=3)
    assert_close_report(loss, ref_loss, **TOL[torch.float32], name="loss")
    assert_close_report(grad, ref_grad, **TOL[torch.float32], name="grad")
    target[:] = -100
    loss, grad = loss_and_grad(weighted_cross_entropy, logits, target, weight, None)
    assert float(loss) == 0.0 and torch.all(grad == 0)


def test_backward_twice_raises_and_no_grad_forward(backend_device):
    _, dev = backend_device
    logits, target, weight = make_rows(5, 30, torch.float32, dev)
    leaf = logits.clone().requires_grad_(True)
    loss = weighted_cross_entropy(leaf, target, weight)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="once per forward"):
        loss.backward()
    with torch.no_grad():
        value = weighted_cross_entropy(logits, target, weight)
    assert_close_report(value, weighted_cross_entropy_eager(logits, target, weight),
                        **TOL[torch.float32], name="no-grad loss")


def test_bad_inputs_name_the_problem(backend_device):
    _, dev = backend_device
    logits, target, weight = make_rows(6, 20, torch.float32, dev, ignore_every=0)
    target[4] = 20
    with pytest.raises(ValueError, match=r"target\[4\] = 20 is outside \[0, 20\)"):
        weighted_cross_entropy(logits, target, weight)
    with pytest.raises(ValueError, match="weight must have shape"):
        weighted_cross_entropy(logits, target.clamp(0, 19), weight[:3])
    with pytest.raises(TypeError, match="target must be an integer"):
        weighted_cross_entropy(logits, target.float(), weight)
    with pytest.raises(ValueError, match="reduction"):
        weighted_cross_entropy(logits, target.clamp(0, 19), weight, reduction="mean")
    with pytest.raises(ValueError, match="logits must be 2-D"):
        weighted_cross_entropy(logits[0], target[:1], weight[:1])


# ---- host level: the row functions themselves, with NaN-poisoned output buffers ----

def _row_functions(device):
    from vqa_kernels.cross_entropy import _backward, _forward

    return [("triton", _forward, _backward), ("torch", ce_rows_torch, scale_rows_torch)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("block_v", [None, 128])  # 128 < V: the multi-block online-softmax loop
@pytest.mark.parametrize("inplace", [False, True])
def test_row_functions_write_every_element(interpret, dtype, block_v, inplace):
    dev = interpret
    n, v = 9, 1000
    for name, forward, backward in _row_functions(dev):
        logits, target, weight = make_rows(n, v, dtype, dev)
        ref_loss, ref_grad = loss_and_grad(weighted_cross_entropy_eager, logits.float(), target,
                                           weight, torch.ones(n, device=dev), reduction="none",
                                           z_loss=1e-3, label_smoothing=0.05)
        work = logits.clone()
        grad = work if inplace else poisoned((n, v), dtype, dev)
        out = (poisoned((n,), torch.float32, dev), poisoned((n,), torch.float32, dev))
        loss, lse = forward(work, target, weight, ignore_index=-100, label_smoothing=0.05,
                            z_loss=1e-3, grad=grad, block_v=block_v, out=out)
        tol = TOL[dtype]
        assert_close_report(loss, ref_loss, **tol, name=f"{name} loss")
        assert_close_report(grad, ref_grad, **tol, name=f"{name} grad")
        active = (target != -100) & (weight != 0)
        ref_lse = torch.where(active, torch.logsumexp(logits.float(), dim=1), 0.0)
        assert_close_report(lse, ref_lse, **tol, name=f"{name} lse")
        # Backward scaling, per row and scalar, into poisoned buffers.
        for scale in (torch.rand(n, device=dev), torch.tensor(0.3, device=dev)):
            scaled = backward(grad, scale, out=poisoned((n, v), dtype, dev))
            want = grad.float() * (scale.unsqueeze(1) if scale.dim() else scale)
            assert_close_report(scaled, want.to(dtype), **tol, name=f"{name} scaled")
