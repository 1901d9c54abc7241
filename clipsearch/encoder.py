"""CLIP models: naming them, loading them lazily, and turning images and texts into vectors.

One ``--model`` string names a model. The forms are:

    ViT-B-32/laion2b_s34b_b79k   an open_clip architecture and pretrained tag (the default)
    ViT-B-32/path/to/weights.pt  an open_clip architecture and a local checkpoint file
    ViT-B-32/random              random weights, for speed benchmarks only
    hf-hub:ORG/NAME              an open_clip model on the Hugging Face Hub
    path/to/folder               a folder with open_clip_config.json and a checkpoint
    demo                         the tiny bundled model of coloured shapes

Parsing a name needs no torch; torch and open_clip are imported on first use only,
so commands that only read the database start fast.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import os
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import ModelError, ModelNotFoundError, WeightsUnavailableError
from .pixels import PixelSpec, model_pixels
from .results import ModelIdentity

if TYPE_CHECKING:
    from PIL import Image

DEFAULT_MODEL = "ViT-B-32/laion2b_s34b_b79k"
DEVICES = ("auto", "cpu", "cuda", "mps")
_LOCAL_DIR = "local-dir:"
_HF_HUB = "hf-hub:"

log = logging.getLogger(__name__)

_OFFLINE_HINT = ("connect to the internet once so the weights can be downloaded and cached, "
                 "pass a local checkpoint ([[model=ARCH/path/to/weights.safetensors]], or a folder with "
                 "open_clip_config.json), or try the bundled offline model with [[model=demo]]")


@dataclass(frozen=True)
class ModelSpec:
    """A parsed ``--model`` string; ``name`` and ``pretrained`` are what the library records."""

    name: str
    pretrained: str | None = None

    @property
    def is_random(self) -> bool:
        return self.pretrained == "random"

    def __str__(self) -> str:
        return self.name if self.pretrained is None else f"{self.name}/{self.pretrained}"

    def matches(self, identity: ModelIdentity) -> bool:
        return (self.name, self.pretrained) == (identity.name, identity.pretrained)

    @classmethod
    def from_identity(cls, identity: ModelIdentity) -> "ModelSpec":
        return cls(identity.name, identity.pretrained)

    @classmethod
    def parse(cls, text: str) -> "ModelSpec":
        text = text.strip()
        if not text:
            raise ModelNotFoundError("the model name is empty", hint=f"for example [[model={DEFAULT_MODEL}]]")
        if text == "demo":
            return cls("demo")
        if text.startswith(_HF_HUB):
            if not text[len(_HF_HUB):]:
                raise ModelNotFoundError("hf-hub: needs a repository, as in hf-hub:ORG/NAME")
            return cls(text)
        if text.startswith(_LOCAL_DIR):
            return cls._local(Path(text[len(_LOCAL_DIR):]).expanduser())
        path = Path(text).expanduser()
        if path.exists():
            return cls._local(path)
        arch, _, rest = text.partition("/")
        if not rest:
            if difflib.get_close_matches(text.lower(), ["demo"], n=1, cutoff=0.6):  # a typo, as in dmeo
                raise ModelNotFoundError(f"unknown model {text!r}", hint="did you mean demo?")
            raise ModelNotFoundError(
                f"model {text!r} names no pretrained weights",
                hint=f"use ARCH/TAG, for example {DEFAULT_MODEL}; `clipsearch models` lists the tags")
        rest_path = Path(rest).expanduser()
        if rest != "random" and (rest_path.is_file() or rest.endswith((".pt", ".pth", ".bin", ".safetensors"))):
            if not rest_path.is_file():
                raise ModelNotFoundError(f"checkpoint file not found: {rest}")
            return cls(arch, str(rest_path.resolve()))
        return cls(arch, rest)

    @classmethod
    def _local(cls, path: Path) -> "ModelSpec":
        path = path.resolve()
        folder = path if path.is_dir() else path.parent
        if not (folder / "open_clip_config.json").is_file():
            if path.is_file():
                raise ModelNotFoundError(
                    f"{path} is a checkpoint without an open_clip_config.json beside it",
                    hint=f"name its architecture too, for example [[model=ViT-B-32/{path}]]")
            raise ModelNotFoundError(f"{path} has no open_clip_config.json",
                                     hint="a model folder holds open_clip_config.json and its weights")
        return cls(f"{_LOCAL_DIR}{folder}")


def available_models(arch: str | None = None) -> dict[str, list[str]]:
    """open_clip architectures with their pretrained tags (all, or just ``arch``)."""
    import open_clip

    names = open_clip.list_models()
    if arch is not None:
        _check_arch([*names, "demo"], arch)
        names = [arch]
    table = {name: list(open_clip.list_pretrained_tags_by_model(name)) for name in names if name != "demo"}
    if arch in (None, "demo"):
        table["demo"] = ["(bundled tiny model of coloured shapes)"]
    return {k: v for k, v in table.items() if v or arch is not None}


def _check_arch(names: list[str], arch: str) -> None:
    if arch not in names:
        close = difflib.get_close_matches(arch, names, n=5)
        raise ModelNotFoundError(f"unknown model architecture {arch!r}",
                                 hint=f"did you mean {', '.join(close)}?" if close else "`clipsearch models` lists them")


def resolve_device(device: str = "auto") -> str:
    """``auto`` picks CUDA, then Apple's MPS, then the CPU."""
    import torch

    if device not in DEVICES:
        raise ModelError(f"unknown device {device!r}", hint=f"choose one of: {', '.join(DEVICES)}")
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelError("[[device=cuda]] was asked for, but torch sees no CUDA GPU", hint="use [[device=auto]]")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ModelError("[[device=mps]] was asked for, but MPS is not available", hint="use [[device=auto]]")
    return device


