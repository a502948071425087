"""Fused linear + weighted cross-entropy: logits never exist for more than one chunk of tokens.

For hidden [N, H], lm_weight [V, H] (and bias [V]) the loss is the weighted CE of
``vqa_kernels.cross_entropy`` applied to logits = hidden @ lm_weight.T + bias, computed chunk by chunk:

1. rows that are ignored or have weight 0 are dropped up front (one ``nonzero``): in VideoQA
   batches most tokens are prompt and video tokens, so only target tokens pay for the vocab;
2. per chunk of C active rows: logits [C, V] = one GEMM into a private buffer; the row kernel
   (Triton, or its torch twin) writes loss_i and, in place, the logits gradient (weights included);
   then grad_hidden[rows] = G @ lm_weight and grad_lm_weight += G.T @ hidden[rows] (accumulated
   in fp32 by default; lm_weight's dtype on request to save memory: ``FLCEOptions.accum_dtype``), grad_bias +=
   column sums of G (fp32);
3. backward: reduction "sum" scales the three gradients by the scalar grad_output.
   Reduction "none" cannot: grad_lm_weight = sum_i g_i G_i^T h_i mixes rows, so a non-uniform
   per-row grad_output cannot be applied after the fact.  For "none" the forward computes only the
   losses and the backward RECOMPUTES the chunks with weights w_i * g_i (one more logits GEMM per
   chunk, exact for any grad_output).

Peak extra memory: one chunk of logits (C x V, ``CHUNK_LOGITS_BYTES`` by default), a temporary of
at most that size, and the gradients (grad_hidden [N, H], the [V, H] accumulator) - never O(N x V).

The row CE is passed in as ``ce_rows`` (the ``forward`` of a backend's ``RowOps``:
``vqa_kernels.cross_entropy._forward`` or ``vqa_kernels.reference.ce_rows_torch``); this module itself
imports no triton.  The GEMMs are torch's (cuBLAS on GPU), so the Triton part of this op is the row
kernel.  The autograd Function around :func:`_forward` is
``vqa_kernels.autograd.FusedLinearWeightedCrossEntropyFunction``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from vqa_kernels._common import FLCEOptions, default_chunk_size

# Whether torch.addmm(..., out_dtype=fp32) (a bf16/fp16 GEMM accumulating into an fp32 matrix in its
# epilogue; CUDA only) works here; None until first tried.
_ADDMM_OUT_DTYPE: dict[str, bool] = {}


def _accumulate_mm(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor, max_temp_elems: int,
                   fused: bool = True) -> None:
    """acc += a @ b for acc [V, H], a [V, C], b [C, H].

    Same dtypes: one addmm_.  fp32 acc with bf16/fp16 operands on CUDA: one GEMM that reads and writes
    the fp32 accumulator in its epilogue (``torch.addmm(out_dtype=fp32)``), where this torch has it.
    Otherwise the product is made in the operand dtype (fp32 accumulation inside the GEMM) in slices of
    V rows so that the temporary stays under ``max_temp_elems`` elements, and added to the accumulator.
    """
    if acc.dtype == a.dtype:
        acc.addmm_(a, b)
        return
    if fused and acc.is_cuda and _ADDMM_OUT_DTYPE.get(str(a.dtype), True):
        try:
            torch.addmm(acc, a, b, out_dtype=acc.dtype, out=acc)
            _ADDMM_OUT_DTYPE[str(a.dtype)] = True
            return
        except torch.OutOfMemoryError:
            raise
        except (RuntimeError, TypeError):  # an older torch / backend without the dtype overload
            _ADDMM_OUT_DTYPE[str(a.dtype)] = False
    step = max(1, max_temp_elems // max(1, b.shape[1]))
    for v0 in range(0, a.shape[0], step):
        acc[v0:v0 + step] += a[v0:v0 + step] @ b


def _forward(
    hidden: torch.Tensor, lm_weight: torch.Tensor, bias: torch.Tensor | None, target: torch.Tensor,
    weight: torch.Tensor, *, opts: FLCEOptions, ce_rows: Callable, need: tuple[bool, bool, bool],
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Chunked loss and (as ``need`` says) gradients of hidden, lm_weight, bias.

    Args:
        hidden: [N, H] fp32/bf16/fp16; lm_weight: [V, H] same dtype; bias: [V] or None.
        target: [N] int64 (validated); weight: [N] fp32, already multiplied by grad_output when
            called from backward.
        ce_rows: row CE with the signature of ``vqa_kernels.cross_entropy._forward``.
        need: (grad of hidden, grad of lm_weight, grad of bias) wanted.

    Returns:
        loss [N] fp32; grad_hidden [N, H] (hidden dtype) or None; grad_lm_weight [V, H]
        (lm_weight dtype) or None; grad_bias [V] (bias dtype) or None.
    """
    n_rows, _ = hidden.shape
    n_classes = lm_weight.shape[0]
    need_h, need_w, need_b = need[0], need[1], need[2] and bias is not None
    active = ((target != opts.ignore_index) & (weight != 0)).nonzero().squeeze(1)
    loss = torch.zeros(n_rows, dtype=torch.float32, device=hidden.device)
    grad_h = torch.zeros_like(hidden) if need_h else None
    acc_dtype = opts.accum_dtype or torch.float32
    grad_w = torch.zeros(lm_weight.shape, dtype=acc_dtype, device=hidden.device) if need_w else None
    grad_b = torch.zeros(n_classes, dtype=torch.float32, device=hidden.device) if need_b else None
    chunk = opts.chunk_size or default_chunk_size(active.numel(), n_classes, hidden.element_size())
    w_t = lm_weight.t()
    for start in range(0, active.numel(), chunk):
        rows = active[start:start + chunk]
        h = hidden.index_select(0, rows)
        logits = h @ w_t if bias is None else torch.addmm(bias, h, w_t)
        loss_c, _ = ce_rows(logits, target.index_select(0, rows), weight.index_select(0, rows),
                            ignore_index=opts.ignore_index, label_smoothing=opts.label_smoothing,
                            z_loss=opts.z_loss, grad=logits if (need_h or need_w or need_b) else None)
        loss.index_copy_(0, rows, loss_c)
        # From here `logits` holds d loss / d logits of the chunk (weights included).
        if need_h:
            grad_h.index_copy_(0, rows, logits @ lm_weight)
        if need_w:
            _accumulate_mm(grad_w, logits.t(), h, max_temp_elems=logits.numel())
        if need_b:
            grad_b += logits.sum(dim=0, dtype=torch.float32)
    if grad_w is not None and grad_w.dtype != lm_weight.dtype:
        grad_w = grad_w.to(lm_weight.dtype)
    if grad_b is not None and grad_b.dtype != bias.dtype:
        grad_b = grad_b.to(bias.dtype)
    return loss, grad_h, grad_w, grad_b
