"""Decoding: every mode becomes RGB, JPEGs decode at reduced scale, broken files say why."""

import io

import numpy as np
import pytest
from PIL import Image

from clipsearch.errors import ImageError
from clipsearch.images import decode_image, read_image


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def test_large_jpeg_decodes_at_reduced_scale_but_reports_original_size():
    im = Image.new("RGB", (4000, 3000), (200, 30, 30))
    out, w, h, _ = decode_image(encode(im, "JPEG"), target_size=224)
    assert (w, h) == (4000, 3000)
    assert min(out.size) >= 224 and max(out.size) <= 1000
    assert np.allclose(np.asarray(out).mean(axis=(0, 1)), (200, 30, 30), atol=4)


def test_exif_orientation_is_applied():
    im = Image.new("RGB", (60, 20), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    out, w, h, _ = decode_image(encode(im, "JPEG", exif=exif.tobytes()))
    assert (w, h) == (20, 60) and out.size == (20, 60)


def test_transparent_pixels_become_white_not_black():
    im = Image.new("RGBA", (10, 10), (255, 0, 0, 0))
    out, _, _, _ = decode_image(encode(im, "PNG"))
    assert out.mode == "RGB" and out.getpixel((5, 5)) == (255, 255, 255)


def test_palette_with_transparency_and_la_modes():
    p = Image.new("P", (8, 8), 0)
    p.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    p.info["transparency"] = 0
    assert decode_image(encode(p, "PNG", transparency=0))[0].getpixel((1, 1)) == (255, 255, 255)
    la = Image.new("LA", (8, 8), (0, 255))
    assert decode_image(encode(la, "PNG"))[0].getpixel((1, 1)) == (0, 0, 0)


def test_sixteen_bit_images_are_stretched_not_clipped_to_white():
    a = np.linspace(0, 65535, 64 * 64, dtype=np.uint16).reshape(64, 64)
    out, _, _, _ = decode_image(encode(Image.fromarray(a), "PNG"))
    px = np.asarray(out)
    assert px.min() == 0 and px.max() == 255 and 100 < px.mean() < 155


def test_broken_inputs_raise_image_error_with_a_reason(tmp_path):
    with pytest.raises(ImageError, match="not an image"):
        decode_image(b"hello, not an image")
    truncated = encode(Image.new("RGB", (300, 300), "red"), "PNG")[:200]
    with pytest.raises(ImageError, match="broken image"):
        decode_image(truncated)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match="empty file"):
        read_image(empty)
    with pytest.raises(ImageError, match="vanished"):
        read_image(tmp_path / "missing.jpg")


def test_megapixel_cap():
    data = encode(Image.new("L", (3000, 2000)), "PNG")
    with pytest.raises(ImageError, match="too large"):
        decode_image(data, max_megapixels=5)


def test_read_image_hashes_content(tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    Image.new("RGB", (5, 5), "red").save(a)
    Image.new("RGB", (5, 5), "red").save(b)
    assert read_image(a).content_hash == read_image(b).content_hash
    Image.new("RGB", (5, 5), "blue").save(b)
    assert read_image(a).content_hash != read_image(b).content_hash


def test_exif_date_taken_is_read():
    from datetime import datetime, timezone

    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9003] = "2021:07:04 18:30:00"
    data = encode(Image.new("RGB", (20, 20)), "JPEG", exif=exif.tobytes())
    taken = decode_image(data).taken_ns
    assert taken == int(datetime(2021, 7, 4, 18, 30, tzinfo=timezone.utc).timestamp()) * 10**9
    assert decode_image(encode(Image.new("RGB", (20, 20)), "JPEG")).taken_ns is None
