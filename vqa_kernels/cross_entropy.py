"""Weighted cross-entropy in Triton: the kernels and their host launchers (the Triton backend).

Per row i with target y_i (not ``ignore_index``), weight w_i, logits x_i [V], eps = label smoothing,
z = the z-loss coefficient and lse_i = logsumexp(x_i):

    CE_i   = (1 - eps) * (lse_i - x_i[y_i]) + eps * (lse_i - mean_j x_i[j])   # = F.cross_entropy
    loss_i = w_i * (CE_i + z * lse_i ** 2)                                        # 0 when ignored
    dloss_i / dx_i[j] = w_i * ((1 + 2 z lse_i) * softmax(x_i)[j] - eps / V - (1 - eps) [j == y_i])

The forward kernel reads each row with an online softmax (running max and sum, one read) and, when
asked, writes the gradient above during the same launch (a second read of the row; rows up to
MAX_BLOCK_V columns are held in registers and read once).  The grid is one program of 4 warps per row
with 4096-column blocks: measured on an H200 (docs/BENCHMARKS.md, scripts/ce_tune.py), that beat a
persistent grid of one 32-warp program per SM with 32768-column blocks by 1.2x at V = 151936 and spills
no registers.
Backward only scales that gradient by grad_output (a scalar for reduction="sum", one value per row
for reduction="none").  Rows that are ignored or have weight 0 are not read at all: loss 0 and a
zero gradient row.  All arithmetic is fp32 whatever the input dtype; the gradient is stored in the
logits dtype.  Row offsets are int64 so that N * V beyond 2**31 elements is safe.

Layers: ``_weighted_ce_fwd_kernel`` / ``_scale_rows_kernel`` (Triton), ``_forward`` / ``_backward``
(host: checks and launches), bundled as ``TRITON_ROWS`` (a ``RowOps``).  The autograd Functions are
``vqa_kernels.autograd``'s, shared with the torch path (``vqa_kernels.reference.TORCH_ROWS``), which has
the same host signatures.  The public, dispatching entry point is ``vqa_kernels.weighted_cross_entropy``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from vqa_kernels._backend import TRITON, kernel_for
from vqa_kernels._common import RowOps

# Largest block of vocab columns one program holds at once (fp32 values in registers); bigger rows
# are walked in blocks.  Tuned on an H200 (scripts/ce_tune.py, 16384 bf16 rows, 81 configurations per
# vocabulary): 4096 columns, 4 warps, one program per row was the fastest at V = 128256 and 151936 and
# within 6 % of the fastest at V = 32000.
MAX_BLOCK_V = 4096

# Reductions go through tl.reduce with triton's own combine functions instead of tl.max / tl.sum:
# those are @jit functions of triton's standard library, compiled or interpreted according to
# TRITON_INTERPRET when *triton* was imported, so an interpreted kernel calling them breaks when
# something imported triton first (torchcodec does).  tl.reduce is a builtin that the interpreter
# patches, and it recognises these combine functions (a numpy fast path).
_MAX_COMBINE = getattr(tl.standard, "_elementwise_max", None)
_SUM_COMBINE = getattr(tl.standard, "_sum_combine", None)
if _MAX_COMBINE is None or _SUM_COMBINE is None:  # other triton versions: correct, slower interpreter

    @triton.jit
    def _MAX_COMBINE(a, b):
        return tl.maximum(a, b)

    @triton.jit
    def _SUM_COMBINE(a, b):
        return a + b


# One function, no @triton.jit helpers: a helper would keep the mode it was decorated in at import,
# and an interpreted kernel cannot call a compiled helper (see vqa_kernels._backend.kernel_for).
@triton.jit
def _weighted_ce_fwd_kernel(
    x_ptr, x_stride, g_ptr, g_stride, target_ptr, weight_ptr, loss_ptr, lse_ptr,
    n_cols, ignore_index, label_smoothing, z_loss,
    SMOOTHING: tl.constexpr, Z_LOSS: tl.constexpr, WRITE_GRAD: tl.constexpr,
    ONE_BLOCK: tl.constexpr, BLOCK_V: tl.constexpr,
):
    """Loss, lse and (WRITE_GRAD) the gradient of row ``program_id(0)`` (one program per row).

    x: [n_rows, n_cols] fp32/bf16/fp16 (last dim contiguous); g: same shape, may alias x;
    target: [n_rows] int64; weight: [n_rows] fp32; loss, lse: [n_rows] fp32 (outputs).
    ONE_BLOCK: the whole row fits in BLOCK_V columns, so it is read once and kept in registers.
    """
    # int64 row index: row * stride overflows int32 beyond 2**31 elements.
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_V)
    x_row = x_ptr + row * x_stride
    g_row = g_ptr + row * g_stride
    y = tl.load(target_ptr + row)
    w = tl.load(weight_ptr + row).to(tl.float32)
    if (y != ignore_index) & (w != 0.0):
        # Pass 1: online softmax statistics (running max m, running sum d of exp(x - m)).
        if ONE_BLOCK:
            mask = cols < n_cols
            x = tl.load(x_row + cols, mask=mask, other=float("-inf")).to(tl.float32)
            m = tl.reduce(x, 0, _MAX_COMBINE)
            d = tl.reduce(tl.exp(x - m), 0, _SUM_COMBINE)
            x_sum = tl.reduce(tl.where(mask, x, 0.0), 0, _SUM_COMBINE)
        else:
            m = float("-inf")
            d = 0.0
            x_sum = 0.0
            for start in tl.range(0, n_cols, BLOCK_V):
                mask = start + cols < n_cols
                xb = tl.load(x_row + start + cols, mask=mask, other=float("-inf")).to(tl.float32)
                m_new = tl.maximum(m, tl.reduce(xb, 0, _MAX_COMBINE))
                d = d * tl.exp(m - m_new) + tl.reduce(tl.exp(xb - m_new), 0, _SUM_COMBINE)
                m = m_new
                if SMOOTHING:
                    x_sum += tl.reduce(tl.where(mask, xb, 0.0), 0, _SUM_COMBINE)
        lse = m + tl.log(d)
        x_y = tl.load(x_row + y).to(tl.float32)  # before pass 2 may overwrite it (g == x)
        ce = lse - x_y
        if SMOOTHING:
            ce = (1.0 - label_smoothing) * ce + label_smoothing * (lse - x_sum / n_cols)
        if Z_LOSS:
            ce += z_loss * lse * lse
        tl.store(loss_ptr + row, w * ce)
        tl.store(lse_ptr + row, lse)
        if WRITE_GRAD:
            # Pass 2: d loss / d x = w * ((1 + 2 z lse) p - eps / V - (1 - eps) [j == y]).
            p_scale = w
            if Z_LOSS:
                p_scale = w * (1.0 + 2.0 * z_loss * lse)
            floor = w * label_smoothing / n_cols
            hit = w * (1.0 - label_smoothing)
            if ONE_BLOCK:
                grad = p_scale * tl.exp(x - lse) - floor - tl.where(cols == y, hit, 0.0)
                tl.store(g_row + cols, grad.to(g_ptr.dtype.element_ty), mask=mask)
            else:
                for start in tl.range(0, n_cols, BLOCK_V):
                    mask = start + cols < n_cols
                    xb = tl.load(x_row + start + cols, mask=mask, other=0.0).to(tl.float32)
                    grad = p_scale * tl.exp(xb - lse) - floor
                    grad -= tl.where(start + cols == y, hit, 0.0)
                    tl.store(g_row + start + cols, grad.to(g_ptr.dtype.element_ty), mask=mask)
    else:
        tl.store(loss_ptr + row, 0.0)
        tl.store(lse_ptr + row, 0.0)
        if WRITE_GRAD:
            for start in tl.range(0, n_cols, BLOCK_V):
                zeros = tl.full([BLOCK_V], 0.0, g_ptr.dtype.element_ty)
                tl.store(g_row + start + cols, zeros, mask=start + cols < n_cols)


@triton.jit
def _scale_rows_kernel(
    g_ptr, g_stride, out_ptr, out_stride, scale_ptr, n_cols,
    PER_ROW: tl.constexpr, BLOCK_V: tl.constexpr,
):
    """out[r, c] = g[r, c] * scale[r] (PER_ROW) or * scale[0]; grid (rows, column blocks).

    g, out: [n_rows, n_cols] (may alias); scale: [n_rows] or [1] fp32.  Arithmetic in fp32.
    """
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)
    mask = cols < n_cols
    if PER_ROW:
        s = tl.load(scale_ptr + row)
    else:
        s = tl.load(scale_ptr)
    g = tl.load(g_ptr + row * g_stride + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * out_stride + cols, (g * s).to(out_ptr.dtype.element_ty), mask=mask)


def _launch_options(n_cols: int, device: torch.device, block_v: int | None,
                    num_warps: int | None = None) -> tuple[int, int, bool]:
    """(BLOCK_V, num_warps, ONE_BLOCK) for a row length; ``block_v`` / ``num_warps`` override (tests, tuning)."""
    full = triton.next_power_of_2(n_cols)
    block = min(full, MAX_BLOCK_V) if block_v is None else block_v
    if block & (block - 1):
        raise ValueError(f"block_v must be a power of two, got {block}")
    if num_warps is None:  # the automatic blocks are <= MAX_BLOCK_V: 4 warps; larger ones are overrides
        num_warps = 4 if block <= 4096 else 16 if block <= 16384 else 32
    return block, num_warps, block >= n_cols


def _forward(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor,
    *,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    grad: torch.Tensor | None = None,
    block_v: int | None = None,
    num_warps: int | None = None,
    out: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row weighted loss and lse; writes the gradient into ``grad`` when given.

    Args:
        logits: [N, V] fp32/bf16/fp16, last dim contiguous.
        target: [N] int64 class ids (or ``ignore_index``); validated by the caller.
        weight: [N] float per-row weights.
        grad: None (no gradient) or [N, V] with last dim contiguous, any float dtype; may be
            ``logits`` itself (the gradient then overwrites the logits).
        block_v, num_warps: launch overrides for tests and tuning (scripts/ce_tune.py).
        out: optional (loss, lse) [N] fp32 buffers to write into (every element is written).

    Returns:
        (loss [N] fp32 = w_i * (CE_i + z * lse_i**2), 0 for skipped rows; lse [N] fp32, 0 there).
    """
    n_rows, n_cols = logits.shape
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    if grad is not None and (grad.shape != logits.shape or grad.stride(1) != 1):
        raise ValueError(f"grad buffer must be [N, V] = {tuple(logits.shape)} with contiguous rows")
    target = target.contiguous()
    weight = weight.to(torch.float32).contiguous()
    if out is None:
        out = (torch.empty(n_rows, dtype=torch.float32, device=logits.device),
               torch.empty(n_rows, dtype=torch.float32, device=logits.device))
    loss, lse = out
    if n_rows == 0:
        return loss, lse
    block, num_warps, one_block = _launch_options(n_cols, logits.device, block_v, num_warps)
    kernel = kernel_for(_weighted_ce_fwd_kernel, interpret=logits.device.type != "cuda")
    g = grad if grad is not None else logits  # unused pointer when WRITE_GRAD is off
    kernel[(n_rows,)](  # one program per row
        logits, logits.stride(0), g, g.stride(0), target, weight, loss, lse,
        n_cols, ignore_index, float(label_smoothing), float(z_loss),
        SMOOTHING=label_smoothing > 0, Z_LOSS=z_loss > 0, WRITE_GRAD=grad is not None,
        ONE_BLOCK=one_block, BLOCK_V=block, num_warps=num_warps,
    )
    return loss, lse


