"""An existing Hugging Face video-LLM (Qwen2-VL, Qwen2.5-VL, LLaVA-OneVision) as the trainee.

``model.kind: hf_vlm`` loads ``model.hf.path`` (a local folder, never a hub id) with
``AutoModelForImageTextToText.from_pretrained`` -- inside ``deepspeed.zero.Init`` when the
caller builds under ZeRO-3 -- and wraps it in :class:`HFVideoLLM`, which trains it with the
ReasVQA loss exactly like the assembled model:

    batch (train.hf_inputs.VideoChatProcessor.collate): chat-template prompt + target ids, labels,
        the family's video tensors (pixel_values_videos, video_grid_thw, ...)
      --the VLM's own base model (vlm.model: vision tower, projector, placeholder scatter,
        M-RoPE, decoder)--> hidden [B, L, D]
      --shift by one, keep target rows--> [N, D] --lm_head = LinearWeightedCrossEntropy--> sum_i w_i CE_i

The LM head is replaced by ``kernels.LinearWeightedCrossEntropy`` sharing the head's Parameter
(``train.model._install_loss_head``): under ZeRO-3 the weight is gathered inside the head's own
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from train import prompts
from train.hf_inputs import FAMILIES, QWEN_FAMILIES, VideoChatProcessor

try:  # optional, as in train.model
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


def _family_parts(model_type: str) -> dict[str, tuple[str, ...]]:
    return PARTS["qwen" if model_type in QWEN_FAMILIES else "llava"]


def load_processor(hf: HFVLMSettings) -> VideoChatProcessor:
    """The chat processor of the configured folder (reads only config.json of the model)."""
    from transformers import AutoConfig

    path = Path(hf.path or "")
    if not path.is_dir():
        raise FileNotFoundError(f"model.hf.path {hf.path} is not a directory")
    config = AutoConfig.from_pretrained(str(path), local_files_only=True, trust_remote_code=hf.trust_remote_code)
    return VideoChatProcessor.from_folder(hf.processor_path or path, config, hf.video_fps, hf.trust_remote_code)


def build_hf_vlm(cfg: Any, processor: VideoChatProcessor | None = None, device: Any = None,
                 dtype: torch.dtype | None = None) -> HFVideoLLM:
    """Load the VLM of ``cfg.hf`` (a train.model.ModelConfig), install the loss head, apply flags.

    Call inside ``train.engine.model_init_context`` to load straight into ZeRO-3 partitions.
    """
    from transformers import AutoModelForImageTextToText

    from train.model import _install_loss_head, resolve_attention

    hf = cfg.hf
    processor = processor or load_processor(hf)
    impl, reason = resolve_attention(cfg.attn_implementation, device)
    vlm = AutoModelForImageTextToText.from_pretrained(hf.path, local_files_only=True, attn_implementation=impl,
                                                      dtype=dtype, trust_remote_code=hf.trust_remote_code)
    if vlm.config.model_type not in FAMILIES:
        raise ValueError(f"model.hf.path {hf.path}: model_type {vlm.config.model_type!r} is not supported "
                         f"(supported: {FAMILIES})")
    _install_loss_head(vlm, cfg.loss_chunk_size)
    model = HFVideoLLM(cfg, vlm, processor, (impl, reason))
    model.apply_training_flags()
    return model


class HFVideoLLM(nn.Module):
    """A transformers video-LLM whose lm_head is the weighted cross-entropy module.

    Attributes:
        config: the train.model.ModelConfig.
        vlm: the ...ForConditionalGeneration (a peft PeftModel around it with LoRA).
        processor: its :class:`~train.hf_inputs.VideoChatProcessor`.
        attention_report: (attn_implementation, why).
    """

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

    def frame_layout(self, num_frames: int) -> None:
        """No fixed placeholder layout: the processor counts the video tokens per batch."""
        return None

    def collate(self, examples: list, task: Any) -> dict[str, Any]:
        """Training examples -> batch (``train.hf_inputs.VideoChatProcessor.collate``)."""
        return self.processor.collate(examples, task.max_prompt_len, task.max_target_len)

    # ------------------------------------------------------------------ forward
    def _vision_kwargs(self, vision: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        dtype = next(p.dtype for p in self.hf_model.parameters())
        return {k: (v.to(dtype) if v.is_floating_point() and k == "pixel_values_videos" else v)
                for k, v in vision.items()}

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                      vision: dict[str, torch.Tensor]) -> torch.Tensor:
        """Last hidden states [B, L, D] of the VLM's base model (vision + decoder, no head)."""
        out = self.hf_model.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                                  **self._vision_kwargs(vision))
        return out.last_hidden_state

    def forward(self, pixel_values: torch.Tensor | None, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                labels: torch.Tensor, loss_weight: torch.Tensor | None = None,
                vision: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Weighted LM loss on the target positions (same contract as ``VideoLLM.forward``).

        Args:
            pixel_values: uint8 [B, T, 3, H, W] (unused here: ``vision`` holds the model's tensors).
            input_ids, attention_mask, labels: long [B, L] (right-padded; labels -100 off target).
            loss_weight: float [B, L] aligned with labels; None = weight 1 on every target.
            vision: the family's video tensors from the collate.

        Returns:
            {"loss": scalar sum_i w_i * CE_i (fp32), "n_tokens": long scalar}.
        """
        if vision is None:
            raise ValueError("HFVideoLLM.forward needs the batch's 'vision' tensors (train.hf_inputs collate)")
        hidden = self.hidden_states(input_ids, attention_mask, vision)
        h = hidden[:, :-1].reshape(-1, hidden.shape[-1])
        tgt = labels[:, 1:].reshape(-1)
        w = (torch.ones_like(tgt, dtype=torch.float32) if loss_weight is None
             else loss_weight[:, 1:].reshape(-1).float())
        sel = (tgt != -100).nonzero().squeeze(1)
        n_tokens = sel.numel()
        if n_tokens == 0:  # every rank must still enter the head under ZeRO-3
            sel = torch.zeros(1, dtype=torch.long, device=h.device)
            tgt, w = torch.zeros_like(tgt), torch.zeros_like(w)
        loss = self.loss_head(h.index_select(0, sel), tgt.index_select(0, sel), w.index_select(0, sel))
        return {"loss": loss, "n_tokens": torch.tensor(n_tokens, device=h.device)}

    @torch.no_grad()
    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
               vision: dict[str, torch.Tensor]) -> torch.Tensor:
        """Full logits float [B, L, V] (eval and tests)."""
        return self.loss_head(self.hidden_states(input_ids, attention_mask, vision)).float()

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
        """Option log-likelihood after the QA prompt (same outputs as ``train.generation.score_options``)."""
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
            hidden = self.hidden_states(ids.to(dev), mask.to(dev), {k: v.to(dev) for k, v in vision.items()})
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

    # ------------------------------------------------------------------ save / load
    def save_export(self, out: str | Path, merge_lora: bool = True) -> Path:
        """Write a folder ``AutoModelForImageTextToText.from_pretrained`` (the same class) loads.

        Merges LoRA in place when ``merge_lora``; else writes the adapters to ``adapter/`` (peft
        format) and the base weights at the root. Copies the processor files (tokenizer, chat
        template, preprocessor configs) and writes ``video_llm.json`` (kind hf_vlm).
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

    @classmethod
    def from_export(cls, path: str | Path, model_config: Any, device: Any = None) -> HFVideoLLM:
        """Load :meth:`save_export`'s folder (adapters merged for evaluation); eval mode."""
        path = Path(path)
        meta = json.loads((path / "video_llm.json").read_text())
        cfg = dataclasses.replace(model_config, kind="hf_vlm",
                                  lora=dataclasses.replace(model_config.lora, enabled=False),
                                  hf=dataclasses.replace(model_config.hf, path=str(path), processor_path=None),
                                  gradient_checkpointing=False)
        model = build_hf_vlm(cfg, device=device)
        if meta.get("lora_adapter"):
            if peft is None:
                raise ImportError(f"{path}: has LoRA adapters; loading them needs peft")
            model.vlm = peft.PeftModel.from_pretrained(model.vlm, str(path / meta["lora_adapter"])).merge_and_unload()
        return model.eval()
