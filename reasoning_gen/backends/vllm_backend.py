"""A teacher run with vLLM's offline engine (``vllm.LLM.generate`` with multimodal inputs).

vllm is imported only when this backend is built, so the rest of the package works without
it; building it without vllm raises an error that says how to install it. The prompt text is
rendered with the model's own chat template (its transformers processor, loaded from the same
local path), then each request is ``{"prompt": text, "multi_modal_data": {"image": [PIL
images]}}`` (one image per frame) or ``{"video": uint8 array [T, H, W, 3]}`` for video models.

NOT TESTED in this repository: vllm is not installed on the development machines (CPU only).
The code follows vLLM's documented offline API (``LLM(model, limit_mm_per_prompt=...)``,
``SamplingParams``, ``LLM.generate(list_of_prompt_dicts, sampling_params)`` returning
``RequestOutput`` objects whose ``outputs[0].text`` is the completion).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from reasoning_gen.backends.base import Backend, GenRequest, GenResult
from reasoning_gen.backends.hf import chat_messages, pick_frames_as
from reasoning_gen.images import to_hwc

log = logging.getLogger(__name__)


def _import_vllm():
    try:
        import vllm  # optional (CUDA machines only): imported when this backend is built, with an install hint
    except ImportError as e:
        raise ImportError("the vllm backend needs vllm (pip install vllm, on a CUDA machine; or pip install "
                          "'videoqa-reasoning[vllm]'); use --backend transformers or openai otherwise") from e
    return vllm


class VLLMBackend(Backend):
    """Offline batched generation with vLLM.

    Args:
        model: local model directory (with processor and chat template).
        max_frames: frames per request at most (vLLM's ``limit_mm_per_prompt``).
        frames_as: ``auto``, ``images`` or ``video`` (as for the transformers backend).
        max_new_tokens, temperature, top_p, seed: sampling settings.
        tensor_parallel_size, gpu_memory_utilization, max_model_len, dtype: engine settings.
        engine_kwargs: anything else for ``vllm.LLM`` (e.g. ``{"enforce_eager": True}``).
    """

    def __init__(self, model: str, max_frames: int = 32, frames_as: str = "auto", max_new_tokens: int = 512,
                 temperature: float = 0.0, top_p: float = 1.0, seed: int = 0, tensor_parallel_size: int = 1,
                 gpu_memory_utilization: float = 0.9, max_model_len: int | None = None, dtype: str = "auto",
                 trust_remote_code: bool = False, engine_kwargs: dict | None = None):
        vllm = _import_vllm()
        from transformers import AutoProcessor  # seconds to import: only when this backend is built

        path = Path(model)
        if not path.is_dir():
            raise FileNotFoundError(f"vllm backend: model directory not found: {path}")
        self.processor = AutoProcessor.from_pretrained(path, local_files_only=True, trust_remote_code=trust_remote_code)
        self.frames_as = pick_frames_as(self.processor, frames_as)
        limit = {"video": 1} if self.frames_as == "video" else {"image": max_frames}
        kwargs = dict(model=str(path), limit_mm_per_prompt=limit, tensor_parallel_size=tensor_parallel_size,
                      gpu_memory_utilization=gpu_memory_utilization, dtype=dtype, seed=seed,
                      trust_remote_code=trust_remote_code, **(engine_kwargs or {}))
        if max_model_len:
            kwargs["max_model_len"] = max_model_len
        self.llm = vllm.LLM(**kwargs)
        self.params = vllm.SamplingParams(temperature=temperature, top_p=top_p, max_tokens=max_new_tokens, seed=seed)
        self.max_frames = max_frames
        self.name = f"vllm:{path.name}"

    def prompt(self, req: GenRequest) -> dict:
        """One vLLM prompt dict: the rendered chat text and the frames as multimodal data."""
        text = self.processor.apply_chat_template(chat_messages(req, self.frames_as), add_generation_prompt=True,
                                                  tokenize=False)
        item: dict = {"prompt": text}
        if req.frames is not None:
            if len(req.frames) > self.max_frames and self.frames_as == "images":
                raise ValueError(f"{req.key}: {len(req.frames)} frames > max_frames={self.max_frames}")
            if self.frames_as == "video":
                item["multi_modal_data"] = {"video": np.stack([to_hwc(f) for f in req.frames])}
            else:
                from PIL import Image  # Pillow is not a dependency of the package; vLLM installs it

                item["multi_modal_data"] = {"image": [Image.fromarray(to_hwc(f)) for f in req.frames]}
        return item

    def _run(self, requests: list[GenRequest]) -> list[GenResult]:
        prompts, results = [], [None] * len(requests)
        for i, r in enumerate(requests):
            try:
                prompts.append((i, self.prompt(r)))
            except Exception as e:
                results[i] = GenResult(None, f"{r.key}: cannot build prompt: {type(e).__name__}: {e}")
        if not prompts:
            return results  # type: ignore[return-value]
        try:
            outputs = self.llm.generate([p for _, p in prompts], self.params, use_tqdm=False)
        except Exception as e:
            if len(prompts) == 1:
                results[prompts[0][0]] = GenResult(None, f"{requests[prompts[0][0]].key}: {type(e).__name__}: {e}")
                return results  # type: ignore[return-value]
            log.warning("vllm batch of %d failed (%s: %s); retrying one by one", len(prompts), type(e).__name__, e)
            for i, _ in prompts:
                results[i] = self._run([requests[i]])[0]
            return results  # type: ignore[return-value]
        for (i, _), out in zip(prompts, outputs):
            results[i] = GenResult(out.outputs[0].text.strip())
        return results  # type: ignore[return-value]

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        return self._run(requests)

    def close(self) -> None:
        del self.llm
