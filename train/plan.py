"""``python -m train plan``: per-GPU memory, FLOPs and step time of a recipe, before any GPU is rented.

    python -m train plan --config C --nodes N --gpus-per-node G --gpu h100|h200|a100 [--mfu 0.4] [--a.b=v ...]

Exit status 0 when the plan fits (or is tight), 1 when it does not fit, 2 for a bad config or option.

Nothing is allocated and nothing is downloaded: parameter counts come from the model classes built on
``torch.device("meta")`` from the configs (a local folder's ``config.json``; for the shipped recipes'
model folders, when absent, the published configs in :data:`KNOWN_CONFIGS`), so a 7B recipe plans in
seconds on a laptop. Every number is per GPU, for the WORST-CASE micro-batch: every row at
``task.max_prompt_len + task.max_target_len`` tokens, ``micro_batch_size`` questions x 2 rows for
``task.mode: mtl`` (QA + reasoning), 1 otherwise. ``e`` is the bytes of the compute dtype (2 for
bf16/fp16, 4 for fp32), N all parameters, T the trained ones, W = nodes x GPUs (data-parallel ranks).

Model states (ZeRO, DeepSpeed 0.19.8 as ``train.engine`` configures it)::

    stage   params          grads          optimizer (fp32 master + Adam m, v)   at the step
    0       e N             e T            12 T                                   + 4 T       (fp32 grads)
    1       e N             e T            12 T / W                               + 4 T / W
    2       e N             e T / W        12 T / W                               + 4 T / W
    3       e N / W         e T / W        12 T / W                               + 4 min(T/W, sub-group)

Gradients accumulate in the model dtype under ZeRO (``grad_accum_dtype`` unset), and each optimizer
sub-group's gradient is cast to fp32 just before its step (``_prepare_fp32_grad_for_sub_group``).
``offload_optimizer`` moves gradients, optimizer and the fp32 cast to the host; ``offload_param`` the
stage-3 parameter partitions. Stage 3 also holds the gathered working set ``4 * largest layer`` (its
e-byte weights and gradient, DeepSpeed's own estimator term), the prefetch and reduce buckets
(``e * prefetch_bucket_size``, ``e * reduce_bucket_size``) and the parameters below
``param_persistence_threshold``, which stay whole on every rank.

Activations, bytes per token per decoder layer (HF Llama / Qwen2 layer with FlashAttention or SDPA:
no sequence^2 term; h hidden, a = heads x head_dim, kv = kv_heads x head_dim, H heads, f MLP width),
as read from the tensors autograd saves::

    weights trained : 2 (4h + 4 + e h) + 2 e h + e (2a + 2kv) + 4H + 4 e f
    weights frozen  : 2 (4h + 4)             + e (2a + 2kv) + 4H + 3 e f
    LoRA adapter    : + (1 + e) n_in + e r each (dropout > 0: bool mask and dropped input), or
                      + e r each and e n_in once per distinct input not already saved (dropout 0)
    eager attention : + (4 + e) H S (the fp32 softmax and its copy in the model dtype)
    backward        : + 3 e f + 2 e h once (the gradients of one layer's MLP intermediates and hidden
                      state, alive while that layer runs backward)

RMSNorm saves its fp32 upcast (4h), 1/rms (4) and, when its weight trains, the normalised input
(e h); linear layers save their input only when their weight trains; the attention kernel saves q, k,
v, its output and an fp32 log-sum-exp per head; the gated MLP saves gate, silu(gate), up and their
product. With activation checkpointing (``model.gradient_checkpointing``) a layer keeps only its input
(e h per token) and backward recomputes one layer at a time: ``L e h + one layer``. A trained vision
tower (ViT, per patch token and layer): ``8 e d + 2 e f + 16 + 4 heads``; a frozen one saves nothing.
The projector saves ``e (d_in + 2 hidden)`` per visual token.

Logits (the LM head), bytes::

    fused (this trainer) : 2 C V e + N_t D e (rows in) + N_t D e (grad_hidden) + 4 V D (fp32 grad_weight, if it trains)
    plain HF loss        : S_all V (e + 4 + 8)

with C = min(model.loss_chunk_size, N_t) token rows per chunk (its logits and the temporary of the same
size that accumulates grad_weight, ``vqa_kernels.fused_linear_cross_entropy``; the Triton row kernel
writes the gradient in place), N_t target tokens, S_all every position. A plain loss keeps the logits
(e) and the fp32 log-softmax (4) for backward, where the fp32 gradients of both (8) join them.

FLOPs per step: :mod:`train.flops` (6 N_trained + 4 N_frozen-with-gradient + 2 N_forward-only per
token, plus the causal attention term ``2 L a S`` per token forward, times 3 when trained; the vision
tower per frame with its bidirectional ``4 L_v P^2 d_v``). Step time = model FLOPs / (MFU x peak), the
dense bf16 tensor-core peak of the GPU (:data:`GPUS`); recomputation by checkpointing is not model
FLOPs, so the stated MFU already has to absorb it.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

from train import flops as flops_mod
from train.config import ConfigError, TrainConfig, load_config, split_overrides
from train.config.model import FrameLayout
from train.models.hf_inputs import LLAVA_FAMILIES, QWEN_FAMILIES, VideoPreprocessor
from train.models.hf_vlm import PARTS
from train.models.projector import Projector, build_vision_tower
from train.tokenizer import build_tokenizer

GB = 1e9


@dataclass(frozen=True)
class GPU:
    """One accelerator model: what the plan divides by."""

    name: str
    bf16_flops: float
    """Dense (no 2:4 sparsity) bf16 tensor-core peak, FLOP/s."""
    memory: float
    """Device memory in bytes: the datasheet's GB read as 1e9 bytes (the 80 GB parts hold 80 GiB, so the
    verdict errs on the safe side by 7 %)."""
    source: str


GPUS = {
    "h100": GPU("H100 SXM5 80GB", 989e12, 80 * GB, "NVIDIA H100 datasheet: 1,979 TFLOPS bf16 with sparsity"),
    "h200": GPU("H200 SXM 141GB", 989e12, 141 * GB, "NVIDIA H200 datasheet: 1,979 TFLOPS bf16 with sparsity"),
    "a100": GPU("A100 SXM4 80GB", 312e12, 80 * GB, "NVIDIA A100 datasheet: 312 TFLOPS bf16 (624 with sparsity)"),
}
"""Dense bf16 peaks: the datasheets state the sparse figure, twice the dense one (H100 / H200 SXM:
1,979 -> 989 TFLOP/s), A100 both (312 / 624)."""

HEADROOM = 0.10
"""Share of device memory left free for the CUDA context, NCCL buffers and allocator fragmentation:
a plan "fits" at or below 90 % of the device, is "tight" up to 100 %."""

_QWEN2_7B = {"model_type": "qwen2", "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
             "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
             "max_position_embeddings": 32768, "tie_word_embeddings": False}
_SIGLIP_SO400M = {"model_type": "siglip_vision_model", "hidden_size": 1152, "intermediate_size": 4304,
                  "num_hidden_layers": 27, "num_attention_heads": 16, "patch_size": 14, "image_size": 384}
KNOWN_CONFIGS: dict[str, dict[str, Any]] = {
    "Qwen2-7B-Instruct": _QWEN2_7B,
    "siglip-so400m-patch14-384": _SIGLIP_SO400M,
    "Qwen2.5-VL-7B-Instruct": {
        "model_type": "qwen2_5_vl", "tie_word_embeddings": False,
        "text_config": {k: v for k, v in _QWEN2_7B.items() if k != "model_type"} | {"max_position_embeddings": 128000},
        "vision_config": {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
                          "in_channels": 3, "out_hidden_size": 3584, "patch_size": 14, "spatial_merge_size": 2,
                          "temporal_patch_size": 2, "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31],
                          "hidden_act": "silu"}},
    "llava-onevision-qwen2-7b-ov-hf": {
        "model_type": "llava_onevision", "tie_word_embeddings": False,
        "text_config": _QWEN2_7B | {"vocab_size": 152128},  # llava-hf pads the embeddings to a multiple of 64
        "vision_config": _SIGLIP_SO400M | {"num_hidden_layers": 26, "vision_use_head": False}},
}
"""The published ``config.json`` architecture fields of the models the shipped recipes name (by folder
name), used only when the folder is not on this machine (the plan says so). Sources: the model cards'
config.json on huggingface.co (Qwen/Qwen2-7B-Instruct, google/siglip-so400m-patch14-384,
Qwen/Qwen2.5-VL-7B-Instruct, llava-hf/llava-onevision-qwen2-7b-ov-hf)."""


@dataclass
class ModelFacts:
    """What the plan needs of a model, read from configs and a meta-device build."""

    params: dict[str, int]
    """Parameter elements per part (vision, projector, llm, lora)."""
    trained: dict[str, int]
    """Trained parameter elements per part."""
    largest_layer: int
    """Most parameter elements directly in one module (DeepSpeed's ``model_to_params``)."""
    persistent: int
    """Elements of parameters small enough to stay gathered under ZeRO-3 (param_persistence_threshold)."""
    dims: flops_mod.FlopsDims
    layout: FrameLayout
    """Visual tokens of one clip in the prompt."""
    tower_frames: int
    """Tower passes per clip (frames, or Qwen temporal patches)."""
    llm_heads: int
    lora_inputs: list[tuple[str, int]] = field(default_factory=list)
    """(input group, input width) of each LoRA-adapted linear layer of one decoder layer."""
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.params.values())

    @property
    def total_trained(self) -> int:
        return sum(self.trained.values())


