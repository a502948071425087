"""The autograd Functions of the weighted CE ops, one per op, shared by every backend.

A backend is a :class:`vqa_kernels._common.RowOps`: the host functions that compute the row-wise
weighted CE (and its gradient) and scale a stored gradient.  ``vqa_kernels.functional`` chooses it once
per call (``vqa_kernels.cross_entropy.TRITON_ROWS`` or ``vqa_kernels.reference.TORCH_ROWS``) and passes it
to ``apply``; the Functions below never branch on the backend.

- :class:`WeightedCrossEntropyFunction`: logits [N, V] -> loss; gradient made in forward, scaled
  in backward.
- :class:`FusedLinearWeightedCrossEntropyFunction`: hidden [N, H] and the LM head -> loss, through
  the chunk driver of ``vqa_kernels.fused_linear_cross_entropy`` (never O(N x V) memory).

This module imports no triton.
"""

from __future__ import annotations

import torch

from vqa_kernels import fused_linear_cross_entropy as flce
from vqa_kernels._common import CEOptions, FLCEOptions, RowOps


class WeightedCrossEntropyFunction(torch.autograd.Function):
    """Autograd for the weighted CE: gradient made in forward, scaled in backward.

    ``apply(logits [N, V], target [N] int64, weight [N] fp32, opts: CEOptions, ops: RowOps)``
    returns a 0-dim fp32 loss (reduction "sum") or [N] fp32 (reduction "none").  ``weight`` is a
    constant: no gradient flows to it.  The gradient buffer is private (or the logits, with
    ``inplace``), so backward scales it in place and may run only once per forward (a retained
    graph raises).
    """

    @staticmethod
    def forward(ctx, logits, target, weight, opts: CEOptions, ops: RowOps):
        grad = None
        if ctx.needs_input_grad[0]:
            if opts.inplace and logits.stride(1) == 1:  # (columns must be contiguous to write rows)
                # The logits are overwritten: bump their version so that autograd raises if anything
                # else saved them for its own backward (instead of silently using gradients).
                torch.autograd.graph.increment_version(logits)
                # A detached alias, not the input itself: autograd copies a gradient that *is* the leaf
                # before storing it in .grad (measured on an H200: a 4.7 GB copy, 2.4 ms at 16k x 151936
                # bf16), while an alias it can steal.
                grad = logits.detach()
            else:
                grad = torch.empty_like(logits, memory_format=torch.contiguous_format)
        loss, _ = ops.forward(logits, target, weight, ignore_index=opts.ignore_index,
                              label_smoothing=opts.label_smoothing, z_loss=opts.z_loss,
                              grad=grad, block_v=opts.block_v)
        ctx.save_for_backward(grad)
        ctx.ops, ctx.used = ops, False
        return loss.sum() if opts.reduction == "sum" else loss

    @staticmethod
    def backward(ctx, grad_output):
        if ctx.used:
            raise RuntimeError("weighted_cross_entropy: backward can run once per forward (its "
                               "gradient buffer is scaled in place); recompute the loss instead")
        ctx.used = True
        (grad,) = ctx.saved_tensors
        if grad_output.dim() == 0 and float(grad_output) == 1.0:
            return grad, None, None, None, None  # loss.backward() on the summed loss: nothing to scale
        return ctx.ops.backward(grad, grad_output, out=grad), None, None, None, None


class FusedLinearWeightedCrossEntropyFunction(torch.autograd.Function):
    """Autograd for the chunked fused linear weighted CE.

    ``apply(hidden [N, H], lm_weight [V, H], bias [V] | None, target [N] int64, weight [N] fp32,
    opts: FLCEOptions, ops: RowOps)`` returns a 0-dim fp32 loss ("sum") or [N] fp32 ("none").
    ``weight`` is a constant (no gradient).  With reduction "sum" the gradients are made in forward
    and backward scales them in place, so backward may run once per forward.  With "none" backward
    recomputes the chunks with weights w_i * grad_output_i (see ``vqa_kernels.fused_linear_cross_entropy``).
    """

    @staticmethod
    def forward(ctx, hidden, lm_weight, bias, target, weight, opts: FLCEOptions, ops: RowOps):
        need = tuple(ctx.needs_input_grad[:3])
        ctx.opts, ctx.ops, ctx.need, ctx.used = opts, ops, need, False
        if opts.reduction == "none":
            loss, _, _, _ = flce._forward(hidden, lm_weight, bias, target, weight, opts=opts,
                                          ce_rows=ops.forward, need=(False, False, False))
            ctx.save_for_backward(hidden, lm_weight, bias, target, weight)
            return loss
        loss, grad_h, grad_w, grad_b = flce._forward(hidden, lm_weight, bias, target, weight,
                                                     opts=opts, ce_rows=ops.forward, need=need)
        ctx.save_for_backward(grad_h, grad_w, grad_b)
        return loss.sum()

    @staticmethod
    def backward(ctx, grad_output):
        if ctx.used:
            raise RuntimeError("fused_linear_weighted_cross_entropy: backward can run once per "
                               "forward; recompute the loss instead of retaining the graph")
        ctx.used = True
        if ctx.opts.reduction == "none":
            hidden, lm_weight, bias, target, weight = ctx.saved_tensors
            scaled = weight * grad_output.to(torch.float32)
            _, grad_h, grad_w, grad_b = flce._forward(
                hidden, lm_weight, bias, target, scaled, opts=ctx.opts, ce_rows=ctx.ops.forward,
                need=ctx.need)
        else:
            grad_h, grad_w, grad_b = ctx.saved_tensors
            scale = float(grad_output)
            if scale != 1.0:  # e.g. DeepSpeed divides the loss by the gradient accumulation steps
                for g in (grad_h, grad_w, grad_b):
                    if g is not None:
                        g.mul_(scale)
        return grad_h, grad_w, grad_b, None, None, None, None
