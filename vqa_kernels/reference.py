"""Pure-PyTorch references for the weighted cross-entropy kernels.

Two kinds, with the loss defined in ``vqa_kernels.cross_entropy`` (weight_i * (CE_i + z * lse_i**2),
label smoothing as in F.cross_entropy, 0 for rows with ``ignore_index``):

- eager (``*_eager``): plain autograd on fp32 logits; the fused linear one materializes the whole
  [N, V] logits (and their fp32 copy), as a HuggingFace causal-LM loss does.  The tests' oracle and
  the benchmark's "torch eager" provider.
- chunked (``*_chunked``): the same math, gradient made in the forward in blocks of rows (fp32 per
  block), backward only scales it; the fused linear one never holds more than one chunk of logits.
  This is what the public functions run on CPU without ``TRITON_INTERPRET=1``.

``ce_rows_torch`` / ``scale_rows_torch`` have the signatures of the Triton host functions
``vqa_kernels.cross_entropy._forward`` / ``_backward``; bundled as ``TORCH_ROWS`` (a ``RowOps``) they
are the torch backend of the autograd Functions of ``vqa_kernels.autograd``, which both paths share.
"""

from __future__ import annotations

import torch

from vqa_kernels._backend import TORCH_CHUNKED
from vqa_kernels._common import CEOptions, FLCEOptions, RowOps
from vqa_kernels.autograd import FusedLinearWeightedCrossEntropyFunction, WeightedCrossEntropyFunction

# Rows per block of the chunked row CE: bounds its fp32 temporaries to about 64 MiB each.
_BLOCK_ELEMS = 2**24


