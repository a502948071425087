"""Ulysses sequence parallel (``parallel.sequence: N``): one sequence's tokens split over N ranks.

The ranks of a sequence group train the SAME micro-batches; each holds 1/N of every sequence's
tokens through the LLM, so the decoder's activations per rank shrink about N-fold. Attention is the
one place that needs the whole sequence: DeepSpeed's Ulysses ``DistributedAttention`` exchanges
heads for tokens with an all-to-all before attention (each rank then holds every token for 1/N of
the heads) and back after it. Everything else in a decoder layer is per token.

How a micro-batch runs (``VideoModel.forward`` with :attr:`VideoModel.sequence_parallel` set):

1. The family builds the embeddings of the whole micro-batch as usual (tower, projector, placeholder
   scatter: every rank of the group runs the tower on every clip, so the tower's activations do not
   shrink).
2. :func:`plan_shard` flattens the rows into one sequence ``[1, N]`` (as flash-attn's varlen layout
   does), pads N to a multiple of the group size, and gives this rank its contiguous slice
   ``[start, end)``, the sequence boundaries over the whole flattened sequence, the
   text positions (restarting per sequence), and the next-token targets and weights of its slice
   (shifted BEFORE slicing, so the last token of a slice still predicts the first of the next).
3. The LLM decoder runs on the slice with ``attn_implementation="ulysses"``
   (:func:`ulysses_attention`): all-to-all, one causal SDPA call per sequence on the whole flattened
   sequence (no token attends across a sequence or row boundary), all-to-all back.
4. The loss head scores the slice's targets (``train.loss.weighted_lm_loss(shifted=True)``).
   Token counts for the loss weights are counted once per sequence group
   (``train.engine.optimizer_step``), so the sum of all ranks' losses is the same global objective as
   without sequence parallel, and DeepSpeed's gradient averaging over all ranks (ZeRO-3 partitions
   over the whole world) is undone by the same ``gas x world_size`` scale.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as tdist
from deepspeed.sequence.layer import DistributedAttention
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from train.loss import IGNORE_INDEX
from train.packing import varlen_kwargs

ULYSSES = "ulysses"
"""attn_implementation name of :func:`ulysses_attention` in transformers' registries."""


@dataclass
class SequenceParallel:
    """This rank's sequence group.

    Attributes:
        group: the torch process group of the ``size`` ranks that share each sequence.
        size: ranks per sequence (``parallel.sequence``).
        rank: this rank's index inside the group (which slice of each sequence it holds).
    """

    group: Any
    size: int
    rank: int

    def __post_init__(self) -> None:
        # [batch, tokens, heads, head_dim]: scatter heads (dim 2), gather tokens (dim 1)
        self.attention = DistributedAttention(_local_attention, self.group, scatter_idx=2, gather_idx=1)

    def check_heads(self, heads: int, kv_heads: int, where: str) -> None:
        """Ulysses splits attention heads over the group: refuse a head count it cannot split."""
        if heads % self.size:
            raise ValueError(f"parallel.sequence={self.size}: {where} has {heads} attention heads, not a multiple "
                             f"of {self.size} (Ulysses gives every rank of a sequence group heads / {self.size})")
        if kv_heads < 1 or heads % kv_heads:
            raise ValueError(f"{where}: {heads} query heads are not a multiple of {kv_heads} key/value heads")


def sequence_groups(world_size: int, size: int, rank: int) -> SequenceParallel:
    """Create the sequence groups (consecutive ranks ``[g*size, (g+1)*size)``) and return this rank's.

    A collective: every rank calls it, with the same arguments but ``rank``. Consecutive ranks share a
    sequence, so a group sits on one node when ``size`` divides the GPUs per node (the all-to-all of
    every layer then stays on NVLink); the data-parallel rank of a process is ``rank // size``.
    """
    if size < 1 or world_size % size:
        raise ValueError(f"parallel.sequence={size} must divide the world size {world_size}")
    mine = None
    for g in range(world_size // size):
        ranks = list(range(g * size, (g + 1) * size))
        group = tdist.new_group(ranks)  # every rank creates every group, in the same order
        if rank in ranks:
            mine = SequenceParallel(group, size, rank - g * size)
    assert mine is not None
    return mine


# ---------------------------------------------------------------- the attention function

def _local_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, bounds: list[int],
                     scaling: float | None, dropout: float) -> torch.Tensor:
    """Causal attention of every sequence of the whole flattened sequence, for this rank's heads.

    Args:
        query: [1, N, H', Dh]; key, value: [1, N, Hkv', Dh] (grouped-query attention: H' a multiple of Hkv').
        bounds: the S + 1 sequence boundaries over N (a list: no device-to-host copy per layer).

    Returns:
        [1, N, H', Dh].
    """
    q, k, v = (t.transpose(1, 2) for t in (query, key, value))  # [1, heads, N, Dh]
    gqa = q.shape[1] != k.shape[1]  # SDPA shares each key/value head with its query group (no repeated copy)
    outs = [torch.nn.functional.scaled_dot_product_attention(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b],
                                                             dropout_p=dropout, is_causal=True, scale=scaling,
                                                             enable_gqa=gqa)
            for a, b in zip(bounds[:-1], bounds[1:])]
    return torch.cat(outs, dim=2).transpose(1, 2).contiguous()


