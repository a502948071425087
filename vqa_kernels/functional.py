"""Public functions: check the inputs, pick the backend once (vqa_kernels._backend), run the op.

Each op has one autograd Function (``vqa_kernels.autograd``) for every backend; the backend is the
``RowOps`` it is given: ``TRITON_ROWS`` (``vqa_kernels.cross_entropy``) or ``TORCH_ROWS``
(``vqa_kernels.reference``).  The Triton module is imported only when a call needs it, so CPU training
without triton (or on a machine whose triton cannot compile) runs the chunked torch path.
"""

from __future__ import annotations

import torch

from vqa_kernels import _backend
from vqa_kernels._common import (
    CEOptions,
    FLCEOptions,
    RowOps,
    check_linear,
    check_logits,
    check_options,
    check_rows,
)
from vqa_kernels.autograd import FusedLinearWeightedCrossEntropyFunction, WeightedCrossEntropyFunction
from vqa_kernels.reference import TORCH_ROWS


def _row_ops(device: torch.device) -> RowOps:
    """The backend for tensors on ``device`` now: ``TORCH_ROWS`` or ``TRITON_ROWS`` (see ``_backend``)."""
    if _backend.backend(device) == _backend.TORCH_CHUNKED:
        return TORCH_ROWS
    from vqa_kernels.cross_entropy import TRITON_ROWS  # imports triton: only once a call needs it

    return TRITON_ROWS


def weighted_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor,
    *,
    ignore_index: int = -100,
    reduction: str = "sum",
    z_loss: float = 0.0,
    label_smoothing: float = 0.0,
    inplace: bool = False,
) -> torch.Tensor:
    """Weighted cross-entropy with the gradient made in the forward pass.

    loss_i = weight_i * (CE_i + z_loss * logsumexp(logits_i) ** 2), where CE_i is
    ``F.cross_entropy(logits_i, target_i, label_smoothing=label_smoothing)``; rows whose target is
    ``ignore_index`` (or whose weight is 0) give 0 and a zero gradient.

    Args:
        logits: [N, V] fp32, bf16 or fp16 (any V; N up to millions).
        target: [N] int64 class ids in [0, V) or ``ignore_index``.
        weight: [N] float per-row weights (a constant: no gradient flows to it).
        ignore_index: target value of rows to skip.
        reduction: "sum" -> 0-dim fp32 sum_i loss_i; "none" -> [N] fp32 loss_i.
        z_loss: coefficient of the z-loss (PaLM), >= 0.
        label_smoothing: in [0, 1], as in torch.
        inplace: write the gradient into ``logits`` (saves N x V memory; the logits values are
            lost, and autograd raises if another op saved them for its backward).  Default False:
            a private gradient buffer.  Only relevant when ``logits`` requires grad; logits whose
            columns are not contiguous (stride(1) != 1) always get a private buffer.

    Returns:
        The loss, fp32 (0-dim or [N]).  Its backward scales the stored gradient by grad_output
        (per row for reduction "none") and may run once per forward.

    Raises:
        ValueError / TypeError: bad shapes, dtypes, devices, options, or a target out of range
            (the message names the first bad row).
    """
    check_logits(logits)
    check_options(reduction, z_loss, label_smoothing)
    target, weight = check_rows(logits.shape[0], logits.shape[1], target, weight, ignore_index,
                                logits.device)
    opts = CEOptions(ignore_index=ignore_index, reduction=reduction, z_loss=float(z_loss),
                     label_smoothing=float(label_smoothing), inplace=inplace)
    return WeightedCrossEntropyFunction.apply(logits, target, weight, opts, _row_ops(logits.device))


def fused_linear_weighted_cross_entropy(
    hidden: torch.Tensor,
    lm_weight: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    ignore_index: int = -100,
    reduction: str = "sum",
    z_loss: float = 0.0,
    label_smoothing: float = 0.0,
    chunk_size: int | None = None,
    accum_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Weighted cross-entropy of logits = hidden @ lm_weight.T + bias, computed in token chunks.

    Same loss as :func:`weighted_cross_entropy` on those logits; gradients for hidden, lm_weight
    and bias.  Peak extra memory is one chunk of logits (chunk_size x V) plus the gradients.
    Reduction "none" recomputes the chunks in backward (exact for any per-row grad_output; see
    ``vqa_kernels.fused_linear_cross_entropy``).

    Args:
        hidden: [N, H] fp32/bf16/fp16.
        lm_weight: [V, H], same dtype and device.
        target: [N] int64 in [0, V) or ``ignore_index``.
        weight: [N] float per-row weights (constant).
        bias: [V] or None.
        ignore_index, reduction, z_loss, label_smoothing: as in :func:`weighted_cross_entropy`.
        chunk_size: active rows per chunk; None picks about 512 MiB of logits per chunk.
        accum_dtype: accumulator dtype of the lm_weight gradient across chunks; None: fp32
            (+4 V H bytes); lm_weight's dtype saves that at one rounding per chunk for bf16.

    Returns:
        The loss, fp32: 0-dim ("sum") or [N] ("none").
    """
    check_linear(hidden, lm_weight, bias)
    check_options(reduction, z_loss, label_smoothing)
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    target, weight = check_rows(hidden.shape[0], lm_weight.shape[0], target, weight, ignore_index,
                                hidden.device)
    opts = FLCEOptions(ignore_index=ignore_index, reduction=reduction, z_loss=float(z_loss),
                       label_smoothing=float(label_smoothing), chunk_size=chunk_size,
                       accum_dtype=accum_dtype)
    return FusedLinearWeightedCrossEntropyFunction.apply(hidden, lm_weight, bias, target, weight,
                                                         opts, _row_ops(hidden.device))
