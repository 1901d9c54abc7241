"""Shared fixtures: demo-world images, a library built with the real demo model, a fake encoder."""

from __future__ import annotations

import contextlib
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from clipsearch import Library, demoworld
from clipsearch.results import ModelIdentity

# Never reach for a model hub from the tests: missing weights must fail fast and offline.
os.environ["HF_HUB_OFFLINE"] = "1"
# Exporting the text tower to ONNX takes seconds per library; tests/test_textonnx.py turns
# it back on where it is the subject.
os.environ["CLIPSEARCH_TEXT_ONNX"] = "0"
# The same for the int8 image tower that `--precision auto` makes on a CPU: tests/test_precision.py
# asks for it by name.
os.environ["CLIPSEARCH_PRECISION"] = "fp32"


@pytest.fixture(scope="session")
def demo_images(tmp_path_factory) -> list[Path]:
    """One image per colour and shape (48), small enough to index in seconds."""
    folder = tmp_path_factory.mktemp("demo_images")
    return [p for p, _ in demoworld.write_images(folder, 48, seed=7, size_range=(64, 320))]


@pytest.fixture(scope="session")
def demo_library(tmp_path_factory, demo_images) -> Path:
    """A library of ``demo_images`` indexed with the real demo model. Treat it as read-only."""
    root = tmp_path_factory.mktemp("demo_library")
    with Library.open(root, model="demo") as lib:
        report = lib.index([demo_images[0].parent])
    assert report.added == 48 and not report.errors
    return root


def run_cli(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the installed CLI as a user would, in a fresh process."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "clipsearch.cli", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=300)


@contextlib.contextmanager
def serving(library: Path, *args: str):
    """A real ``clipsearch serve`` process on a free loopback port; yields its base URL."""
    proc = subprocess.Popen([sys.executable, "-m", "clipsearch.cli", "serve", "--port", "0", "-L", str(library),
                             *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: lines.put(proc.stdout.readline()), daemon=True).start()
    try:
        try:
            line = lines.get(timeout=60)  # printed once the socket listens
        except queue.Empty:
            line = ""
        if not line.startswith("clipsearch serving"):
            proc.kill()
            raise RuntimeError(f"serve did not start: {line!r} {proc.stderr.read()[-2000:]}")
        yield line.rsplit(" at ", 1)[1].strip().rstrip("/")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


class FakeEncoder:
    """A stand-in for ``Encoder`` in fast unit tests: the vector is the image's mean colour.

    It counts what it encodes, so tests can prove that unchanged files are never re-encoded.
    """

    def __init__(self, name: str = "fake"):
        from clipsearch.encoder import ModelSpec

        self.spec = ModelSpec(name)
        self.device = self.requested_device = "cpu"
        self.image_size = 8
        self.logit_scale = 100.0
        self.loaded = True
        self.precision = "fp32"
        self.encoded: list[int] = []
        self.texts: list[str] = []

    @property
    def identity(self) -> ModelIdentity:
        return ModelIdentity(self.spec.name, None, 4)

    @property
    def dim(self) -> int:
        return 4

    def load(self, notice=None):
        return self

    def batch_size(self) -> int:
        return 32

    def use_precision(self, precision: str, recorded: list[str]) -> None:
        self.precision = "fp32" if precision == "auto" else precision

    @property
    def pixel_spec(self):
        from clipsearch.pixels import PixelSpec

        return PixelSpec(8, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))

    def encode_crops(self, crops: np.ndarray) -> np.ndarray:
        self.encoded.append(len(crops))
        rgb = crops.astype(np.float32).mean(axis=(1, 2)) / 255.0
        x = np.concatenate([rgb, np.full((len(crops), 1), 0.5, np.float32)], axis=1)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        self.texts += texts
        colours = {"red": [1, 0, 0, 0.5], "green": [0, 1, 0, 0.5], "blue": [0, 0, 1, 0.5]}
        x = np.array([colours.get(t, [1, 1, 1, 0.5]) for t in texts], np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    def encode_images(self, images) -> np.ndarray:
        from clipsearch.pixels import model_pixels

        return self.encode_crops(np.stack([model_pixels(im, self.pixel_spec) for im in images]))


@pytest.fixture
def fake_encoder() -> FakeEncoder:
    return FakeEncoder()
