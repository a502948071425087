"""The video LLM: vision tower -> projector -> any HF causal LM, with the loss module as LM head.

Data path of :meth:`VideoLLM.forward`::

    pixel_values uint8 [B,T,3,H,W] --FrameEncoder (normalise, resize, SigLIP/CLIP)--> [B*T, P, Dv]
      --Projector (spatial pool to ph x pw per frame, temporal stride, MLP)--> [B, Nv, D]
    input_ids [B,L] --embed_tokens--> [B,L,D], frame placeholders replaced by the Nv features
      --LLM decoder (llm.get_decoder(), flash-attn or SDPA)--> hidden [B,L,D]
      --shift by one, keep target positions--> [N,D] --LinearWeightedCrossEntropy--> sum_i w_i CE_i

The LLM's ``lm_head`` IS the loss module (``vqa_kernels.LinearWeightedCrossEntropy``): under ZeRO-3
a parameter is gathered only inside the forward of the module that owns it, and the HF
state-dict key stays ``lm_head.weight``, so ``save_pretrained`` of the LLM loads back with
``AutoModelForCausalLM.from_pretrained``. The module shares the head's Parameter, so tied
input/output embeddings (e.g. small Qwen2) stay tied; the tiny configs are untied.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerBase

import train.models.generation as generation
from train import flops as flops_mod
from train import prompts
from train.config.model import FrameLayout, LoraSettings, ModelConfig
from train.config.parse import load_section
from train.config.task import TaskConfig
from train.loss import install_loss_head
from train.models.base import ModelFamily, VideoModel, resolve_attention
from train.models.projector import (
    FrameEncoder,
    Projector,
    apply_frame_view,
    build_vision_tower,
    load_projector,
    tower_mean_std,
)
from train.packing import pack_collate, packed_decoder, packing_attention, register_sdpa_varlen
from train.sequence_parallel import SequenceParallel, ShardPlan, register_ulysses
from train.tasks import PromptTooLong, collate, encode_prompt
from train.tokenizer import build_tokenizer, frame_token_id

try:  # peft is optional (LoRA); imported up front for the same zero.Init reason as transformers
    import peft
except ImportError:  # pragma: no cover - exercised only where peft is missing
    peft = None

log = logging.getLogger(__name__)


def build_assembled(cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase, device: torch.device | str | None = None,
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
    install_loss_head(llm, cfg.loss_chunk_size)
    llm_dim = int(llm.config.hidden_size)
    projector = Projector(encoder.hidden_size, llm_dim, encoder.grid, tuple(cfg.projector.pool),
                          cfg.projector.temporal_stride, cfg.projector.hidden, cfg.projector.center,
                          cfg.projector.temporal_pos)
    if cfg.projector.init_from:
        load_projector(projector, cfg.projector.init_from)
    model = VideoLLM(cfg, encoder, projector, llm, tokenizer, (impl, reason))
    model.apply_training_flags()
    return model


def unique_adjacent_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Collapse runs of identical consecutive rows: (index long [B] into unique, unique [U, ...])."""
    if x.shape[0] == 1:
        return torch.zeros(1, dtype=torch.long, device=x.device), x
    same = (x[1:] == x[:-1]).flatten(1).all(dim=1)  # one comparison pass, one host sync
    new = torch.cat([torch.ones(1, dtype=torch.bool, device=x.device), ~same])
    return new.long().cumsum(0) - 1, x[new]


