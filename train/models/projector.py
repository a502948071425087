"""The visual side of the model: the vision tower (SigLIP / CLIP from transformers) and the
projector that pools its patch tokens per frame and maps them into the LLM's embedding space.

Nothing is downloaded: a tower is built from a tiny config dict (tests, the CPU demo) or loaded
from a local directory (real runs).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import deepspeed
import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

# Imported here, not lazily: importing HF modeling code pulls in torch._dynamo, which fails
# inside deepspeed.zero.Init (it patches tensor construction while the model is built).
from transformers import CLIPVisionConfig, CLIPVisionModel, SiglipVisionConfig, SiglipVisionModel

log = logging.getLogger(__name__)

# Normalisation constants of the public preprocessors (used when a local tower directory has
# no preprocessor_config.json, and for towers built from a config dict).
DEFAULT_MEAN_STD = {
    "siglip": ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5]),
    "clip": ([0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]),
}


def build_vision_tower(kind: str, path: str | None, config: dict[str, Any] | None,
                       image_size: int | None, attn_implementation: str,
                       dtype: torch.dtype | None = None) -> nn.Module:
    """A SiglipVisionModel or CLIPVisionModel, from a local directory or a config dict.

    Args:
        kind: "siglip" or "clip".
        path: local directory (``save_pretrained`` of the vision model or of the full
            SigLIP/CLIP model); takes precedence over ``config``.
        config: keyword arguments of SiglipVisionConfig / CLIPVisionConfig (tiny towers).
        image_size: overrides the config dict's image_size (ignored with ``path``: a
            pretrained tower keeps its size and frames are resized to it).
        attn_implementation: HF attention implementation string.
        dtype: parameter dtype when loading from ``path``.
    """
    classes = {"siglip": (SiglipVisionModel, SiglipVisionConfig), "clip": (CLIPVisionModel, CLIPVisionConfig)}
    if kind not in classes:
        raise ValueError(f"model.vision.kind must be 'siglip' or 'clip', got {kind!r}")
    model_cls, config_cls = classes[kind]
    if path is not None:
        if not Path(path).is_dir():
            raise FileNotFoundError(f"model.vision.path {path} is not a directory")
        return model_cls.from_pretrained(path, local_files_only=True, attn_implementation=attn_implementation,
                                         dtype=dtype)
    if config is None:
        raise ValueError("model.vision needs a path or a config dict")
    kwargs = dict(config)
    if image_size is not None:
        kwargs["image_size"] = image_size
    return model_cls._from_config(config_cls(**kwargs), attn_implementation=attn_implementation)


def tower_mean_std(kind: str, path: str | None) -> tuple[list[float], list[float]]:
    """Pixel mean/std of a tower: its preprocessor_config.json if there is one, else the default."""
    if path is not None:
        pre = Path(path) / "preprocessor_config.json"
        if pre.is_file():
            data = json.loads(pre.read_text())
            if "image_mean" in data and "image_std" in data:
                return list(data["image_mean"]), list(data["image_std"])
    return DEFAULT_MEAN_STD[kind]


FRAME_VIEWS = ("all", "blind", "last", "shuffled")


def apply_frame_view(pixel_values: torch.Tensor, view: str) -> torch.Tensor:
    """What a model with ``model.frame_view = view`` sees of its clips uint8 [B, T, 3, H, W].

    ``all`` unchanged; ``blind`` every frame black; ``last`` every frame but the last black;
    ``shuffled`` each clip's frames in a fresh random order (torch's global generator, so a new order
    at every training step and every evaluation batch).
    """
    if view == "all":
        return pixel_values
    if view == "blind":
        return torch.zeros_like(pixel_values)
    if view == "last":
        out = torch.zeros_like(pixel_values)
        out[:, -1] = pixel_values[:, -1]
        return out
    if view == "shuffled":
        B, T = pixel_values.shape[:2]
        order = torch.argsort(torch.rand(B, T), dim=1).to(pixel_values.device)
        return pixel_values[torch.arange(B, device=pixel_values.device)[:, None], order]
    raise ValueError(f"model.frame_view must be one of {FRAME_VIEWS}, got {view!r}")


class FrameEncoder(nn.Module):
    """uint8 frames -> per-frame patch features of the vision tower.

    Normalises with the tower's mean/std and resizes (bilinear, antialiased) when the frame size
    differs from the tower's image_size. Non-square frames are resized to the square size.
    """

    def __init__(self, tower: nn.Module, kind: str, mean: list[float], std: list[float],
                 feature_layer: int = -1):
        super().__init__()
        self.tower = tower
        self.kind = kind
        self.feature_layer = feature_layer
        self.image_size = int(tower.config.image_size)
        self.patch_size = int(tower.config.patch_size)
        self.hidden_size = int(tower.config.hidden_size)
        # Not persistent: they come from the tower's preprocessing config, not from training.
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    @property
    def grid(self) -> int:
        """Patches per side."""
        return self.image_size // self.patch_size

    def preprocess(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """uint8 [N, 3, H, W] -> normalised float32 [N, 3, S, S] (S = tower image_size)."""
        if pixel_values.dtype != torch.uint8:
            raise TypeError(f"pixel_values must be uint8 frames, got {pixel_values.dtype}")
        x = pixel_values.float().div_(255.0)
        if tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                              antialias=True, align_corners=False)
        return (x - self.mean) / self.std

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """uint8 [N, 3, H, W] -> patch features [N, grid*grid, D_vision] in the tower's dtype."""
        dtype = next(self.tower.parameters()).dtype
        x = self.preprocess(pixel_values).to(dtype)
        want_hidden = self.feature_layer != -1
        out = self.tower(pixel_values=x, output_hidden_states=want_hidden)
        feats = out.hidden_states[self.feature_layer] if want_hidden else out.last_hidden_state
        if self.kind == "clip":
            feats = feats[:, 1:]  # drop CLIP's class token: only patch tokens carry layout
        return feats