def _backward(grad: torch.Tensor, scale: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """Scale the stored gradient rows: ``out = grad * scale`` (per row when scale is [N]).

    Args:
        grad: [N, V] gradient written by :func:`_forward`, last dim contiguous.
        scale: 0-dim (reduction "sum") or [N] (reduction "none") grad_output, any float dtype.
        out: destination [N, V] (may be ``grad`` for in place); a new tensor when None.

    Returns:
        out: [N, V] in grad's dtype.
    """
    n_rows, n_cols = grad.shape
    per_row = scale.dim() == 1
    if per_row and scale.shape[0] != n_rows:
        raise ValueError(f"grad_output has {scale.shape[0]} rows, the loss has {n_rows}")
    scale = scale.to(device=grad.device, dtype=torch.float32).reshape(-1).contiguous()
    out = torch.empty_like(grad) if out is None else out
    if n_rows == 0:
        return out
    block = min(triton.next_power_of_2(n_cols), 4096)
    kernel = kernel_for(_scale_rows_kernel, interpret=grad.device.type != "cuda")
    kernel[(n_rows, triton.cdiv(n_cols, block))](
        grad, grad.stride(0), out, out.stride(0), scale, n_cols,
        PER_ROW=per_row, BLOCK_V=block, num_warps=8 if block >= 2048 else 4,
    )
    return out


# This backend for the autograd Functions of vqa_kernels.autograd (shared with the torch path).
TRITON_ROWS = RowOps(name=TRITON, forward=_forward, backward=_backward)
