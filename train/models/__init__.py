"""The model families the trainer can train, behind one interface.

* :mod:`.base`: :class:`VideoModel` (collate, forward to the loss, scoring and generation,
  FLOPs, export) and :class:`ModelFamily` (build, tokenizer, export loading);
* :mod:`.registry`: the families by ``model.kind`` (``build_model``, ``load_export``);
* :mod:`.assembled` (+ :mod:`.projector`, :mod:`.generation`): vision tower -> projector -> LLM;
* :mod:`.hf_vlm` (+ :mod:`.hf_inputs`): an existing Hugging Face video-LLM.
"""

from train.models.base import ModelFamily, VideoModel
from train.models.registry import FAMILIES, build_model, family, load_export, load_tokenizer

__all__ = ["FAMILIES", "ModelFamily", "VideoModel", "build_model", "family", "load_export", "load_tokenizer"]
