"""Model FLOPs of one training sample, for MFU (model FLOPs utilisation).

Counted from the configs (never from parameter tensors: under ZeRO-3 a rank holds only empty
shards), as *model* FLOPs: activation recomputation by gradient checkpointing is not counted,
so MFU stays comparable with and without it. A multiply-add is 2 FLOPs.

Forward FLOPs of one token through a linear layer with N weights: 2 N. Training multiplies the
forward by 3 (backward = grad wrt activations 2N + grad wrt weights 2N) for a trained part, and
by 2 for a frozen part that still back-propagates to something trained before it (no weight
gradients), and by 1 for a frozen part with nothing trained before it (forward only).

LLM (decoder, gated MLP as in Llama/Qwen2), per token, d = hidden, a = heads * head_dim,
kv = kv_heads * head_dim, f = intermediate, L = layers, V = vocab, S = sequence length::

    N_llm      = L * (d*a + 2*d*kv + a*d + 3*d*f) + d*V        (lm_head counted, embedding lookup not)
    fwd/token  = 2 * N_llm + 2 * L * a * S                       (causal attention: QK^T and AV each
                                                                  2*a FLOPs per visible key; on
                                                                  average S/2 keys are visible)

Vision tower (ViT, MLP with 2 matrices), per frame, P = patches (+1 class token for CLIP),
d_v, f_v, L_v, patch p, channels c::

    N_vis      = L_v * (4*d_v^2 + 2*d_v*f_v)
    fwd/frame  = 2 * P * N_vis + 2 * P * (c*p*p*d_v) + 4 * L_v * P^2 * d_v   (bidirectional attention)

Projector (MLP on the pooled visual tokens), per visual token: fwd = 2 * (d_v*h + h*d).
LoRA adapters are small and ignored (the frozen base LLM counts with factor 2).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FlopsDims:
    """The dimensions the FLOPs formula needs (read from the HF configs)."""

    llm_hidden: int
    llm_intermediate: int
    llm_layers: int
    llm_heads: int
    llm_kv_heads: int
    llm_head_dim: int
    vocab_size: int
    vis_hidden: int
    vis_intermediate: int
    vis_layers: int
    vis_patches: int
    """Tokens per frame in the tower (patches, +1 class token for CLIP)."""
    vis_patch_size: int
    vis_channels: int
    proj_hidden: int
    tokens_per_group: int
    temporal_stride: int
    train_vision: bool
    train_projector: bool
    train_llm: bool
    """Full LLM weights trained (False when frozen or LoRA)."""
    lora: bool = False
    """LoRA adapters in the LLM (gradients flow through the frozen base: factor 2)."""


def llm_params(d: FlopsDims) -> int:
    """Matmul weights of the LLM (lm_head included, embedding lookup excluded)."""
    a, kv = d.llm_heads * d.llm_head_dim, d.llm_kv_heads * d.llm_head_dim
    h = d.llm_hidden
    per_layer = h * a + 2 * h * kv + a * h + 3 * h * d.llm_intermediate
    return d.llm_layers * per_layer + h * d.vocab_size


def vision_params(d: FlopsDims) -> int:
    """Matmul weights of the vision tower's encoder layers (patch embedding counted apart)."""
    return d.vis_layers * (4 * d.vis_hidden ** 2 + 2 * d.vis_hidden * d.vis_intermediate)


def _factor(trained: bool, grad_flows_in: bool) -> int:
    return 3 if trained else (2 if grad_flows_in else 1)


def flops_per_sample(d: FlopsDims, seq_len: int, num_frames: int,
                     clips_per_sequence: float = 1.0, head_tokens: float | None = None) -> dict[str, float]:
    """Training model FLOPs of one sample (one sequence of ``seq_len`` tokens with its clip).

    Args:
        d: the dimensions.
        seq_len: LLM sequence length (visual tokens included; pass the unpadded length).
        num_frames: frames per clip.
        clips_per_sequence: distinct clips encoded per sequence. The model encodes a clip once
            for the adjacent QA and reasoning sequences of one question, so multi-task batches
            have about 0.5 (``VideoLLM.batch_flops`` counts it exactly); 1.0 is an upper bound.
        head_tokens: positions that go through the LM head (the fused loss runs it on target
            tokens only); None = every position, as a plain causal-LM loss does.

    Returns:
        {"vision", "projector", "llm", "total"} in FLOPs (per sample).
    """
    P = d.vis_patches
    vis_fwd = (2 * P * vision_params(d) + 2 * P * d.vis_channels * d.vis_patch_size ** 2 * d.vis_hidden
               + 4 * d.vis_layers * P * P * d.vis_hidden)
    vision = _factor(d.train_vision, False) * vis_fwd * num_frames * clips_per_sequence
    groups = -(-num_frames // d.temporal_stride)
    n_visual = groups * d.tokens_per_group
    proj_fwd = 2 * (d.vis_hidden * d.proj_hidden + d.proj_hidden * d.llm_hidden) * n_visual
    projector = _factor(d.train_projector, d.train_vision) * proj_fwd * clips_per_sequence
    a = d.llm_heads * d.llm_head_dim
    head = d.llm_hidden * d.vocab_size
    head_tokens = seq_len if head_tokens is None else head_tokens
    llm_fwd = (2 * (llm_params(d) - head) + 2 * d.llm_layers * a * seq_len) * seq_len + 2 * head * head_tokens
    llm = _factor(d.train_llm, d.train_vision or d.train_projector or d.lora) * llm_fwd
    return {"vision": float(vision), "projector": float(projector), "llm": float(llm),
            "total": float(vision + projector + llm)}


def flops_per_token(d: FlopsDims, seq_len: int, num_frames: int, clips_per_sequence: float = 1.0) -> float:
    """Training model FLOPs per LLM sequence position (padded length), the MFU numerator."""
    return flops_per_sample(d, seq_len, num_frames, clips_per_sequence)["total"] / seq_len
