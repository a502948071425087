"""Attention backend choice for HuggingFace models: flash-attn 2 on CUDA when importable, else SDPA.

The choice and its reason are returned and logged, never silent.  PyTorch SDPA itself dispatches
to FlashAttention / memory-efficient kernels on recent GPUs, so "sdpa" is a good fallback there.
"""

from __future__ import annotations

import importlib
import logging

import torch

logger = logging.getLogger("vqa_kernels.attention")

FLASH_ATTENTION_2 = "flash_attention_2"
SDPA = "sdpa"


def select_attention(device: torch.device | str) -> tuple[str, str]:
    """Pick the ``attn_implementation`` string for a transformers model on ``device``.

    Args:
        device: where the model runs ("cuda", "cuda:1", "cpu", a torch.device ...).

    Returns:
        (impl, reason): impl is "flash_attention_2" when ``flash_attn`` imports and the device is
        an available CUDA device, else "sdpa"; reason says why, e.g. "flash_attn not installed".
    """
    dev = torch.device(device)
    if dev.type != "cuda":
        impl, reason = SDPA, f"device is {dev.type}, flash_attention_2 needs CUDA"
    elif not torch.cuda.is_available():
        impl, reason = SDPA, "CUDA device requested but torch.cuda.is_available() is False"
    else:
        impl, reason = _flash_attn_status()
    logger.info("attention implementation: %s (%s)", impl, reason)
    return impl, reason


def _flash_attn_status() -> tuple[str, str]:
    try:
        flash_attn = importlib.import_module("flash_attn")
    except ModuleNotFoundError as exc:
        if exc.name == "flash_attn":
            return SDPA, "flash_attn not installed"
        return SDPA, f"flash_attn not importable: {exc}"
    except Exception as exc:  # a wheel built for another torch/CUDA raises ImportError/OSError
        return SDPA, f"flash_attn not importable: {type(exc).__name__}: {exc}"
    version = getattr(flash_attn, "__version__", "unknown")
    return FLASH_ATTENTION_2, f"flash_attn {version} importable on CUDA"
