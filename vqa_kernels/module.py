"""``LinearWeightedCrossEntropy``: an LM head that owns its weight and computes the fused loss.

Why a module: under DeepSpeed ZeRO-3 a parameter holds its full value only inside the forward of
the module that owns it (outside, ``lm_head.weight`` is an empty [0] shard).  Owning the LM head
weight lets the fused loss read it from inside its own forward, where ZeRO-3 has gathered it.

Two uses of ``forward``:

- ``forward(hidden, target, weight)`` -> loss (fused linear weighted CE, reduction by default
  "sum": sum_i weight_i * CE_i);
- ``forward(hidden)`` (no target) -> logits ``hidden @ weight.T + bias``, so the module can replace a
  transformers model's ``lm_head`` (``model.lm_head = LinearWeightedCrossEntropy.from_linear(
  model.lm_head)``) and ``generate`` still works.  ``.logits(hidden)`` is the same call by name; it
  goes through ``__call__`` so ZeRO-3 hooks gather the weight for it too.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from vqa_kernels.functional import fused_linear_weighted_cross_entropy


class LinearWeightedCrossEntropy(nn.Module):
    """LM head [V, H] (+ optional bias [V]) fused with the weighted cross-entropy.

    Args:
        in_features: H, the hidden size.
        vocab_size: V.
        bias: whether the head has a bias.
        ignore_index, reduction, z_loss, label_smoothing, chunk_size, accum_dtype: defaults of the
            loss (see ``vqa_kernels.fused_linear_weighted_cross_entropy``).
        device, dtype: of the parameters.
    """

    def __init__(
        self, in_features: int, vocab_size: int, bias: bool = False, *, ignore_index: int = -100,
        reduction: str = "sum", z_loss: float = 0.0, label_smoothing: float = 0.0,
        chunk_size: int | None = None, accum_dtype: torch.dtype | None = None,
        device: torch.device | str | None = None, dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.in_features, self.vocab_size = in_features, vocab_size
        self.ignore_index, self.reduction = ignore_index, reduction
        self.z_loss, self.label_smoothing = z_loss, label_smoothing
        self.chunk_size, self.accum_dtype = chunk_size, accum_dtype
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(vocab_size, in_features, **factory))
        self.bias = nn.Parameter(torch.empty(vocab_size, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """nn.Linear's initialisation (kaiming uniform weight, uniform bias)."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.in_features) if self.in_features else 0.0
            nn.init.uniform_(self.bias, -bound, bound)

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, share: bool = True, **options) -> LinearWeightedCrossEntropy:
        """Build the module from an existing ``nn.Linear`` LM head.

        Args:
            linear: the head, weight [V, H] (and bias [V] or None).
            share: True -> the new module uses the SAME Parameter objects (tied embeddings and
                optimizer state stay tied; works on a ZeRO-3-partitioned head too, sized from
                ``in_features`` / ``out_features``); False -> copies of the values.
            options: loss defaults (ignore_index, reduction, z_loss, ...).
        """
        # in/out_features, not weight.shape: under ZeRO-3 (zero.Init) the weight is an empty shard.
        h, v = getattr(linear, "in_features", None), getattr(linear, "out_features", None)
        if h is None or v is None:
            v, h = linear.weight.shape
        partitioned = linear.weight.shape != (v, h)
        if partitioned and not share:
            raise ValueError("from_linear(share=False) cannot copy a partitioned (ZeRO-3) weight; "
                             "use share=True or gather it first")
        with torch.device("meta"):  # no throw-away allocation of a [V, H] tensor
            mod = cls(h, v, bias=linear.bias is not None, dtype=linear.weight.dtype, **options)
        if share:
            mod.weight = linear.weight
            mod.bias = linear.bias
        else:
            mod.weight = nn.Parameter(linear.weight.detach().clone(),
                                      requires_grad=linear.weight.requires_grad)
            if linear.bias is not None:
                mod.bias = nn.Parameter(linear.bias.detach().clone(),
                                        requires_grad=linear.bias.requires_grad)
        return mod

    def forward(
        self, hidden: torch.Tensor, target: torch.Tensor | None = None,
        weight: torch.Tensor | None = None, ignore_index: int | None = None,
    ) -> torch.Tensor:
        """Loss when ``target`` is given, else logits.

        Args:
            hidden: [..., H] (leading dims are flattened for the loss).
            target: [...] int64 matching hidden's leading dims, or None for logits.
            weight: [...] float per-token weights; None means 1 for every token.
            ignore_index: overrides the module default.

        Returns:
            loss: 0-dim fp32 (reduction "sum") or [N] fp32 ("none"); or logits [..., V] in
            hidden's dtype when ``target`` is None.
        """
        if target is None:
            return nn.functional.linear(hidden, self.weight, self.bias)
        if target.shape != hidden.shape[:-1]:
            raise ValueError(f"target shape {tuple(target.shape)} does not match hidden's leading "
                             f"dims {tuple(hidden.shape[:-1])}")
        hidden2 = hidden.reshape(-1, hidden.shape[-1])
        target1 = target.reshape(-1)
        if weight is None:
            weight1 = torch.ones(target1.shape, dtype=torch.float32, device=target1.device)
        elif weight.shape != target.shape:
            raise ValueError(f"weight shape {tuple(weight.shape)} != target shape {tuple(target.shape)}")
        else:
            weight1 = weight.reshape(-1)
        return fused_linear_weighted_cross_entropy(
            hidden2, self.weight, target1, weight1, self.bias,
            ignore_index=self.ignore_index if ignore_index is None else ignore_index,
            reduction=self.reduction, z_loss=self.z_loss, label_smoothing=self.label_smoothing,
            chunk_size=self.chunk_size, accum_dtype=self.accum_dtype)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """logits [..., V] = hidden [..., H] @ weight.T + bias (through ``__call__``, so hooks run)."""
        return self(hidden)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, vocab_size={self.vocab_size}, "
                f"bias={self.bias is not None}, reduction={self.reduction!r}, z_loss={self.z_loss}, "
                f"label_smoothing={self.label_smoothing}")