class Projector(nn.Module):
    """Pool patch tokens (spatial grid per frame, temporal stride over frames), then an MLP.

    [B, T, P, D_vision] -> [B, groups * pool_h * pool_w, D_llm], groups = ceil(T / stride); a
    last partial group averages the frames it has.
    """

    def __init__(self, vision_dim: int, llm_dim: int, grid: int, pool: tuple[int, int],
                 temporal_stride: int = 1, hidden: int | None = None, center: bool = False,
                 temporal_pos: int = 0):
        super().__init__()
        self.center = center
        ph, pw = pool
        if not (1 <= ph <= grid and 1 <= pw <= grid):
            raise ValueError(f"model.projector.pool {list(pool)} must lie in 1..{grid} (the tower's patch grid)")
        if temporal_stride < 1:
            raise ValueError(f"model.projector.temporal_stride must be >= 1, got {temporal_stride}")
        self.grid, self.pool, self.temporal_stride = grid, (ph, pw), temporal_stride
        hidden = hidden or llm_dim
        self.fc1 = nn.Linear(vision_dim, hidden)
        self.fc2 = nn.Linear(hidden, llm_dim)
        # One learned vector per frame group, added to every token of that group (a "video" projector).
        # Scaled like the centred, LayerNormed tokens (unit variance), so frames differ from the first step.
        self.temporal_pos = nn.Parameter(torch.randn(temporal_pos, llm_dim) * 0.5) if temporal_pos else None

    @property
    def tokens_per_group(self) -> int:
        return self.pool[0] * self.pool[1]

    def forward(self, feats: torch.Tensor, clip_frames: list[int] | None = None) -> torch.Tensor:
        """feats [B, T, grid*grid, D_vision] -> [B, groups * tokens_per_group, D_llm].

        ``clip_frames`` (clips of different frame counts, the frame budget): feats holds the frames of
        every clip one after the other [sum T_c, grid*grid, D_vision], and the result is the clips' tokens
        one after the other [sum Nv_c, D_llm] (Nv_c = ceil(T_c / stride) * tokens_per_group). Each clip is
        pooled, centred and position-embedded on its own, exactly as alone; the MLP runs once on all tokens,
        so the modules run once per forward whatever the mix of counts (ZeRO-3 gathers the same parameters
        on every rank).
        """
        if clip_frames is not None:
            return self._forward_ragged(feats, clip_frames)
        B, T, P, D = feats.shape
        x = self._groups(self._pool(feats.reshape(B * T, P, D)).reshape(B, T, self.tokens_per_group, D))
        groups = x.shape[1]
        out = self.fc2(F.gelu(self.fc1(x.reshape(B, -1, D).to(self.fc1.weight.dtype))))
        return self._finish(out, groups)

    def _pool(self, feats: torch.Tensor) -> torch.Tensor:
        """[N, grid*grid, D] frames -> [N, tokens_per_group, D] (the spatial pooling of every frame)."""
        N, P, D = feats.shape
        if P != self.grid * self.grid:
            raise ValueError(f"projector got {P} patch tokens per frame, expected {self.grid}x{self.grid}")
        x = feats.reshape(N, self.grid, self.grid, D).permute(0, 3, 1, 2)
        return F.adaptive_avg_pool2d(x, self.pool).flatten(2).transpose(1, 2)

    def _groups(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, tokens_per_group, D] -> [B, ceil(T / stride), tokens_per_group, D]: frames of a group averaged."""
        s = self.temporal_stride
        if s == 1:
            return x
        return torch.stack([x[:, g * s:(g + 1) * s].mean(dim=1) for g in range(math.ceil(x.shape[1] / s))], dim=1)

    def _finish(self, out: torch.Tensor, groups: int) -> torch.Tensor:
        """Centring and temporal positions of MLP outputs [B, groups * tokens_per_group, D_llm] (one clip a row)."""
        if self.center:
            # What all tokens of a clip share carries no answer; keep only how each token differs.
            out = out - out.mean(dim=1, keepdim=True)
            out = F.layer_norm(out, out.shape[-1:])
        if self.temporal_pos is not None:
            if groups > self.temporal_pos.shape[0]:
                raise ValueError(f"{groups} frame groups, but model.projector.temporal_pos has embeddings for "
                                 f"{self.temporal_pos.shape[0]}: raise it to >= the most frames a clip gets "
                                 f"(data.num_frames, or data.max_frames with a frame budget) / temporal_stride")
            pos = self.temporal_pos[:groups].repeat_interleave(self.tokens_per_group, dim=0)
            out = out + pos.to(out.dtype)
        return out

    def _forward_ragged(self, feats: torch.Tensor, clip_frames: list[int]) -> torch.Tensor:
        if feats.dim() != 3 or feats.shape[0] != sum(clip_frames):
            raise ValueError(f"ragged projector input must be [sum of clip frames {sum(clip_frames)}, P, D], "
                             f"got {tuple(feats.shape)}")
        x = self._pool(feats)  # [sum T, tpg, D]
        tokens, groups, start = [], [], 0
        for t in clip_frames:
            clip = self._groups(x[start:start + t].unsqueeze(0))[0]  # [G, tpg, D]
            start += t
            tokens.append(clip.reshape(-1, x.shape[-1]))
            groups.append(clip.shape[0])
        flat = torch.cat(tokens).to(self.fc1.weight.dtype)
        out = self.fc2(F.gelu(self.fc1(flat)))  # one call each: the same modules run on every rank
        pieces = out.split([g * self.tokens_per_group for g in groups])
        return torch.cat([self._finish(p.unsqueeze(0), g)[0] for p, g in zip(pieces, groups)])


def load_projector(projector: nn.Module, path: str | Path) -> None:
    """Load aligned projector weights (stage 1) into ``projector``, ZeRO-3-partitioned or not.

    Raises:
        FileNotFoundError: no projector.safetensors at ``path``.
        ValueError: the file's tensors do not fit this projector (names the keys / shapes).
    """
    f = Path(path)
    f = f / "projector.safetensors" if f.is_dir() else f
    if not f.is_file():
        raise FileNotFoundError(f"model.projector.init_from: {f} not found (a stage-1 export folder holds "
                                "projector.safetensors)")
    state = load_file(str(f))
    params = list(projector.parameters())
    shapes = {n: tuple(getattr(p, "ds_shape", p.shape)) for n, p in projector.named_parameters()}
    bad = sorted(set(shapes) ^ set(state)) + [n for n in shapes if n in state and tuple(state[n].shape) != shapes[n]]
    if bad:
        raise ValueError(f"model.projector.init_from: {f} does not fit this projector (keys or shapes differ: "
                         f"{bad[:5]}; this projector: {shapes})")
    if any(hasattr(p, "ds_id") for p in params):  # partitioned by zero.Init: gather, load on rank 0, re-split
        with deepspeed.zero.GatheredParameters(params, modifier_rank=0):
            if dist.get_rank() == 0:
                projector.load_state_dict(state)
    else:
        projector.load_state_dict(state)
    log.info("projector initialised from %s", f)