def load_hf_config(path: str, field_name: str, notes: list[str]) -> dict[str, Any]:
    """config.json of a local model folder, else the built-in one of a known folder name (noted)."""
    file = Path(path) / "config.json"
    if file.is_file():
        return json.loads(file.read_text())
    name = Path(path).name
    if name in KNOWN_CONFIGS:
        notes.append(f"{field_name}: {path} is not on this machine; used the published config of {name}")
        return copy.deepcopy(KNOWN_CONFIGS[name])
    raise ConfigError(f"{field_name}: {path} has no config.json and is not a known model folder name "
                      f"({', '.join(sorted(KNOWN_CONFIGS))}); give the folder or a config dict")


def _on_meta(build: Callable[[], nn.Module]) -> nn.Module:
    with torch.device("meta"):
        return build()


def _largest_layer(model: nn.Module) -> int:
    return max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())


def _lora_inputs(llm: nn.Module, matches: Callable[[str], bool], r: int) -> tuple[int, list[tuple[str, int]]]:
    """(adapter elements over the whole LLM, (input group, width) per adapted linear of one layer)."""
    groups = {"q_proj": "attn_in", "k_proj": "attn_in", "v_proj": "attn_in", "o_proj": "attn_out",
              "gate_proj": "mlp_in", "up_proj": "mlp_in", "down_proj": "mlp_act"}
    total, first = 0, []
    for name, mod in llm.named_modules():
        if isinstance(mod, nn.Linear) and matches(name):
            total += r * (mod.in_features + mod.out_features)
            if ".layers.0." in f".{name}.":
                first.append((groups.get(name.rsplit(".", 1)[-1], name), mod.in_features))
    return total, first


