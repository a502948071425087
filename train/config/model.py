"""The model section of the config: which model family trains, and each family's settings.

Plain dataclasses (no torch, no transformers): loading a config never imports model code. The
families themselves (what builds a model from these settings) are in :mod:`train.models`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

DEFAULT_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


@dataclass(frozen=True)
class FrameLayout:
    """How many placeholder tokens the prompt holds for a clip of ``num_frames`` frames.

    The layout is the MODEL's (``VideoModel.frame_layout``), so that prompt and vision side agree.
    """

    num_frames: int
    """Frames per clip (T of pixel_values)."""
    temporal_stride: int = 1
    """Consecutive frames merged into one group (the projector's stride, a Qwen temporal patch)."""
    tokens_per_group: int = 1
    """Visual tokens per frame group (spatial pooling grid, e.g. 2x2 = 4)."""
    extra_tokens: int = 0
    """Visual tokens per clip besides the groups' (e.g. LLaVA-OneVision's newline token)."""

    @property
    def groups(self) -> int:
        """Frame groups: ceil(num_frames / temporal_stride)."""
        return math.ceil(self.num_frames / self.temporal_stride)

    @property
    def num_visual_tokens(self) -> int:
        """Placeholder tokens per prompt."""
        return self.groups * self.tokens_per_group + self.extra_tokens


@dataclass
class HFVLMSettings:
    """An existing Hugging Face video-LLM (model.kind = hf_vlm)."""

    path: str | None = None
    """Local folder of the model (config.json + weights, tokenizer, chat template, preprocessor
    config), e.g. a downloaded Qwen2.5-VL-7B-Instruct; nothing is fetched from the hub."""
    processor_path: str | None = None
    """Folder of tokenizer / chat template / preprocessor config; None = ``path``."""
    trust_remote_code: bool = False
    """Allow the folder's own Python code (off: only transformers' built-in classes run)."""
    freeze_vision: bool = True
    """Keep the vision tower fixed (Qwen: model.visual minus its merger; LLaVA: vision_tower)."""
    freeze_projector: bool = False
    """Keep the projector fixed (Qwen: visual.merger; LLaVA: multi_modal_projector + image_newline)."""
    freeze_llm: bool = False
    """Keep the language model and LM head fixed (LoRA adapters, if enabled, still train)."""
    video_fps: float = 2.0
    """Sampled frames per second assumed for Qwen2.5-VL's temporal positions (second_per_grid_ts)."""
    lora_target_regex: str = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj)"
    """peft target_modules regex of the LoRA adapters (model.lora.enabled); the language model only."""

    def problems(self) -> list[tuple[str, str]]:
        """(field, message) for every bad value (the path is required by ModelConfig for kind hf_vlm)."""
        out = []
        if not self.video_fps > 0:
            out.append(("video_fps", f"must be > 0, got {self.video_fps}"))
        if "lm_head" in self.lora_target_regex:
            out.append(("lora_target_regex", "must not match lm_head (it is the loss module)"))
        return out


@dataclass
class VisionTowerConfig:
    """The vision tower (SigLIP or CLIP vision model from transformers)."""

    kind: Literal["siglip", "clip"] = "siglip"
    """Tower family: SiglipVisionModel or CLIPVisionModel."""
    path: str | None = None
    """Local directory of a pretrained tower (real runs); takes precedence over ``config``."""
    config: dict[str, Any] | None = field(default_factory=lambda: {
        "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
        "patch_size": 8})
    """Keyword arguments of SiglipVisionConfig / CLIPVisionConfig for a tower built from scratch."""
    image_size: int | None = 32
    """Input size of a tower built from ``config`` (frames are resized to it); ignored with ``path``."""
    feature_layer: int = -1
    """Hidden-state index fed to the projector (-1 = last output, -2 = penultimate as in LLaVA)."""
    freeze: bool = True
    """Keep the tower's weights fixed (it then runs without autograd)."""
    mean: list[float] | None = None
    """Pixel mean; None = the tower's preprocessor_config.json or the family default."""
    std: list[float] | None = None
    """Pixel std; None = as ``mean``."""

    def problems(self) -> list[tuple[str, str]]:
        """(field, message) for every bad value."""
        out = []
        if self.path is None and self.config is None:
            out.append(("config", "give a path or a config dict"))
        if self.image_size is not None and self.image_size < 1:
            out.append(("image_size", f"must be >= 1, got {self.image_size}"))
        for name in ("mean", "std"):
            v = getattr(self, name)
            if v is not None and (len(v) != 3 or (name == "std" and min(v) <= 0)):
                out.append((name, f"must be 3 values{' > 0' if name == 'std' else ''}, got {v}"))
        return out