CPU_BATCH = 32
# On CUDA the batch is sized from free memory. ViT-B-32 in fp16 on an H100 ran at 16,444
# images/s in batches of 256 and 18,724 in batches of 1024 (model only); beyond that the
# gain is nil and decode workers must fill ever longer queues.
CUDA_BATCH_RANGE = (32, 1024)
# The share of free GPU memory a batch's activations may take: the rest is for the
# allocator's fragmentation, the crops in flight and whatever else shares the GPU.
CUDA_MEMORY_SHARE = 0.5


def batch_for_memory(free_bytes: int, per_image_bytes: float, share: float = CUDA_MEMORY_SHARE,
                     bounds: tuple[int, int] = CUDA_BATCH_RANGE) -> int:
    """The largest power of two of images whose activations fit in ``share`` of
    ``free_bytes``, within ``bounds``."""
    fits = int(free_bytes * share / max(per_image_bytes, 1.0))
    return max(bounds[0], min(bounds[1], 1 << (max(fits, 1).bit_length() - 1)))


class Encoder:
    """A CLIP model with its preprocessing and tokenizer, loaded on first use.

    Every ``encode_*`` method returns L2-normalised float32 arrays of shape ``(n, dim)``.
    """

    def __init__(self, spec: ModelSpec | str, device: str = "auto", precision: str = "auto",
                 workdir: Path | None = None, recorded: list[str] | tuple[str, ...] = ()):
        self.spec = ModelSpec.parse(spec) if isinstance(spec, str) else spec
        self.requested_device = device
        self._model = None
        self._pixel_spec: PixelSpec | None = None
        self._tokenizer = None
        self.device: str | None = None
        self._dim: int | None = None
        # How images are computed (precision.py), settled by load() against the device and
        # what the library's vectors were made at (``recorded``). The int8 tower is kept
        # in ``workdir``, the library folder.
        self.precision = precision
        self.workdir = workdir
        self.recorded = list(recorded)
        self._settled = False
        self._int8 = None
        self._batch: int | None = None
        self._loading = threading.RLock()

    # -- loading ----------------------------------------------------------------------

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def load(self, notice: Callable[[str], None] | None = None) -> "Encoder":
        """Load the model and settle the precision; ``notice`` hears of slow one-off steps.
        Threads that find it unloaded (a server's first queries) wait for one load."""
        if self._model is not None and self._settled:
            return self
        with self._loading:
            return self._load(notice)

    def _load(self, notice: Callable[[str], None] | None) -> "Encoder":
        if self._model is not None:
            if not self._settled:
                self._settle(notice)
            return self
        import open_clip

        self.device = resolve_device(self.requested_device)
        model_name, pretrained = self._open_clip_args(open_clip)
        if self.spec.is_random:
            warnings.warn(f"{self.spec.name} has RANDOM weights: its vectors mean nothing; "
                          "use it only to measure speed", stacklevel=2)

        def create():
            import torch

            # Random weights are drawn from a fixed seed, so that every process (and the
            # int8 tower exported from one) computes the same function.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                model = open_clip.create_model(
                    model_name, pretrained=pretrained, device=self.device, weights_only=True)
            return model, open_clip.get_tokenizer(model_name)

        try:
            # Cached weights first, with the Hub switched off: without this, an offline
            # machine spends a minute in huggingface_hub's retries even when the weights
            # are already on disk.
            with _hub_offline():
                model, tokenizer = create()
        except Exception as exc:
            if not _is_download_error(exc):
                raise
            if _offline_requested() or not _hub_reachable():
                raise WeightsUnavailableError(
                    f"the weights of {self.spec} are not on this machine and the model hub "
                    "cannot be reached", hint=_OFFLINE_HINT) from exc
            try:
                model, tokenizer = create()
            except Exception as exc2:
                if not _is_download_error(exc2):
                    raise
                raise WeightsUnavailableError(
                    f"could not download the weights of {self.spec}: {_first_line(exc2)}",
                    hint=_OFFLINE_HINT) from exc2
        model.eval()
        try:
            spec = PixelSpec.from_open_clip(model.visual.preprocess_cfg)
        except ValueError as exc:
            raise ModelError(f"{self.spec} needs image preprocessing clipsearch does not support: {exc}") from exc
        import torch

        self._mean = torch.tensor(spec.mean, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(spec.std, device=self.device).view(1, 3, 1, 1)
        with torch.inference_mode():  # not through encode_texts: it would settle first
            self._dim = int(model.encode_text(tokenizer([""]).to(self.device)).shape[1])
        if isinstance(getattr(tokenizer, "cache", None), dict):  # open_clip's BPE cache has no bound
            from .tokenizer import BoundedCache

            tokenizer.cache = BoundedCache(tokenizer.cache)
        self._model, self._pixel_spec, self._tokenizer = model, spec, tokenizer
        self._settle(notice)
        return self

    def use_precision(self, precision: str, recorded: list[str]) -> None:
        """Compute images at ``precision`` from now on, for a library whose vectors were
        made at ``recorded`` (``auto``: settled on load, see ``precision.py``)."""
        if (precision, recorded) != (self.precision, self.recorded) or not self._settled:
            self.precision, self.recorded, self._settled, self._int8 = precision, list(recorded), False, None
            if self.loaded:
                self._settle(None)

    def _settle(self, notice: Callable[[str], None] | None) -> None:
        from . import precision as precisions

        want = self.precision = precisions.for_library(self.precision, self.recorded, self.device)
        if want == "int8":
            self._int8_tower(notice, required=True)
        elif want == "auto":
            meta = self._int8_tower(notice, required=False) if self.device == "cpu" else None
            self.precision = precisions.auto_choice(self.device, meta)
            if self.precision != "int8":
                self._int8 = None
        self._settled = True

    def _int8_tower(self, notice: Callable[[str], None] | None, required: bool) -> dict | None:
        """Load, or make and check, the library's int8 image tower; its meta, or None
        where it cannot be had and is not ``required``."""
        from . import imageonnx

        def unavailable(reason: str, exc: BaseException | None = None) -> None:
            if required:
                raise ModelError(f"[[precision=int8]] is not available for {self.spec}: {reason}",
                                 hint="use [[precision=fp32]]") from exc
            log.info("indexing at fp32: no int8 image tower (%s)", reason)

        if self.workdir is None:
            return unavailable("it is made in a library folder, and this encoder has none")
        tower = imageonnx.load(self.workdir, str(self.spec))
        if tower is None:
            if notice is not None:
                notice("making an int8 copy of the image tower for faster CPU indexing (once per library)")
            try:
                imageonnx.export(self._model, self._pixel_spec, self.workdir, str(self.spec))
            except ImportError as exc:
                return unavailable(f"onnxruntime is not installed ({exc})", exc)
            except imageonnx.NotExportable as exc:
                return unavailable(str(exc), exc)
            except Exception as exc:  # an exporter bug must not stop indexing at fp32
                if required:
                    return unavailable(f"the export failed: {_first_line(exc)}", exc)
                warnings.warn(f"could not make the int8 image tower ({_first_line(exc)}); indexing at fp32",
                              stacklevel=3)
                return None
            tower = imageonnx.load(self.workdir, str(self.spec))
        self._int8 = tower
        return tower.meta

    def _open_clip_args(self, open_clip) -> tuple[str, str | None]:
        spec = self.spec
        if spec.name == "demo":
            from .resources import demo_model_dir

            folder = demo_model_dir()
            if not (folder / "open_clip_model.safetensors").is_file():
                raise WeightsUnavailableError(f"the demo model's weights are missing from {folder}",
                                              hint="reinstall clipsearch, or run scripts/train_demo_model.py")
            return f"{_LOCAL_DIR}{folder}", None
        if spec.name.startswith((_HF_HUB, _LOCAL_DIR)):
            if spec.name.startswith(_LOCAL_DIR) and not os.path.isdir(spec.name[len(_LOCAL_DIR):]):
                raise ModelNotFoundError(f"the model folder {spec.name[len(_LOCAL_DIR):]} no longer exists")
            return spec.name, None
        arch = spec.name
        _check_arch(open_clip.list_models(), arch)
        if spec.pretrained is None or spec.is_random:
            return arch, None
        if os.path.isfile(spec.pretrained):
            return arch, spec.pretrained
        tags = open_clip.list_pretrained_tags_by_model(arch)
        if spec.pretrained not in tags:
            raise ModelNotFoundError(
                f"{arch} has no pretrained tag {spec.pretrained!r}",
                hint=f"available: {', '.join(tags) or 'none'}; or pass a checkpoint file")
        return arch, spec.pretrained

    def batch_size(self) -> int:
        """Images per model call: 32 on a CPU or MPS; on CUDA, measured once: the peak
        memory of a probe batch, scaled to the GPU's free memory (:func:`batch_for_memory`)."""
        if (self.device or resolve_device(self.requested_device)) != "cuda":
            return CPU_BATCH
        if self._batch is None:
            import torch

            self.load()
            probe = CUDA_BATCH_RANGE[0]
            crops = np.zeros((probe, self.image_size, self.image_size, 3), np.uint8)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            self.encode_crops(crops)
            torch.cuda.synchronize()
            per_image = (torch.cuda.max_memory_allocated() - before) / probe
            free, _total = torch.cuda.mem_get_info()
            self._batch = batch_for_memory(free, per_image)
            log.info("CUDA batch size %d: %.1f MB per image, %.1f GB free", self._batch, per_image / 1e6, free / 1e9)
        return self._batch

    @property
    def dim(self) -> int:
        self.load()
        assert self._dim is not None
        return self._dim

    @property
    def identity(self) -> ModelIdentity:
        return ModelIdentity(self.spec.name, self.spec.pretrained, self.dim)

    @property
    def logit_scale(self) -> float:
        """The temperature the model was trained with: cosine x scale = softmax logit."""
        self.load()
        scale = getattr(self._model, "logit_scale", None)
        return float(scale.detach().exp().item()) if scale is not None else 100.0

    @property
    def pixel_spec(self) -> PixelSpec:
        """How this model wants its pictures resized and normalised."""
        self.load()
        return self._pixel_spec

    @property
    def image_size(self) -> int:
        return self.pixel_spec.size

    # -- encoding ---------------------------------------------------------------------

    def encode_crops(self, crops: np.ndarray) -> np.ndarray:
        """Encode a batch of ``(n, size, size, 3)`` uint8 arrays made by :func:`pixels.model_pixels`."""
        import torch

        self.load()
        if self._int8 is not None:
            return self._int8.encode_crops(crops)
        with torch.inference_mode(), self._autocast(self.precision):
            x = torch.from_numpy(np.ascontiguousarray(crops))
            if self.device == "cuda":
                x = x.pin_memory()
            x = x.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)
            x = (x - self._mean) / self._std
            return _normalise(self._model.encode_image(x))

    def encode_images(self, images: list["Image.Image"]) -> np.ndarray:
        """Encode RGB images (decoded with :func:`images.decode_image`)."""
        if not images:
            return np.empty((0, self.dim), np.float32)
        spec = self.pixel_spec
        return self.encode_crops(np.stack([model_pixels(im, spec) for im in images]))

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        import torch

        self.load()
        with torch.inference_mode(), self._autocast("fp16" if self.device == "cuda" else "fp32"):
            tokens = self._tokenizer(list(texts)).to(self.device)
            return _normalise(self._model.encode_text(tokens))

    def export_text_tower(self, root: Path) -> dict:
        """Save the text tower as ONNX in the library folder ``root`` (see ``textonnx.py``), so
        that later text queries need no torch. Raises ``textonnx.NotExportable``."""
        from . import textonnx

        self.load()
        return textonnx.export(self._model, self._tokenizer, root, str(self.spec))

    def _autocast(self, precision: str):
        import torch

        if precision in ("fp16", "bf16"):
            return torch.autocast(self.device, dtype=torch.float16 if precision == "fp16" else torch.bfloat16)
        return contextlib.nullcontext()


def _is_download_error(exc: BaseException) -> bool:
    # open_clip wraps failed downloads in RuntimeError; urllib and huggingface_hub raise
    # OSError subclasses or their own types.
    return isinstance(exc, (RuntimeError, OSError, ValueError)) or type(exc).__module__.split(".")[0] in (
        "huggingface_hub", "requests", "urllib3", "httpx")


def _offline_requested() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "CLIPSEARCH_OFFLINE"))


@contextlib.contextmanager
def _hub_offline():
    try:
        from huggingface_hub import constants
    except ImportError:
        yield
        return
    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


def _hub_reachable(timeout: float = 3.0) -> bool:
    """One quick TCP connect to the Hub, instead of a minute of retries when offline."""
    import socket
    from urllib.parse import urlparse

    try:
        from huggingface_hub import constants

        endpoint = urlparse(constants.ENDPOINT)
    except ImportError:
        return False
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _normalise(x) -> np.ndarray:
    x = x.float()
    x = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return x.cpu().numpy().astype(np.float32, copy=False)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
