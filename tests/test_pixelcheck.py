"""The pixel check behind ``duplicates``: crops and resizes match their original, other pictures don't."""

import io
import random

from PIL import Image

from clipsearch import demoworld
from clipsearch.pixelcheck import SAME_PICTURE, same_picture, thumbnail


def save(image: Image.Image, path, fmt="PNG", **kw):
    image.save(path, fmt, **kw)
    return thumbnail(path)


def test_crops_resizes_and_re_encodes_match_and_other_pictures_do_not(tmp_path):
    rng = random.Random(11)
    for n, (colour, shape) in enumerate([("red", "circle"), ("blue", "star"), ("orange", "triangle")]):
        original = demoworld.render(demoworld.random_scene(rng, colour, shape, (400, 600)))
        base = save(original, tmp_path / f"{n}.png")
        w, h = original.size
        variants = {
            "re-encoded": save(original, tmp_path / f"{n}_q40.jpg", "JPEG", quality=40),
            "halved": save(original.resize((w // 2, h // 2)), tmp_path / f"{n}_half.png"),
            "crop 95%": save(original.crop((w // 40, 0, w // 40 + w * 95 // 100, h * 95 // 100)),
                             tmp_path / f"{n}_c95.png"),
            "crop 90%, corner": save(original.crop((w // 10, h // 10, w, h)), tmp_path / f"{n}_c90.png"),
        }
        for name, thumb in variants.items():
            assert same_picture(base, thumb) >= SAME_PICTURE, name
            assert same_picture(thumb, base) == same_picture(base, thumb)  # either way round
        other = save(demoworld.render(demoworld.random_scene(rng, colour, shape, (400, 600))), tmp_path / f"{n}_o.png")
        assert same_picture(base, other) < SAME_PICTURE


def test_flat_pictures_compare_by_brightness_and_unreadable_files_give_none(tmp_path):
    grey = save(Image.new("RGB", (50, 40), (128, 128, 128)), tmp_path / "grey.png")
    also_grey = save(Image.new("RGB", (80, 60), (130, 130, 130)), tmp_path / "grey2.png")
    white = save(Image.new("RGB", (50, 40), (255, 255, 255)), tmp_path / "white.png")
    assert same_picture(grey, also_grey) >= SAME_PICTURE and same_picture(grey, white) < SAME_PICTURE
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    assert thumbnail(tmp_path / "broken.jpg") is None and thumbnail(tmp_path / "missing.jpg") is None