def ulysses_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                      is_causal: bool | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """A transformers attention function: Ulysses over the sequence group in ``kwargs["ulysses"]``.

    With ``ulysses`` (a :class:`SequenceParallel`) and ``ulysses_bounds`` in kwargs (what
    :meth:`ShardPlan.decoder_kwargs` passes to the decoder), query / key / value hold this rank's slice of
    the flattened sequence; ``attention_mask`` is ignored (the boundaries say who sees whom). Without
    them this is transformers' SDPA, so generation and scoring of a model switched to ``ulysses`` run
    unchanged on one process.

    Args:
        query: [1, H, n, Dh]; key, value: [1, Hkv, n, Dh] (n = this rank's tokens).

    Returns:
        (attention output [1, n, H, Dh], None), as transformers' attention functions return.
    """
    sp: SequenceParallel | None = kwargs.get("ulysses")
    if sp is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    heads, kv_heads = query.shape[1], key.shape[1]
    if kv_heads % sp.size:  # fewer key/value heads than ranks (or not a multiple): give every query head its own
        key, value = key.repeat_interleave(heads // kv_heads, 1), value.repeat_interleave(heads // kv_heads, 1)
    q, k, v = (t.transpose(1, 2) for t in (query, key, value))  # [1, n, heads, Dh]: DeepSpeed's batch-first layout
    p = dropout if module.training else 0.0
    out = sp.attention(q, k, v, 0, None, kwargs["ulysses_bounds"], scaling, p)
    return out, None


_SHARDED: contextvars.ContextVar[bool] = contextvars.ContextVar("ulysses_sharded", default=False)


@contextlib.contextmanager
def sharded_forward() -> Iterator[None]:
    """Mark a forward on slices (``VideoModel.forward`` with sequence parallel): the decoder builds no mask."""
    token = _SHARDED.set(True)
    try:
        yield
    finally:
        _SHARDED.reset(token)


def _ulysses_mask(**kwargs: Any) -> torch.Tensor | None:
    """The mask function of ``ulysses``: none inside :func:`sharded_forward` (each rank holds a slice, and
    :func:`ulysses_attention` uses the boundaries over the whole flattened sequence), else SDPA's (padding,
    generation: the model runs as plain SDPA)."""
    return None if _SHARDED.get() else sdpa_mask(**kwargs)


def register_ulysses() -> str:
    """Make ``"ulysses"`` a transformers attn_implementation (attention function and mask function)."""
    AttentionInterface.register(ULYSSES, ulysses_attention)
    AttentionMaskInterface.register(ULYSSES, _ulysses_mask)
    return ULYSSES


# ---------------------------------------------------------------- sharding a micro-batch

def sequence_segments(attention_mask: torch.Tensor, segment_ids: torch.Tensor | None) -> torch.Tensor:
    """Segment ids [R, L] of a micro-batch: packed rows' own, else 1 on a row's tokens and 0 on its padding."""
    return segment_ids if segment_ids is not None else (attention_mask != 0).long()


def sequence_bounds(segments: torch.Tensor, total: int) -> list[int]:
    """Boundaries of the rows [R, L] flattened and padded to ``total`` tokens (the packed rows' flash-attn
    boundaries, ``train.packing.varlen_kwargs``: a sequence starts at every row start and wherever the segment
    id changes), plus the padding to ``total`` as one more sequence."""
    bounds = varlen_kwargs(segments)["cu_seq_lens_q"].tolist()
    return bounds + ([total] if total > bounds[-1] else [])


def text_positions(bounds: list[int], device: torch.device | None = None) -> torch.Tensor:
    """Positions [1, total] of the flattened rows: 0, 1, ... restarting at every sequence (and the padding)."""
    return torch.cat([torch.arange(b - a, device=device) for a, b in zip(bounds[:-1], bounds[1:])]).unsqueeze(0)


@dataclass
class ShardPlan:
    """This rank's slice of a flattened micro-batch (see the module doc, step 2).

    Attributes:
        sp: the sequence group.
        total: tokens of the flattened sequence after padding (a multiple of ``sp.size``).
        start, end: this rank's slice of it.
        bounds: the S + 1 sequence boundaries over ``total`` (every rank has all of them).
        positions: long [1, total] text positions (restarting per sequence).
        labels, weights: [1, end - start] next-token targets (-100 off target) and their loss weights.
    """

    sp: SequenceParallel
    total: int
    start: int
    end: int
    bounds: list[int]
    positions: torch.Tensor
    labels: torch.Tensor
    weights: torch.Tensor | None

    def take(self, x: torch.Tensor, fill: float | int = 0, dim: int = 1) -> torch.Tensor:
        """This rank's slice of a per-token tensor: ``x`` [..., R, L, ...] (rows at ``dim - 1``, tokens at
        ``dim``) or already flat [..., 1, total_unpadded, ...], flattened, padded with ``fill``, sliced."""
        return self.narrow(self.flatten(x, fill, dim), dim)

    def narrow(self, flat: torch.Tensor, dim: int = -1) -> torch.Tensor:
        """This rank's slice ``[start, end)`` of a tensor already flat and padded (``total`` long at ``dim``)."""
        return flat.narrow(dim, self.start, self.end - self.start)

    def flatten(self, x: torch.Tensor, fill: float | int = 0, dim: int = 1) -> torch.Tensor:
        """``x`` with its rows (dim - 1) and tokens (dim) flattened into one padded sequence [.., 1, total, ..]."""
        shape = list(x.shape)
        flat = x.reshape(*shape[:dim - 1], 1, shape[dim - 1] * shape[dim], *shape[dim + 1:])
        missing = self.total - flat.shape[dim]
        if missing:
            pad_shape = list(flat.shape)
            pad_shape[dim] = missing
            flat = torch.cat([flat, torch.full(pad_shape, fill, dtype=flat.dtype, device=flat.device)], dim=dim)
        return flat

    def decoder_kwargs(self) -> dict[str, Any]:
        """Keyword arguments the decoder passes on to :func:`ulysses_attention`."""
        return {"ulysses": self.sp, "ulysses_bounds": self.bounds}


def check_same_batch(sp: SequenceParallel, total: int, device: torch.device) -> None:
    """Raise (on every rank of the group) unless all its ranks hold micro-batches of the same size: ranks that
    read different data would otherwise exchange mismatched slices (gloo aborts, NCCL may hang). ``device``:
    where the group's backend takes tensors (the micro-batch's device: NCCL needs the GPU)."""
    t = torch.tensor([total, -total], dtype=torch.long, device=device)
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX, group=sp.group)
    if int(t[0]) != total or -int(t[1]) != total:
        raise RuntimeError(f"sequence parallel: the ranks of a sequence group hold micro-batches of {-int(t[1])} to "
                           f"{int(t[0])} tokens (this rank {total}); they must read the same data (data-parallel "
                           f"rank = rank // parallel.sequence)")


