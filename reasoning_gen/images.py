"""Frames to image bytes: JPEG (Pillow) or PNG (standard library), and base64 data URLs.

Frames arrive as uint8 [3, H, W] tensors (the loader's layout). PNG needs nothing beyond the
standard library, so a machine without Pillow can still talk to an OpenAI-compatible server;
asking for JPEG without Pillow is an error that says so, never a silent switch of format.
"""

from __future__ import annotations

import base64
import io
import struct
import zlib

import numpy as np

FORMATS = ("jpeg", "png")


def to_hwc(frame) -> np.ndarray:
    """uint8 [3, H, W] tensor/array (or [H, W, 3] array) -> contiguous uint8 [H, W, 3] array."""
    arr = frame.detach().cpu().numpy() if hasattr(frame, "detach") else np.asarray(frame)
    if arr.dtype != np.uint8:
        raise TypeError(f"frames must be uint8, got {arr.dtype}")
    if arr.ndim == 3 and arr.shape[0] == 3 and arr.shape[-1] != 3:
        arr = arr.transpose(1, 2, 0)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"expected a frame of shape [3, H, W] or [H, W, 3], got {tuple(arr.shape)}")
    return np.ascontiguousarray(arr)


def png_bytes(rgb: np.ndarray) -> bytes:
    """Encode uint8 [H, W, 3] as PNG (8-bit RGB, filter 0 on every row, zlib level 6)."""
    h, w, _ = rgb.shape
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rgb.reshape(h, w * 3)], axis=1).tobytes()

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


def encode_frame(frame, fmt: str = "jpeg", quality: int = 90) -> bytes:
    """One frame (uint8 [3, H, W]) as JPEG or PNG bytes."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown image format {fmt!r}; expected one of {FORMATS}")
    rgb = to_hwc(frame)
    if fmt == "png":
        return png_bytes(rgb)
    try:
        from PIL import Image  # optional (not a dependency of the package): only JPEG needs it
    except ImportError:
        raise RuntimeError("JPEG encoding needs Pillow (pip install pillow); or use image_format='png'") from None
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def data_url(frame, fmt: str = "jpeg", quality: int = 90) -> str:
    """``data:image/jpeg;base64,...`` for one frame."""
    return f"data:image/{fmt};base64," + base64.b64encode(encode_frame(frame, fmt, quality)).decode("ascii")
