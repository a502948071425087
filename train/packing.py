"""Padding-free micro-batches: several training sequences packed into each row.

:func:`pack_collate` is the packed counterpart of :func:`train.tasks.collate`. It tokenizes the
same examples the same way, places them into rows of at most ``max_tokens_per_row`` tokens with a
first-fit-decreasing bin packer (:func:`first_fit_decreasing`), and returns, beside the usual
``input_ids / attention_mask / labels / task_ids``:

* ``position_ids`` long [R, L]: 0, 1, ... restarting at every example (and at the row's padding tail);
* ``segment_ids`` long [R, L]: 1, 2, ... = which example of the row a token belongs to, 0 = padding.
  Attention is allowed only between tokens of the same segment (causal inside it), so a token never
  sees another example (``VideoLLM`` builds the block-diagonal mask or the flash-attn ``cu_seqlens``
  from it);
* ``pixel_values`` uint8 [C, T, 3, H, W]: each DISTINCT clip of the micro-batch once, and
  ``clip_index`` long [E]: the clip of every example in packed (row-major) order, so the tower and
  projector run once per clip and its visual tokens are scattered into every example that uses it.

Labels still hold only target tokens (each example's first token is a prompt token, so the one-step
shift of the loss never predicts across two examples), and ``token_weights`` applies unchanged:
packing changes where tokens sit, not which tokens are scored or how they are weighted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from transformers import AttentionInterface, PreTrainedTokenizerBase
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from train.config.model import FrameLayout
from train.config.task import TaskConfig
from train.tasks import Example, encode_examples, stack_clips

PACKED_KEYS = ("position_ids", "segment_ids", "clip_index")
"""Tensors a packed micro-batch adds to the model's inputs."""


def first_fit_decreasing(lengths: list[int], capacity: int, visual: list[int] | None = None,
                         visual_capacity: int | None = None) -> list[list[int]]:
    """Bin packing: items longest first, each into the first bin with room, else a new bin.

    Args:
        lengths: item sizes (tokens per example), each in [1, capacity].
        capacity: bin size (``data.max_tokens_per_row``).
        visual, visual_capacity: a second size per item and its bin limit (visual tokens per example,
            ``data.max_visual_tokens_per_row``): an item goes into a bin only when both fit. None: tokens only.

    Returns:
        Bins as lists of item indices; inside a bin items keep the order they were placed in
        (longest first), bins in the order they were opened. Ties keep the input order, so the
        result is deterministic.

    Raises:
        ValueError: an item is longer than ``capacity`` or not positive, or has more visual tokens than
            ``visual_capacity`` (naming the field).
    """
    if visual_capacity is not None:
        visual = list(visual) if visual is not None else [0] * len(lengths)
        for i, v in enumerate(visual):
            if v > visual_capacity:
                raise ValueError(f"sequence {i} has {v} visual tokens > data.max_visual_tokens_per_row="
                                 f"{visual_capacity} (the frame budget gives no clip more than a row holds)")
    if capacity < 1:
        raise ValueError(f"data.max_tokens_per_row must be >= 1, got {capacity}")
    for i, n in enumerate(lengths):
        if n < 1 or n > capacity:
            raise ValueError(f"sequence {i} has {n} tokens; data.max_tokens_per_row={capacity} must hold "
                             f"every sequence (raise it to at least task.max_prompt_len + task.max_target_len)")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])  # stable: ties keep input order
    bins: list[list[int]] = []
    free: list[int] = []
    free_vis: list[int] = []
    for i in order:
        for b, room in enumerate(free):
            if lengths[i] <= room and (visual_capacity is None or visual[i] <= free_vis[b]):
                bins[b].append(i)
                free[b] -= lengths[i]
                if visual_capacity is not None:
                    free_vis[b] -= visual[i]
                break
        else:
            bins.append([i])
            free.append(capacity - lengths[i])
            if visual_capacity is not None:
                free_vis.append(visual_capacity - visual[i])
    return bins


def distinct_clips(frames: list[torch.Tensor]) -> tuple[list[int], list[torch.Tensor]]:
    """(clip index of each item, the distinct clips): equal tensors (same object or same values)
    share one clip, whether or not they are adjacent."""
    index, clips = [], []
    for f in frames:
        for c, u in enumerate(clips):
            if f is u or (f.shape == u.shape and torch.equal(f, u)):
                index.append(c)
                break
        else:
            index.append(len(clips))
            clips.append(f)
    return index, clips


