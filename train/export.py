"""Checkpoint -> consolidated Hugging Face-style folder, and the loader eval uses.

``python -m train export --checkpoint RUN/checkpoints --out EXPORT`` merges the ZeRO-3 shards
of every rank with DeepSpeed's own consolidation
(``deepspeed.utils.zero_to_fp32.get_fp32_state_dict_from_zero_checkpoint``, the same code as
the ``zero_to_fp32.py`` script each checkpoint carries) into one fp32 state dict, loads it into
a model rebuilt from the checkpoint's config, and writes::

    EXPORT/llm/            config.json + model.safetensors  (AutoModelForCausalLM.from_pretrained)
    EXPORT/vision/         the vision tower (SiglipVisionModel / CLIPVisionModel.from_pretrained)
    EXPORT/projector.safetensors, EXPORT/video_llm.json (how the parts fit together)
    EXPORT/tokenizer/      the run's tokenizer
    EXPORT/train_config.yaml, EXPORT/export_info.json (source checkpoint, step)

:func:`load_for_eval` is the one function ``eval`` imports from ``train``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

from data_shards.common.atomic import atomic_write_text
from train.checkpoint import COMPLETE, TAG_RE
from train.config import TrainConfig, load_config, save_config
from train.models import build_model, load_export, load_tokenizer
from train.models.registry import export_kind
from train.tokenizer import build_tokenizer


def resolve_checkpoint(path: str | Path, tag: str | None = None) -> tuple[Path, str]:
    """(checkpoint root, tag) from a root dir (uses ``latest``) or a ``global_step{N}`` dir."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path}: no such folder")
    if path.is_dir() and not any(path.iterdir()):
        raise FileNotFoundError(f"checkpoint {path}: the folder is empty (expected a checkpoint dir with "
                                f"'latest' / global_step{{N}} folders, a global_step{{N}} folder or an export)")
    if TAG_RE.match(path.name) and tag is None:
        root, tag = path.parent, path.name
    else:
        root = path
        if tag is None:
            latest = root / "latest"
            if not latest.is_file():
                tags = sorted(p.name for p in root.glob("global_step*"))
                raise FileNotFoundError(f"{root}: no 'latest' file; pass a global_step{{N}} directory or --tag "
                                        f"({'one of ' + ', '.join(tags) if tags else 'no global_step* folder here'})")
            tag = latest.read_text().strip()
    if not (root / tag / COMPLETE).is_file():
        have = sorted(p.name for p in root.glob("global_step*") if (p / COMPLETE).is_file())
        raise FileNotFoundError(f"{root / tag}: not a complete checkpoint (no {COMPLETE}; complete ones here: "
                                f"{', '.join(have) or 'none'})")
    return root, tag


def consolidated_state_dict(root: Path, tag: str) -> dict[str, torch.Tensor]:
    """fp32 full state dict of the model from all ranks' ZeRO shards (DeepSpeed's zero_to_fp32)."""
    return get_fp32_state_dict_from_zero_checkpoint(str(root), tag=tag)


def _find_tokenizer(root: Path) -> Path:
    for cand in (root / "tokenizer", root.parent / "tokenizer"):
        if (cand / "tokenizer_config.json").is_file():
            return cand
    raise FileNotFoundError(f"no tokenizer/ next to checkpoint {root} (the trainer saves it there)")


def model_from_checkpoint(root: Path, tag: str) -> tuple[Any, Any, TrainConfig, int]:
    """Rebuild the model of a checkpoint with its consolidated weights (fp32, CPU).

    Returns:
        (VideoModel, tokenizer, TrainConfig, step).
    """
    cfg = load_config(root / tag / "train_config.yaml")
    # the model family's own tokenizer / processor, else the run's tokenizer saved beside the checkpoints
    tokenizer = load_tokenizer(cfg.model) or build_tokenizer(_find_tokenizer(root))
    state = consolidated_state_dict(root, tag)
    model = build_model(cfg.model, tokenizer)
    result = model.load_state_dict(state, strict=False)
    params = {n for n, _ in model.named_parameters()}
    missing = sorted(k for k in result.missing_keys if k in params)
    if missing or result.unexpected_keys:
        raise ValueError(f"checkpoint {root / tag} does not match the model of its config: missing "
                         f"{missing[:5]}, unexpected {sorted(result.unexpected_keys)[:5]}")
    step = int(json.loads((root / tag / COMPLETE).read_text())["step"])
    return model.eval(), tokenizer, cfg, step


