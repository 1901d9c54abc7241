"""Our torch-free preprocessing must equal open_clip's own transform, pixel for pixel."""

import random

import numpy as np
import pytest
import torch
from open_clip.transform import PreprocessCfg, image_transform_v2

from clipsearch import demoworld
from clipsearch.pixels import PixelSpec, model_pixels


def normalise(a: np.ndarray, spec: PixelSpec) -> torch.Tensor:
    x = torch.from_numpy(a).permute(2, 0, 1).float() / 255
    return (x - torch.tensor(spec.mean).view(3, 1, 1)) / torch.tensor(spec.std).view(3, 1, 1)


@pytest.mark.parametrize("mode", ["shortest", "squash", "longest"])
@pytest.mark.parametrize("size", [64, 224])
def test_matches_open_clip_transform(mode, size):
    cfg = PreprocessCfg(size=size, resize_mode=mode)
    theirs = image_transform_v2(cfg, is_train=False)
    spec = PixelSpec.from_open_clip({"size": size, "mean": cfg.mean, "std": cfg.std, "resize_mode": mode})
    rng = random.Random(size)
    for shape in [(640, 480), (480, 640), (333, 1000), (50, 30), (224, 224), (225, 224), (64, 100)]:
        scene = demoworld.random_scene(rng, size_range=(64, 64))
        image = demoworld.render(scene).resize(shape)
        ours = normalise(model_pixels(image, spec), spec)
        assert ours.shape == (3, size, size)
        assert torch.allclose(ours, theirs(image), atol=1e-5), (mode, size, shape)


def test_unsupported_configs_are_refused():
    with pytest.raises(ValueError, match="non-square"):
        PixelSpec.from_open_clip({"size": (224, 320), "mean": (0, 0, 0), "std": (1, 1, 1)})
    with pytest.raises(ValueError, match="resize mode"):
        PixelSpec.from_open_clip({"size": 224, "mean": (0, 0, 0), "std": (1, 1, 1), "resize_mode": "odd"})
