"""Inputs of an existing Hugging Face video-LLM: its chat template, its video tensors, token batches.

:class:`VideoChatProcessor` turns our training examples (:class:`train.tasks.Example`) into what
the model's own forward expects, with the model's own conventions:

* the prompt is the folder's chat template rendered on one user turn ``[video, text]`` (the text
  is our question + lettered options + instruction, :mod:`train.prompts`), with the
  generation prompt of the assistant turn appended;
* the family's single video placeholder in that text (``<|video_pad|>`` / ``<video>``) is repeated
  as many times as the vision tower will return features (``num_video_tokens``);
* the target is the answer / reasoning text followed by the template's end of turn
  (``<|im_end|>`` for ChatML), so that a trained model stops where the template says;
* frames uint8 [T, 3, H, W] become the family's video tensors: Qwen2-VL / Qwen2.5-VL flattened
  spatio-temporal patches ``pixel_values_videos [N, C*tp*p*p]`` + ``video_grid_thw [1, 3]``
  (+ ``second_per_grid_ts`` for Qwen2.5-VL), LLaVA-OneVision ``pixel_values_videos [1, T, 3, S, S]``.

Prompt and target are tokenized apart and concatenated, so the target is an exact token span
(labels = target ids, -100 elsewhere), as in :func:`train.tasks.collate`.

Why not ``AutoProcessor``: in transformers 5 every video processor needs torchvision, which the
CPU stack does not install. The preprocessing below is the families' documented one (rescale
1/255, normalise, Qwen's patch order (t, h/m, w/m, m, m, C, tp, p, p), last frame repeated to a
multiple of the temporal patch), read from the folder's ``video_preprocessor_config.json`` /
``preprocessor_config.json``. With frames decoded at the size the model wants (the recipes set
``data.frame_size`` so) no resize happens; otherwise frames are resized bicubically with
antialiasing, close to but not bit-identical with torchvision's resize.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AutoTokenizer

from train import prompts
from train.packing import pack_rows
from train.tasks import PromptTooLong, pad_rows, stack_frames

QWEN_FAMILIES = ("qwen2_vl", "qwen2_5_vl")
LLAVA_FAMILIES = ("llava_onevision",)
FAMILIES = QWEN_FAMILIES + LLAVA_FAMILIES
VIDEO_TOKEN = {"qwen2_vl": "<|video_pad|>", "qwen2_5_vl": "<|video_pad|>", "llava_onevision": "<video>"}
_SENTINEL = "\u2063TARGET\u2063"


def read_preprocessor_config(path: Path) -> dict:
    """The video preprocessor settings of a model folder (video config first, image config else)."""
    for name in ("video_preprocessor_config.json", "preprocessor_config.json", "processor_config.json"):
        f = path / name
        if f.is_file():
            data = json.loads(f.read_text())
            return data.get("video_processor", data) if name == "processor_config.json" else data
    raise FileNotFoundError(f"{path}: no video_preprocessor_config.json or preprocessor_config.json "
                            "(the model folder's processor settings)")


def _smart_size(h: int, w: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Qwen2-VL's resize rule: both sides multiples of ``factor``, area within [min, max] pixels."""
    hb, wb = max(factor, round(h / factor) * factor), max(factor, round(w / factor) * factor)
    if hb * wb > max_pixels:
        beta = math.sqrt(h * w / max_pixels)
        hb = max(factor, math.floor(h / beta / factor) * factor)
        wb = max(factor, math.floor(w / beta / factor) * factor)
    elif hb * wb < min_pixels:
        beta = math.sqrt(min_pixels / (h * w))
        hb, wb = math.ceil(h * beta / factor) * factor, math.ceil(w * beta / factor) * factor
    return hb, wb


