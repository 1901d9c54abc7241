"""Is one picture the same as another, up to a re-encode, a resize or a light crop?

CLIP similarity alone cannot tell a lightly cropped photo from another photo of the same
thing: on the demo model a 5% crop scores 0.93-0.98 against its original, and two
different red circles up to 0.99. ``duplicates`` therefore sends pairs in that band
here, where the pixels decide: the smaller picture is compared with every region of the
other of the same aspect ratio, over a grid of scales and offsets, by normalised
cross-correlation of small greyscale thumbnails (the structure), and the best region is
then checked for the same colours, which correlation ignores. A crop of the same
exposure matches one region almost exactly; a different photo matches none, even a
different red disc on a plain background that correlates well at some scale.

Only Pillow and numpy: ``duplicates`` must not need torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .errors import ImageError
from .images import read_image

SAME_PICTURE = 0.95  # correlation above which two thumbnails show the same picture
_TEMPLATE = 32  # long side of the compared thumbnails, in pixels
_SEARCH = 96  # long side of the picture searched for the other one
_SCALES = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7)  # share of the original a crop may keep
_OFFSETS = 7  # positions per axis for each scale


_LUMA = np.array([0.299, 0.587, 0.114], np.float32)
# Mean colour difference, in levels of 255, that re-encoding and resizing stay under;
# each level beyond costs 1/50 of correlation.
_COLOUR_SLACK, _COLOUR_COST = 4.0, 50.0


def thumbnail(path: str | Path) -> Image.Image | None:
    """An RGB thumbnail for comparisons, or None if the file cannot be read now."""
    try:
        image = read_image(Path(path), _SEARCH).image
    except (ImageError, OSError):
        return None
    image.thumbnail((_SEARCH, _SEARCH), Image.Resampling.BOX)
    return image


def same_picture(a: Image.Image, b: Image.Image) -> float:
    """The best correlation of either thumbnail with a region of the other (1.0: identical)."""
    return max(_best_region(a, b), _best_region(b, a))


def _best_region(whole: Image.Image, part: Image.Image) -> float:
    """How well ``part`` matches some region of ``whole`` (is it a crop of it?)."""
    template = part.copy()
    template.thumbnail((_TEMPLATE, _TEMPLATE), Image.Resampling.BOX)
    t_rgb = np.asarray(template, np.float32)
    t = _standardise(t_rgb @ _LUMA)
    if t is None:  # a flat picture correlates with nothing: only its colour can match
        flat = np.asarray(whole, np.float32)
        return _colour_score(1.0, flat.reshape(-1, 3).mean(0), t_rgb.reshape(-1, 3).mean(0)) \
            if _standardise(flat @ _LUMA) is None else 0.0
    aspect = template.width / template.height
    best, best_rgb = -1.0, t_rgb
    for scale in _SCALES:
        h = scale * whole.height
        w = h * aspect
        if w > whole.width:
            w = scale * whole.width
            h = w / aspect
        if h > whole.height + 1e-6:
            continue
        regions = [(x, y, x + w, y + h) for x in np.linspace(0, whole.width - w, _OFFSETS)
                   for y in np.linspace(0, whole.height - h, _OFFSETS)]
        for box in dict.fromkeys(tuple(round(v, 1) for v in r) for r in regions):
            crop = np.asarray(whole.resize(template.size, Image.Resampling.BOX, box=box), np.float32)
            c = _standardise(crop @ _LUMA)
            if c is not None:
                score = float((c * t).mean())
                if score > best:
                    best, best_rgb = score, crop
    return _colour_score(best, best_rgb, t_rgb)


def _colour_score(correlation: float, a: np.ndarray, b: np.ndarray) -> float:
    diff = float(np.abs(a - b).mean())
    return correlation - max(0.0, diff - _COLOUR_SLACK) / _COLOUR_COST


def _standardise(x: np.ndarray) -> np.ndarray | None:
    std = float(x.std())
    return None if std < 2.0 else (x - x.mean()) / std  # < 2 grey levels: a flat picture