class VideoLLM(VideoModel):
    """Vision tower + projector + causal LM whose lm_head is the weighted cross-entropy module.

    Attributes:
        config: the ModelConfig it was built from.
        vision: FrameEncoder (the HF tower is ``vision.tower``).
        projector: Projector.
        llm: the HF causal LM (a peft PeftModel around it when LoRA is enabled).
        tokenizer: the run's tokenizer (prompts with frame placeholders, :mod:`train.tasks`).
        frame_token_id: id of the frame placeholder token.
        attention_report: (HF attn_implementation, why it was chosen).
    """

    supports_packing = True

    def __init__(self, config: ModelConfig, vision: FrameEncoder, projector: Projector, llm: nn.Module,
                 tokenizer: PreTrainedTokenizerBase, attention_report: tuple[str, str]):
        super().__init__()
        self.config = config
        self.vision = vision
        self.projector = projector
        self.llm = llm
        self.tokenizer = tokenizer
        self.frame_token_id = int(frame_token_id(tokenizer))
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

    def frame_layout(self, num_frames: int, frame_size: tuple[int, int] | None = None) -> FrameLayout:
        """Placeholder layout of a prompt for ``num_frames`` frames (the tower resizes every frame to
        its own input size, so ``frame_size`` does not matter)."""
        return FrameLayout(num_frames, self.projector.temporal_stride, self.projector.tokens_per_group)

    def collate(self, examples: list, task: TaskConfig, packing: bool = False,
                row_capacity: int | None = None, visual_row_capacity: int | None = None) -> dict[str, Any]:
        """Examples -> one padded row each (``train.tasks.collate``) or packed rows
        (``train.packing.pack_collate``, rows of up to ``row_capacity`` tokens and ``visual_row_capacity``
        frame placeholders). Clips of different frame counts (the frame budget) get each their own layout
        and travel zero-padded with ``clip_frames`` (:meth:`embed_batch`)."""
        if not examples:
            raise ValueError("collate got no examples")
        clip = next((ex.frames for ex in examples if ex.frames is not None), None)
        layout = self.frame_layout(int(clip.shape[0]) if clip is not None else self.projector.temporal_stride)
        if packing:
            if row_capacity is None:
                raise ValueError("packing needs a row capacity (data.max_tokens_per_row)")
            return pack_collate(examples, self.tokenizer, task, layout, row_capacity, layout_for=self.frame_layout,
                                max_visual_tokens_per_row=visual_row_capacity, frame_token_id=self.frame_token_id)
        return collate(examples, self.tokenizer, task, layout, layout_for=self.frame_layout)

    def prompt_fits(self, example: Any, num_frames: int, max_prompt_len: int) -> bool:
        """Whether the prompt of ``example`` (:class:`train.tasks.Example`) with a clip of ``num_frames``
        frames fits ``max_prompt_len`` tokens, its question cut as the collate cuts it (the frame budget)."""
        try:
            encode_prompt(self.tokenizer, self.frame_layout(num_frames), example.question, example.options,
                          example.instruction, None, max_prompt_len, example.qid)
        except PromptTooLong:
            return False
        return True

    # ------------------------------------------------------------------ forward pieces
    def encode_frames(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """uint8 [B, T, 3, H, W] -> visual tokens [B, Nv, D_llm] (Nv = frame_layout(T).num_visual_tokens).

        A row equal to the row before it (the QA and reasoning sequences of one question sit next
        to each other in a collated batch) reuses that row's features: the tower and projector
        run once per distinct clip.
        """
        if pixel_values.dim() != 5:
            raise ValueError(f"pixel_values must be [B, T, 3, H, W], got {tuple(pixel_values.shape)}")
        index, unique = unique_adjacent_rows(pixel_values)
        unique = apply_frame_view(unique, self.config.frame_view)  # per clip: one shuffle for its QA + reasoning rows
        U, T = unique.shape[:2]
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.vision_trainable):
            feats = self.vision(unique.flatten(0, 1))  # [U*T, P, Dv]
        visual = self.projector(feats.reshape(U, T, *feats.shape[1:]))
        return visual if U == pixel_values.shape[0] else visual.index_select(0, index)

    def encode_clips(self, pixel_values: torch.Tensor, clip_frames: torch.Tensor) -> list[torch.Tensor]:
        """Clips of different frame counts -> their visual tokens, one [Nv_c, D_llm] each (Nv_c =
        ``frame_layout(clip_frames[c]).num_visual_tokens``).

        ``pixel_values`` uint8 [C, Tmax, 3, H, W] holds clip c in its first ``clip_frames[c]`` frames (the
        rest is padding, never encoded). The tower runs once on all real frames and the projector once on
        all of them (``Projector.forward`` with ``clip_frames``), so every rank runs the same modules the
        same number of times, whatever its mix of counts (ZeRO-3). A clip equal to the one before it (the
        QA and reasoning rows of one question) reuses its tokens.
        """
        if pixel_values.dim() != 5 or clip_frames.shape != pixel_values.shape[:1]:
            raise ValueError(f"pixel_values [C, T, 3, H, W] with clip_frames [C], got {tuple(pixel_values.shape)} "
                             f"and {tuple(clip_frames.shape)}")
        counts = [int(t) for t in clip_frames.tolist()]
        if min(counts) < 1 or max(counts) > pixel_values.shape[1]:
            raise ValueError(f"clip_frames {counts} outside 1..{pixel_values.shape[1]} (the padded clip length)")
        index, keep = [], []
        for c, t in enumerate(counts):
            if keep and counts[keep[-1]] == t and torch.equal(pixel_values[keep[-1], :t], pixel_values[c, :t]):
                index.append(len(keep) - 1)
            else:
                index.append(len(keep))
                keep.append(c)
        clips = [apply_frame_view(pixel_values[c:c + 1, :counts[c]], self.config.frame_view)[0] for c in keep]
        kept = [counts[c] for c in keep]
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.vision_trainable):
            feats = self.vision(torch.cat(clips))  # [sum T, P, Dv]
        tokens = self.projector(feats, clip_frames=kept)
        sizes = [self.frame_layout(t).num_visual_tokens for t in kept]
        unique = list(tokens.split(sizes))
        return [unique[i] for i in index]

    def embed_ragged(self, input_ids: torch.Tensor, clips: list[torch.Tensor]) -> torch.Tensor:
        """Token embeddings with the placeholders replaced by clips of different token counts.

        ``clips`` [Nv_e, D] per example with video, in row-major order (unpacked: one per row with
        placeholders; packed: every example of every row). Each row's placeholder count must be the sum of
        the clips it takes, in order.

        Raises:
            ValueError: the placeholders and the clips' tokens do not match (names the row and counts).
        """
        emb = self.causal_lm.get_input_embeddings()(input_ids)
        mask = input_ids == self.frame_token_id
        counts = mask.sum(dim=1).tolist()
        sizes = [int(v.shape[0]) for v in clips]
        if sum(counts) != sum(sizes):
            raise ValueError(f"frame placeholders: {sum(counts)} in the batch (per row {counts[:8]}), but the clips "
                             f"have {sum(sizes)} visual tokens ({sizes[:8]}). Build prompts with "
                             "model.frame_layout(frames of each clip).")
        k = 0
        for r, n in enumerate(counts):
            got = 0
            while got < n and k < len(sizes):
                got, k = got + sizes[k], k + 1
            if got != n:
                raise ValueError(f"frame placeholders of row {r}: {n}, but its clips have {got} visual tokens "
                                 f"(clip sizes in order {sizes[:8]})")
        visual = torch.cat(clips) if clips else emb.new_zeros((0, emb.shape[-1]))
        return emb.masked_scatter(mask.unsqueeze(-1), visual.to(emb.dtype))

    def embed(self, input_ids: torch.Tensor, visual: torch.Tensor, packed: bool = False) -> torch.Tensor:
        """Token embeddings with the frame placeholders replaced by ``visual`` [E, Nv, D].

        Unpacked, row i holds example i, and ``visual`` the clips of the rows that have placeholders,
        in row order (a text-only row has none: E <= B). Packed (``packed=True``), a row holds several
        examples and ``visual`` lists every example's tokens in row-major order, which is the order
        ``masked_scatter`` fills the placeholders in.

        Raises:
            ValueError: a row does not hold exactly 0 or Nv placeholders, or not E rows hold Nv (or,
                packed, the batch not E * Nv; names the rows and counts).
        """
        emb = self.causal_lm.get_input_embeddings()(input_ids)
        mask = input_ids == self.frame_token_id
        counts = mask.sum(dim=1)
        n_vis = visual.shape[1]
        if not packed and visual.shape[0] < input_ids.shape[0] and bool(((counts == 0) | (counts == n_vis)).all()):
            packed = True  # text-only rows among video rows: the E video rows take the E clips in row order
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

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                      pixel_values: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                      segment_ids: torch.Tensor | None = None, clip_index: torch.Tensor | None = None,
                      clip_frames: torch.Tensor | None = None) -> torch.Tensor:
        """Last hidden states [B, L, D] of the LLM for frames uint8 [B, T, 3, H, W] + tokens [B, L].

        Packed rows (``train.packing.pack_collate``) give ``segment_ids`` [R, L], ``position_ids``
        [R, L] and ``clip_index`` [E]: pixel_values then holds each distinct clip once [C, ...],
        and attention stays inside each example (:meth:`packed_decoder_forward`). ``clip_frames`` [C]:
        clips of different frame counts, zero-padded (the frame budget, :meth:`embed_batch`).
        """
        if pixel_values is None and bool((input_ids == self.frame_token_id).any()):
            raise ValueError("the assembled model needs pixel_values uint8 [B, T, 3, H, W] for its frame placeholders")
        if segment_ids is None:
            emb = self.embed_batch(input_ids, pixel_values, None, clip_frames)
            return self.decoder_forward(emb, attention_mask).last_hidden_state
        if position_ids is None or clip_index is None:
            raise ValueError("packed inputs need position_ids, segment_ids and clip_index together")
        emb = self.embed_batch(input_ids, pixel_values, clip_index, clip_frames)
        return self.packed_decoder_forward(emb, position_ids, segment_ids)

    def embed_batch(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None,
                    clip_index: torch.Tensor | None, clip_frames: torch.Tensor | None = None) -> torch.Tensor:
        """Embeddings of a training batch with its clips' visual tokens in place (``clip_index``: packed).

        ``clip_frames`` long [C] (clips of different frame counts, the frame budget): clip c is
        ``pixel_values[c, :clip_frames[c]]`` (:meth:`encode_clips`), and its own number of visual tokens fills
        its placeholders (:meth:`embed_ragged`). None: the single-count path, unchanged.

        A batch without any clip (every example text-only) still runs the tower and projector, on one
        black clip whose features enter the embeddings times 0: under ZeRO-3 every rank must gather the
        same parameters in the same order and reduce a gradient for each of them, so a rank whose
        micro-batch has no video while another rank's has must run the same modules (otherwise the
        job hangs), in the same order (tower, then token embeddings). The gradient it adds is exactly 0.
        """
        if pixel_values is None:
            stride = self.projector.temporal_stride
            dummy = torch.zeros((1, stride, 3, 32, 32), dtype=torch.uint8, device=input_ids.device)
            touch = self.encode_frames(dummy).sum() * 0.0  # first, as with video: ZeRO-3 gathers in module order
            emb = self.causal_lm.get_input_embeddings()(input_ids)
            return emb + touch.to(emb.dtype)
        if clip_frames is not None:
            clips = self.encode_clips(pixel_values, clip_frames)
            if clip_index is not None:
                clips = [clips[c] for c in clip_index.tolist()]
            return self.embed_ragged(input_ids, clips)
        visual = self.encode_frames(pixel_values)
        if clip_index is not None:
            return self.embed(input_ids, visual.index_select(0, clip_index), packed=True)  # [E, Nv, D]
        return self.embed(input_ids, visual)

    def use_sdpa_varlen(self) -> str:
        """Packed rows without masked attention work on SDPA: switch an ``sdpa`` LLM to
        ``sdpa_varlen`` (:func:`train.packing.sdpa_varlen_attention`: one SDPA call per packed
        sequence; unpacked inputs run plain sdpa unchanged). Other backends are kept. Returns the
        LLM's attn_implementation."""
        cfg = self.causal_lm.config
        if cfg._attn_implementation == "sdpa":
            cfg._attn_implementation = register_sdpa_varlen()
        return cfg._attn_implementation

    @property
    def packing_attention(self) -> str:
        """How attention keeps packed examples apart with this model's backend."""
        return packing_attention(self.causal_lm.config._attn_implementation)

    def prepare_packing(self, packing_sdpa: str) -> str:
        """``per_sequence`` on SDPA: :meth:`use_sdpa_varlen` (``mask``: one masked call per row).
        Returns how attention keeps packed examples apart (logged by the trainer)."""
        if packing_sdpa == "per_sequence":
            self.use_sdpa_varlen()
        return self.packing_attention

    def packed_decoder_forward(self, inputs_embeds: torch.Tensor, position_ids: torch.Tensor,
                               segment_ids: torch.Tensor) -> torch.Tensor:
        """The LLM decoder on packed rows: hidden [R, L, D]; no token attends outside its example
        (flash-attn varlen or a block-diagonal causal mask, see :func:`train.packing.packed_decoder`)."""
        return packed_decoder(self.causal_lm.get_decoder(), self.causal_lm.config._attn_implementation,
                              inputs_embeds, position_ids, segment_ids)

    def enable_sequence_parallel(self, sp: SequenceParallel) -> str:
        """Ulysses attention in the LLM (``train.sequence_parallel``); the tower and projector still see
        every clip on every rank of the group."""
        lc = self.causal_lm.config
        heads = int(lc.num_attention_heads)
        sp.check_heads(heads, int(getattr(lc, "num_key_value_heads", None) or heads), "model.llm")
        lc._attn_implementation = register_ulysses()
        self.sequence_parallel = sp
        return (f"ulysses over {sp.size} ranks (DeepSpeed DistributedAttention; per-sequence causal SDPA on the "
                f"gathered sequence)")

    def decoder_module(self) -> nn.Module:
        return self.causal_lm.get_decoder()

    def sharded_hidden_states(self, plan: ShardPlan, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                              pixel_values: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                              segment_ids: torch.Tensor | None = None, clip_index: torch.Tensor | None = None,
                              clip_frames: torch.Tensor | None = None) -> torch.Tensor:
        """The decoder on this rank's slice of the flattened micro-batch (embeddings of the whole batch first,
        packed or not, clips of one or several frame counts): hidden [1, n, D]."""
        emb = self.embed_batch(input_ids, pixel_values, clip_index if segment_ids is not None else None, clip_frames)
        out = self.decoder_module()(inputs_embeds=plan.take(emb), attention_mask=None,
                                    position_ids=plan.narrow(plan.positions), use_cache=False, **plan.decoder_kwargs())
        return out.last_hidden_state

    def head_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [..., D] -> logits [..., V] by the loss module (its forward without targets)."""
        return self.loss_head(hidden)  # no target -> logits; through __call__ so ZeRO-3 hooks run

    # ------------------------------------------------------------------ eval helpers
    def generate(self, pixel_values: torch.Tensor, prompt_ids: list[list[int]], max_new_tokens: int = 64,
                 eos_token_id: int | None = None, pad_token_id: int = 0) -> list[list[int]]:
        """Greedy decoding with a KV cache; see :func:`train.models.generation.generate`."""
        return generation.generate(self, pixel_values, prompt_ids, max_new_tokens, eos_token_id, pad_token_id)

    def option_logprobs(self, pixel_values: torch.Tensor, prompt_ids: list[list[int]],
                        option_ids: list[list[list[int]]], pad_token_id: int = 0,
                        max_rows: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
        """Sum log-prob and token count of each option; see :func:`train.models.generation.option_logprobs`."""
        return generation.option_logprobs(self, pixel_values, prompt_ids, option_ids, pad_token_id, max_rows)

    def score_options(self, tokenizer: PreTrainedTokenizerBase, pixel_values: torch.Tensor,
                      questions: list[str], options: list[list[str]],
                      captions: list[list[str | None] | None] | None = None,
                      answer_format: str = "letter") -> dict[str, torch.Tensor]:
        """Text-level option scoring; see :func:`train.models.generation.score_options`."""
        return generation.score_options(self, tokenizer, pixel_values, questions, options, captions, answer_format)

    def generate_text(self, tokenizer: PreTrainedTokenizerBase, pixel_values: torch.Tensor,
                      questions: list[str], options: list[list[str]],
                      captions: list[list[str | None] | None] | None = None, task: str = "qa",
                      answer_format: str = "letter", max_new_tokens: int = 64) -> list[str]:
        """Text-level greedy answers / reasoning; see :func:`train.models.generation.generate_text`."""
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
        examples) and each of its distinct clips once. Clips of different frame counts (``clip_frames``, the
        frame budget) count at their mean count, not the padded one."""
        pv = batch.get("pixel_values")
        T = int(pv.shape[1]) if pv is not None else 0  # every example text-only: no tower work counted
        if pv is not None and batch.get("clip_frames") is not None:
            T = max(1, round(float(batch["clip_frames"].float().mean())))
        if batch.get("packed"):
            B, clips = int(batch["n_examples"]), int(pv.shape[0]) if pv is not None else 0
            lengths, targets = batch["example_lengths"], batch["example_targets"]
        else:
            B = batch["input_ids"].shape[0]
            clips = int(unique_adjacent_rows(pv)[1].shape[0]) if pv is not None else 0
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

    def save_export(self, out: str | Path, tokenizer: PreTrainedTokenizerBase | None = None,
                    merge_lora: bool = True) -> Path:
        """Write ``llm/`` and ``vision/`` (HF save_pretrained), ``projector.safetensors``,
        ``video_llm.json`` (kind assembled, the config pointing at those parts) and ``tokenizer/``
        (``tokenizer`` or the model's own).

        Call on a model with full (not ZeRO-3-partitioned) parameters. Merges LoRA in place (an
        assembled export always holds merged weights: ``merge_lora`` False is refused).
        """
        if not merge_lora and hasattr(self.llm, "peft_config"):
            raise ValueError("an assembled model's export merges its LoRA adapters (no adapter/ folder)")
        out = Path(out)
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
        meta = {"kind": "assembled", "model_config": dataclasses.asdict(cfg), "frame_token_id": self.frame_token_id,
                "prompt_version": prompts.PROMPT_VERSION}
        (out / "video_llm.json").write_text(json.dumps(meta, indent=2))
        (tokenizer or self.tokenizer).save_pretrained(out / "tokenizer")
        return out