def export(checkpoint: str | Path, out: str | Path, tag: str | None = None, dtype: str = "fp32",
           merge_lora: bool = True) -> Path:
    """Write the consolidated HF-style folder of a checkpoint (see the module doc).

    A ``model.kind: hf_vlm`` checkpoint becomes a folder of the VLM's own class (config.json +
    model.safetensors + processor files + video_llm.json): ``AutoModelForImageTextToText`` /
    ``Qwen2VLForConditionalGeneration.from_pretrained(out)`` loads it. LoRA adapters are merged
    unless ``merge_lora`` is False (then they go to ``out/adapter/``, peft format).
    """
    root, tag = resolve_checkpoint(checkpoint, tag)
    model, tokenizer, cfg, step = model_from_checkpoint(root, tag)
    if dtype == "bf16":
        model = model.to(torch.bfloat16)
    out = Path(out)
    model.save_export(out, tokenizer, merge_lora=merge_lora)
    save_config(cfg, out / "train_config.yaml")
    info = {"checkpoint": str(root / tag), "step": step, "dtype": dtype,
            "consolidation": "deepspeed.utils.zero_to_fp32.get_fp32_state_dict_from_zero_checkpoint"}
    atomic_write_text(out / "export_info.json", json.dumps(info, indent=2))
    return out


def load_for_eval(path: str | Path, device: torch.device | str | None = None,
                  dtype: torch.dtype | None = None, tag: str | None = None) -> tuple[Any, Any, TrainConfig]:
    """The model, tokenizer and training config, ready for evaluation (eval mode).

    Args:
        path: an export folder (``video_llm.json``), or a checkpoint root / ``global_step{N}``
            directory (consolidated in memory).
        device: where to put the model (default CPU).
        dtype: cast the model (e.g. torch.bfloat16); None keeps fp32.
        tag: a checkpoint tag (``global_step{N}``) under a checkpoint root; None = ``latest``.

    Returns:
        (VideoLLM, tokenizer, TrainConfig). Frames must be decoded with
        ``config.data.num_frames`` / ``config.data.frame_size`` and prompts built with
        ``config.task`` (answer_format) for the scores to mean what training meant.
    """
    path = Path(path)
    if export_kind(path) is not None:
        if tag is not None:
            raise ValueError(f"{path} is an export (one set of weights): --tag {tag} applies to checkpoint folders")
        cfg_path = path / "train_config.yaml"
        cfg = load_config(cfg_path) if cfg_path.is_file() else TrainConfig()
        model, tokenizer = load_export(path, cfg.model, device=device)
    else:
        root, tag = resolve_checkpoint(path, tag)
        model, tokenizer, cfg, _ = model_from_checkpoint(root, tag)
    if dtype is not None:
        model = model.to(dtype)
    if device is not None:
        model = model.to(device)
    return model.eval(), tokenizer, cfg


def main(argv: list[str] | None = None) -> int:
    """``python -m train export``: consolidate a ZeRO-3 checkpoint into an HF-style folder."""
    p = argparse.ArgumentParser(prog="python -m train export", description=main.__doc__)
    p.add_argument("--checkpoint", required=True, help="checkpoint dir (uses 'latest') or a global_step{N} dir")
    p.add_argument("--tag", default=None, help="checkpoint tag, e.g. global_step100 (default: latest)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="dtype of the written weights")
    p.add_argument("--lora-adapter", action="store_true",
                   help="hf_vlm + LoRA: keep the adapters apart (out/adapter/) instead of merging them")
    args = p.parse_args(argv)
    try:
        out = export(args.checkpoint, args.out, args.tag, args.dtype, merge_lora=not args.lora_adapter)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"exported {args.checkpoint} -> {out} (model.kind {export_kind(out)}; python -m eval run --checkpoint "
          f"{out} evaluates it)")
    return 0
