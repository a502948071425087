"""The model families by ``model.kind``: the one place that knows which families exist.

Adding a family: a module under ``train/models/`` with a :class:`~train.models.base.VideoModel`
subclass and its ``FAMILY`` (:class:`~train.models.base.ModelFamily`), one line in
:data:`FAMILIES`, and its settings section in :mod:`train.config.model` (``model.kind`` choices).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from train.config.model import ModelConfig
from train.models.assembled import FAMILY as ASSEMBLED
from train.models.base import ModelFamily, VideoModel
from train.models.hf_vlm import FAMILY as HF_VLM

FAMILIES: dict[str, ModelFamily] = {f.kind: f for f in (ASSEMBLED, HF_VLM)}


def family(kind: str) -> ModelFamily:
    """The family registered for ``kind`` (KeyError naming the known ones)."""
    try:
        return FAMILIES[kind]
    except KeyError:
        raise KeyError(f"model.kind {kind!r} is not a registered model family (known: {sorted(FAMILIES)})") from None


def build_model(cfg: ModelConfig, tokenizer: Any, device: torch.device | str | None = None,
                dtype: torch.dtype | None = None) -> VideoModel:
    """Build the model of ``cfg.kind`` (see :class:`~train.models.base.ModelFamily` ``build``)."""
    return family(cfg.kind).build(cfg, tokenizer, device=device, dtype=dtype)


def load_tokenizer(cfg: ModelConfig) -> Any:
    """The family's own tokenizer / processor, or None when the model takes the run's tokenizer."""
    return family(cfg.kind).load_tokenizer(cfg)


def export_kind(path: str | Path) -> str | None:
    """The family of an export folder (its ``video_llm.json``; exports from before the ``kind``
    key are assembled), or None when ``path`` is no export."""
    meta = Path(path) / "video_llm.json"
    if not meta.is_file():
        return None
    return json.loads(meta.read_text()).get("kind", "assembled")


def load_export(path: str | Path, model_config: ModelConfig | None = None,
                device: torch.device | str | None = None) -> tuple[VideoModel, Any]:
    """(model in eval mode, tokenizer) of an export folder written by ``VideoModel.save_export``."""
    kind = export_kind(path)
    if kind is None:
        raise FileNotFoundError(f"{path}: no video_llm.json (not an export folder)")
    return family(kind).load_export(path, model_config, device=device)