def plan_shard(sp: SequenceParallel, attention_mask: torch.Tensor, labels: torch.Tensor,
               loss_weight: torch.Tensor | None, segment_ids: torch.Tensor | None = None) -> ShardPlan:
    """Flatten a micro-batch's rows [R, L], pad to a multiple of the group size, and plan this rank's slice.

    The next-token targets are shifted inside each row before flattening (a row's last token has none), so
    every slice scores exactly the targets its own hidden states predict.
    """
    R, L = attention_mask.shape
    total = -(-(R * L) // sp.size) * sp.size
    if sp.group is not None:
        check_same_batch(sp, total, attention_mask.device)
    n = total // sp.size
    start, end = sp.rank * n, (sp.rank + 1) * n
    bounds = sequence_bounds(sequence_segments(attention_mask, segment_ids), total)
    nxt = torch.full_like(labels, IGNORE_INDEX)
    nxt[:, :-1] = labels[:, 1:]
    plan = ShardPlan(sp, total, start, end, bounds, text_positions(bounds, attention_mask.device), nxt, None)
    plan.labels = plan.take(nxt, IGNORE_INDEX)
    if loss_weight is not None:
        w = torch.zeros_like(loss_weight)
        w[:, :-1] = loss_weight[:, 1:]
        plan.weights = plan.take(w, 0.0)
    return plan
