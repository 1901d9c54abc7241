"""The model's image preprocessing, in Pillow and numpy alone.

open_clip preprocesses with torchvision transforms. Decode workers must not import
torch (it is slow to start and large to hold in every process), so the resize and crop
are done here with the same Pillow calls torchvision makes for PIL images, leaving
the model's input as a ``(size, size, 3)`` uint8 array. The float conversion and
normalisation run batched in the encoder. ``tests/test_pixels.py`` checks that the
result matches open_clip's own transform exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
             "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS}
RESIZE_MODES = ("shortest", "squash", "longest")


@dataclass(frozen=True)
class PixelSpec:
    """What a model needs from a picture; small and picklable, for worker processes."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"
    fill_color: int = 0

    @classmethod
    def from_open_clip(cls, cfg: dict) -> "PixelSpec":
        size = cfg["size"]
        if isinstance(size, (tuple, list)):
            if size[0] != size[1]:
                raise ValueError(f"non-square model input {tuple(size)} is not supported")
            size = size[0]
        if cfg.get("resize_mode", "shortest") not in RESIZE_MODES:
            raise ValueError(f"resize mode {cfg['resize_mode']!r} is not supported")
        if cfg.get("interpolation", "bicubic") not in _RESAMPLE:
            raise ValueError(f"interpolation {cfg['interpolation']!r} is not supported")
        return cls(int(size), tuple(cfg["mean"]), tuple(cfg["std"]), cfg.get("interpolation", "bicubic"),
                   cfg.get("resize_mode", "shortest"), int(cfg.get("fill_color", 0)))


def model_pixels(image: Image.Image, spec: PixelSpec) -> np.ndarray:
    """Resize and crop an RGB image the way the model was trained: a uint8 ``(size, size, 3)``."""
    s = spec.size
    resample = _RESAMPLE[spec.interpolation]
    w, h = image.size
    if spec.resize_mode == "squash":
        return np.asarray(image.resize((s, s), resample), dtype=np.uint8)
    if spec.resize_mode == "shortest":
        # torchvision Resize(int): the short side becomes s, the long side is truncated.
        if w <= h:
            new_w, new_h = s, int(s * h / w)
        else:
            new_w, new_h = int(s * w / h), s
    else:  # longest: timm's ResizeKeepRatio(longest=1), then centre pad
        ratio = max(h / s, w / s)
        new_h, new_w = int(round(h / ratio)), int(round(w / ratio))
    if (new_w, new_h) != (w, h):
        image = image.resize((new_w, new_h), resample)
    return _centre_crop_or_pad(np.asarray(image, dtype=np.uint8), s, spec.fill_color)


def _centre_crop_or_pad(a: np.ndarray, s: int, fill: int) -> np.ndarray:
    h, w = a.shape[:2]
    if h < s or w < s:
        out = np.full((max(h, s), max(w, s), 3), fill, np.uint8)
        top, left = (s - h) // 2 if h < s else 0, (s - w) // 2 if w < s else 0
        out[top:top + h, left:left + w] = a
        a, h, w = out, out.shape[0], out.shape[1]
    top, left = int(round((h - s) / 2.0)), int(round((w - s) / 2.0))
    return np.ascontiguousarray(a[top:top + s, left:left + s])
