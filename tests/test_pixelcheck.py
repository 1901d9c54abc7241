"""The pixel check behind ``duplicates``: re-encodes, resizes and crops of up to 10% match
their original; other pictures do not, even one that shares a colour, a shape, a place or a
background."""

import io
import random
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from clipsearch import demoworld
from clipsearch.pixelcheck import (
    MAX_DIFFERENCE, SIGNATURE_BYTES, Signatures, differences, image_signature, signature,
)


def jpeg(image: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def crop(image: Image.Image, cut_x: float, cut_y: float, anchor: float = 0.5) -> Image.Image:
    w, h = round(image.width * (1 - cut_x)), round(image.height * (1 - cut_y))
    x, y = round((image.width - w) * anchor), round((image.height - h) * (1 - anchor))
    return image.crop((x, y, x + w, y + h))


def scores(pairs: list[tuple[Image.Image, Image.Image]], crops: bool = True) -> np.ndarray:
    """``differences`` of each pair, given either way round (the lower is not the point:
    both must give the same verdict)."""
    table = np.stack([image_signature(im) for pair in pairs for im in pair])
    sig = Signatures(table)
    a, b = np.arange(0, len(table), 2), np.arange(1, len(table), 2)
    forth, back = differences(sig, a, b, crops), differences(sig, b, a, crops)
    assert ((forth <= MAX_DIFFERENCE) == (back <= MAX_DIFFERENCE)).all()
    return forth


@pytest.fixture(scope="module")
def originals():
    rng = random.Random(11)
    return [demoworld.render(demoworld.random_scene(rng, colour, shape, (160, 400)), renderer, blur=blur)
            for colour, shape, renderer, blur in [("red", "circle", "pil", 0), ("blue", "star", "sdf", 0),
                                                  ("orange", "triangle", "pil", 1.0), ("white", "ring", "sdf", 0)]]


def test_re_encodes_resizes_and_crops_of_up_to_ten_percent_match(originals):
    pairs, names = [], []
    for n, image in enumerate(originals):
        w, h = image.size
        variants = {
            "JPEG q35": jpeg(image, 35),
            "halved": image.resize((w // 2, h // 2), Image.Resampling.LANCZOS),
            "125%": image.resize((w * 5 // 4, h * 5 // 4), Image.Resampling.BICUBIC),
            "crop 2%": crop(image, 0.02, 0.02, 0.0),
            "crop 6%, one side": crop(image, 0.06, 0.0, 1.0),
            "crop 10%, corner": crop(image, 0.10, 0.10, 1.0),
            "crop 8% + JPEG q50": jpeg(crop(image, 0.08, 0.05, 0.3), 50),
        }
        pairs += [(image, v) for v in variants.values()]
        names += [f"{n} {k}" for k in variants]
    found = scores(pairs)
    assert [n for n, d in zip(names, found) if d > MAX_DIFFERENCE] == []


def test_without_crops_only_whole_pictures_match(originals):
    image = originals[0]
    found = scores([(image, jpeg(image, 40)), (image, image.resize((image.width // 2, image.height // 2))),
                    (image, crop(image, 0.08, 0.08))], crops=False)
    assert (found[:2] <= MAX_DIFFERENCE).all() and found[2] > MAX_DIFFERENCE


def test_crops_beyond_ten_percent_and_look_alikes_do_not_match():
    rng = random.Random(5)
    pairs, names = [], []
    for colour, shape, other_shape in [("white", "circle", "square"), ("yellow", "cross", "star"),
                                       ("green", "star", "triangle"), ("red", "square", "cross")]:
        # Small shapes at the same place on the same background: only their outlines differ.
        scene = replace(demoworld.random_scene(rng, colour, shape, (140, 140)), radius=0.18 * 140)
        image = demoworld.render(scene)
        pairs.append((image, demoworld.render(replace(scene, shape=other_shape))))
        names.append(f"{colour} {shape} / {other_shape}")
        pairs.append((image, crop(image, 0.25, 0.25)))
        names.append(f"{colour} {shape} cropped 25%")
        other = demoworld.random_scene(rng, colour, shape, (140, 140))  # same colour and shape, elsewhere
        pairs.append((image, demoworld.render(replace(other, background=scene.background, bg_a=scene.bg_a,
                                                      bg_b=scene.bg_b))))
        names.append(f"{colour} {shape} elsewhere")
        pairs.append((image, demoworld.render(replace(scene, colour="blue", fill=demoworld.COLOURS["blue"]))))
        names.append(f"{colour} {shape} in blue")
    found = scores(pairs)
    assert [n for n, d in zip(names, found) if d <= MAX_DIFFERENCE] == []


def test_flat_pictures_compare_by_colour():
    grey, also_grey, white = (Image.new("RGB", size, c) for size, c in [((50, 40), (128, 128, 128)),
                                                                        ((100, 80), (130, 130, 130)),
                                                                        ((50, 40), (250, 250, 250))])
    found = scores([(grey, also_grey), (grey, white)])
    assert found[0] <= MAX_DIFFERENCE < found[1]


def test_a_signature_holds_the_original_size_and_small_pixels():
    image = Image.new("RGB", (300, 120), (10, 200, 30))
    sig = image_signature(image)
    assert sig.shape == (SIGNATURE_BYTES,) and sig.dtype == np.uint8
    unpacked = Signatures(sig[None])
    assert (unpacked.width[0], unpacked.height[0]) == (300, 120)
    assert unpacked.aspect[0] == pytest.approx(2.5)
    assert (signature(np.zeros((64, 64, 3), np.uint8), 1, 1) != sig).any()
