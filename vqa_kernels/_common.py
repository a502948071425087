"""Options, input checks and the backend table shared by the Triton and the torch paths.

No triton import here: the torch path must run where triton is missing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
REDUCTIONS = ("sum", "none")
# Budget for one chunk of logits in the fused linear CE (the O(chunk x V) extra memory).
CHUNK_LOGITS_BYTES = 512 * 2**20


@dataclass(frozen=True)
class CEOptions:
    """Keyword options of a weighted cross-entropy call.

    Attributes:
        ignore_index: target value whose rows contribute nothing (loss 0, gradient 0).
        reduction: "sum" (0-dim loss = sum_i loss_i) or "none" ([N] per-row losses).
        z_loss: coefficient z of the auxiliary z * logsumexp(x_i)**2 per row, weighted like CE.
        label_smoothing: eps of torch's F.cross_entropy(label_smoothing=eps).
        inplace: write the gradient into the logits buffer (destroys the logits values).
        block_v: vocab block of the Triton kernel (None: automatic); tests and tuning only.
    """

    ignore_index: int = -100
    reduction: str = "sum"
    z_loss: float = 0.0
    label_smoothing: float = 0.0
    inplace: bool = False
    block_v: int | None = None


@dataclass(frozen=True)
class FLCEOptions:
    """Keyword options of a fused linear weighted cross-entropy call.

    Attributes:
        ignore_index, reduction, z_loss, label_smoothing: as in :class:`CEOptions`.
        chunk_size: token rows per chunk (None: about CHUNK_LOGITS_BYTES of logits per chunk).
        accum_dtype: dtype of the lm_weight gradient accumulator across chunks.  None: fp32
            (+4 V H bytes and a cast to lm_weight's dtype at the end; measured error of the bf16
            weight gradient over 16 chunks 0.28% vs 0.22% for eager).  torch.bfloat16 (lm_weight's
            dtype) saves that memory at the cost of one bf16 rounding of the running sum per chunk,
            as Liger does (0.50%); each chunk's GEMM accumulates in fp32 either way.  The bias
            gradient is always fp32.
    """

    ignore_index: int = -100
    reduction: str = "sum"
    z_loss: float = 0.0
    label_smoothing: float = 0.0
    chunk_size: int | None = None
    accum_dtype: torch.dtype | None = None


@dataclass(frozen=True)
class RowOps:
    """The host functions of one backend of the row-wise weighted CE.

    The autograd Functions of ``vqa_kernels.autograd`` are shared by all backends and call only these
    two; a backend is one instance, chosen once per call by ``vqa_kernels.functional``:
    ``vqa_kernels.cross_entropy.TRITON_ROWS`` (Triton kernels, compiled or interpreted) or
    ``vqa_kernels.reference.TORCH_ROWS`` (chunked PyTorch).

    Attributes:
        name: the backend's name, for messages ("triton", "torch-chunked").
        forward: ``(logits [N, V], target [N] int64, weight [N] fp32, *, ignore_index,
            label_smoothing, z_loss, grad=None, block_v=None, out=None) -> (loss [N] fp32,
            lse [N] fp32)``; writes d loss_i / d logits_i into ``grad`` [N, V] when given (``grad``
            may be ``logits`` itself).
        backward: ``(grad [N, V], scale 0-dim or [N], *, out=None) -> [N, V]``: grad * scale, per
            row when ``scale`` is [N]; ``out`` may be ``grad`` (in place).
    """

    name: str
    forward: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    backward: Callable[..., torch.Tensor]


def check_options(reduction: str, z_loss: float, label_smoothing: float) -> None:
    """Raise ValueError for an unknown reduction or an out-of-range coefficient."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if not (math.isfinite(z_loss) and z_loss >= 0):
        raise ValueError(f"z_loss must be a finite number >= 0, got {z_loss}")
    if not (0.0 <= label_smoothing <= 1.0):
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")


def check_rows(
    n_rows: int, n_classes: int, target: torch.Tensor, weight: torch.Tensor, ignore_index: int, device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate target [N] and weight [N]; return (target int64, weight fp32), both contiguous.

    Raises:
        TypeError / ValueError naming the field and, for a bad target, the first bad row.
    """
    if target.dim() != 1 or target.shape[0] != n_rows:
        raise ValueError(f"target must have shape [{n_rows}], got {tuple(target.shape)}")
    if weight.dim() != 1 or weight.shape[0] != n_rows:
        raise ValueError(f"weight must have shape [{n_rows}], got {tuple(weight.shape)}")
    if target.dtype.is_floating_point or target.dtype == torch.bool or target.is_complex():
        raise TypeError(f"target must be an integer tensor (int64 class ids), got {target.dtype}")
    if not weight.dtype.is_floating_point:
        raise TypeError(f"weight must be a floating tensor, got {weight.dtype}")
    if target.device != device or weight.device != device:
        raise ValueError(f"target ({target.device}) and weight ({weight.device}) must be on {device}")
    target = target.to(torch.int64).contiguous()
    bad = (target != ignore_index) & ((target < 0) | (target >= n_classes))
    if n_rows and bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        raise ValueError(f"target[{row}] = {int(target[row])} is outside [0, {n_classes}) "
                         f"and is not ignore_index ({ignore_index})")
    return target, weight.detach().to(torch.float32).contiguous()


def check_logits(logits: torch.Tensor) -> None:
    """logits must be a 2-D float tensor [N, V] with V >= 1."""
    if logits.dim() != 2:
        raise ValueError(f"logits must be 2-D [N, V], got shape {tuple(logits.shape)}")
    if logits.dtype not in FLOAT_DTYPES:
        raise TypeError(f"logits must be one of {FLOAT_DTYPES}, got {logits.dtype}")
    if logits.shape[1] == 0:
        raise ValueError("logits have 0 classes")


def check_linear(hidden: torch.Tensor, lm_weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """hidden [N, H], lm_weight [V, H], bias [V] or None: same float dtype and device."""
    if hidden.dim() != 2:
        raise ValueError(f"hidden must be 2-D [N, H], got shape {tuple(hidden.shape)}")
    if lm_weight.dim() != 2 or lm_weight.shape[1] != hidden.shape[1]:
        raise ValueError(f"lm_weight must be [V, {hidden.shape[1]}], got {tuple(lm_weight.shape)}")
    if hidden.dtype not in FLOAT_DTYPES or lm_weight.dtype != hidden.dtype:
        raise TypeError(f"hidden ({hidden.dtype}) and lm_weight ({lm_weight.dtype}) must share one of "
                        f"{FLOAT_DTYPES}")
    if lm_weight.device != hidden.device:
        raise ValueError(f"hidden ({hidden.device}) and lm_weight ({lm_weight.device}) differ in device")
    if bias is not None and (bias.shape != (lm_weight.shape[0],) or bias.dtype != hidden.dtype
                             or bias.device != hidden.device):
        raise ValueError(f"bias must be [{lm_weight.shape[0]}] {hidden.dtype} on {hidden.device}, "
                         f"got {tuple(bias.shape)} {bias.dtype} on {bias.device}")


def default_chunk_size(n_rows: int, n_classes: int, elem_size: int) -> int:
    """Rows per chunk: the largest power of two whose logits fit CHUNK_LOGITS_BYTES (16..n_rows)."""
    rows = max(16, CHUNK_LOGITS_BYTES // max(1, n_classes * elem_size))
    rows = 1 << (rows.bit_length() - 1)
    return max(1, min(rows, n_rows))