def load_assembled_export(path: str | Path, model_config: ModelConfig | None = None,
                          device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                          attn_implementation: str | None = None) -> tuple[VideoLLM, PreTrainedTokenizerBase]:
    """Load what :meth:`VideoLLM.save_export` wrote; returns (model in eval mode, tokenizer).

    ``model_config`` (the run's) is not needed: the export's ``video_llm.json`` holds its own.
    """
    root = Path(path)
    meta_path = root / "video_llm.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{root}: no video_llm.json (not written by VideoLLM.save_export)")
    meta = json.loads(meta_path.read_text())
    cfg = load_section(ModelConfig, meta["model_config"], "model")
    cfg.vision.path = str(root / cfg.vision.path)
    cfg.llm.path = str(root / cfg.llm.path)
    if attn_implementation is not None:
        cfg.attn_implementation = attn_implementation
    tokenizer = build_tokenizer(root / "tokenizer")
    if frame_token_id(tokenizer) != meta["frame_token_id"]:
        raise ValueError(f"{root}: tokenizer's frame token id {frame_token_id(tokenizer)} != "
                         f"{meta['frame_token_id']} the model was trained with")
    model = build_assembled(cfg, tokenizer, device=device, dtype=dtype)
    model.projector.load_state_dict(load_file(str(root / "projector.safetensors")))
    return model.eval(), tokenizer


FAMILY = ModelFamily(kind="assembled", build=build_assembled, load_tokenizer=lambda cfg: None,
                     load_export=load_assembled_export)
"""The assembled family: its tokenizer is the run's (``tokenizer`` section of the config)."""
