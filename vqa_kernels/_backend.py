"""Which implementation runs a kernel call: compiled Triton, the Triton interpreter, or chunked torch.

The choice depends on the device of the inputs and on the environment at CALL time:

- CUDA tensor and triton importable -> ``"triton"`` (compiled kernels);
- CPU tensor, ``TRITON_INTERPRET=1`` and triton importable -> ``"triton-interpret"`` (slow; tests);
- anything else -> ``"torch-chunked"`` (the pure-PyTorch chunked path of ``vqa_kernels.reference``).

Every distinct choice is logged once (``logging`` logger ``"vqa_kernels"``) and can be queried with
``vqa_kernels.backend(device)``.

Triton decides between compiling and interpreting a ``@triton.jit`` function when it is DECORATED
(it reads ``TRITON_INTERPRET`` then).  So that the choice above does not depend on import order
(a training module, or torchcodec, may import triton long before a test sets
``TRITON_INTERPRET=1``), :func:`kernel_for` re-decorates the raw Python function of a kernel in the
mode a call needs and caches both variants.  For the same reason our kernels call no ``@jit``
function of triton's standard library (``tl.max``, ``tl.sum``, ``tl.zeros`` are decorated when
triton is imported) and no ``@jit`` helper of their own: see ``vqa_kernels/cross_entropy.py``.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading

import torch

logger = logging.getLogger("vqa_kernels")

TRITON = "triton"
TRITON_INTERPRET = "triton-interpret"
TORCH_CHUNKED = "torch-chunked"

_logged: set[tuple[str, str]] = set()
_variants: dict[tuple[int, bool], object] = {}
_lock = threading.Lock()


def triton_version() -> str | None:
    """The installed triton version, or None when triton cannot be imported."""
    try:
        triton = importlib.import_module("triton")
    except Exception:  # ImportError, or a broken install raising something else
        return None
    return getattr(triton, "__version__", "unknown")


def interpret_requested() -> bool:
    """True when the environment asks for the Triton interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


def choose(device: torch.device | str | None = None) -> tuple[str, str]:
    """Pick the implementation for tensors on ``device``.

    Args:
        device: where the inputs live; None means ``cuda`` when available, else ``cpu``.

    Returns:
        (name, reason): name in {"triton", "triton-interpret", "torch-chunked"}; reason says why.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    version = triton_version()
    if dev.type == "cuda":
        if version is None:
            return TORCH_CHUNKED, "CUDA tensors but triton is not importable"
        return TRITON, f"CUDA tensors, triton {version}"
    if dev.type == "cpu" and interpret_requested():
        if version is None:
            return TORCH_CHUNKED, "TRITON_INTERPRET=1 but triton is not importable"
        return TRITON_INTERPRET, f"CPU tensors with TRITON_INTERPRET=1 (triton {version} interpreter)"
    if dev.type == "cpu":
        return TORCH_CHUNKED, "CPU tensors without TRITON_INTERPRET=1"
    return TORCH_CHUNKED, f"device type {dev.type!r} has no Triton path here"


def backend(device: torch.device | str | None = None) -> str:
    """The implementation a kernel call on ``device`` uses now; logs each distinct choice once.

    Args:
        device: as in :func:`choose`.

    Returns:
        "triton", "triton-interpret" or "torch-chunked".
    """
    name, reason = choose(device)
    key = (name, reason)
    if key not in _logged:
        with _lock:
            if key not in _logged:
                _logged.add(key)
                # A GPU run that falls back to torch is a performance surprise: warn, else inform.
                level = logging.WARNING if "CUDA" in reason and name == TORCH_CHUNKED else logging.INFO
                logger.log(level, "kernels backend: %s (%s)", name, reason)
    return name


def kernel_for(kernel, interpret: bool):
    """Return ``kernel`` (a ``@triton.jit`` function) decorated in the requested mode.

    Args:
        kernel: a JITFunction or InterpretedFunction; its ``.fn`` is the raw Python function.
        interpret: True for the interpreter (CPU tensors), False for compiled (CUDA tensors).

    Returns:
        A launchable kernel (``kernel[grid](...)``) of the requested kind, cached per kernel.
    """
    if type(kernel).__name__ == ("InterpretedFunction" if interpret else "JITFunction"):
        return kernel  # already decorated in the wanted mode
    key = (id(kernel), interpret)
    cached = _variants.get(key)
    if cached is not None:
        return cached
    import triton  # optional: only a Triton backend gets here, and the torch path runs without it

    with _lock:
        saved = os.environ.get("TRITON_INTERPRET")
        os.environ["TRITON_INTERPRET"] = "1" if interpret else "0"
        try:
            variant = triton.jit(kernel.fn)
        finally:
            if saved is None:
                os.environ.pop("TRITON_INTERPRET", None)
            else:
                os.environ["TRITON_INTERPRET"] = saved
        _variants[key] = variant
    return variant