def _llm_dims(lc: Any) -> dict[str, int]:
    heads = int(lc.num_attention_heads)
    return {"llm_hidden": int(lc.hidden_size), "llm_intermediate": int(lc.intermediate_size),
            "llm_layers": int(lc.num_hidden_layers), "llm_heads": heads,
            "llm_kv_heads": int(getattr(lc, "num_key_value_heads", None) or heads),
            "llm_head_dim": int(getattr(lc, "head_dim", None) or lc.hidden_size // heads),
            "vocab_size": int(lc.vocab_size)}


def assembled_facts(cfg: TrainConfig) -> ModelFacts:
    """Tower + projector + LLM of ``model.kind: assembled``, as ``train.models.assembled`` builds them."""
    m, notes = cfg.model, []
    vis_kw = load_hf_config(m.vision.path, "model.vision.path", notes) if m.vision.path else dict(m.vision.config)
    vis_kw = dict(vis_kw.get("vision_config", vis_kw))
    vis_kw.pop("model_type", None)
    image_size = None if m.vision.path else m.vision.image_size
    tower = _on_meta(lambda: build_vision_tower(m.vision.kind, None, vis_kw, image_size, "sdpa"))
    llm_kw = load_hf_config(m.llm.path, "model.llm.path", notes) if m.llm.path else dict(m.llm.config)
    vocab = _vocab_size(cfg, int(llm_kw.get("vocab_size", 0)))
    llm_cfg = AutoConfig.for_model(llm_kw.pop("model_type"), **{"tie_word_embeddings": False, **llm_kw,
                                                                "vocab_size": vocab})
    llm = _on_meta(lambda: AutoModelForCausalLM.from_config(llm_cfg))
    vc = tower.config
    grid = int(vc.image_size) // int(vc.patch_size)
    projector = _on_meta(lambda: Projector(int(vc.hidden_size), int(llm_cfg.hidden_size), grid,
                                           tuple(m.projector.pool), m.projector.temporal_stride, m.projector.hidden,
                                           m.projector.center, m.projector.temporal_pos))
    params = {"vision": _count(tower), "projector": _count(projector), "llm": _count(llm)}
    lora, lora_inputs = 0, []
    if m.lora.enabled:
        targets = tuple(m.lora.target_modules)
        lora, lora_inputs = _lora_inputs(llm, lambda n: n.rsplit(".", 1)[-1] in targets, m.lora.r)
        params["lora"] = lora
    llm_trains = not (m.llm.freeze or m.lora.enabled)
    trained = {"vision": 0 if m.vision.freeze else params["vision"], "projector": params["projector"],
               "llm": params["llm"] if llm_trains else 0, "lora": lora}
    layout = m.frame_layout(cfg.data.frame_cap)
    dims = flops_mod.FlopsDims(
        **_llm_dims(llm_cfg), vis_hidden=int(vc.hidden_size), vis_intermediate=int(vc.intermediate_size),
        vis_layers=int(vc.num_hidden_layers), vis_patches=grid ** 2 + (1 if m.vision.kind == "clip" else 0),
        vis_patch_size=int(vc.patch_size), vis_channels=int(getattr(vc, "num_channels", 3)),
        proj_hidden=projector.fc1.out_features, tokens_per_group=layout.tokens_per_group,
        temporal_stride=layout.temporal_stride, train_vision=not m.vision.freeze, train_projector=True,
        train_llm=llm_trains, lora=m.lora.enabled)
    modules = (tower, projector, llm)
    return ModelFacts(params, trained, max(_largest_layer(x) for x in modules),
                      sum(_persistent(x, cfg.deepspeed.param_persistence_threshold) for x in modules), dims, layout,
                      cfg.data.frame_cap, int(llm_cfg.num_attention_heads), lora_inputs, notes)


def _vocab_size(cfg: TrainConfig, llm_vocab: int) -> int:
    """The LLM's vocabulary as the trainer sizes it: the tokenizer's, embeddings grown to it, never shrunk."""
    path = cfg.tokenizer.path
    if path and Path(path).is_dir():
        return max(llm_vocab, len(build_tokenizer(path)))
    if path or cfg.model.llm.path:  # the LLM's own tokenizer, not on this machine: its embedding rows
        return llm_vocab
    return cfg.tokenizer.vocab_size


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _persistent(module: nn.Module, threshold: int) -> int:
    return sum(p.numel() for p in module.parameters() if p.numel() < threshold)


def hf_vlm_facts(cfg: TrainConfig) -> ModelFacts:
    """An existing video-LLM (``model.kind: hf_vlm``), parts and freezing as ``train.models.hf_vlm``."""
    m, hf, notes = cfg.model, cfg.model.hf, []
    kw = load_hf_config(hf.path, "model.hf.path", notes)
    vlm_cfg = AutoConfig.for_model(kw.pop("model_type"), **kw)
    family = vlm_cfg.model_type
    if family not in QWEN_FAMILIES + LLAVA_FAMILIES:
        raise ConfigError(f"model.hf.path: model_type {family!r} is not a supported video-LLM family")
    vlm = _on_meta(lambda: AutoModelForImageTextToText.from_config(vlm_cfg))
    prefixes = PARTS["qwen" if family in QWEN_FAMILIES else "llava"]
    params = {"vision": 0, "projector": 0, "llm": 0}
    for name, p in vlm.named_parameters():
        part = next((k for k in ("projector", "vision", "llm") if name.startswith(prefixes[k])), "llm")
        params[part] += p.numel()
    frozen = {"vision": hf.freeze_vision, "projector": hf.freeze_projector, "llm": hf.freeze_llm or m.lora.enabled}
    trained = {k: 0 if frozen[k] else v for k, v in params.items()}
    lora_inputs: list[tuple[str, int]] = []
    if m.lora.enabled:
        regex = re.compile(hf.lora_target_regex)
        params["lora"], lora_inputs = _lora_inputs(vlm, lambda n: regex.fullmatch(n) is not None, m.lora.r)
        trained["lora"] = params["lora"]
    lc, vc = vlm_cfg.get_text_config(), vlm_cfg.vision_config
    folder = Path(hf.processor_path or hf.path)
    if (folder / "config.json").is_file():
        video = VideoPreprocessor.from_folder(folder, family, vlm_cfg, hf.video_fps)
    else:  # the published model's processor defaults (Qwen: 14-pixel patches, 2x2 merge, 2 frames per patch)
        video = VideoPreprocessor(family, [0.5] * 3, [0.5] * 3, size=int(getattr(vc, "image_size", 384)))
    if family in QWEN_FAMILIES:
        h, w = video.frame_size(*cfg.data.frame_size)
        patches = (h // video.patch) * (w // video.patch)
        d_v = int(getattr(vc, "embed_dim", None) or vc.hidden_size)
        f_v = int(getattr(vc, "intermediate_size", None) or d_v * getattr(vc, "mlp_ratio", 4))
        vis = {"vis_hidden": d_v, "vis_intermediate": f_v, "vis_layers": int(vc.depth), "vis_patches": patches,
               "vis_patch_size": video.patch, "vis_channels": 3 * video.temporal_patch,
               "proj_hidden": d_v * video.merge ** 2}
        layout = FrameLayout(cfg.data.frame_cap, video.temporal_patch, patches // video.merge ** 2)
        tower_frames = layout.groups
    else:
        grid = int(vc.image_size) // int(vc.patch_size)
        vis = {"vis_hidden": int(vc.hidden_size), "vis_intermediate": int(vc.intermediate_size),
               "vis_layers": int(vc.num_hidden_layers), "vis_patches": grid ** 2, "vis_patch_size": int(vc.patch_size),
               "vis_channels": 3, "proj_hidden": int(lc.hidden_size)}
        layout = FrameLayout(cfg.data.frame_cap, 1, math.ceil(grid / 2) ** 2, extra_tokens=1)
        tower_frames = cfg.data.frame_cap
    dims = flops_mod.FlopsDims(**_llm_dims(lc), **vis, tokens_per_group=layout.tokens_per_group,
                               temporal_stride=1, train_vision=trained["vision"] > 0,
                               train_projector=trained["projector"] > 0, train_llm=trained["llm"] > 0,
                               lora=m.lora.enabled)
    return ModelFacts(params, trained, _largest_layer(vlm), _persistent(vlm, cfg.deepspeed.param_persistence_threshold),
                      dims, layout, tower_frames, int(lc.num_attention_heads), lora_inputs, notes)


FACTS = {"assembled": assembled_facts, "hf_vlm": hf_vlm_facts}
"""model.kind -> how its facts are read (the families of ``train.models.registry``)."""


def model_state_bytes(n_params: int, n_trained: int, largest_layer: int, persistent: int, cfg: TrainConfig,
                      world: int) -> dict[str, float]:
    """Per-GPU bytes of parameters, gradients, optimizer states, ZeRO buffers and the step's fp32 gradients
    (table in the module docstring)."""
    ds = cfg.deepspeed
    e = 4 if ds.precision == "fp32" else 2
    stage, off_opt, off_par = ds.zero_stage, ds.offload_optimizer != "none", ds.offload_param != "none"
    shard_opt = world if stage >= 1 else 1
    shard_grad = world if stage >= 2 else 1
    out = {"params": 0.0 if off_par else e * n_params / (world if stage == 3 else 1),
           "grads": 0.0 if off_opt else e * n_trained / shard_grad,
           "optimizer": 0.0 if off_opt else 12 * n_trained / shard_opt}
    sub_group = 1e9  # DeepSpeed's stage-3 default sub_group_size (elements stepped at once)
    step_elems = min(n_trained / shard_opt, sub_group) if stage == 3 else n_trained / shard_opt
    out["step_fp32_grads"] = 0.0 if off_opt else 4 * step_elems
    if stage == 3:
        out["zero_buffers"] = (4 * largest_layer + e * (ds.prefetch_bucket_size + ds.reduce_bucket_size)
                               + e * persistent)
    else:
        out["zero_buffers"] = e * ds.reduce_bucket_size * (2 if ds.overlap_comm and stage == 2 else 0)
    return out


def _rows_per_question(cfg: TrainConfig) -> int:
    return 2 if cfg.task.mode == "mtl" and cfg.task.reasoning_source != "none" else 1


def llm_layer_bytes(d: flops_mod.FlopsDims, heads: int, e: int, weights_train: bool, seq_len: int,
                    eager: bool = False, lora: list[tuple[str, int]] = (), lora_r: int = 0,
                    lora_dropout: float = 0.0, mask_bytes: int = 1) -> float:
    """Saved activation bytes per token of one decoder layer (module docstring).

    ``mask_bytes``: bytes per element of a dropout mask: 1 on CUDA (the fused dropout keeps a bool mask);
    CPU's dropout multiplies by a mask in the model dtype (e).
    """
    h, f = d.llm_hidden, d.llm_intermediate
    a, kv = d.llm_heads * d.llm_head_dim, d.llm_kv_heads * d.llm_head_dim
    attn = e * (2 * a + 2 * kv) + 4 * heads + ((4 + e) * heads * seq_len if eager else 0)
    if weights_train:
        return 2 * (4 * h + 4 + e * h) + 2 * e * h + attn + 4 * e * f
    out = 2 * (4 * h + 4) + attn + 3 * e * f
    saved_inputs = {"attn_out"}  # the attention output is saved by the kernel already
    for group, width in lora:
        if lora_dropout > 0:
            out += (mask_bytes + e) * width + e * lora_r
        else:
            out += e * lora_r + (0 if group in saved_inputs else e * width)
            saved_inputs.add(group)
    return out


def activation_bytes(facts: ModelFacts, cfg: TrainConfig, checkpointing: bool) -> dict[str, float]:
    """Saved activations of one worst-case micro-batch: {"llm", "vision", "projector"} bytes."""
    m, d = cfg.model, facts.dims
    e = 4 if cfg.deepspeed.precision == "fp32" else 2
    seq = cfg.task.max_prompt_len + cfg.task.max_target_len
    rows = cfg.data.micro_batch_size * _rows_per_question(cfg)
    tokens = rows * seq
    grad_into_llm = d.train_llm or d.lora or d.train_projector or d.train_vision
    layer = llm_layer_bytes(d, facts.llm_heads, e, d.train_llm, seq, m.attn_implementation == "eager",
                            facts.lora_inputs, m.lora.r, m.lora.dropout)
    final_norm = 4 * d.llm_hidden + 4 + (e * d.llm_hidden if d.train_llm else 0)
    backward = 3 * e * d.llm_intermediate + 2 * e * d.llm_hidden
    layers = d.llm_layers * e * d.llm_hidden + layer if checkpointing else d.llm_layers * layer
    per_token = layers + final_norm + backward
    llm = per_token * tokens / cfg.parallel.sequence if grad_into_llm else 0.0  # Ulysses: 1/S of the tokens
    clips = cfg.data.micro_batch_size if cfg.model.kind == "assembled" else rows  # assembled reuses a clip
    vis_tokens = clips * facts.tower_frames * d.vis_patches
    vit_layer = 8 * e * d.vis_hidden + 2 * e * d.vis_intermediate + 16 + 4 * max(1, d.vis_hidden // 64)
    vis_per_token = (d.vis_layers * e * d.vis_hidden + vit_layer) if checkpointing else d.vis_layers * vit_layer
    vision = vis_tokens * vis_per_token if d.train_vision else 0.0
    proj_in = d.proj_hidden if cfg.model.kind == "hf_vlm" and d.proj_hidden != d.llm_hidden else d.vis_hidden
    projector = (clips * facts.layout.num_visual_tokens * e * (proj_in + 2 * d.proj_hidden)
                 if d.train_projector else 0.0)
    return {"llm": llm, "vision": vision, "projector": projector}


def logits_bytes(facts: ModelFacts, cfg: TrainConfig) -> dict[str, float]:
    """Peak LM-head bytes of one worst-case micro-batch: {"fused", "unfused"} (module docstring)."""
    d = facts.dims
    e = 4 if cfg.deepspeed.precision == "fp32" else 2
    rows = cfg.data.micro_batch_size * _rows_per_question(cfg)
    sp = cfg.parallel.sequence  # each rank scores 1/S of the positions
    targets = -(-rows * cfg.task.max_target_len // sp)
    positions = -(-rows * (cfg.task.max_prompt_len + cfg.task.max_target_len) // sp)
    V, D = d.vocab_size, d.llm_hidden
    chunk = min(cfg.model.loss_chunk_size, targets)
    fused = 2 * chunk * V * e + 2 * targets * D * e + (4 * V * D if d.train_llm else 0)
    return {"fused": float(fused), "unfused": float(positions * V * (e + 4 + 8))}


def step_flops(facts: ModelFacts, cfg: TrainConfig) -> dict[str, float]:
    """Model FLOPs of one optimizer step on one GPU, forward + backward: {"vision", "projector", "llm", "total"}."""
    rows = cfg.data.micro_batch_size * _rows_per_question(cfg)
    seq = cfg.task.max_prompt_len + cfg.task.max_target_len
    clips = 1.0 / _rows_per_question(cfg) if cfg.model.kind == "assembled" else 1.0
    per = flops_mod.flops_per_sample(facts.dims, seq, facts.tower_frames, clips, head_tokens=cfg.task.max_target_len)
    scale = rows * cfg.deepspeed.gradient_accumulation_steps
    out = {k: v * scale for k, v in per.items()}
    if cfg.parallel.sequence > 1:  # the LLM's work is split over the group; every rank runs the whole tower
        out["llm"] /= cfg.parallel.sequence
        out["total"] = out["vision"] + out["projector"] + out["llm"]
    return out


@dataclass
class Plan:
    """The numbers ``python -m train plan`` prints (bytes, FLOPs, seconds; per GPU)."""

    config: str
    world: int
    gpu: GPU
    mfu: float
    facts: ModelFacts
    states: dict[str, float]
    act_ckpt: dict[str, float]
    act_full: dict[str, float]
    logits: dict[str, float]
    flops: dict[str, float]
    checkpointing: bool

    @property
    def peak(self) -> float:
        """Peak bytes with the configured checkpointing and the fused head: states, then the larger of
        (buffers + activations + head) during forward/backward and the fp32 gradients of the step."""
        s = self.states
        act = sum((self.act_ckpt if self.checkpointing else self.act_full).values())
        return s["params"] + s["grads"] + s["optimizer"] + max(s["zero_buffers"] + act + self.logits["fused"],
                                                               s["step_fp32_grads"])

    @property
    def step_seconds(self) -> float:
        return self.flops["total"] / (self.mfu * self.gpu.bf16_flops)

    @property
    def verdict(self) -> str:
        if self.peak <= (1 - HEADROOM) * self.gpu.memory:
            return "FITS"
        return "TIGHT" if self.peak <= self.gpu.memory else "DOES NOT FIT"


def make_plan(cfg: TrainConfig, nodes: int, gpus_per_node: int, gpu: str, mfu: float = 0.4,
              config_name: str = "") -> Plan:
    """The plan of ``cfg`` on ``nodes`` x ``gpus_per_node`` GPUs of kind ``gpu`` (a key of :data:`GPUS`)."""
    for name, value in (("--nodes", nodes), ("--gpus-per-node", gpus_per_node)):
        if value < 1:
            raise ConfigError(f"{name} must be >= 1, got {value}")
    if not 0 < mfu <= 1:
        raise ConfigError(f"--mfu must be in (0, 1], got {mfu}")
    if gpu not in GPUS:
        raise ConfigError(f"--gpu must be one of {sorted(GPUS)}, got {gpu!r}")
    facts = FACTS[cfg.model.kind](cfg)
    world = nodes * gpus_per_node
    states = model_state_bytes(facts.total, facts.total_trained, facts.largest_layer, facts.persistent, cfg, world)
    return Plan(config_name, world, GPUS[gpu], mfu, facts, states, activation_bytes(facts, cfg, True),
                activation_bytes(facts, cfg, False), logits_bytes(facts, cfg), step_flops(facts, cfg),
                cfg.model.gradient_checkpointing)


def render(p: Plan, cfg: TrainConfig) -> str:
    """The plan as text: one line per quantity, GB = 1e9 bytes."""
    f, s = p.facts, p.states
    parts = ", ".join(f"{k} {v / 1e6:,.1f}M ({f.trained.get(k, 0) / 1e6:,.1f}M trained)" for k, v in f.params.items())
    rows = cfg.data.micro_batch_size * _rows_per_question(cfg)
    seq = cfg.task.max_prompt_len + cfg.task.max_target_len
    lines = [f"plan: {p.config} on {p.world} x {p.gpu.name} (ZeRO-{cfg.deepspeed.zero_stage}, "
             f"{cfg.deepspeed.precision}, offload optimizer={cfg.deepspeed.offload_optimizer} "
             f"param={cfg.deepspeed.offload_param}"
             + (f", sequence parallel {cfg.parallel.sequence}: LLM activations, logits and FLOPs per GPU for 1/"
                f"{cfg.parallel.sequence} of each micro-batch's tokens" if cfg.parallel.sequence > 1 else "") + ")"]
    lines += [f"  note: {n}" for n in f.notes]
    lines += [f"parameters: {f.total / 1e9:.3f}B ({f.total_trained / 1e6:,.1f}M trained): {parts}",
              f"per sample: {cfg.data.frame_cap} frames{' (at most, under the budget)' if cfg.data.budget_on else ''}, "
              f"{f.layout.num_visual_tokens} visual tokens, "
              f"{f.tower_frames} tower passes of {f.dims.vis_patches} patches; micro-batch {rows} rows x {seq} "
              f"tokens (worst case), {cfg.deepspeed.gradient_accumulation_steps} micro-batch(es) per step",
              "memory per GPU:"]
    row = lambda label, b, tail="": f"  {label:<38}{b / GB:8.2f} GB{tail}"  # noqa: E731
    lines += [row("parameters", s["params"]), row("gradients", s["grads"]),
              row("optimizer states", s["optimizer"], f"   (+{s['step_fp32_grads'] / GB:.2f} GB fp32 grads, step)"),
              row("ZeRO buffers", s["zero_buffers"], "   (gathered layer, buckets, persistent params)")]
    for name, act in (("with", p.act_ckpt), ("without", p.act_full)):
        mark = "  <- configured" if (name == "with") == p.checkpointing else ""
        detail = ", ".join(f"{k} {v / GB:.2f}" for k, v in act.items())
        lines.append(row(f"activations {name} checkpointing", sum(act.values()), f"   ({detail}){mark}"))
    lines += [row("logits, fused head", p.logits["fused"], "  <- this trainer"),
              row("logits, plain HF loss", p.logits["unfused"]),
              row("peak", p.peak, f"   of {p.gpu.memory / GB:.0f} GB: {p.verdict} ({HEADROOM:.0%} kept free)")]
    fl = p.flops
    questions = cfg.data.micro_batch_size * cfg.deepspeed.gradient_accumulation_steps * p.world // cfg.parallel.sequence
    lines += [f"FLOPs per step per GPU (forward + backward, model FLOPs): vision {fl['vision'] / 1e12:,.1f} T, "
              f"projector {fl['projector'] / 1e12:,.2f} T, LLM {fl['llm'] / 1e12:,.1f} T, total "
              f"{fl['total'] / 1e12:,.1f} T",
              f"step time at MFU {p.mfu:.2f} of {p.gpu.bf16_flops / 1e12:.0f} TFLOP/s dense bf16 ({p.gpu.source}): "
              f"{p.step_seconds:.2f} s; {questions} questions per step"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train plan", description="Per-GPU memory, FLOPs and step time of a "
                                "recipe (nothing allocated, nothing downloaded).",
                                epilog="Any --section.field=value overrides that field of the config.")
    p.add_argument("--config", required=True, help="YAML recipe (configs/*.yaml)")
    p.add_argument("--nodes", type=int, default=1, help="nodes (default 1)")
    p.add_argument("--gpus-per-node", type=int, default=8, help="GPUs per node (default 8)")
    p.add_argument("--gpu", default="h100", help=f"one of {', '.join(GPUS)} (default h100)")
    p.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilisation of the step time (default 0.4)")
    args, rest = p.parse_known_args(sys.argv[1:] if argv is None else argv)
    try:
        cfg = load_config(args.config, split_overrides(rest))
        plan = make_plan(cfg, args.nodes, args.gpus_per_node, args.gpu, args.mfu, config_name=args.config)
    except (ConfigError, FileNotFoundError) as e:  # FileNotFoundError: a model folder without its processor config
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(render(plan, cfg))
    return 0 if plan.verdict != "DOES NOT FIT" else 1