@dataclass
class ProjectorConfig:
    """Pooling of patch tokens and the MLP into the LLM's embedding space."""

    pool: list[int] = field(default_factory=lambda: [2, 2])
    """Spatial grid [h, w] of visual tokens per frame group (adaptive average pooling)."""
    temporal_stride: int = 1
    """Consecutive frames averaged into one group (1 = every frame its own tokens)."""
    hidden: int | None = None
    """MLP hidden width; None = the LLM's hidden size."""
    center: bool = False
    """Subtract the clip's mean visual token from each of its tokens, then LayerNorm each token
    (no parameters). A small tower's output is mostly what every clip shares (background, position,
    biases); without this a from-scratch LLM learns to ignore the frames (docs/RESULTS.md)."""
    temporal_pos: int = 0
    """Frame groups with a learned temporal position embedding added to their visual tokens (after
    centering), 0 = none. With it the tokens themselves say which frame they come from (a "video"
    projector); without it the LLM can tell frames apart only through its own positions (RoPE), which a
    small LLM barely learns to read (docs/RESULTS.md, "Reasoning over time"). Must be >= the frame
    groups trained on (num_frames / temporal_stride)."""
    init_from: str | None = None
    """Start from an aligned projector: a stage-1 export folder (its projector.safetensors) or that
    file (task.mode caption, docs/TRAINING.md "Stage-1 alignment"); None = random init."""

    def problems(self) -> list[tuple[str, str]]:
        """(field, message) for every bad value."""
        out = []
        if len(self.pool) != 2 or min(self.pool) < 1:
            out.append(("pool", f"must be [h, w] with h, w >= 1, got {self.pool}"))
        if self.temporal_stride < 1:
            out.append(("temporal_stride", f"must be >= 1, got {self.temporal_stride}"))
        if self.hidden is not None and self.hidden < 1:
            out.append(("hidden", f"must be >= 1 or null, got {self.hidden}"))
        if self.temporal_pos < 0:
            out.append(("temporal_pos", f"must be >= 0 (0 = no temporal position embedding), got {self.temporal_pos}"))
        return out


@dataclass
class LanguageModelConfig:
    """The causal LM (any AutoModelForCausalLM)."""

    path: str | None = None
    """Local directory of a pretrained LLM; takes precedence over ``config``."""
    config: dict[str, Any] | None = field(default_factory=lambda: {
        "model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 2048})
    """AutoConfig.for_model kwargs with "model_type" (llama, qwen2, ...); vocab_size and special
    token ids are set from the tokenizer."""
    freeze: bool = False
    """Keep the LLM's weights fixed (LoRA adapters, if enabled, still train)."""

    def problems(self) -> list[tuple[str, str]]:
        """(field, message) for every bad value."""
        if self.path is None and self.config is None:
            return [("config", "give a path or a config dict")]
        if self.path is None and "model_type" not in self.config:
            return [("config", "needs a 'model_type' (e.g. 'llama', 'qwen2')")]
        return []


@dataclass
class LoraSettings:
    """LoRA adapters on the LLM (peft)."""

    enabled: bool = False
    """Add LoRA adapters; the LLM's base weights are then frozen."""
    r: int = 8
    """Adapter rank."""
    alpha: int = 16
    """LoRA scaling numerator (scale = alpha / r)."""
    dropout: float = 0.0
    """Dropout on the adapter input."""
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_LORA_TARGETS))
    """Names of the LLM's linear layers that get adapters (never lm_head: it is the loss module)."""

    def problems(self) -> list[tuple[str, str]]:
        """(field, message) for every bad value."""
        out = []
        if self.r < 1:
            out.append(("r", f"must be >= 1, got {self.r}"))
        if not 0 <= self.dropout < 1:
            out.append(("dropout", f"must be in [0, 1), got {self.dropout}"))
        if "lm_head" in self.target_modules:
            out.append(("target_modules", "must not hold lm_head (it is the loss module)"))
        return out


