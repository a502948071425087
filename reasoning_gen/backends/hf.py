"""A teacher run locally with transformers: any image-text-to-text model with a chat template.

The model and its processor are loaded from a local path (``local_files_only``: nothing is
downloaded). Each request becomes a chat turn whose content is the frames followed by the
text; the processor's chat template places the model's own image/video tokens. Frames go in
as a list of images (one per frame) or, for processors with a video processor (Qwen2-VL,
LLaVA-OneVision ...), as one video ``[T, 3, H, W]``. Requests are generated in batches with
left padding; if a batch fails (e.g. out of memory), its requests are retried one by one so
that one bad request does not sink the others.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from reasoning_gen.backends.base import Backend, GenRequest, GenResult

log = logging.getLogger(__name__)


def chat_messages(req: GenRequest, frames_as: str) -> list[dict]:
    """The chat for one request: optional system message, then one user turn (frames, text)."""
    content: list[dict] = []
    if req.frames is not None:
        content += [{"type": "video"}] if frames_as == "video" else [{"type": "image"} for _ in range(len(req.frames))]
    content.append({"type": "text", "text": req.prompt.text})
    system = [{"type": "text", "text": req.prompt.system}]
    messages = [{"role": "system", "content": system}] if req.prompt.system else []
    return messages + [{"role": "user", "content": content}]


def pick_frames_as(processor, frames_as: str) -> str:
    """``images`` or ``video``: ``auto`` takes video when the processor has a video processor."""
    if frames_as not in ("auto", "images", "video"):
        raise ValueError(f"frames_as must be auto, images or video, got {frames_as!r}")
    has_video = getattr(processor, "video_processor", None) is not None
    if frames_as == "video" and not has_video:
        raise ValueError(f"{type(processor).__name__} has no video processor; use frames_as='images'")
    if frames_as == "auto":
        return "video" if has_video else "images"
    return frames_as


def resolve_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class TransformersBackend(Backend):
    """Batched ``generate`` with a local transformers image-text-to-text model.

    Args:
        model: local directory with the model, its processor and a chat template.
        device: ``cuda``, ``cpu``, ``cuda:1`` ... or None/``auto``.
        dtype: ``auto`` (the checkpoint's), ``bfloat16``, ``float16`` or ``float32``.
        max_new_tokens: generation length limit.
        temperature: 0 for greedy decoding, else sampling with this temperature and ``top_p``.
        frames_as: ``auto``, ``images`` (one image per frame) or ``video``.
        batch_size: requests per ``generate`` call at most (None: the whole batch given).
        attn_implementation: passed to ``from_pretrained`` (e.g. ``sdpa``, ``flash_attention_2``).
        trust_remote_code: allow the checkpoint's own code (off by default).
        generate_kwargs: more ``generate`` arguments (e.g. ``repetition_penalty``).
    """

    def __init__(self, model: str, device: str | None = None, dtype: str = "auto", max_new_tokens: int = 512,
                 temperature: float = 0.0, top_p: float = 1.0, frames_as: str = "auto", batch_size: int | None = None,
                 attn_implementation: str | None = None, trust_remote_code: bool = False,
                 generate_kwargs: dict | None = None):
        # transformers takes seconds to import: only when this backend is built, not for synthetic / openai
        from transformers import AutoModelForImageTextToText, AutoProcessor

        path = Path(model)
        if not path.is_dir():
            raise FileNotFoundError(f"transformers backend: model directory not found: {path} "
                                    "(a local path is required; nothing is downloaded)")
        self.processor = AutoProcessor.from_pretrained(path, local_files_only=True, trust_remote_code=trust_remote_code)
        self.tokenizer = getattr(self.processor, "tokenizer", self.processor)
        if not (getattr(self.processor, "chat_template", None) or getattr(self.tokenizer, "chat_template", None)):
            raise ValueError(f"{path}: the processor has no chat template (chat_template.jinja / chat_template.json)")
        self.tokenizer.padding_side = "left"  # generation appends on the right
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.device = resolve_device(device)
        kwargs = {"local_files_only": True, "trust_remote_code": trust_remote_code}
        if dtype != "auto":
            kwargs["dtype"] = getattr(torch, dtype)
        if attn_implementation:
            kwargs["attn_implementation"] = attn_implementation
        self.model = AutoModelForImageTextToText.from_pretrained(path, **kwargs).to(self.device).eval()
        self.frames_as = pick_frames_as(self.processor, frames_as)
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p
        self.batch_size, self.generate_kwargs = batch_size, dict(generate_kwargs or {})
        self.name = f"transformers:{path.name}"

    def build_inputs(self, requests: list[GenRequest]):
        """Processor outputs (``BatchFeature``) for a batch; all requests with frames or none.

        Frames: each request's uint8 [T, 3, H, W]; images mode gives the processor a list of T
        [3, H, W] images per request.
        """
        with_frames = {r.frames is not None for r in requests}
        if len(with_frames) != 1:
            raise ValueError("a batch must be all with frames or all without")
        texts = [self.processor.apply_chat_template(chat_messages(r, self.frames_as), add_generation_prompt=True,
                                                    tokenize=False) for r in requests]
        kwargs = {"text": texts, "padding": True, "return_tensors": "pt"}
        if with_frames == {True}:
            if self.frames_as == "video":
                kwargs["videos"] = [r.frames for r in requests]
            else:
                kwargs["images"] = [list(r.frames) for r in requests]
        return self.processor(**kwargs)

    @torch.inference_mode()
    def _generate_batch(self, requests: list[GenRequest]) -> list[str]:
        inputs = self.build_inputs(requests).to(self.device)
        for key in ("pixel_values", "pixel_values_videos"):
            if key in inputs and inputs[key].is_floating_point():
                inputs[key] = inputs[key].to(self.model.dtype)
        sample = self.temperature > 0
        gen = {"max_new_tokens": self.max_new_tokens, "do_sample": sample, "pad_token_id": self.tokenizer.pad_token_id}
        if sample:
            gen.update(temperature=self.temperature, top_p=self.top_p)
        gen.update(self.generate_kwargs)
        out = self.model.generate(**inputs, **gen)
        new_tokens = out[:, inputs["input_ids"].shape[1]:]
        return [t.strip() for t in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]

    def _run(self, requests: list[GenRequest]) -> list[GenResult]:
        try:
            return [GenResult(t) for t in self._generate_batch(requests)]
        except Exception as e:
            if len(requests) == 1:
                return [GenResult(None, f"{requests[0].key}: {type(e).__name__}: {e}")]
            log.warning("batch of %d failed (%s: %s); retrying one by one", len(requests), type(e).__name__, e)
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            return [self._run([r])[0] for r in requests]

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        results: list[GenResult | None] = [None] * len(requests)
        # Keep requests with and without frames in separate batches (one processor call each).
        for has in (True, False):
            idx = [i for i, r in enumerate(requests) if (r.frames is not None) == has]
            step = self.batch_size or max(1, len(idx))
            for s in range(0, len(idx), step):
                chunk = idx[s:s + step]
                for i, res in zip(chunk, self._run([requests[i] for i in chunk])):
                    results[i] = res
        return results  # type: ignore[return-value]

    def close(self) -> None:
        del self.model
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
