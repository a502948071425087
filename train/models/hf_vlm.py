"""An existing Hugging Face video-LLM (Qwen2-VL, Qwen2.5-VL, LLaVA-OneVision) as the trainee.

``model.kind: hf_vlm`` loads ``model.hf.path`` (a local folder, never a hub id) with
``AutoModelForImageTextToText.from_pretrained`` -- inside ``deepspeed.zero.Init`` when the
caller builds under ZeRO-3 -- and wraps it in :class:`HFVideoLLM`, which trains it with the
ReasVQA loss exactly like the assembled model:

    batch (train.models.hf_inputs.VideoChatProcessor.collate): chat-template prompt + target ids, labels,
        the family's video tensors (pixel_values_videos, video_grid_thw, ...)
      --the VLM's own base model (vlm.model: vision tower, projector, placeholder scatter,
        M-RoPE, decoder)--> hidden [B, L, D]
      --shift by one, keep target rows--> [N, D] --lm_head = LinearWeightedCrossEntropy--> sum_i w_i CE_i

The LM head is replaced by ``vqa_kernels.LinearWeightedCrossEntropy`` sharing the head's Parameter
(``train.loss.install_loss_head``): under ZeRO-3 the weight is gathered inside the head's own
forward, the state-dict key stays ``lm_head.weight`` (``save_pretrained`` -> the same class
loads it back) and called without targets it returns logits, so the VLM's own ``forward`` and
``generate`` still work.

Freezing is per part (``model.hf.freeze_vision`` / ``freeze_projector`` / ``freeze_llm``), LoRA
(peft, ``model.lora``) goes on the language model's linear layers only (a regex over module
names, since SigLIP towers have q_proj too).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForImageTextToText

from train import flops as flops_mod
from train import prompts
from train.config.model import FrameLayout, HFVLMSettings, ModelConfig
from train.config.task import TaskConfig
from train.loss import install_loss_head
from train.models.base import ModelFamily, VideoModel, resolve_attention
from train.models.hf_inputs import FAMILIES, LLAVA_FAMILIES, QWEN_FAMILIES, VideoChatProcessor
from train.packing import block_causal_mask
from train.sequence_parallel import SequenceParallel, ShardPlan, register_ulysses, sequence_segments
from train.tasks import PromptTooLong

try:  # optional, as in train.models.assembled
    import peft
except ImportError:  # pragma: no cover
    peft = None

log = logging.getLogger(__name__)

# Parameter-name prefixes of each part, relative to the ...ForConditionalGeneration model.
PARTS = {
    "qwen": {"vision": ("model.visual.",), "projector": ("model.visual.merger.",),
             "llm": ("model.language_model.", "lm_head.")},
    "llava": {"vision": ("model.vision_tower.",), "projector": ("model.multi_modal_projector.", "model.image_newline"),
              "llm": ("model.language_model.", "lm_head.")},
}


def _family_parts(model_type: str) -> dict[str, tuple[str, ...]]:
    return PARTS["qwen" if model_type in QWEN_FAMILIES else "llava"]


def load_processor(hf: HFVLMSettings) -> VideoChatProcessor:
    """The chat processor of the configured folder (reads only config.json of the model)."""
    path = Path(hf.path or "")
    if not path.is_dir():
        raise FileNotFoundError(f"model.hf.path {hf.path} is not a directory")
    config = AutoConfig.from_pretrained(str(path), local_files_only=True, trust_remote_code=hf.trust_remote_code)
    return VideoChatProcessor.from_folder(hf.processor_path or path, config, hf.video_fps, hf.trust_remote_code)


def build_hf_vlm(cfg: ModelConfig, processor: VideoChatProcessor | None = None, device: Any = None,
                 dtype: torch.dtype | None = None) -> HFVideoLLM:
    """Load the VLM of ``cfg.hf``, install the loss head, apply the training flags.

    ``processor``: the family's own (``load_processor``; read again from the folder when None).
    Call inside ``train.engine.model_init_context`` to load straight into ZeRO-3 partitions.
    """
    if processor is not None and not isinstance(processor, VideoChatProcessor):
        raise TypeError(f"an hf_vlm model takes its own VideoChatProcessor (load_processor), got "
                        f"{type(processor).__name__}")
    hf = cfg.hf
    processor = processor or load_processor(hf)
    impl, reason = resolve_attention(cfg.attn_implementation, device)
    vlm = AutoModelForImageTextToText.from_pretrained(hf.path, local_files_only=True, attn_implementation=impl,
                                                      dtype=dtype, trust_remote_code=hf.trust_remote_code)
    if vlm.config.model_type not in FAMILIES:
        raise ValueError(f"model.hf.path {hf.path}: model_type {vlm.config.model_type!r} is not supported "
                         f"(supported: {FAMILIES})")
    install_loss_head(vlm, cfg.loss_chunk_size)
    model = HFVideoLLM(cfg, vlm, processor, (impl, reason))
    model.apply_training_flags()
    return model


class HFVideoLLM(VideoModel):
    """A transformers video-LLM whose lm_head is the weighted cross-entropy module.

    Attributes:
        config: the train.config.ModelConfig.
        vlm: the ...ForConditionalGeneration (a peft PeftModel around it with LoRA).
        processor: its :class:`~train.models.hf_inputs.VideoChatProcessor`.
        attention_report: (attn_implementation, why).
    """

    supports_packing = True

    def __init__(self, config: Any, vlm: nn.Module, processor: VideoChatProcessor, attention_report: tuple[str, str]):
        super().__init__()
        self.config = config
        self.vlm = vlm
        self.processor = processor
        self.attention_report = attention_report

    # ------------------------------------------------------------------ set-up
    @property
    def hf_model(self) -> nn.Module:
        """The ...ForConditionalGeneration itself (inside the peft wrapper when there is one)."""
        return self.vlm.get_base_model() if hasattr(self.vlm, "peft_config") else self.vlm

    @property
    def loss_head(self) -> nn.Module:
        return self.hf_model.get_output_embeddings()

    def part_of(self, name: str) -> str | None:
        """"vision" | "projector" | "llm" for a parameter name of the HF model (None: other)."""
        parts = _family_parts(self.hf_model.config.model_type)
        for part in ("projector", "vision", "llm"):  # projector first: Qwen's merger sits inside visual
            if name.startswith(parts[part]):
                return part
        return None

    def apply_training_flags(self) -> None:
        """Freezing per part, LoRA on the language model, gradient checkpointing (config)."""
        hf, cfg = self.config.hf, self.config
        frozen = {"vision": hf.freeze_vision, "projector": hf.freeze_projector,
                  "llm": hf.freeze_llm or cfg.lora.enabled}
        for name, p in self.hf_model.named_parameters():
            part = self.part_of(name)
            p.requires_grad_(not frozen.get(part, False))
        if cfg.lora.enabled:
            if peft is None:
                raise ImportError("model.lora.enabled needs peft (pip install peft)")
            lcfg = peft.LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                                   target_modules=hf.lora_target_regex, bias="none")
            trainable = {n for n, p in self.vlm.named_parameters() if p.requires_grad}
            self.vlm = peft.get_peft_model(self.vlm, lcfg)  # freezes everything but the adapters ...
            for name, p in self.hf_model.named_parameters():  # ... so re-open the parts meant to train
                if name in trainable:
                    p.requires_grad_(True)
        if frozen["llm"] and hasattr(self.hf_model, "enable_input_require_grads"):
            # The decoder's input then needs grad even when nothing before it trains: activation
            # checkpointing and ZeRO-3 leaf modules (deepspeed.leaf_modules) re-run / re-gather a
            # layer for backward only when its input needs grad, and LoRA adapters sit in every layer.
            self.hf_model.enable_input_require_grads()
        if cfg.gradient_checkpointing:
            m, kwargs = self.hf_model, {"use_reentrant": False}
            if hasattr(m, "activation_checkpointing_enable"):  # the name in recent transformers 5
                m.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                m.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)

    def trainable_summary(self) -> dict[str, int]:
        """Trainable parameter elements per part (ZeRO-3-safe: ds_numel when partitioned)."""
        out: dict[str, int] = {}
        for name, p in self.hf_model.named_parameters():
            if p.requires_grad:
                key = "lora" if "lora_" in name else (self.part_of(name) or "other")
                out[key] = out.get(key, 0) + int(getattr(p, "ds_numel", p.numel()))
        return out

    def frame_layout(self, num_frames: int, frame_size: tuple[int, int] | None = None) -> FrameLayout:
        """Video tokens of a clip of ``num_frames`` frames of ``frame_size`` [H, W] (the size frames
        are decoded at; the processor resizes them as the family does). Qwen: one group per temporal
        patch, (h / patch / merge) x (w / patch / merge) tokens each; LLaVA-OneVision: 2x2-pooled
        patches per frame plus one newline token."""
        video, mc = self.processor.video, self.processor.model_config
        if video.family in LLAVA_FAMILIES:
            grid = int(mc.vision_config.image_size) // int(mc.vision_config.patch_size)
            return FrameLayout(num_frames, 1, math.ceil(grid / 2) ** 2, extra_tokens=1)
        if frame_size is None:
            raise ValueError("a Qwen video-LLM's token count depends on the frame size: give frame_size [H, W]")
        h, w = video.frame_size(*frame_size)
        per_group = (h // video.patch) * (w // video.patch) // video.merge ** 2
        return FrameLayout(num_frames, video.temporal_patch, per_group)

    def collate(self, examples: list, task: TaskConfig, packing: bool = False,
                row_capacity: int | None = None, visual_row_capacity: int | None = None) -> dict[str, Any]:
        """Training examples -> batch (``train.models.hf_inputs.VideoChatProcessor.collate``), or packed
        rows of at most ``row_capacity`` tokens and ``visual_row_capacity`` video placeholders
        (``VideoChatProcessor.pack``)."""
        if packing:
            return self.processor.pack(examples, task.max_prompt_len, task.max_target_len,
                                       row_capacity or task.max_prompt_len + task.max_target_len,
                                       max_visual_tokens_per_row=visual_row_capacity)
        return self.processor.collate(examples, task.max_prompt_len, task.max_target_len)

    @property
    def same_frames_per_batch(self) -> bool:
        """LLaVA-OneVision's forward takes one frame count per micro-batch ([B, T, 3, S, S]); Qwen a grid per
        video."""
        return self.processor.video.family in LLAVA_FAMILIES

    def prompt_fits(self, example: Any, num_frames: int, max_prompt_len: int) -> bool:
        """Whether the chat prompt of ``example`` with its clip cut to ``num_frames`` frames fits
        ``max_prompt_len`` tokens, its question cut as the collate cuts it (the frame budget)."""
        size = tuple(int(v) for v in example.frames.shape[-2:])
        n_vis = self.frame_layout(num_frames, size).num_visual_tokens
        try:
            self.processor.encode_prompt(None, example.question, example.options, example.instruction, None,
                                         max_prompt_len, example.qid, n_video_tokens=n_vis)
        except PromptTooLong:
            return False
        return True

    # ------------------------------------------------------------------ packing
    def _text_attention(self) -> str:
        lm = self.hf_model.model.language_model
        return lm.config._attn_implementation

    def prepare_packing(self, packing_sdpa: str) -> str:
        """How attention keeps packed examples apart (logged by the trainer). flash_attention_2: the rows are
        flattened into one sequence and transformers derives the varlen boundaries from the text positions;
        sdpa / eager: one block-diagonal causal mask per row. ``data.packing_sdpa: per_sequence`` is the
        assembled model's: the VLM's own forward hands attention keyword arguments to its vision tower too,
        so per-sequence SDPA calls are not used here, and SDPA runs the mask."""
        impl = self._text_attention()
        if impl == "flash_attention_2":
            return "flash_attention_2 varlen (boundaries from the restarting text positions, rows flattened)"
        if impl in ("sdpa", "eager"):
            note = " (data.packing_sdpa per_sequence applies to model.kind assembled only)" if (
                impl == "sdpa" and packing_sdpa == "per_sequence") else ""
            return f"{impl} with a block-diagonal causal mask [R, 1, L, L]{note}"
        raise ValueError(f"data.packing: attention implementation {impl!r} has no packed path for hf_vlm "
                         "(model.attn_implementation must be auto, sdpa, flash_attention_2 or eager)")

    @property
    def packing_attention(self) -> str:
        """How attention keeps packed examples apart with this model's backend."""
        return self.prepare_packing("mask")

    def packed_layout(self) -> str:
        """``flat`` (flash_attention_2: rows flattened to [1, R*L], no mask: the boundaries are where the text
        positions restart) or ``rows`` (sdpa / eager: [R, L] with a block-diagonal causal mask)."""
        return "flat" if self._text_attention() == "flash_attention_2" else "rows"

    @staticmethod
    def _spans(segment_ids: torch.Tensor) -> list[tuple[int, int, int]]:
        """(row, start, length) of every packed example, in packed (row-major) order."""
        R, L = segment_ids.shape
        seg = segment_ids.cpu()
        start = torch.ones_like(seg, dtype=torch.bool)
        start[:, 1:] = seg[:, 1:] != seg[:, :-1]  # a run of one segment id begins here
        rows, cols = start.nonzero(as_tuple=True)
        ends = torch.cat([cols[1:], torch.tensor([L])])
        ends = torch.where(torch.cat([rows[1:] != rows[:-1], torch.tensor([True])]), torch.full_like(ends, L), ends)
        keep = seg[rows, cols] != 0  # padding tails are not examples
        return [(int(r), int(a), int(b - a)) for r, a, b in zip(rows[keep], cols[keep], ends[keep])]

    def packed_position_ids(self, input_ids: torch.Tensor, position_ids: torch.Tensor, segment_ids: torch.Tensor,
                            vision: dict[str, torch.Tensor]) -> torch.Tensor:
        """Position ids of packed rows as the family's decoder takes them.

        LLaVA-OneVision: the text positions [R, L] (restarting per example). Qwen: [4, R, L], the layout
        transformers' Qwen decoders take for packed rows: row 0 the text positions (what the attention
        mask / varlen boundaries are derived from), rows 1-3 the 3-D M-RoPE positions. Those are the
        model's own ``get_rope_index`` run on every example alone (right-padded into [E, Lmax], one video
        each for the examples with video, in packed order), so each example gets exactly the positions of
        its unpacked run: temporal positions (scaled by ``second_per_grid_ts`` for Qwen2.5-VL) and the text
        after the video continue from the example's own start, not from the row's. The padding tail
        repeats its text positions.
        """
        if self.processor.video.family not in QWEN_FAMILIES:
            return position_ids
        spans = self._spans(segment_ids)
        E, Lmax = len(spans), max(n for _, _, n in spans)
        ids = torch.full((E, Lmax), self.processor.pad_token_id, dtype=input_ids.dtype, device=input_ids.device)
        types = torch.zeros_like(ids)
        mask = torch.zeros_like(ids)
        for e, (r, a, n) in enumerate(spans):
            ids[e, :n], types[e, :n], mask[e, :n] = input_ids[r, a:a + n], vision["mm_token_type_ids"][r, a:a + n], 1
        grids = {k: vision[k] for k in ("video_grid_thw", "second_per_grid_ts") if k in vision}
        with_video = int((types == 2).any(dim=1).sum())
        if grids["video_grid_thw"].shape[0] != with_video:
            raise ValueError(f"packed batch: {grids['video_grid_thw'].shape[0]} videos for {with_video} examples "
                             "with video tokens (one each)")
        rope, _ = self.hf_model.model.get_rope_index(ids, types, attention_mask=mask, **grids)  # [3, E, Lmax]
        out = position_ids.unsqueeze(0).repeat(4, 1, 1)
        for e, (r, a, n) in enumerate(spans):
            out[1:, r, a:a + n] = rope[:, e, :n].to(out.dtype)
        return out

    # ------------------------------------------------------------------ sequence parallel
    def enable_sequence_parallel(self, sp: SequenceParallel) -> str:
        """Ulysses attention in the language model (``train.sequence_parallel``), every family.

        The VLM's own forward still builds the embeddings of the whole (flattened) micro-batch on every rank of
        the group: vision tower, merger, placeholder scatter. A forward pre-hook on its language model then
        hands the decoder this rank's slice of the embeddings and of the positions (Qwen: 3-D M-RoPE), with the
        sequence boundaries for :func:`train.sequence_parallel.ulysses_attention` (the vision tower keeps its
        own attention and never sees them).
        """
        lm = self.hf_model.model.language_model
        heads = int(lm.config.num_attention_heads)
        sp.check_heads(heads, int(getattr(lm.config, "num_key_value_heads", None) or heads), "the language model")
        lm.config._attn_implementation = register_ulysses()
        self.sequence_parallel = sp
        self._shard_plan: ShardPlan | None = None
        lm.register_forward_pre_hook(self._shard_decoder_inputs, with_kwargs=True)
        return (f"ulysses over {sp.size} ranks (DeepSpeed DistributedAttention; per-sequence causal SDPA on the "
                f"gathered sequence; the vision tower runs every clip on every rank)")

    def _shard_decoder_inputs(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        """Forward pre-hook of the language model: this rank's slice (see :meth:`enable_sequence_parallel`)."""
        plan = getattr(self, "_shard_plan", None)
        if plan is None:  # not inside sharded_hidden_states (e.g. generation): the whole sequence
            return None
        kwargs = dict(kwargs, attention_mask=None, **plan.decoder_kwargs())
        kwargs["inputs_embeds"] = plan.narrow(kwargs["inputs_embeds"], 1)
        kwargs["position_ids"] = plan.narrow(kwargs["position_ids"], -1)
        return args, kwargs

    def decoder_module(self) -> nn.Module:
        return self.hf_model.model.language_model

    def sharded_hidden_states(self, plan: ShardPlan, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                              vision: dict[str, torch.Tensor] | None = None, pixel_values: torch.Tensor | None = None,
                              position_ids: torch.Tensor | None = None, segment_ids: torch.Tensor | None = None
                              ) -> torch.Tensor:
        """The VLM on the micro-batch flattened to one sequence [1, total] (packed or not), its language model on
        this rank's slice: hidden [1, n, D]. Positions are those of every sequence alone
        (:meth:`packed_position_ids`; an unpacked row is one sequence plus its padding)."""
        if vision is None:
            raise ValueError("HFVideoLLM needs the batch's 'vision' tensors (train.models.hf_inputs collate)")
        vision = self._vision_kwargs(vision)
        segments = sequence_segments(attention_mask, segment_ids)
        if position_ids is None:
            position_ids = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
        positions = self.packed_position_ids(input_ids, position_ids, segments, vision)  # Qwen [4, R, L], else [R, L]
        if "mm_token_type_ids" in vision:
            vision["mm_token_type_ids"] = plan.flatten(vision["mm_token_type_ids"], 0)
        flat_positions = plan.flatten(positions, 0, dim=positions.ndim - 1)  # [4, 1, total] (Qwen) or [1, total]
        self._shard_plan = plan
        try:
            out = self.hf_model.model(input_ids=plan.flatten(input_ids, self.processor.pad_token_id),
                                      attention_mask=None, position_ids=flat_positions,
                                      use_cache=False, **vision)
        finally:
            self._shard_plan = None
        return out.last_hidden_state

    # ------------------------------------------------------------------ forward
    def _vision_kwargs(self, vision: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        dtype = next(p.dtype for p in self.hf_model.parameters())
        return {k: (v.to(dtype) if v.is_floating_point() and k == "pixel_values_videos" else v)
                for k, v in vision.items()}

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                      vision: dict[str, torch.Tensor] | None = None, pixel_values: torch.Tensor | None = None,
                      position_ids: torch.Tensor | None = None, segment_ids: torch.Tensor | None = None
                      ) -> torch.Tensor:
        """Last hidden states [B, L, D] of the VLM's base model (vision + decoder, no head).

        ``vision``: the family's video tensors from the collate (``pixel_values`` uint8 frames are
        in the batch too, but the model reads the processed ``vision`` tensors only). Packed rows
        (``VideoChatProcessor.pack``) add ``position_ids`` and ``segment_ids`` [R, L]: positions per
        example (:meth:`packed_position_ids`) and attention inside each example only (see
        :meth:`prepare_packing`).
        """
        if vision is None:
            raise ValueError("HFVideoLLM needs the batch's 'vision' tensors (train.models.hf_inputs collate)")
        vision = self._vision_kwargs(vision)
        if segment_ids is None:
            out = self.hf_model.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **vision)
            return out.last_hidden_state
        if position_ids is None:
            raise ValueError("packed inputs need position_ids and segment_ids together")
        positions = self.packed_position_ids(input_ids, position_ids, segment_ids, vision)
        if self.packed_layout() == "flat":  # one sequence [1, R*L]; transformers finds the boundaries from positions
            R, L = input_ids.shape
            if "mm_token_type_ids" in vision:
                vision["mm_token_type_ids"] = vision["mm_token_type_ids"].reshape(1, R * L)
            out = self.hf_model.model(input_ids=input_ids.reshape(1, R * L), attention_mask=None, use_cache=False,
                                      position_ids=positions.reshape(*positions.shape[:-2], 1, R * L), **vision)
            return out.last_hidden_state.reshape(R, L, -1)
        dtype = None if self._text_attention() == "sdpa" else next(p.dtype for p in self.hf_model.parameters())
        out = self.hf_model.model(input_ids=input_ids, attention_mask=block_causal_mask(segment_ids, dtype),
                                  position_ids=positions, use_cache=False, **vision)
        return out.last_hidden_state

    # ------------------------------------------------------------------ eval (the VideoLLM interface)
    def _device(self) -> torch.device:
        return next(self.hf_model.parameters()).device

    def _prompt_batch(self, pixel_values, questions, options, captions, instruction):
        proc = self.processor
        captions = captions if captions is not None else [None] * len(questions)
        rows, vids = [], []
        for b, (q, o, c) in enumerate(zip(questions, options, captions, strict=True)):
            ids, vid, _ = proc.encode_prompt(pixel_values[b], q, o, instruction, c)
            rows.append(ids)
            vids.append(vid)
        return rows, vids

    @torch.no_grad()
    def score_options(self, tokenizer: Any, pixel_values: torch.Tensor, questions: list[str],
                      options: list[list[str]], captions: list | None = None,
                      answer_format: str = "letter") -> dict[str, torch.Tensor]:
        """Option log-likelihood after the QA prompt (same outputs as ``train.models.generation.score_options``)."""
        proc, dev = self.processor, self._device()
        instruction = prompts.qa_instruction(answer_format)
        rows, vids = self._prompt_batch(pixel_values, questions, options, captions, instruction)
        k_max = max(len(o) for o in options)
        total = torch.full((len(rows), k_max), float("-inf"))
        count = torch.zeros((len(rows), k_max), dtype=torch.long)
        for b, (p, opts) in enumerate(zip(rows, options)):
            seqs = [p + proc.target_ids(prompts.answer_text(i, opts, answer_format))[0] for i in range(len(opts))]
            length = max(len(s) for s in seqs)
            ids = torch.full((len(seqs), length), proc.pad_token_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for r, s in enumerate(seqs):
                ids[r, :len(s)], mask[r, :len(s)] = torch.tensor(s), 1
            vision = proc.add_token_types(proc.stack_video([vids[b]] * len(seqs)), ids, mask)
            hidden = self.hidden_states(ids.to(dev), mask.to(dev), vision={k: v.to(dev) for k, v in vision.items()})
            for r, s in enumerate(seqs):
                n_opt = len(s) - len(p) - len(proc.target_ids("")[0])  # the option text, end of turn not scored
                logp = torch.log_softmax(self.loss_head(hidden[r, len(p) - 1:len(p) - 1 + n_opt]).float(), -1)
                tgt = torch.tensor(s[len(p):len(p) + n_opt], device=dev)
                total[b, r] = logp.gather(1, tgt[:, None]).sum().cpu()
                count[b, r] = n_opt
        mean = total / count.clamp(min=1)
        pred = (total if answer_format == "letter" else mean).argmax(dim=1)
        return {"sum": total, "mean": mean, "n_tokens": count, "pred": pred}

    @torch.no_grad()
    def generate_text(self, tokenizer: Any, pixel_values: torch.Tensor, questions: list[str],
                      options: list[list[str]], captions: list | None = None, task: str = "qa",
                      answer_format: str = "letter", max_new_tokens: int = 64) -> list[str]:
        """Greedy text per question with the VLM's own ``generate`` (left-padded batch)."""
        instr = {"qa": prompts.qa_instruction(answer_format), "reasoning": prompts.INSTRUCTIONS["reasoning"],
                 "stl": prompts.INSTRUCTIONS["stl"], "caption": prompts.INSTRUCTIONS.get("caption", "")}
        if task not in instr:
            raise ValueError(f"task must be one of {sorted(instr)}, got {task!r}")
        proc, dev = self.processor, self._device()
        rows, vids = self._prompt_batch(pixel_values, questions, options, captions, instr[task])
        length = max(len(r) for r in rows)
        ids = torch.full((len(rows), length), proc.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(rows):
            ids[i, length - len(r):], mask[i, length - len(r):] = torch.tensor(r), 1
        vision = proc.add_token_types(proc.stack_video(vids), ids, mask)
        out = self.hf_model.generate(input_ids=ids.to(dev), attention_mask=mask.to(dev), do_sample=False,
                                     max_new_tokens=max_new_tokens, eos_token_id=proc.stop_token_id,
                                     pad_token_id=proc.pad_token_id,
                                     **{k: v.to(dev) for k, v in self._vision_kwargs(vision).items()})
        texts = []
        for row in out[:, length:].tolist():
            if proc.stop_token_id in row:
                row = row[:row.index(proc.stop_token_id)]
            texts.append(proc.tokenizer.decode(row, skip_special_tokens=True).strip())
        return texts

    # ------------------------------------------------------------------ FLOPs
    def flops_dims(self, frame_size: tuple[int, int]) -> tuple[flops_mod.FlopsDims, int]:
        """(dimensions for :mod:`train.flops`, tower frames per clip frame group) from the HF configs.

        Qwen towers embed one patch per ``temporal_patch`` frames: the formula's "frame" is then a
        temporal patch group (channels x temporal_patch per patch), and the merger MLP (merge^2
        patches -> one token) is the projector. LLaVA-OneVision: a SigLIP tower per frame and a
        2-layer MLP projector; its 2x2 pooling is free.
        """
        cfg, video = self.hf_model.config, self.processor.video
        lc, vc = cfg.get_text_config(), cfg.vision_config
        heads = int(lc.num_attention_heads)
        head_dim = int(getattr(lc, "head_dim", None) or lc.hidden_size // heads)
        if video.family in QWEN_FAMILIES:
            d_v = int(getattr(vc, "embed_dim", None) or vc.hidden_size)
            f_v = int(getattr(vc, "intermediate_size", None) or d_v * getattr(vc, "mlp_ratio", 4))
            layers, patch, channels = int(vc.depth), video.patch, 3 * video.temporal_patch
            h, w = video.frame_size(*frame_size)
            patches = (h // patch) * (w // patch)
            proj_hidden, per_group, stride = d_v * video.merge ** 2, patches // video.merge ** 2, 1
        else:
            d_v, f_v, layers = int(vc.hidden_size), int(vc.intermediate_size), int(vc.num_hidden_layers)
            patch, channels = int(vc.patch_size), 3
            patches = (int(vc.image_size) // patch) ** 2
            proj_hidden, per_group, stride = int(lc.hidden_size), math.ceil(int(vc.image_size) // patch / 2) ** 2, 1
        trained = self.trainable_summary()
        dims = flops_mod.FlopsDims(
            llm_hidden=int(lc.hidden_size), llm_intermediate=int(lc.intermediate_size),
            llm_layers=int(lc.num_hidden_layers), llm_heads=heads,
            llm_kv_heads=int(getattr(lc, "num_key_value_heads", None) or heads), llm_head_dim=head_dim,
            vocab_size=int(lc.vocab_size), vis_hidden=d_v, vis_intermediate=f_v, vis_layers=layers,
            vis_patches=patches, vis_patch_size=patch, vis_channels=channels, proj_hidden=proj_hidden,
            tokens_per_group=per_group, temporal_stride=stride, train_vision="vision" in trained,
            train_projector="projector" in trained, train_llm="llm" in trained, lora="lora" in trained)
        return dims, (video.temporal_patch if video.family in QWEN_FAMILIES else 1)

    def flops_per_token(self, seq_len: int, num_frames: int, clips_per_sequence: float = 1.0,
                        frame_size: tuple[int, int] = (224, 224)) -> float:
        """Training model FLOPs per LLM sequence position (formula in :mod:`train.flops`)."""
        dims, per_group = self.flops_dims(frame_size)
        return flops_mod.flops_per_token(dims, seq_len, -(-num_frames // per_group), clips_per_sequence)

    def batch_flops(self, batch: dict[str, Any]) -> float:
        """Training model FLOPs of one collated micro-batch: each sequence at its unpadded length, the
        LM head on its target tokens only, the tower once per sequence (no clip reuse here). A packed
        batch counts each example at its own length (attention never crosses examples). Text-only examples
        run no tower (the dummy clip of an all-text micro-batch is not counted: it is not work the model needs)."""
        if batch.get("packed"):
            lengths, targets = batch["example_lengths"], batch["example_targets"]
        else:
            lengths = batch["attention_mask"].sum(1).tolist()
            targets = (batch["labels"][:, 1:] != -100).sum(1).tolist()  # hidden t predicts labels[t + 1]
        frames = batch.get("pixel_values")
        if frames is None:  # every example text-only
            dims, groups, share = self.flops_dims((32, 32))[0], 0, 0.0
        else:
            dims, per_group = self.flops_dims(tuple(frames.shape[-2:]))
            groups, share = -(-int(frames.shape[1]) // per_group), int(frames.shape[0]) / len(lengths)
            grid = (batch.get("vision") or {}).get("video_grid_thw")
            if grid is not None and grid.shape[0] == frames.shape[0]:  # Qwen: each clip's own count (frame budget)
                groups = max(1, round(float(grid[:, 0].float().mean())))
        return sum(flops_mod.flops_per_sample(dims, int(n), groups, share, head_tokens=int(t))["total"]
                   for n, t in zip(lengths, targets))

    # ------------------------------------------------------------------ save / load
    def save_export(self, out: str | Path, tokenizer: Any = None, merge_lora: bool = True) -> Path:
        """Write a folder ``AutoModelForImageTextToText.from_pretrained`` (the same class) loads.

        Merges LoRA in place when ``merge_lora``; else writes the adapters to ``adapter/`` (peft
        format) and the base weights at the root. Copies the processor files (tokenizer, chat
        template, preprocessor configs; ``tokenizer`` is not used: the processor is the model's own)
        and writes ``video_llm.json`` (kind hf_vlm).
        """
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        adapter = False
        if hasattr(self.vlm, "peft_config"):
            if merge_lora:
                self.vlm = self.vlm.merge_and_unload()
            else:
                self.vlm.save_pretrained(str(out / "adapter"))
                self.vlm, adapter = self.vlm.unload(), True
        self.vlm.save_pretrained(out)
        self.processor.save_pretrained(out)
        hf = dataclasses.replace(self.config.hf, path=".", processor_path=None)
        meta = {"kind": "hf_vlm", "hf": dataclasses.asdict(hf), "lora_adapter": "adapter" if adapter else None,
                "model_type": self.hf_model.config.model_type, "prompt_version": prompts.PROMPT_VERSION}
        (out / "video_llm.json").write_text(json.dumps(meta, indent=2))
        return out


def load_hf_export(path: str | Path, model_config: ModelConfig | None = None, device: Any = None
                   ) -> tuple[HFVideoLLM, Any]:
    """Load :meth:`HFVideoLLM.save_export`'s folder (adapters merged for evaluation), eval mode;
    returns (model, its text tokenizer). ``model_config``: the run's (freezing etc. do not matter
    for evaluation; None = defaults)."""
    path = Path(path)
    meta = json.loads((path / "video_llm.json").read_text())
    model_config = model_config or ModelConfig()
    cfg = dataclasses.replace(model_config, kind="hf_vlm",
                              lora=dataclasses.replace(model_config.lora, enabled=False),
                              hf=dataclasses.replace(model_config.hf, path=str(path), processor_path=None),
                              gradient_checkpointing=False)
    model = build_hf_vlm(cfg, device=device)
    if meta.get("lora_adapter"):
        if peft is None:
            raise ImportError(f"{path}: has LoRA adapters; loading them needs peft")
        model.vlm = peft.PeftModel.from_pretrained(model.vlm, str(path / meta["lora_adapter"])).merge_and_unload()
    return model.eval(), model.processor.tokenizer


FAMILY = ModelFamily(kind="hf_vlm", build=build_hf_vlm, load_tokenizer=lambda cfg: load_processor(cfg.hf),
                     load_export=load_hf_export)
"""An existing HF video-LLM: its own processor (tokenizer, chat template, video settings)."""
