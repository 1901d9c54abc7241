"""``QueryEmbedder``: a library's model, and how a query becomes one unit vector.

A query is a weighted sum of terms (``query.py``): texts, images by path or id, uploaded
pictures and raw embeddings. Each kind takes the cheapest way to its vector:

- an indexed image: its stored vector, no model at all;
- a text or picture met before: the library's caches (by text, by content hash);
- a copy of an indexed image: that image's vector, found by content hash;
- otherwise a tower of the model. In a fresh process, without torch when the library
  allows it: texts go through the ONNX text tower that ``index`` exports
  (``textonnx.py``; ~0.2 s instead of ~5 s to load, as ``benchmarks/bench_cold.py``
  measures), pictures of an int8 library through
  its int8 image tower (``imageonnx.py``), the very function its vectors came from. Once
  the model itself is loaded, it embeds everything.

The same object loads the model for everyone else (indexing, label embedding), once, and
keeps the record of which model and precisions made the library's vectors.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from . import precision as precisions
from .encoder import DEFAULT_MODEL, Encoder, ModelSpec
from .errors import ImageError, LibraryEmptyError, ModelMismatchError, PathNotFoundError, QueryError
from .query import Query, Term
from .results import ModelIdentity
from .store import Store

ENV_TEXT_ONNX = "CLIPSEARCH_TEXT_ONNX"  # "0": never export the text tower (it is 254 MB for ViT-B-32)
log = logging.getLogger(__name__)


class QueryEmbedder:
    """The model of the library in ``root`` (the recorded one, else ``requested``) and the
    towers that embed its queries. ``encoder`` stands in for the model (tests pass a fake)."""

    def __init__(self, root: Path, store: Store, requested: ModelSpec | None = None, device: str = "auto",
                 encoder: Encoder | None = None):
        self.root = root
        self.store = store
        self.device = device
        self._requested = encoder.spec if encoder is not None else requested
        recorded = store.model_identity()
        if recorded and self._requested and not self._requested.matches(recorded):
            raise ModelMismatchError(
                f"this library was built with {ModelSpec.from_identity(recorded)}, not {self._requested}",
                hint="leave out [[model]] to use the library's own model, or pick another [[library]]")
        self._encoder = encoder
        self._text_onnx = None  # the exported text tower, once loaded (textonnx.py)
        self._image_onnx = None  # the int8 image tower, for queries of an int8 library (imageonnx.py)
        # A server shares one library between request threads, which embed queries at once
        # (the model and the ONNX sessions are safe for that); this lock only makes sure
        # that the model or a tower is loaded once, not once per thread that finds it missing.
        self._loading = threading.RLock()

    # -- the model --------------------------------------------------------------------

    @property
    def model(self) -> ModelSpec | None:
        """The model this library uses: the recorded one, else the one asked for."""
        recorded = self.store.model_identity()
        return ModelSpec.from_identity(recorded) if recorded else self._requested

    def model_or_fail(self) -> ModelSpec:
        model = self.model
        if model is None:
            raise LibraryEmptyError.at(self.root, "has no model yet")
        return model

    def default_model(self) -> None:
        """A library indexed for the first time without a model named gets the default one."""
        if self.store.model_identity() is None and self._requested is None:
            self._requested = ModelSpec.parse(DEFAULT_MODEL)

    @property
    def encoder(self) -> Encoder:
        """The model, loaded on first use."""
        with self._loading:
            if self._encoder is None:
                spec = self.model_or_fail()
                recorded = self.precisions()
                # Queries use the library's own precision; only an index run may choose one
                # (and pay for making an int8 tower), so a library without vectors gets fp32.
                self._encoder = Encoder(spec, self.device, precision="auto" if recorded else "fp32",
                                        workdir=self.root, recorded=recorded)
            return self._encoder

    @property
    def loaded(self) -> bool:
        """Whether the model itself (torch and its weights) is loaded."""
        return self._encoder is not None and self._encoder.loaded

    def precisions(self) -> list[str]:
        """The precisions this library's vectors were made at (``precision.py``). Libraries
        from before the record was kept were made at fp32 (fp16 on CUDA: the same vectors
        to six decimals)."""
        recorded = precisions.parse_record(self.store.get_meta("precision"))
        return recorded or (["fp32"] if self.store.model_identity() is not None else [])

    def record(self, identity: ModelIdentity, precision: str) -> None:
        """Record the model and the precision of the vectors an index run is about to write.
        Called once the model is loaded, before any vector is written: the dimension is part
        of the identity, and a run that finds nothing to encode records nothing. The
        precision too: vectors made at another one must not join them unnoticed."""
        recorded = self.precisions()
        if self.store.model_identity() is None:
            self.store.set_model_identity(identity)
        if precision not in recorded:
            self.store.set_meta("precision", precisions.record(recorded, precision))

    def export_text_tower(self, announce=None) -> None:
        """Save the model's text tower as ONNX, once per model, so that text queries in fresh
        processes skip torch; ``announce(what)`` is told before the export starts. Never
        fails: an index run must not be lost to it."""
        if os.environ.get(ENV_TEXT_ONNX, "1") == "0":
            return
        from . import textonnx

        model = self.model
        if model is None or model.is_random or textonnx.load(self.root, str(model)) is not None:
            return
        if announce is not None:
            announce("saving the text tower as ONNX, for fast text queries")
        encoder = self.encoder
        if not encoder.loaded:  # a cluster embedded the images: load the model here, the library's way
            encoder.use_precision("auto", self.precisions())
        try:
            encoder.export_text_tower(self.root)
        except textonnx.NotExportable as exc:
            log.info("text queries keep using torch: %s", exc)
        except Exception as exc:  # an exporter bug must not cost the user their index run
            warnings.warn(f"could not export the text tower to ONNX ({exc}); text queries will load torch",
                          stacklevel=2)

    # -- queries ----------------------------------------------------------------------

    def query_vector(self, query: Query, dim: int) -> tuple[np.ndarray, set[int]]:
        """The unit query vector, and the ids of library images that are part of the query."""
        text_vectors = self.text_vectors([t.value for t in query.terms if t.kind == "text"])
        image_terms = [t for t in query.terms if t.kind not in ("text", "vector")]
        image_vectors, image_ids, _ = self.image_vectors(image_terms)
        total = np.zeros(dim, np.float32)
        for term in query.terms:
            if term.kind == "text":
                total += term.weight * text_vectors[term.value]
            elif term.kind == "vector":
                total += term.weight * _unit_vector(term.value, dim)
        for term, vec in zip(image_terms, image_vectors):
            total += term.weight * vec
        in_library = {i for i in image_ids if i is not None}
        norm = float(np.linalg.norm(total))
        if norm < 1e-6:
            raise QueryError("the query's terms cancel each other out")
        return total / norm, in_library

    def text_vectors(self, texts: list[str]) -> dict[str, np.ndarray]:
        """Text embeddings, from the library's cache when the text was seen before: a repeated
        query then needs no model at all."""
        if not texts:
            return {}
        model = str(self.model)
        found = self.store.cached_texts(model, texts)
        missing = [t for t in dict.fromkeys(texts) if t not in found]
        if missing:
            fresh = dict(zip(missing, self.text_encoder().encode_texts(missing)))
            self.store.cache_texts(model, fresh)  # (a read-only library caches nothing: see Store._cache)
            found.update(fresh)
        return found

    def text_encoder(self):
        """What embeds query texts: the model if it is loaded already, else the library's ONNX
        text tower, else the model."""
        if self.loaded:
            return self._encoder
        with self._loading:
            if self._text_onnx is None and self.model is not None and not self.model.is_random:
                from . import textonnx

                self._text_onnx = textonnx.load(self.root, str(self.model))
            return self._text_onnx or self.encoder

    def image_encoder(self):
        """What embeds query images: the model if it is loaded already; for a library indexed
        at int8, its int8 tower; else the model."""
        if self.loaded:
            return self._encoder
        with self._loading:
            if self._image_onnx is None and self.precisions()[:1] == ["int8"]:
                from . import imageonnx

                tower = imageonnx.load(self.root, str(self.model_or_fail()), cold=True)
                self._image_onnx = tower if tower is not None and tower.pixel_spec is not None else None
            return self._image_onnx or self.encoder

    def image_vectors(self, images: Iterable[Term | str | os.PathLike | int], unreadable: dict[int, str] | None = None,
                      ) -> tuple[np.ndarray, list[int | None], list[str]]:
        """Unit vectors of images given by id (``int`` or ``"id:N"``), path or query term, with each one's
        library id (None if not indexed) and path. Indexed images use their stored vector;
        the others are decoded and encoded, together. A file that cannot be decoded raises
        :class:`QueryError`, or, given an ``unreadable`` dict, is recorded there (position ->
        reason) and gets a zero vector."""
        items = list(images)
        if not items:  # a text query's: no image code to load
            return np.empty((0, 0), np.float32), [], []
        from .images import decode_image, hash_bytes, read_file

        ids: list[int | None] = []
        paths: list[str] = []
        uploads: dict[int, bytes] = {}
        for n, item in enumerate(items):
            term, image_id = self.image_term(item)
            if term.kind == "image" and not os.path.isfile(term.value):
                raise PathNotFoundError(f"image not found: {term.value}")
            if term.kind == "data":
                uploads[n] = term.value
            ids.append(image_id)
            paths.append(str(term.value) if term.kind == "image" else "")
        stored = [n for n, i in enumerate(ids) if i is not None]
        located = self.store.locate([ids[n] for n in stored])
        missing = [ids[n] for n in stored if ids[n] not in located]
        if missing:
            raise PathNotFoundError(f"no indexed image has id {missing[0]}")
        found: dict[int, np.ndarray] = {}
        if stored:
            # An indexed image: its stored vector, no decoding or encoding.
            found.update(zip(stored, self.store.vector_file().rows([located[ids[n]][1] for n in stored])))
            for n in stored:
                paths[n] = located[ids[n]][0]
        # The rest by content: an image encoded before (a copy of an indexed one, or one
        # met by an earlier query or evaluation) is not decoded again.
        contents: dict[int, bytes] = {}
        for n in (n for n, i in enumerate(ids) if i is None):
            try:
                contents[n] = uploads[n] if n in uploads else read_file(Path(paths[n]))
            except ImageError as exc:
                _unreadable(n, paths[n], exc, unreadable)
        hashes = {n: hash_bytes(data) for n, data in contents.items()}
        model = str(self.model_or_fail())
        known = self.store.cached_images(model, list(set(hashes.values()))) if hashes else {}
        for h in set(hashes.values()) - known.keys():
            source = self.store.find_by_hash(h)
            if source is not None:
                known[h] = self.store.vector_of(source[0])
        fresh, pictures, encoder = [], [], None
        for n, h in hashes.items():
            if h in known:
                found[n] = known[h]
                continue
            encoder = encoder or self.image_encoder()
            try:
                pictures.append(decode_image(contents[n], encoder.image_size, suffix=Path(paths[n]).suffix).image)
                fresh.append(n)
            except ImageError as exc:
                _unreadable(n, paths[n], exc, unreadable)
        if fresh:
            found.update(zip(fresh, encoder.encode_images(pictures)))
            self.store.cache_images(model, {hashes[n]: found[n] for n in fresh})
        # The dimension without loading the model, if any vector says it.
        identity = self.store.model_identity()
        dim = identity.dim if identity else len(next(iter(found.values()))) if found else self.encoder.dim
        out = np.zeros((len(items), dim), np.float32)
        for n, vector in found.items():
            out[n] = vector
        return out, ids, paths

    def image_term(self, item: Term | str | os.PathLike | int) -> tuple[Term, int | None]:
        """An image given by id (``int`` or ``"id:N"``), path or query term, with its library id
        when the library has it (an id is taken as given, and checked by whoever reads it)."""
        term = item if isinstance(item, Term) else Term("id", item) if isinstance(item, int) else \
            Term.parse(str(item))
        if term.kind == "text":
            raise PathNotFoundError(f"image not found: {item}", hint="give an image path or id:N")
        if term.kind == "id":
            return term, int(term.value)
        return term, self.store.id_for_path(str(term.value)) if term.kind == "image" else None


def _unreadable(n: int, path: str, exc: ImageError, unreadable: dict[int, str] | None) -> None:
    if unreadable is None:
        raise QueryError(f"cannot use {path or 'the uploaded file'} as an image: {exc.message}") from exc
    unreadable[n] = exc.message


def _unit_vector(value, dim: int) -> np.ndarray:
    """A query embedding given as numbers, checked and normalised."""
    try:
        vec = np.asarray(value, np.float32).reshape(-1)
    except (TypeError, ValueError):
        raise QueryError("an embedding must be a list of numbers") from None
    if len(vec) != dim or not np.isfinite(vec).all() or not vec.any():
        raise QueryError(f"an embedding must be {dim} finite numbers, not all zero")
    return vec / np.linalg.norm(vec)