@dataclass
class VideoPreprocessor:
    """Frames uint8 [T, 3, H, W] -> the family's video tensors (one video, batch dim 1).

    Attributes:
        family: model_type of the VLM.
        mean, std: per-channel normalisation after rescaling to [0, 1].
        patch, merge, temporal_patch: Qwen patching (patch size, spatial merge, frames per patch).
        min_pixels, max_pixels: Qwen resize bounds.
        size: LLaVA-OneVision frame size (the tower's image size).
        seconds_per_frame: Qwen2.5-VL temporal rope scale: 1 / sampled fps.
    """

    family: str
    mean: list[float]
    std: list[float]
    patch: int = 14
    merge: int = 2
    temporal_patch: int = 2
    min_pixels: int = 56 * 56
    max_pixels: int = 28 * 28 * 1280
    size: int = 384
    seconds_per_frame: float = 0.5

    @classmethod
    def from_folder(cls, path: Path, family: str, model_config: Any, video_fps: float) -> VideoPreprocessor:
        """Settings from the folder's preprocessor config and the model config."""
        c = read_preprocessor_config(path)
        kw: dict[str, Any] = {"family": family, "mean": list(c.get("image_mean", [0.5] * 3)),
                              "std": list(c.get("image_std", [0.5] * 3)), "seconds_per_frame": 1.0 / video_fps}
        if family in QWEN_FAMILIES:
            size = c.get("size") or {}
            kw.update(patch=int(c.get("patch_size", 14)), merge=int(c.get("merge_size", 2)),
                      temporal_patch=int(c.get("temporal_patch_size", 2)),
                      min_pixels=int(c.get("min_pixels") or size.get("shortest_edge") or 56 * 56),
                      max_pixels=int(c.get("max_pixels") or size.get("longest_edge") or 28 * 28 * 1280))
        else:
            kw["size"] = int(model_config.vision_config.image_size)  # the tower only takes its own size
        return cls(**kw)

    def frame_size(self, h: int, w: int) -> tuple[int, int]:
        """The (height, width) frames are resized to."""
        if self.family in QWEN_FAMILIES:
            return _smart_size(h, w, self.patch * self.merge, self.min_pixels, self.max_pixels)
        return self.size, self.size

    def __call__(self, frames: torch.Tensor) -> dict[str, torch.Tensor]:
        """frames uint8 [T, 3, H, W] -> {"pixel_values_videos": float32 ..., (Qwen) "video_grid_thw"}."""
        if frames.dim() != 4 or frames.shape[1] != 3:
            raise ValueError(f"frames must be [T, 3, H, W], got {tuple(frames.shape)}")
        x = frames.float()
        size = self.frame_size(*frames.shape[-2:])
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False)
            x = x.round().clamp(0, 255)  # resized frames are uint8 images again before rescaling
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        x = (x / 255.0 - mean) / std
        if self.family in LLAVA_FAMILIES:
            return {"pixel_values_videos": x.unsqueeze(0)}
        return self._patchify(x)

    def _patchify(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        tp, p, m = self.temporal_patch, self.patch, self.merge
        if pad := -x.shape[0] % tp:  # repeat the last frame up to a whole temporal patch
            x = torch.cat([x, x[-1:].expand(pad, -1, -1, -1)])
        T, C, H, W = x.shape
        gt, gh, gw = T // tp, H // p, W // p
        x = x.view(gt, tp, C, gh // m, m, p, gw // m, m, p).permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
        out = {"pixel_values_videos": x.reshape(gt * gh * gw, C * tp * p * p),
               "video_grid_thw": torch.tensor([[gt, gh, gw]], dtype=torch.long)}
        if self.family == "qwen2_5_vl":
            out["second_per_grid_ts"] = torch.tensor([tp * self.seconds_per_frame])
        return out

    def num_video_tokens(self, inputs: dict[str, torch.Tensor], model_config: Any) -> int:
        """Placeholder tokens the model fills with this video's features."""
        if self.family in QWEN_FAMILIES:
            return int(inputs["video_grid_thw"].prod()) // (self.merge ** 2)
        grid = int(model_config.vision_config.image_size) // int(model_config.vision_config.patch_size)
        frames = int(inputs["pixel_values_videos"].shape[1])
        return frames * math.ceil(grid / 2) ** 2 + 1  # 2x2-pooled patches per frame + one newline


class VideoChatProcessor:
    """Prompts, targets and batches for one HF video-LLM folder (see the module doc).

    Args:
        tokenizer: the folder's tokenizer.
        chat_template: Jinja template (the folder's).
        video: the family's :class:`VideoPreprocessor`.
        model_config: the VLM's config (token ids, vision sizes).
        source: the folder it was read from (its preprocessor configs are copied on save).
    """

    def __init__(self, tokenizer: Any, chat_template: str, video: VideoPreprocessor, model_config: Any,
                 source: Path | None = None):
        self.tokenizer, self.chat_template, self.video = tokenizer, chat_template, video
        self.model_config = model_config
        self.source = source
        self.video_token = VIDEO_TOKEN[video.family]
        self.video_token_id = int(tokenizer.convert_tokens_to_ids(self.video_token))
        if self.video_token_id != int(getattr(model_config, "video_token_id", self.video_token_id)):
            raise ValueError(f"tokenizer's {self.video_token} id {self.video_token_id} != the model's video_token_id "
                             f"{model_config.video_token_id}")
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.turn_end = self._turn_end()
        ids = tokenizer.encode(self.turn_end, add_special_tokens=False)
        self.stop_token_id = ids[0] if ids else tokenizer.eos_token_id

    @classmethod
    def from_folder(cls, path: str | Path, model_config: Any, video_fps: float = 2.0,
                    trust_remote_code: bool = False) -> VideoChatProcessor:
        """Tokenizer, chat template and video settings of a local model folder (nothing downloaded)."""
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"processor folder {path} is not a directory")
        family = model_config.model_type
        if family not in FAMILIES:
            raise ValueError(f"{path}: model_type {family!r} is not a supported video-LLM family {FAMILIES}")
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=trust_remote_code)
        template = tok.chat_template
        for name in ("chat_template.jinja", "chat_template.json"):
            if template is None and (path / name).is_file():
                text = (path / name).read_text()
                template = json.loads(text)["chat_template"] if name.endswith(".json") else text
        if not template:
            raise ValueError(f"{path}: no chat template (tokenizer_config.json, chat_template.jinja or .json)")
        return cls(tok, template, VideoPreprocessor.from_folder(path, family, model_config, video_fps), model_config,
                   source=path)

    def save_pretrained(self, out: str | Path) -> Path:
        """Tokenizer + chat template + the source folder's preprocessor configs into ``out``."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(str(out))
        if not (out / "chat_template.jinja").is_file():
            (out / "chat_template.jinja").write_text(self.chat_template)
        for name in ("preprocessor_config.json", "video_preprocessor_config.json", "processor_config.json"):
            if self.source is not None and (self.source / name).is_file():
                shutil.copyfile(self.source / name, out / name)
        return out

    # ------------------------------------------------------------------ text
    def _render(self, messages: list[dict], add_generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(messages, chat_template=self.chat_template, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt)

    def _turn_end(self) -> str:
        """What the template writes after an assistant message (e.g. "<|im_end|>"), whitespace cut."""
        user = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "q"}]}]
        prompt = self._render(user, True)
        full = self._render(user + [{"role": "assistant", "content": [{"type": "text", "text": _SENTINEL}]}], False)
        if not full.startswith(prompt) or _SENTINEL not in full:
            raise ValueError("the chat template does not render an assistant turn after its generation prompt")
        return full.split(_SENTINEL, 1)[1].rstrip()

    def user_text(self, question: str, options: list[str], instruction: str,
                  captions: list[str | None] | None = None) -> str:
        """The text of the user turn: [transitions,] question, options, instruction (train.prompts)."""
        parts = []
        if captions is not None and any(captions):
            parts.append("Transitions between frames:" + "".join(
                f"\n{j + 1}->{j + 2}: {str(c).strip()}" for j, c in enumerate(captions) if c))
        if question.strip():
            parts.append(prompts.question_text(question).strip())
        if options:
            parts.append(prompts.options_text(options).strip())
        parts.append(instruction)
        return "\n".join(parts)

    def prompt_ids(self, n_video_tokens: int, text: str, video: bool = True) -> list[int]:
        """Token ids of the chat prompt with the video placeholder repeated ``n_video_tokens`` times
        (``video=False``: a text-only prompt, no video in the user turn)."""
        content = [{"type": "video"}] if video else []
        messages = [{"role": "user", "content": [*content, {"type": "text", "text": text}]}]
        rendered = self._render(messages, True)
        if not video:
            if self.video_token in rendered:
                raise ValueError(f"the chat template rendered a video placeholder {self.video_token!r} in a "
                                 "text-only prompt")
            return self.tokenizer.encode(rendered, add_special_tokens=False)
        if rendered.count(self.video_token) != 1:
            raise ValueError(f"the chat template rendered {rendered.count(self.video_token)} video placeholders "
                             f"{self.video_token!r}, expected 1")
        rendered = rendered.replace(self.video_token, self.video_token * n_video_tokens)
        return self.tokenizer.encode(rendered, add_special_tokens=False)

    def target_ids(self, target: str, max_len: int | None = None) -> tuple[list[int], bool]:
        """Ids of ``target`` + the end of turn, cut to ``max_len`` (the end of turn kept)."""
        body = self.tokenizer.encode(target.strip(), add_special_tokens=False)
        end = self.tokenizer.encode(self.turn_end, add_special_tokens=False)
        cut = max_len is not None and len(body) + len(end) > max_len
        if cut:
            body = body[: max(0, max_len - len(end))]
        return body + end, cut

    def encode_prompt(self, frames: torch.Tensor | None, question: str, options: list[str], instruction: str,
                      captions: list[str | None] | None = None, max_len: int | None = None, qid: str = "?",
                      video_inputs: dict | None = None, n_video_tokens: int | None = None
                      ) -> tuple[list[int], dict | None, bool]:
        """(prompt ids, video tensors, question cut?) of one example; the question is shortened
        (by tokens) until the prompt fits ``max_len``. ``frames`` None: a text-only prompt (video
        tensors None). ``n_video_tokens`` without frames: the prompt of a video of that many tokens, its
        tensors not made (None; what the frame budget measures).

        Raises:
            PromptTooLong: the prompt does not fit even with its question cut to one token, or a cut
                would lose video placeholders (naming the qid).
        """
        has_video = frames is not None or video_inputs is not None or n_video_tokens is not None
        vid = video_inputs if video_inputs is not None else self.video(frames) if frames is not None else None
        if n_video_tokens is not None and vid is None:
            n_vis = n_video_tokens
        else:
            n_vis = self.video.num_video_tokens(vid, self.model_config) if has_video else 0
        captions = captions if has_video else None
        ids = self.prompt_ids(n_vis, self.user_text(question, options, instruction, captions), has_video)
        cut = False
        if max_len is not None and len(ids) > max_len:
            q_ids = self.tokenizer.encode(question, add_special_tokens=False)
            keep = len(q_ids) - (len(ids) - max_len)
            if keep < 1:
                raise PromptTooLong(f"{qid}: prompt without its question is {len(ids) - len(q_ids)} tokens > "
                                    f"max_prompt_len {max_len} (video tokens {n_vis}, options and template must fit)")
            short = self.tokenizer.decode(q_ids[:keep])
            ids = self.prompt_ids(n_vis, self.user_text(short, options, instruction, captions), has_video)[:max_len]
            cut = True
            if sum(t == self.video_token_id for t in ids) != n_vis:  # never features without their tokens
                raise PromptTooLong(f"{qid}: cutting the prompt to max_prompt_len {max_len} would cut its {n_vis} "
                                    "video placeholders")
        return ids, vid, cut

    # ------------------------------------------------------------------ batches
    def add_token_types(self, vision: dict, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict:
        """Qwen families: ``vision["mm_token_type_ids"]`` = 0 text, 2 video per token (M-RoPE reads it)."""
        if self.video.family in QWEN_FAMILIES:
            vision["mm_token_type_ids"] = (input_ids == self.video_token_id).long() * 2
        return vision

    def stack_video(self, videos: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Concatenate per-video tensors along dim 0 (patch rows / videos, as the model takes them)."""
        return {k: torch.cat([v[k] for v in videos]) for k in videos[0]}

    def _encode(self, examples: list, max_prompt_len: int, max_target_len: int
                ) -> tuple[list[tuple[list[int], list[int], int]], list[dict], int, int]:
        """(prompt ids, target ids, task id) and the video tensors of each example (None: text-only);
        questions and targets cut to fit (counted)."""
        if not examples:
            raise ValueError("collate got no examples")
        rows, videos, n_cut_p, n_cut_t = [], [], 0, 0
        counts = {int(ex.frames.shape[0]) for ex in examples if ex.frames is not None and ex.frames.dim() == 4}
        if self.video.family in LLAVA_FAMILIES and len(counts) > 1:
            raise ValueError(f"LLaVA-OneVision takes one frame count per micro-batch, these clips have "
                             f"{sorted(counts)} ({[ex.qid for ex in examples]}); under the frame budget the trainer "
                             "trims every clip of a micro-batch to the smallest count (train.frame_budget)")
        cache: dict[int, dict] = {}  # the QA and reasoning examples of a question share one frames tensor
        for ex in examples:
            if ex.frames is not None and (ex.frames.dtype != torch.uint8 or ex.frames.dim() != 4):
                raise ValueError(f"{ex.qid}: frames {tuple(ex.frames.shape)} {ex.frames.dtype}, expected uint8 "
                                 "[T, 3, H, W]")
            vid = None if ex.frames is None else (
                cache.get(id(ex.frames)) or cache.setdefault(id(ex.frames), self.video(ex.frames)))
            p, _, cp = self.encode_prompt(ex.frames, ex.question, ex.options, ex.instruction, ex.captions,
                                          max_prompt_len, ex.qid, video_inputs=vid)
            t, ct = self.target_ids(ex.target, max_target_len)
            n_cut_p, n_cut_t = n_cut_p + cp, n_cut_t + ct
            rows.append((p, t, ex.task_id))
            videos.append(vid)
        return rows, videos, n_cut_p, n_cut_t

    def dummy_video(self) -> tuple[dict[str, torch.Tensor], int]:
        """(video tensors, placeholder count) of the smallest black clip the family takes: one temporal
        patch of one merged patch (Qwen), one frame (LLaVA-OneVision)."""
        v = self.video
        if v.family in QWEN_FAMILIES:
            side = v.patch * v.merge
            vid = self.video(torch.zeros((v.temporal_patch, 3, side, side), dtype=torch.uint8))
        else:
            vid = self.video(torch.zeros((1, 3, v.size, v.size), dtype=torch.uint8))
        return vid, v.num_video_tokens(vid, self.model_config)

    def _with_dummy_video(self, tensors: dict[str, torch.Tensor], row: int, segment: int | None = None
                          ) -> dict[str, torch.Tensor]:
        """A micro-batch whose examples are all text-only still runs the vision tower, as ZeRO-3 needs
        (every rank gathers the same parameters in the same order and reduces a gradient for each: a rank
        that skipped the tower while another ran it would hang the job). The VLM's own forward takes the
        black :meth:`dummy_video`; its placeholders are appended to ``row`` as masked tokens (attention
        mask 0, no labels; packed: a segment of their own), so no real token sees them and the tower's
        gradient from this micro-batch is exactly 0."""
        vid, n = self.dummy_video()
        R = tensors["input_ids"].shape[0]
        extra = {"input_ids": self.pad_token_id, "attention_mask": 0, "labels": -100, "task_ids": 0,
                 "position_ids": 0, "segment_ids": 0}
        out = {}
        for k, fill in extra.items():
            if k in tensors:
                out[k] = torch.cat([tensors[k], torch.full((R, n), fill, dtype=tensors[k].dtype)], dim=1)
        L = out["input_ids"].shape[1]
        out["input_ids"][row, L - n:] = self.video_token_id
        if "position_ids" in out:
            out["position_ids"][row, L - n:] = torch.arange(n)
            out["segment_ids"][row, L - n:] = segment
        return {**tensors, **out, "vision": vid}

    def collate(self, examples: list, max_prompt_len: int, max_target_len: int) -> dict[str, Any]:
        """Examples -> right-padded batch, the keys of :func:`train.tasks.collate` plus ``vision``
        (the family's video tensors of the examples that have video, and ``mm_token_type_ids`` [B, L]).
        Qwen: clips of different frame counts each get their own ``video_grid_thw`` row (the frame budget);
        the uint8 ``pixel_values`` (not read by the model) are then zero-padded to the longest.
        Text-only examples (frames None) have no placeholders; when every example is text-only the
        batch carries a masked dummy video (:meth:`_with_dummy_video`)."""
        rows, videos, n_cut_p, n_cut_t = self._encode(examples, max_prompt_len, max_target_len)
        input_ids, attention_mask, labels, task_ids = pad_rows(rows, self.pad_token_id)
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels, "task_ids": task_ids}
        present = [v for v in videos if v is not None]
        batch = {**batch, "vision": self.stack_video(present)} if present else self._with_dummy_video(batch, 0)
        self.add_token_types(batch["vision"], batch["input_ids"], batch["attention_mask"])
        return {"pixel_values": stack_frames(examples, pad=True), **batch, "qids": [ex.qid for ex in examples],
                "tasks": [ex.task for ex in examples], "n_cut_prompts": n_cut_p, "n_cut_targets": n_cut_t}

    def pack(self, examples: list, max_prompt_len: int, max_target_len: int, max_tokens_per_row: int,
             pad_to_multiple: int = 1, max_visual_tokens_per_row: int | None = None) -> dict[str, Any]:
        """Examples -> packed rows (``train.packing.pack_rows``: first-fit decreasing, right-padded).

        The keys of :meth:`collate` (``vision`` holds one video per example with video, in packed order,
        which is the order the model fills the placeholders in), plus ``position_ids`` [R, L] (text positions,
        restarting per example and at each row's padding tail), ``segment_ids`` [R, L] (1, 2, ... per
        example, 0 padding), ``example_lengths``, ``example_targets``, ``n_examples`` and ``packed``.
        Qwen's 3-D M-RoPE positions are the model's own (``HFVideoLLM.packed_position_ids``).
        ``max_visual_tokens_per_row``: the frame budget's second packing constraint (video placeholders per
        row). The uint8 ``pixel_values`` (not read by the model) are zero-padded when clips differ in count.
        """
        seqs, videos, n_cut_p, n_cut_t = self._encode(examples, max_prompt_len, max_target_len)
        rows, order = pack_rows(seqs, max_tokens_per_row, self.pad_token_id, pad_to_multiple, self.video_token_id,
                                max_visual_tokens_per_row)
        present = [videos[i] for i in order if videos[i] is not None]
        if present:
            rows["vision"] = self.stack_video(present)
        else:  # the dummy as the last row's last segment
            last = rows["input_ids"].shape[0] - 1
            rows = self._with_dummy_video(rows, last, int(rows["segment_ids"][last].max()) + 1)
        self.add_token_types(rows["vision"], rows["input_ids"], rows["attention_mask"])
        packed = [examples[i] for i in order]
        return {"pixel_values": stack_frames(packed, pad=True), **rows, "qids": [ex.qid for ex in packed],
                "tasks": [ex.task for ex in packed], "n_examples": len(examples), "n_cut_prompts": n_cut_p,
                "n_cut_targets": n_cut_t, "packed": True}
