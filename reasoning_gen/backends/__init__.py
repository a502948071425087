"""Teacher backends behind one interface (:class:`~reasoning_gen.backends.base.Backend`).

``synthetic`` (an imperfect teacher for the synthetic dataset, no model), ``openai`` (any
OpenAI-compatible chat-completions server), ``transformers`` (a local image-text-to-text model)
and ``vllm`` (offline batched inference; vllm is imported only when this backend is built).
"""

from __future__ import annotations

import importlib

from reasoning_gen.backends.base import Backend, BackendUnavailable, GenRequest, GenResult

BACKENDS = {
    "synthetic": ("reasoning_gen.backends.synthetic", "SyntheticBackend"),
    "openai": ("reasoning_gen.backends.openai_compat", "OpenAIBackend"),
    "transformers": ("reasoning_gen.backends.hf", "TransformersBackend"),
    "vllm": ("reasoning_gen.backends.vllm_backend", "VLLMBackend"),
}


def build_backend(name: str, **options) -> Backend:
    """Build a backend by name with its keyword options (see each backend's ``__init__``)."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; expected one of {sorted(BACKENDS)}")
    module, cls = BACKENDS[name]
    backend_cls = getattr(importlib.import_module(module), cls)
    try:
        return backend_cls(**options)
    except TypeError as e:
        raise TypeError(f"backend {name!r}: bad options {sorted(options)}: {e}") from None


__all__ = ["BACKENDS", "Backend", "BackendUnavailable", "GenRequest", "GenResult", "build_backend"]
