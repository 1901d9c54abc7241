"""The image tower as int8 ONNX: CPU indexing on onnxruntime's integer kernels.

On a 2-core Xeon with AVX-512 VNNI, ViT-B-32's image tower runs at ~28 images/s in
torch fp32 and ~50 as an onnxruntime int8 model (dynamic quantisation: weights stored
as int8 per output channel, activations quantised per batch), with embeddings at
cosine ~0.9998 to fp32. The other candidates lost: torch bf16 autocast ran at 10
images/s (slower than fp32), torch's own dynamic int8 at ~43, onnxruntime fp32 at ~21
(the figures, and how to measure them, are in ``benchmarks/bench_index.py``).

The library keeps, in ``image-onnx/``:

* ``image.onnx`` + ``image.onnx.data``: the int8 model. Its input is the ``uint8``
  ``(n, size, size, 3)`` batch that decode workers make (``pixels.py``); the scaling to
  [0, 1] and the model's mean/std normalisation are part of the graph;
* ``meta.json``, written last: the model it was made from and what its check measured:
  cosine to torch fp32 on check pictures, and both speeds on this machine.

The check runs before the tower is kept. ``export`` raises ``NotExportable`` when the
mean cosine is under :data:`MIN_MEAN_COSINE`; whether int8 is also *faster* here is
for the caller to judge from the meta (``precision.py``).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import numpy as np

from . import onnxtower
from .onnxtower import NotExportable
from .pixels import PixelSpec, model_pixels

FOLDER = "image-onnx"
# The faithfulness bar: mean cosine to fp32 over the check pictures.
MIN_MEAN_COSINE = 0.995
_CHECK_PICTURES = 32


class OnnxImageEncoder:
    """Image embeddings from a saved ``image-onnx`` folder."""

    def __init__(self, folder: Path, meta: dict, *, cold: bool = False):
        self.meta = meta
        self.dim = int(meta["dim"])
        # How the model wants its pictures (``pixels.py``): enough to embed an image query
        # without torch. Towers made before this was kept lack it.
        self.pixel_spec = PixelSpec(**meta["pixels"]) if "pixels" in meta else None
        self.session = onnxtower.session(folder / "image.onnx", cold=cold)

    @property
    def image_size(self) -> int:
        return self.pixel_spec.size

    def encode_crops(self, crops: np.ndarray) -> np.ndarray:
        v = self.session.run(None, {"pixels": np.ascontiguousarray(crops, dtype=np.uint8)})[0]
        return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)

    def encode_images(self, images: list) -> np.ndarray:
        return self.encode_crops(np.stack([model_pixels(im, self.pixel_spec) for im in images]))


def load(root: Path, model: str, *, cold: bool = False) -> OnnxImageEncoder | None:
    """The library's int8 image tower for ``model``, if it has one and onnxruntime is here."""
    folder = root / FOLDER
    meta = onnxtower.read_meta(folder, model)
    if meta is None:
        return None
    try:
        return OnnxImageEncoder(folder, meta, cold=cold)
    except ImportError:
        return None


def export(model, spec: PixelSpec, root: Path, model_name: str) -> dict:
    """Quantise ``model``'s image tower (an open_clip model's ``visual``) to int8 ONNX in
    ``root/image-onnx``, check it against torch fp32, and return its meta."""
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with onnxtower.building(root, FOLDER) as work:
        started = time.perf_counter()
        tower = _image_tower(model.visual, spec)
        example = torch.zeros((2, spec.size, spec.size, 3), dtype=torch.uint8)
        onnxtower.export(tower, (example,), work / "fp32.onnx", "pixels",
                         {0: torch.export.Dim("batch", min=1, max=4096)})
        # Only the matrix products: quantising the patch embedding's Conv as well ran at
        # 36-39 images/s instead of 48-51 (ViT-B-32, 2-core Xeon), at the same fidelity.
        # The quantiser logs advice about every tensor on the root logger: silence it.
        logging.disable(logging.WARNING)
        try:
            quantize_dynamic(work / "fp32.onnx", work / "image.onnx", weight_type=QuantType.QInt8,
                             per_channel=True, op_types_to_quantize=["MatMul", "Gemm"],
                             use_external_data_format=True)
        finally:
            logging.disable(logging.NOTSET)
        for f in work.glob("fp32.onnx*"):
            f.unlink()
        exported = time.perf_counter() - started
        crops = check_crops(spec, _CHECK_PICTURES)
        with torch.inference_mode():
            def fp32(batch):
                v = tower(torch.from_numpy(batch)).float().numpy()
                return v / np.linalg.norm(v, axis=1, keepdims=True)

            expected = fp32(crops)
            meta = {"model": model_name, "precision": "int8", "dim": int(expected.shape[1]), "opset": 18,
                    "pixels": dataclasses.asdict(spec), "torch": torch.__version__,
                    "export_seconds": round(exported, 2)}
            int8 = OnnxImageEncoder(work, meta)
            cosines = (int8.encode_crops(crops) * expected).sum(1)
            meta["check_mean_cosine"], meta["check_min_cosine"] = float(cosines.mean()), float(cosines.min())
            if cosines.mean() < MIN_MEAN_COSINE:
                raise NotExportable(f"its int8 image tower is not faithful to fp32 "
                                    f"(mean cosine {cosines.mean():.4f} < {MIN_MEAN_COSINE})")
            speeds = images_per_second({"fp32": fp32, "int8": int8.encode_crops}, crops)
            meta["fp32_images_per_s"], meta["int8_images_per_s"] = round(speeds["fp32"], 2), round(speeds["int8"], 2)
        onnxtower.write_meta(work, meta)
    return meta


def check_crops(spec: PixelSpec, count: int, seed: int = 0) -> np.ndarray:
    """Model inputs of two kinds of synthetic picture, half each: demo-world shapes on
    varied backgrounds, and photo-like colour fields with sensor noise."""
    import random

    from . import demoworld

    rng, py_rng = np.random.default_rng(seed), random.Random(seed)
    pictures = [demoworld.photo_like(rng, 320, 240) for _ in range(count // 2)]
    for i in range(count - len(pictures)):
        colour = list(demoworld.COLOURS)[i % len(demoworld.COLOURS)]
        shape = demoworld.SHAPES[i % len(demoworld.SHAPES)]
        pictures.append(demoworld.render(demoworld.random_scene(py_rng, colour, shape, (200, 400))))
    return np.stack([model_pixels(p, spec) for p in pictures])


def images_per_second(encoders: dict, crops: np.ndarray, rounds: int = 3, least_s: float = 0.25) -> dict[str, float]:
    """Each encoder's best rate over ``rounds`` after a warm-up, a round calling it for at
    least ``least_s`` seconds (a tiny model's single call is too short to time). The
    rounds take turns, so that a load on a shared machine weighs on all of them alike."""
    best = dict.fromkeys(encoders, 0.0)
    for encode in encoders.values():
        encode(crops)
    for _ in range(rounds):
        for name, encode in encoders.items():
            calls, started = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - started) < least_s or not calls:
                encode(crops)
                calls += 1
            best[name] = max(best[name], calls * len(crops) / elapsed)
    return best


def _image_tower(visual, spec: PixelSpec):
    """``visual`` behind the normalisation ``Encoder.encode_crops`` does, so the graph takes
    the decode workers' uint8 crops as they are. Made here so that importing this module
    does not import torch."""
    import torch

    class ImageTower(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.visual = visual
            self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1))

        def forward(self, pixels):
            x = pixels.permute(0, 3, 1, 2).float().div(255)
            return self.visual((x - self.mean) / self.std)

    return ImageTower().eval()
