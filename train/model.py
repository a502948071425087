"""The video LLM: vision tower -> projector -> any HF causal LM, with the loss module as LM head.

Data path of :meth:`VideoLLM.forward`::

    pixel_values uint8 [B,T,3,H,W] --FrameEncoder (normalise, resize, SigLIP/CLIP)--> [B*T, P, Dv]
      --Projector (spatial pool to ph x pw per frame, temporal stride, MLP)--> [B, Nv, D]
    input_ids [B,L] --embed_tokens--> [B,L,D], frame placeholders replaced by the Nv features
      --LLM decoder (llm.get_decoder(), flash-attn or SDPA)--> hidden [B,L,D]
      --shift by one, keep target positions--> [N,D] --LinearWeightedCrossEntropy--> sum_i w_i CE_i

The LLM's ``lm_head`` IS the loss module (``kernels.LinearWeightedCrossEntropy``): under ZeRO-3
a parameter is gathered only inside the forward of the module that owns it, and the HF
state-dict key stays ``lm_head.weight``, so ``save_pretrained`` of the LLM loads back with
``AutoModelForCausalLM.from_pretrained``. The module shares the head's Parameter, so tied
input/output embeddings (e.g. small Qwen2) stay tied; the tiny configs are untied.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerBase

from kernels import LinearWeightedCrossEntropy
from kernels.attention import select_attention
from train import flops as flops_mod
from train import generation
from train.hf_vlm import HFVLMSettings
from train.projector import FrameEncoder, Projector, build_vision_tower, load_projector, tower_mean_std
from train.tasks import FrameLayout
from train.tokenizer import frame_token_id

try:  # peft is optional (LoRA); imported up front for the same zero.Init reason as transformers
    import peft
except ImportError:  # pragma: no cover - exercised only where peft is missing
    peft = None

log = logging.getLogger(__name__)

DEFAULT_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


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


@dataclass
class ModelConfig:
    """Vision tower -> projector -> LLM (assembled), or an existing HF video-LLM (hf_vlm)."""

    kind: Literal["assembled", "hf_vlm"] = "assembled"
    """assembled: vision tower + fresh projector + causal LM (sections vision/projector/llm);
    hf_vlm: an existing transformers video-LLM from a local folder (section hf, train.hf_vlm)."""
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
    """Attention backend; auto = kernels.attention.select_attention (flash-attn on a GPU if
    importable, else SDPA). The choice is logged and kept in VideoLLM.attention_report."""
    gradient_checkpointing: bool = False
    """Recompute LLM (and trained vision) layer activations in backward to save memory."""
    loss_chunk_size: int = 1024
    """Tokens per chunk of the fused linear cross-entropy (bounds the [chunk, vocab] logits)."""
    blind: bool = False
    """Ablation (assembled models): every frame the model sees is black (the tower runs on zeros), so
    only the text can inform an answer: the text-only baseline, and the negative control of the
    convergence test (tests/eval/test_convergence.py)."""

    def problems(self) -> list[tuple[str, str]]:
        """(field, message) for every bad value of this section and its subsections."""
        out = [] if self.loss_chunk_size >= 1 else [("loss_chunk_size", f"must be >= 1, got {self.loss_chunk_size}")]
        if self.kind == "hf_vlm" and not self.hf.path:
            out.append(("hf.path", "model.kind hf_vlm needs a local model folder"))
        if self.kind == "hf_vlm" and self.blind:
            out.append(("blind", "the black-frames ablation is for assembled models (model.kind assembled)"))
        names = ("hf", "lora") if self.kind == "hf_vlm" else ("vision", "projector", "llm", "lora")
        for name in names:
            out += [(f"{name}.{f}", m) for f, m in getattr(self, name).problems()]
        return out

    def frame_layout(self, num_frames: int) -> FrameLayout:
        """The prompt's placeholder layout for ``num_frames`` frames."""
        ph, pw = self.projector.pool
        return FrameLayout(num_frames, self.projector.temporal_stride, ph * pw)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Nested dict (e.g. from JSON) -> ModelConfig; unknown keys raise ValueError."""
        subs = {"vision": VisionTowerConfig, "projector": ProjectorConfig, "llm": LanguageModelConfig,
                "lora": LoraSettings, "hf": HFVLMSettings}
        kwargs = {}
        for key, value in data.items():
            if key not in {f.name for f in dataclasses.fields(cls)}:
                raise ValueError(f"model config: unknown key {key!r}")
            if key in subs:
                known = {f.name for f in dataclasses.fields(subs[key])}
                bad = set(value) - known
                if bad:
                    raise ValueError(f"model config: unknown key(s) {sorted(bad)} in {key!r}")
                value = subs[key](**value)
            kwargs[key] = value
        return cls(**kwargs)


def resolve_attention(requested: str, device: torch.device | str | None = None) -> tuple[str, str]:
    """(HF attn_implementation, reason) for a requested backend ("auto" asks kernels.attention)."""
    if requested != "auto":
        return requested, f"set in the config (model.attn_implementation={requested})"
    return select_attention(torch.device(device) if device is not None else
                            torch.device("cuda" if torch.cuda.is_available() else "cpu"))


def build_model(cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase, device: torch.device | str | None = None,
                dtype: torch.dtype | None = None) -> VideoLLM:
    """Assemble the VideoLLM from its config (nothing is downloaded).

    Args:
        cfg: the model config.
        tokenizer: from :func:`train.tokenizer.build_tokenizer`; sets the LLM's vocabulary size
            (embeddings are resized when a pretrained LLM's vocabulary is smaller).
        device: where attention will run (only used to choose the backend; the model is built
            on CPU or inside the caller's deepspeed.zero.Init context).
        dtype: parameter dtype of pretrained parts loaded from a path (None = their own).

    ZeRO-3: to build partitioned, call inside ``deepspeed.zero.Init(config_dict_or_path=ds)``
    AND keep a ``transformers.integrations.HfDeepSpeedConfig(ds)`` alive: without it HF's weight
    initialisation reads the empty [0] shards and fails.

    Returns:
        The model, with ``attention_report`` = (impl, reason).
    """
    if cfg.kind == "hf_vlm":
        from train.hf_inputs import VideoChatProcessor
        from train.hf_vlm import build_hf_vlm

        # the trainer passes the VLM's VideoChatProcessor as its "tokenizer"
        return build_hf_vlm(cfg, tokenizer if isinstance(tokenizer, VideoChatProcessor) else None, device, dtype)
    impl, reason = resolve_attention(cfg.attn_implementation, device)
    log.info("attention: %s (%s)", impl, reason)
    tower = build_vision_tower(cfg.vision.kind, cfg.vision.path, cfg.vision.config, cfg.vision.image_size,
                               impl, dtype)
    mean, std = tower_mean_std(cfg.vision.kind, cfg.vision.path)
    encoder = FrameEncoder(tower, cfg.vision.kind, cfg.vision.mean or mean, cfg.vision.std or std,
                           cfg.vision.feature_layer)
    specials = {"vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id,
                "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    if cfg.llm.path is not None:
        if not Path(cfg.llm.path).is_dir():
            raise FileNotFoundError(f"model.llm.path {cfg.llm.path} is not a directory")
        llm = AutoModelForCausalLM.from_pretrained(cfg.llm.path, local_files_only=True,
                                                   attn_implementation=impl, dtype=dtype)
        if llm.get_input_embeddings().num_embeddings < len(tokenizer):
            llm.resize_token_embeddings(len(tokenizer))
    elif cfg.llm.config is not None:
        kw = dict(cfg.llm.config)
        if "model_type" not in kw:
            raise ValueError("model.llm.config needs a 'model_type' (e.g. 'llama', 'qwen2')")
        llm_cfg = AutoConfig.for_model(kw.pop("model_type"), **{"tie_word_embeddings": False, **kw, **specials})
        llm = AutoModelForCausalLM.from_config(llm_cfg, attn_implementation=impl)
    else:
        raise ValueError("model.llm needs a path or a config dict")
    _install_loss_head(llm, cfg.loss_chunk_size)
    llm_dim = int(llm.config.hidden_size)
    projector = Projector(encoder.hidden_size, llm_dim, encoder.grid, tuple(cfg.projector.pool),
                          cfg.projector.temporal_stride, cfg.projector.hidden, cfg.projector.center)
    if cfg.projector.init_from:
        load_projector(projector, cfg.projector.init_from)
    model = VideoLLM(cfg, encoder, projector, llm, frame_token_id(tokenizer), (impl, reason))
    model.apply_training_flags()
    return model



def _install_loss_head(llm: nn.Module, chunk_size: int) -> None:
    """Replace ``llm.lm_head`` (nn.Linear) by the loss module holding the SAME Parameter objects.

    Sharing (not copying) keeps a ZeRO-3-partitioned weight intact when the model is built
    inside ``deepspeed.zero.Init``, and keeps tied input/output embeddings tied (HF then saves
    and reloads them as tied). The state-dict key stays ``lm_head.weight``.
    """
    old = llm.get_output_embeddings()
    if not isinstance(old, nn.Linear):
        raise TypeError(f"the LLM's output layer is {type(old).__name__}, expected nn.Linear")
    # from_linear sizes the module from in/out_features, so a ZeRO-3-partitioned head works too.
    head = LinearWeightedCrossEntropy.from_linear(old, share=True, chunk_size=chunk_size)
    llm.set_output_embeddings(head)


def unique_adjacent_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Collapse runs of identical consecutive rows: (index long [B] into unique, unique [U, ...])."""
    if x.shape[0] == 1:
        return torch.zeros(1, dtype=torch.long, device=x.device), x
    same = (x[1:] == x[:-1]).flatten(1).all(dim=1)  # one comparison pass, one host sync
    new = torch.cat([torch.ones(1, dtype=torch.bool, device=x.device), ~same])
    return new.long().cumsum(0) - 1, x[new]


class VideoLLM(nn.Module):
    """Vision tower + projector + causal LM whose lm_head is the weighted cross-entropy module.

    Attributes:
        config: the ModelConfig it was built from.
        vision: FrameEncoder (the HF tower is ``vision.tower``).
        projector: Projector.
        llm: the HF causal LM (a peft PeftModel around it when LoRA is enabled).
        frame_token_id: id of the frame placeholder token.
        attention_report: (HF attn_implementation, why it was chosen).
    """

    def __init__(self, config: ModelConfig, vision: FrameEncoder, projector: Projector, llm: nn.Module,
                 frame_token_id: int, attention_report: tuple[str, str]):
        super().__init__()
        self.config = config
        self.vision = vision
        self.projector = projector
        self.llm = llm
        self.frame_token_id = int(frame_token_id)
        self.attention_report = attention_report

    # ------------------------------------------------------------------ set-up
    def apply_training_flags(self) -> None:
        """Freezing, LoRA and gradient checkpointing as the config says (called by build_model)."""
        cfg = self.config
        self.vision.tower.requires_grad_(not cfg.vision.freeze)
        if cfg.lora.enabled:
            if peft is None:
                raise ImportError("model.lora.enabled needs peft (pip install peft)")
            if "lm_head" in cfg.lora.target_modules:
                raise ValueError("model.lora.target_modules must not hold lm_head (it is the loss module)")
            lcfg = peft.LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                              target_modules=list(cfg.lora.target_modules), bias="none")
            self.llm = peft.get_peft_model(self.llm, lcfg)  # freezes every non-adapter LLM weight
        elif cfg.llm.freeze:
            self.llm.requires_grad_(False)
        if cfg.gradient_checkpointing:
            kwargs = {"use_reentrant": False}  # works when the checkpointed inputs need no grad
            self.causal_lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
            if not cfg.vision.freeze:
                self.vision.tower.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)

    @property
    def causal_lm(self) -> nn.Module:
        """The HF causal LM itself (inside the peft wrapper when there is one)."""
        return self.llm.get_base_model() if hasattr(self.llm, "peft_config") else self.llm

    @property
    def loss_head(self) -> nn.Module:
        """The LinearWeightedCrossEntropy module (the LLM's lm_head)."""
        return self.causal_lm.get_output_embeddings()

    @property
    def vision_trainable(self) -> bool:
        return any(p.requires_grad for p in self.vision.parameters())

    def frame_layout(self, num_frames: int) -> FrameLayout:
        """Placeholder layout of a prompt for ``num_frames`` frames."""
        return FrameLayout(num_frames, self.projector.temporal_stride, self.projector.tokens_per_group)

    # ------------------------------------------------------------------ forward pieces
    def encode_frames(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """uint8 [B, T, 3, H, W] -> visual tokens [B, Nv, D_llm] (Nv = frame_layout(T).num_visual_tokens).

        A row equal to the row before it (the QA and reasoning sequences of one question sit next
        to each other in a collated batch) reuses that row's features: the tower and projector
        run once per distinct clip.
        """
        if pixel_values.dim() != 5:
            raise ValueError(f"pixel_values must be [B, T, 3, H, W], got {tuple(pixel_values.shape)}")
        if self.config.blind:
            pixel_values = torch.zeros_like(pixel_values)
        index, unique = unique_adjacent_rows(pixel_values)
        U, T = unique.shape[:2]
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.vision_trainable):
            feats = self.vision(unique.flatten(0, 1))  # [U*T, P, Dv]
        visual = self.projector(feats.reshape(U, T, *feats.shape[1:]))
        return visual if U == pixel_values.shape[0] else visual.index_select(0, index)

    def embed(self, input_ids: torch.Tensor, visual: torch.Tensor, packed: bool = False) -> torch.Tensor:
        """Token embeddings with the frame placeholders replaced by ``visual`` [E, Nv, D].

        Unpacked, row i holds example i (E = B rows). Packed (``packed=True``), a row holds several
        examples and ``visual`` lists every example's tokens in row-major order, which is the order
        ``masked_scatter`` fills the placeholders in.

        Raises:
            ValueError: a row does not hold exactly Nv placeholders (or, packed, the batch not E * Nv;
                names the rows and counts).
        """
        emb = self.causal_lm.get_input_embeddings()(input_ids)
        mask = input_ids == self.frame_token_id
        counts = mask.sum(dim=1)
        n_vis = visual.shape[1]
        if packed:
            if int(counts.sum()) != visual.shape[0] * n_vis or bool((counts % n_vis != 0).any()):
                raise ValueError(f"packed frame placeholders: {int(counts.sum())} in the batch (per row "
                                 f"{counts.tolist()[:8]}), expected {visual.shape[0]} examples x {n_vis}")
        elif visual.shape[0] != input_ids.shape[0] or bool((counts != n_vis).any()):
            bad = [(i, int(c)) for i, c in enumerate(counts.tolist()) if c != n_vis][:5]
            raise ValueError(f"frame placeholders: each row needs exactly {n_vis} (= frame groups x tokens "
                             f"per group) for {visual.shape[0]} clips; rows with other counts (row, count): "
                             f"{bad}. Build prompts with model.frame_layout(num_frames).")
        # masked_scatter fills the placeholder positions in row-major order = visual's order.
        return emb.masked_scatter(mask.unsqueeze(-1), visual.to(emb.dtype))

    def decoder_forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None,
                        position_ids: torch.Tensor | None = None, past_key_values: Any = None,
                        use_cache: bool = False) -> Any:
        """The LLM's base model (no head) on input embeddings; returns the HF output object."""
        return self.causal_lm.get_decoder()(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                            position_ids=position_ids, past_key_values=past_key_values,
                                            use_cache=use_cache)

    def hidden_states(self, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                      attention_mask: torch.Tensor | None, position_ids: torch.Tensor | None = None,
                      segment_ids: torch.Tensor | None = None, clip_index: torch.Tensor | None = None
                      ) -> torch.Tensor:
        """Last hidden states [B, L, D] of the LLM for frames + tokens.

        Packed rows (``train.packing.pack_collate``) give ``segment_ids`` [R, L], ``position_ids``
        [R, L] and ``clip_index`` [E]: pixel_values then holds each distinct clip once [C, ...],
        and attention stays inside each example (:meth:`packed_decoder_forward`).
        """
        if segment_ids is None:
            emb = self.embed(input_ids, self.encode_frames(pixel_values))
            return self.decoder_forward(emb, attention_mask).last_hidden_state
        if position_ids is None or clip_index is None:
            raise ValueError("packed inputs need position_ids, segment_ids and clip_index together")
        visual = self.encode_frames(pixel_values).index_select(0, clip_index)  # [E, Nv, D]
        return self.packed_decoder_forward(self.embed(input_ids, visual, packed=True), position_ids, segment_ids)

    def use_sdpa_varlen(self) -> str:
        """Packed rows without masked attention work on SDPA: switch an ``sdpa`` LLM to
        ``sdpa_varlen`` (:func:`train.packing.sdpa_varlen_attention`: one SDPA call per packed
        sequence; unpacked inputs run plain sdpa unchanged). Other backends are kept. Returns the
        LLM's attn_implementation."""
        from train.packing import register_sdpa_varlen

        cfg = self.causal_lm.config
        if cfg._attn_implementation == "sdpa":
            cfg._attn_implementation = register_sdpa_varlen()
        return cfg._attn_implementation

    @property
    def packing_attention(self) -> str:
        """How attention keeps packed examples apart with this model's backend (logged by the trainer)."""
        from train.packing import packing_attention

        return packing_attention(self.causal_lm.config._attn_implementation)

    def packed_decoder_forward(self, inputs_embeds: torch.Tensor, position_ids: torch.Tensor,
                               segment_ids: torch.Tensor) -> torch.Tensor:
        """The LLM decoder on packed rows: hidden [R, L, D]; no token attends outside its example
        (flash-attn varlen or a block-diagonal causal mask, see :func:`train.packing.packed_decoder`)."""
        from train.packing import packed_decoder

        return packed_decoder(self.causal_lm.get_decoder(), self.causal_lm.config._attn_implementation,
                              inputs_embeds, position_ids, segment_ids)

    def head_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [..., D] -> logits [..., V] by the loss module (its forward without targets)."""
        return self.loss_head(hidden)  # no target -> logits; through __call__ so ZeRO-3 hooks run

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                labels: torch.Tensor, loss_weight: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                segment_ids: torch.Tensor | None = None, clip_index: torch.Tensor | None = None
                ) -> dict[str, torch.Tensor]:
        """Weighted LM loss on the target positions.

        Args:
            pixel_values: uint8 [B, T, 3, H, W].
            input_ids, attention_mask: long [B, L] (right-padded).
            labels: long [B, L]; the token to predict at that position, -100 = no target. Hidden
                state t predicts labels[t + 1] (the shift is done here).
            loss_weight: float [B, L] aligned with labels (``train.tasks.token_weights``);
                None = weight 1 on every target.
            position_ids, segment_ids, clip_index: a packed micro-batch (``train.packing``); then
                pixel_values holds the distinct clips [C, T, 3, H, W]. The loss is the same sum: each
                example's first token is a prompt token, so the shift never crosses examples.

        Returns:
            {"loss": scalar sum_i w_i * CE_i (fp32), "n_tokens": long scalar, target count}.
        """
        hidden = self.hidden_states(pixel_values, input_ids, attention_mask, position_ids, segment_ids, clip_index)
        h = hidden[:, :-1].reshape(-1, hidden.shape[-1])
        tgt = labels[:, 1:].reshape(-1)
        w = (torch.ones_like(tgt, dtype=torch.float32) if loss_weight is None
             else loss_weight[:, 1:].reshape(-1).float())
        sel = (tgt != -100).nonzero().squeeze(1)
        n_tokens = sel.numel()
        if n_tokens == 0:
            # Still run the head (one row, weight 0): under ZeRO-3 every rank must enter it.
            sel = torch.zeros(1, dtype=torch.long, device=h.device)
            tgt, w = torch.zeros_like(tgt), torch.zeros_like(w)
        loss = self.loss_head(h.index_select(0, sel), tgt.index_select(0, sel), w.index_select(0, sel))
        return {"loss": loss, "n_tokens": torch.tensor(n_tokens, device=h.device)}

    @torch.no_grad()
    def logits(self, pixel_values: torch.Tensor, input_ids: torch.Tensor,
               attention_mask: torch.Tensor | None = None, **packed: torch.Tensor) -> torch.Tensor:
        """Full logits float [B, L, V] (eval and tests; training never materialises them);
        ``packed``: position_ids, segment_ids, clip_index of a packed batch."""
        return self.head_logits(self.hidden_states(pixel_values, input_ids, attention_mask, **packed)).float()

    # ------------------------------------------------------------------ eval helpers
    def generate(self, pixel_values: torch.Tensor, prompt_ids: list[list[int]], max_new_tokens: int = 64,
                 eos_token_id: int | None = None, pad_token_id: int = 0) -> list[list[int]]:
        """Greedy decoding with a KV cache; see :func:`train.generation.generate`."""
        return generation.generate(self, pixel_values, prompt_ids, max_new_tokens, eos_token_id, pad_token_id)

    def option_logprobs(self, pixel_values: torch.Tensor, prompt_ids: list[list[int]],
                        option_ids: list[list[list[int]]], pad_token_id: int = 0,
                        max_rows: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
        """Sum log-prob and token count of each option; see :func:`train.generation.option_logprobs`."""
        return generation.option_logprobs(self, pixel_values, prompt_ids, option_ids, pad_token_id, max_rows)

    def score_options(self, tokenizer: PreTrainedTokenizerBase, pixel_values: torch.Tensor,
                      questions: list[str], options: list[list[str]],
                      captions: list[list[str | None] | None] | None = None,
                      answer_format: str = "letter") -> dict[str, torch.Tensor]:
        """Text-level option scoring; see :func:`train.generation.score_options`."""
        return generation.score_options(self, tokenizer, pixel_values, questions, options, captions, answer_format)

    def generate_text(self, tokenizer: PreTrainedTokenizerBase, pixel_values: torch.Tensor,
                      questions: list[str], options: list[list[str]],
                      captions: list[list[str | None] | None] | None = None, task: str = "qa",
                      answer_format: str = "letter", max_new_tokens: int = 64) -> list[str]:
        """Text-level greedy answers / reasoning; see :func:`train.generation.generate_text`."""
        return generation.generate_text(self, tokenizer, pixel_values, questions, options, captions, task,
                                        answer_format, max_new_tokens)

    # ------------------------------------------------------------------ FLOPs
    def flops_dims(self) -> flops_mod.FlopsDims:
        """Dimensions for the FLOPs formula, from the HF configs (valid under ZeRO-3)."""
        lc, vc = self.causal_lm.config.get_text_config(), self.vision.tower.config
        heads = int(lc.num_attention_heads)
        head_dim = int(getattr(lc, "head_dim", None) or lc.hidden_size // heads)
        patches = self.vision.grid ** 2 + (1 if self.vision.kind == "clip" else 0)
        return flops_mod.FlopsDims(
            llm_hidden=int(lc.hidden_size), llm_intermediate=int(lc.intermediate_size),
            llm_layers=int(lc.num_hidden_layers), llm_heads=heads,
            llm_kv_heads=int(getattr(lc, "num_key_value_heads", None) or heads), llm_head_dim=head_dim,
            vocab_size=int(lc.vocab_size), vis_hidden=int(vc.hidden_size),
            vis_intermediate=int(vc.intermediate_size), vis_layers=int(vc.num_hidden_layers),
            vis_patches=patches, vis_patch_size=int(vc.patch_size), vis_channels=int(getattr(vc, "num_channels", 3)),
            proj_hidden=self.projector.fc1.out_features, tokens_per_group=self.projector.tokens_per_group,
            temporal_stride=self.projector.temporal_stride, train_vision=not self.config.vision.freeze,
            train_projector=True, train_llm=not (self.config.llm.freeze or self.config.lora.enabled),
            lora=self.config.lora.enabled)

    def flops_per_token(self, seq_len: int, num_frames: int, clips_per_sequence: float = 1.0) -> float:
        """Training model FLOPs per LLM sequence position (formula in :mod:`train.flops`)."""
        return flops_mod.flops_per_token(self.flops_dims(), seq_len, num_frames, clips_per_sequence)

    def batch_flops(self, batch: dict[str, Any]) -> float:
        """Training model FLOPs of one collated micro-batch: each sequence at its unpadded
        length, the LM head on its target tokens only (what the fused loss computes), one tower
        pass per distinct adjacent clip (as :meth:`encode_frames` runs it). Padding is not
        counted: it is work the step does, not work the model needs. A packed batch
        (``train.packing``) counts each example at its own length (attention never crosses
        examples) and each of its distinct clips once."""
        T = int(batch["pixel_values"].shape[1])
        if batch.get("packed"):
            B, clips = int(batch["n_examples"]), int(batch["pixel_values"].shape[0])
            lengths, targets = batch["example_lengths"], batch["example_targets"]
        else:
            B = batch["input_ids"].shape[0]
            clips = int(unique_adjacent_rows(batch["pixel_values"])[1].shape[0])
            lengths = batch["attention_mask"].sum(1).tolist()
            targets = (batch["labels"][:, 1:] != -100).sum(1).tolist()  # hidden t predicts labels[t + 1]
        d = self.flops_dims()
        return sum(flops_mod.flops_per_sample(d, int(n), T, clips / B, head_tokens=int(t))["total"]
                   for n, t in zip(lengths, targets))

    # ------------------------------------------------------------------ save / load
    def export_llm(self) -> nn.Module:
        """The HF causal LM for ``save_pretrained``, LoRA adapters merged IN PLACE (after this the
        model has no adapters). Its state dict has ``lm_head.weight``, so it loads back with
        ``AutoModelForCausalLM.from_pretrained`` (as an ordinary nn.Linear head)."""
        if hasattr(self.llm, "peft_config"):
            self.llm = self.llm.merge_and_unload()
        return self.llm

    def save_pretrained_parts(self, out_dir: str | Path, tokenizer: PreTrainedTokenizerBase | None = None) -> Path:
        """Write ``llm/`` and ``vision/`` (HF save_pretrained), ``projector.safetensors``,
        ``video_llm.json`` (the config pointing at those parts) and ``tokenizer/`` if given.

        Call on a model with full (not ZeRO-3-partitioned) parameters. Merges LoRA in place.
        """
        from safetensors.torch import save_file

        from train.prompts import PROMPT_VERSION

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.export_llm().save_pretrained(out / "llm")
        self.vision.tower.save_pretrained(out / "vision")
        save_file({k: v.detach().contiguous().cpu() for k, v in self.projector.state_dict().items()},
                  str(out / "projector.safetensors"))
        cfg = dataclasses.replace(
            self.config, lora=LoraSettings(enabled=False),
            vision=dataclasses.replace(self.config.vision, path="vision", config=None,
                                       mean=self.vision.mean.flatten().tolist(),
                                       std=self.vision.std.flatten().tolist()),
            llm=dataclasses.replace(self.config.llm, path="llm", config=None))
        meta = {"model_config": dataclasses.asdict(cfg), "frame_token_id": self.frame_token_id,
                "prompt_version": PROMPT_VERSION}
        (out / "video_llm.json").write_text(json.dumps(meta, indent=2))
        if tokenizer is not None:
            tokenizer.save_pretrained(out / "tokenizer")
        return out

    @classmethod
    def from_pretrained_parts(cls, path: str | Path, tokenizer: PreTrainedTokenizerBase | None = None,
                              device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                              attn_implementation: str | None = None
                              ) -> tuple[VideoLLM, PreTrainedTokenizerBase]:
        """Load what :meth:`save_pretrained_parts` wrote; returns (model in eval mode, tokenizer)."""
        from safetensors.torch import load_file

        from train.tokenizer import build_tokenizer

        root = Path(path)
        meta_path = root / "video_llm.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{root}: no video_llm.json (not written by save_pretrained_parts)")
        meta = json.loads(meta_path.read_text())
        cfg = ModelConfig.from_dict(meta["model_config"])
        cfg.vision.path = str(root / cfg.vision.path)
        cfg.llm.path = str(root / cfg.llm.path)
        if attn_implementation is not None:
            cfg.attn_implementation = attn_implementation
        if tokenizer is None:
            tokenizer = build_tokenizer(root / "tokenizer")
        if frame_token_id(tokenizer) != meta["frame_token_id"]:
            raise ValueError(f"{root}: tokenizer's frame token id {frame_token_id(tokenizer)} != "
                             f"{meta['frame_token_id']} the model was trained with")
        model = build_model(cfg, tokenizer, device=device, dtype=dtype)
        model.projector.load_state_dict(load_file(str(root / "projector.safetensors")))
        return model.eval(), tokenizer
