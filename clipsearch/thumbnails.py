"""Thumbnails for browsing: WebP (or JPEG) files cached in the library, made on first request.

A thumbnail is named after the image's id, its content hash and its size, so a changed
file gets a new one and an unchanged one is never made twice; its ETag is the same
name. Sizes are rounded up to a few steps (128, 256, 512, 1024 px on the long side) so a
page asking for odd sizes cannot fill the disk with variants.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from .files import write_atomic
from .images import DEFAULT_MAX_MEGAPIXELS, decode_image, read_file

SIZES = (128, 256, 512, 1024)
FORMATS = {"webp": ("WEBP", "image/webp"), "jpeg": ("JPEG", "image/jpeg")}
QUALITY = 80


@dataclass(frozen=True)
class Thumbnail:
    path: Path
    etag: str
    media_type: str


def step(size: int) -> int:
    """The cached size that serves a request for ``size`` px."""
    return next((s for s in SIZES if s >= size), SIZES[-1])


def thumbnail(source: Path, folder: Path, image_id: int, content_hash: str | None, size: int,
              fmt: str = "webp", max_megapixels: float = DEFAULT_MAX_MEGAPIXELS) -> Thumbnail:
    """The cached thumbnail of ``source``, made now if missing; raises ``ImageError``."""
    size = step(size)
    pillow_format, media_type = FORMATS[fmt]
    name = f"{image_id}-{(content_hash or 'nohash')[:16]}-{size}-{fmt}"
    path = folder / str(size) / f"{name}.{fmt}"
    if not path.is_file():
        picture = decode_image(read_file(source), size, max_megapixels, source.suffix)
        im = picture.image
        im.thumbnail((size, size), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        im.save(buf, pillow_format, quality=QUALITY)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Requests racing for one thumbnail each write a whole file, and the last rename wins.
        write_atomic(path, buf.getvalue())
    return Thumbnail(path, name, media_type)