def pack_rows(seqs: list[tuple[list[int], list[int], int]], max_tokens_per_row: int, pad_token_id: int,
              pad_to_multiple: int = 1, visual_token_id: int | None = None,
              max_visual_tokens_per_row: int | None = None) -> tuple[dict[str, Any], list[int]]:
    """Place tokenized sequences into rows (first-fit decreasing) and right-pad each row.

    Args:
        seqs: (prompt ids, target ids, task id) per sequence.
        max_tokens_per_row: row capacity; every sequence must fit (ValueError naming the field).
        pad_token_id: the id of the padding tail.
        pad_to_multiple: round the row length up to a multiple of this.
        visual_token_id, max_visual_tokens_per_row: the frame budget's row cap: a row holds at most this
            many prompt tokens equal to ``visual_token_id`` (the placeholders), over all its sequences.

    Returns:
        (tensors, order). tensors: input_ids, attention_mask, labels, task_ids, position_ids (restarting
        per sequence and at the padding tail), segment_ids (1, 2, ... per sequence, 0 = padding), long
        [R, L]; example_lengths, example_targets (list[int], packed order). order: the index into
        ``seqs`` of each packed sequence, row-major.
    """
    visual = None
    if max_visual_tokens_per_row is not None:
        if visual_token_id is None:
            raise ValueError("pack_rows: a visual-token cap per row needs the placeholder's token id")
        visual = [sum(tok == visual_token_id for tok in p) for p, _, _ in seqs]
    bins = first_fit_decreasing([len(p) + len(t) for p, t, _ in seqs], max_tokens_per_row, visual,
                                max_visual_tokens_per_row)
    length = max(sum(len(seqs[i][0]) + len(seqs[i][1]) for i in b) for b in bins)
    length = -(-length // pad_to_multiple) * pad_to_multiple
    R = len(bins)
    input_ids = torch.full((R, length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((R, length), dtype=torch.long)
    labels = torch.full((R, length), -100, dtype=torch.long)
    task_ids = torch.zeros((R, length), dtype=torch.long)
    position_ids = torch.zeros((R, length), dtype=torch.long)
    segment_ids = torch.zeros((R, length), dtype=torch.long)
    order = [i for b in bins for i in b]
    for r, b in enumerate(bins):
        start = 0
        for s, i in enumerate(b, start=1):
            p, t, tid = seqs[i]
            n = len(p) + len(t)
            sl = slice(start, start + n)
            input_ids[r, sl] = torch.tensor(p + t)
            attention_mask[r, sl] = 1
            labels[r, start + len(p):start + n] = torch.tensor(t)
            task_ids[r, start + len(p):start + n] = tid
            position_ids[r, sl] = torch.arange(n)
            segment_ids[r, sl] = s
            start += n
        position_ids[r, start:] = torch.arange(length - start)  # the padding tail: its own segment 0
    return ({"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels, "task_ids": task_ids,
             "position_ids": position_ids, "segment_ids": segment_ids,
             "example_lengths": [len(seqs[i][0]) + len(seqs[i][1]) for i in order],
             "example_targets": [len(seqs[i][1]) for i in order]}, order)


def pack_collate(examples: list[Example], tokenizer: PreTrainedTokenizerBase, cfg: TaskConfig,
                 layout: FrameLayout, max_tokens_per_row: int, pad_to_multiple: int = 1,
                 layout_for: Callable[[int], FrameLayout] | None = None,
                 max_visual_tokens_per_row: int | None = None, frame_token_id: int | None = None) -> dict[str, Any]:
    """Tokenize examples and pack them into rows (first-fit decreasing), right-padding each row.

    Args:
        examples: from :func:`train.tasks.build_examples` (at least one).
        tokenizer: the model's tokenizer.
        cfg: gives max_prompt_len / max_target_len.
        layout: the model's :class:`FrameLayout`.
        max_tokens_per_row: row capacity; every example must fit (ValueError naming the field).
        pad_to_multiple: round the row length up to a multiple of this.
        layout_for: the layout of another frame count (clips of different counts, the frame budget;
            see :func:`train.tasks.collate`).
        max_visual_tokens_per_row, frame_token_id: the packer's second constraint (visual tokens per
            row, counted as placeholders ``frame_token_id``); None: tokens only.

    Returns:
        dict with pixel_values uint8 [C,T,3,H,W] (distinct clips; None when no example has frames; clips of
        different frame counts zero-padded, with ``clip_frames`` long [C], :func:`train.tasks.stack_clips`);
        clip_index long [Ev]: the clip of every example that has frames (text-only ones have none);
        input_ids, attention_mask, labels, task_ids, position_ids, segment_ids long [R,L];
        qids, tasks (list[str], packed order); example_lengths, example_targets (list[int], packed
        order); n_examples; n_cut_prompts, n_cut_targets, n_stl_shortened (int, see
        :func:`train.tasks.encode_examples`); packed = True.
    """
    if not examples:
        raise ValueError("pack_collate got no examples")
    seqs, n_cut_p, n_cut_t, n_short = encode_examples(examples, tokenizer, cfg, layout, layout_for)
    rows, order = pack_rows(seqs, max_tokens_per_row, tokenizer.pad_token_id, pad_to_multiple, frame_token_id,
                            max_visual_tokens_per_row)
    clip_of, clips = distinct_clips([examples[i].frames for i in order if examples[i].frames is not None])
    pixel_values, clip_frames = stack_clips(clips, [ex.qid for ex in examples])
    out = {"pixel_values": pixel_values, "clip_index": torch.tensor(clip_of, dtype=torch.long), **rows,
           "qids": [examples[i].qid for i in order], "tasks": [examples[i].task for i in order],
           "n_examples": len(examples), "n_cut_prompts": n_cut_p, "n_cut_targets": n_cut_t, "n_stl_shortened": n_short,
           "packed": True}
    if clip_frames is not None:
        out["clip_frames"] = clip_frames
    return out


def padding_fraction(batch: dict[str, Any]) -> float:
    """Share of the token slots of a collated micro-batch (packed or not) that are padding."""
    mask = batch["attention_mask"]
    return 1.0 - float(mask.sum()) / mask.numel()


# ---------------------------------------------------------------- attention inputs

def block_causal_mask(segment_ids: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """The attention mask of packed rows: query q may see key k iff both are in the same segment
    and k <= q (padding, segment 0, is one causal block of its own, so no query row is empty).

    Args:
        segment_ids: long [R, L].
        dtype: None -> bool [R, 1, L, L] (True = attend; what SDPA takes); a float dtype -> additive
            mask [R, 1, L, L] (0 or the dtype's minimum; what eager attention takes).
    """
    L = segment_ids.shape[1]
    same = segment_ids.unsqueeze(2) == segment_ids.unsqueeze(1)  # [R, Lq, Lk]
    causal = torch.ones(L, L, dtype=torch.bool, device=segment_ids.device).tril()
    allowed = (same & causal).unsqueeze(1)
    if dtype is None:
        return allowed
    zero = torch.zeros((), dtype=dtype, device=segment_ids.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)


def varlen_kwargs(segment_ids: torch.Tensor) -> dict[str, Any]:
    """flash-attn varlen arguments for packed rows flattened into one sequence [1, R*L].

    Every example and every row's padding tail is one sequence: a boundary sits at each row start
    and wherever the segment id changes. Returns cu_seq_lens_q/k (int32 [S+1]) and
    max_length_q/k (int), the names transformers' flash-attention path reads.
    """
    R, L = segment_ids.shape
    flat = segment_ids.reshape(-1)
    change = torch.ones_like(flat, dtype=torch.bool)
    change[1:] = flat[1:] != flat[:-1]
    change[::L] = True  # row starts (two rows may both begin with segment 1)
    starts = change.nonzero().squeeze(1)
    cu = torch.cat([starts, torch.tensor([flat.numel()], device=flat.device)]).to(torch.int32)
    max_len = int(cu.diff().max())
    return {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": max_len, "max_length_k": max_len}


SDPA_VARLEN = "sdpa_varlen"
"""attn_implementation name of :func:`sdpa_varlen_attention` in transformers' registries."""


def sdpa_varlen_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                          is_causal: bool | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """SDPA without masked work for packed rows: one causal SDPA call per sequence.

    With ``cu_seq_lens_q`` in kwargs (packed rows flattened to [1, N], see :func:`packed_decoder`)
    each sequence attends causally to itself only, and no score outside the sequences is computed
    (a block-diagonal mask makes SDPA compute all ``L x L`` scores of a row and discard most). Without
    it this is exactly transformers' ``sdpa_attention_forward``, so unpacked batches, generation and
    scoring run the same arithmetic as ``sdpa``.

    Args:
        query: [1, H, N, Dh]; key, value: [1, Hkv, N, Dh] (grouped-query heads are repeated).

    Returns:
        (attention output [1, N, H, Dh], None), as transformers' attention functions return.
    """
    cu = kwargs.get("cu_seq_lens_q")
    if cu is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    groups = query.shape[1] // key.shape[1]
    if groups > 1:
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    p = dropout if module.training else 0.0
    bounds = cu.tolist()
    outs = [torch.nn.functional.scaled_dot_product_attention(query[:, :, a:b], key[:, :, a:b], value[:, :, a:b],
                                                             dropout_p=p, is_causal=True, scale=scaling)
            for a, b in zip(bounds[:-1], bounds[1:])]
    return torch.cat(outs, dim=2).transpose(1, 2).contiguous(), None


def register_sdpa_varlen() -> str:
    """Make ``"sdpa_varlen"`` a transformers attn_implementation (attention function + sdpa's mask)."""
    AttentionInterface.register(SDPA_VARLEN, sdpa_varlen_attention)
    AttentionMaskInterface.register(SDPA_VARLEN, sdpa_mask)
    return SDPA_VARLEN


def packing_attention(impl: str) -> str:
    """How attention keeps packed examples apart for a model whose attn_implementation is ``impl``."""
    if impl == "flash_attention_2":
        return "flash_attention_2 varlen (cu_seqlens from segment ids, rows flattened)"
    if impl == SDPA_VARLEN:
        return "sdpa per sequence (cu_seqlens from segment ids, rows flattened; no masked work)"
    if impl == "sdpa":
        return "sdpa with a block-diagonal causal mask [R, 1, L, L]"
    if impl == "eager":
        return "eager with an additive block-diagonal causal mask [R, 1, L, L]"
    raise ValueError(f"data.packing: attention implementation {impl!r} has no packed path "
                     f"(model.attn_implementation must be auto, sdpa, flash_attention_2 or eager)")


def packed_decoder(decoder: torch.nn.Module, impl: str, inputs_embeds: torch.Tensor, position_ids: torch.Tensor,
                   segment_ids: torch.Tensor) -> torch.Tensor:
    """A transformers decoder (no head) on packed rows; returns hidden [R, L, D].

    flash_attention_2: the rows are flattened into one sequence [1, R*L] and flash-attn's varlen
    kernel gets ``cu_seqlens`` (one sequence per example and per padding tail); sdpa_varlen
    (:func:`sdpa_varlen_attention`): the same flattening, one SDPA call per sequence. sdpa / eager: a
    block-diagonal causal mask [R, 1, L, L] from ``segment_ids`` (transformers uses a 4-D mask as
    given). Positions restart per example either way, so rotary embeddings see each example as if
    it were alone.

    Args:
        decoder: ``causal_lm.get_decoder()``.
        impl: its ``config._attn_implementation``.
        inputs_embeds: [R, L, D]; position_ids, segment_ids: long [R, L].
    """
    packing_attention(impl)  # raises for a backend without a packed path
    if impl in ("flash_attention_2", SDPA_VARLEN):
        R, L, D = inputs_embeds.shape
        out = decoder(inputs_embeds=inputs_embeds.reshape(1, R * L, D), attention_mask=None,
                      position_ids=position_ids.reshape(1, R * L), use_cache=False, **varlen_kwargs(segment_ids))
        return out.last_hidden_state.reshape(R, L, -1)
    mask = block_causal_mask(segment_ids, None if impl == "sdpa" else inputs_embeds.dtype)
    return decoder(inputs_embeds=inputs_embeds, attention_mask=mask, position_ids=position_ids,
                   use_cache=False).last_hidden_state