def weighted_cross_entropy_eager(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, *, ignore_index: int = -100,
    reduction: str = "sum", z_loss: float = 0.0, label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Eager weighted CE on fp32 logits (autograd does the gradient).

    Args:
        logits: [N, V] float; target: [N] int64; weight: [N] float.

    Returns:
        0-dim fp32 (reduction "sum") or [N] fp32 (reduction "none").
    """
    x = logits.float()
    valid = target != ignore_index
    logp = torch.log_softmax(x, dim=-1)
    nll = -logp.gather(1, torch.where(valid, target, 0).unsqueeze(1)).squeeze(1)
    ce = (1.0 - label_smoothing) * nll - label_smoothing * logp.mean(dim=-1)
    if z_loss:
        ce = ce + z_loss * torch.logsumexp(x, dim=-1) ** 2
    loss = torch.where(valid, ce, 0.0) * weight.float()
    return loss.sum() if reduction == "sum" else loss


def fused_linear_weighted_cross_entropy_eager(
    hidden: torch.Tensor, lm_weight: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
    bias: torch.Tensor | None = None, **options,
) -> torch.Tensor:
    """Eager: logits = hidden @ lm_weight.T (+ bias) materialized [N, V], then the eager CE.

    Args:
        hidden: [N, H]; lm_weight: [V, H]; bias: [V] or None (same dtype); target, weight: [N].
        options: keyword options of :func:`weighted_cross_entropy_eager`.
    """
    logits = torch.nn.functional.linear(hidden, lm_weight, bias)  # one rounding, like addmm
    return weighted_cross_entropy_eager(logits, target, weight, **options)


def ce_rows_torch(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, *, ignore_index: int = -100,
    label_smoothing: float = 0.0, z_loss: float = 0.0, grad: torch.Tensor | None = None,
    block_v: int | None = None, out: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Torch twin of ``vqa_kernels.cross_entropy._forward`` (same arguments and results).

    Args:
        logits: [N, V] float; target: [N] int64 (validated); weight: [N] float.
        grad: None, or [N, V] buffer (may be ``logits``) that receives d loss_i / d logits_i.
        block_v: accepted for signature compatibility; unused.
        out: optional (loss, lse) [N] fp32 buffers to write into (every element is written).

    Returns:
        (loss [N] fp32, lse [N] fp32), both 0 for rows that are ignored or have weight 0.
    """
    n_rows, n_cols = logits.shape
    if out is None:
        out = (torch.empty(n_rows, dtype=torch.float32, device=logits.device),
               torch.empty(n_rows, dtype=torch.float32, device=logits.device))
    loss, lse_out = out
    step = max(1, _BLOCK_ELEMS // n_cols)
    for r0 in range(0, n_rows, step):
        r1 = min(n_rows, r0 + step)
        x = logits[r0:r1].float()  # NB: for fp32 logits this is a view of the (maybe grad) buffer
        y, w = target[r0:r1], weight[r0:r1].float()
        active = (y != ignore_index) & (w != 0)
        y_safe = torch.where(active, y, 0).unsqueeze(1)
        lse = torch.logsumexp(x, dim=1)
        ce = lse - x.gather(1, y_safe).squeeze(1)
        if label_smoothing:
            ce = (1.0 - label_smoothing) * ce + label_smoothing * (lse - x.mean(dim=1))
        if z_loss:
            ce = ce + z_loss * lse * lse
        loss[r0:r1] = torch.where(active, w * ce, 0.0)
        lse_out[r0:r1] = torch.where(active, lse, 0.0)
        if grad is None:
            continue
        w = torch.where(active, w, 0.0)
        p_scale = w * (1.0 + 2.0 * z_loss * lse) if z_loss else w
        g = torch.exp(x - lse.unsqueeze(1)).mul_(p_scale.unsqueeze(1))
        if label_smoothing:
            g.sub_((w * (label_smoothing / n_cols)).unsqueeze(1))
        g.scatter_add_(1, y_safe, -(w * (1.0 - label_smoothing)).unsqueeze(1))
        g.masked_fill_(~active.unsqueeze(1), 0.0)  # also clears NaN/inf of skipped rows
        grad[r0:r1].copy_(g)  # x is dead here, so grad may alias logits
    return loss, lse_out


def scale_rows_torch(grad: torch.Tensor, scale: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """Torch twin of ``vqa_kernels.cross_entropy._backward``: out = grad * scale (per row if [N])."""
    out = torch.empty_like(grad) if out is None else out
    scale = scale.to(device=grad.device, dtype=torch.float32)
    per_row = scale.dim() == 1
    if per_row and scale.shape[0] != grad.shape[0]:
        raise ValueError(f"grad_output has {scale.shape[0]} rows, the loss has {grad.shape[0]}")
    step = max(1, _BLOCK_ELEMS // max(1, grad.shape[1]))
    for r0 in range(0, grad.shape[0], step):
        s = scale[r0:r0 + step].unsqueeze(1) if per_row else scale
        out[r0:r0 + step] = grad[r0:r0 + step].float() * s
    return out


# The torch backend for the autograd Functions of vqa_kernels.autograd (shared with the Triton path).
TORCH_ROWS = RowOps(name=TORCH_CHUNKED, forward=ce_rows_torch, backward=scale_rows_torch)


def weighted_cross_entropy_chunked(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, **options
) -> torch.Tensor:
    """Chunked torch weighted CE; ``options`` are the fields of ``CEOptions``. Inputs unchecked."""
    return WeightedCrossEntropyFunction.apply(logits, target, weight, CEOptions(**options), TORCH_ROWS)


def fused_linear_weighted_cross_entropy_chunked(
    hidden: torch.Tensor, lm_weight: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
    bias: torch.Tensor | None = None, **options,
) -> torch.Tensor:
    """Chunked torch fused linear weighted CE: the chunk driver with the torch row CE (TORCH_ROWS).

    ``options`` are the fields of ``FLCEOptions``.  Inputs unchecked (the public function checks).
    """
    return FusedLinearWeightedCrossEntropyFunction.apply(
        hidden, lm_weight, bias, target, weight, FLCEOptions(**options), TORCH_ROWS)