FAMILY_TRAITS: dict[str, dict[str, Any]] = {
    "assembled": {"sections": ("vision", "projector", "llm", "lora"), "frame_views": True},
    "hf_vlm": {"sections": ("hf", "lora"), "frame_views": False},
}
"""What the config checks need to know of each ``model.kind``: the sections it reads and whether it
supports the frame-view ablations (``model.frame_view``). Both pack sequences (``data.packing``). The
families themselves are registered in ``train.models.registry``."""


@dataclass
class ModelConfig:
    """Vision tower -> projector -> LLM (assembled), or an existing HF video-LLM (hf_vlm)."""

    kind: Literal["assembled", "hf_vlm"] = "assembled"
    """assembled: vision tower + fresh projector + causal LM (sections vision/projector/llm);
    hf_vlm: an existing transformers video-LLM from a local folder (section hf, train.models.hf_vlm)."""
    hf: HFVLMSettings = field(default_factory=HFVLMSettings)
    """The existing video-LLM of kind hf_vlm (Qwen2-VL, Qwen2.5-VL, LLaVA-OneVision)."""
    vision: VisionTowerConfig = field(default_factory=VisionTowerConfig)
    """The vision tower."""
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    """Pooling and MLP projector."""
    llm: LanguageModelConfig = field(default_factory=LanguageModelConfig)
    """The causal LM."""
    lora: LoraSettings = field(default_factory=LoraSettings)
    """LoRA on the LLM."""
    attn_implementation: Literal["auto", "sdpa", "flash_attention_2", "eager"] = "auto"
    """Attention backend; auto = vqa_kernels.attention.select_attention (flash-attn on a GPU if
    importable, else SDPA). The choice is logged and kept in VideoLLM.attention_report."""
    gradient_checkpointing: bool = False
    """Recompute LLM (and trained vision) layer activations in backward to save memory."""
    loss_chunk_size: int = 1024
    """Tokens per chunk of the fused linear cross-entropy (bounds the [chunk, vocab] logits)."""
    frame_view: Literal["all", "blind", "last", "shuffled"] = "all"
    """What the model sees of its frames, in training and evaluation alike (the reference rows of the
    study, docs/RESULTS.md): ``all`` the frames in order; ``blind`` every frame black (the tower runs on
    zeros), so only the text can inform an answer (text-only reference, and the negative control of the
    convergence test); ``last`` only the last frame (the others black: the last-frame reference);
    ``shuffled`` the frames in a fresh random order at every forward (the order-invariant reference:
    what can be answered from the set of frames without their order). Assembled models only."""

    def problems(self) -> list[tuple[str, str]]:
        """(field, message) for every bad value of this section and its subsections."""
        out = [] if self.loss_chunk_size >= 1 else [("loss_chunk_size", f"must be >= 1, got {self.loss_chunk_size}")]
        if "hf" in FAMILY_TRAITS[self.kind]["sections"] and not self.hf.path:
            out.append(("hf.path", f"model.kind {self.kind} needs a local model folder"))
        if self.frame_view != "all" and not FAMILY_TRAITS[self.kind]["frame_views"]:
            out.append(("frame_view", f"frame views other than 'all' are for assembled models, not model.kind "
                                      f"{self.kind}"))
        for name in FAMILY_TRAITS[self.kind]["sections"]:
            out += [(f"{name}.{f}", m) for f, m in getattr(self, name).problems()]
        return out

    def frame_layout(self, num_frames: int) -> FrameLayout:
        """The prompt's placeholder layout of an assembled model for ``num_frames`` frames."""
        ph, pw = self.projector.pool
        return FrameLayout(num_frames, self.projector.temporal_stride, ph * pw)
