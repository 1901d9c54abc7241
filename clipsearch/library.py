"""``Library``: the one entry point for the CLI, the web layer and Python users.

    from clipsearch import Library

    with Library.open("~/.clipsearch-demo", model="demo") as lib:
        lib.index(["data/samples"])
        for hit in lib.search(text="a red circle", k=5):
            print(hit.score, hit.path)

A library is a folder holding ``library.db`` (SQLite: files, the model's identity,
settings), ``vectors.<G>.f16`` (the exact vectors, append-only; ``vectorstore.py``) and
``index.<G>.faiss`` (the search index over them; ``index.py``), ``G`` being the vector
file's generation. An index saved before the last rows were written (a crash between a
commit and a save, say) adds them when loaded; a missing or damaged one is rebuilt from
the vector file without re-encoding anything. With ``db_url`` (or ``$CLIPSEARCH_DB_URL``)
the metadata lives in PostgreSQL instead, and ``database.json`` in the folder names that
database (``database.py``).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import precision as precisions
from .embedding import QueryEmbedder
from .files import writer_lock
from .encoder import Encoder, ModelSpec
from .errors import ArgumentError, ClassifierError, ImageError, LibraryEmptyError, PathNotFoundError
from .defaults import DUPLICATE_THRESHOLD, ENGINES, ENV_DB_URL, TAG_THRESHOLD, TAG_TOP_K, library_folder
from .index import VectorIndex
from .indexfiles import LiveIndex
from .query import Filter, Query, Term, absolute_folders, check_sort, sort_hits
from .results import (
    Classification, ClassifierReport, DuplicateGroup, Evaluation, FileError, ImageInfo, ImageTag, IndexReport,
    LibraryInfo, MetadataMove, OptimizeReport, Prediction, Progress, SearchHit, SimilarityMatrix, TagCount,
    TagReport, XmpReport,
)
from .store import STATUS_INDEXED, Store

# What only indexing, classifying and evaluating use is imported where they run: a search
# (a process of its own, often) does not pay for loading it.
if TYPE_CHECKING:
    from .albums import Albums
    from .classifier import Head
    from .decodepool import DecodeLimits
    from .cluster import RayEmbedder, RayOptions
    from .indexer import IndexProgress
    from .labels import LabelSet
    from .scanner import ScanOptions
    from .thumbnails import Thumbnail

log = logging.getLogger(__name__)


class Library:
    """A searchable collection of images. Use :meth:`open`; it is a context manager."""

    def __init__(self, root: Path, store: Store, model: str | None = None, device: str = "auto",
                 encoder: Encoder | None = None):
        self.root = root
        self.store = store
        self.device = device
        self._embedder = QueryEmbedder(root, store, ModelSpec.parse(model) if model else None, device, encoder)
        self._index = LiveIndex(root, store)
        self._held = False  # the writer lock, held across calls (see writing)

    @classmethod
    def open(cls, path: str | os.PathLike | None = None, model: str | None = None, *,
             device: str = "auto", create: bool = True, encoder: Encoder | None = None,
             db_url: str | None = None) -> "Library":
        """Open the library at ``path`` (default: see :func:`default_library_dir`), its metadata
        in the PostgreSQL database at ``db_url`` (default: ``$CLIPSEARCH_DB_URL``, else the one
        the folder was made with, else the folder's own SQLite file)."""
        root = library_folder(path)
        store = Store.open(root, db_url or os.environ.get(ENV_DB_URL) or None, create=create)
        try:
            return cls(root, store, model=model, device=device, encoder=encoder)
        except BaseException:
            store.close()
            raise

    @staticmethod
    def move_metadata(path: str | os.PathLike | None, to: str | None,
                      progress: Callable[[str, int, int], None] | None = None) -> MetadataMove:
        """Move the metadata of the library at ``path`` to the PostgreSQL database at ``to``,
        or with ``to`` None back into the folder's own SQLite file (``transfer.py``). Every
        row keeps its id, so the folder's vectors and indexes stay as they are. A move that
        stops is finished by calling this again. ``progress(table, done, total)``."""
        from . import transfer
        from .database import check_folder

        root = library_folder(path)
        check_folder(root)
        if not root.is_dir():
            raise LibraryEmptyError.at(root, None)
        with writer_lock(root):
            return transfer.move(root, to, progress)

    def __enter__(self) -> "Library":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.store.close()

    # -- the model and the index ------------------------------------------------------

    @property
    def model(self) -> ModelSpec | None:
        """The model this library uses: the recorded one, else the one asked for."""
        return self._embedder.model

    @property
    def encoder(self) -> Encoder:
        """The model, loaded on first use."""
        return self._embedder.encoder

    @property
    def vectors(self) -> VectorIndex:
        """The search index, loaded or rebuilt, and brought up to date with the database."""
        return self._index.current

    # -- indexing ---------------------------------------------------------------------

    def index(self, paths: Iterable[str | os.PathLike], *, batch_size: int | None = None,
              progress: IndexProgress | None = None, retry_errors: bool = False,
              exclude: Iterable[str] = (), include_hidden: bool = False,
              follow_symlinks: bool = False, limits: DecodeLimits | None = None,
              workers: int | None = None, precision: str | None = None, engine: str = "local",
              ray: RayOptions | None = None) -> IndexReport:
        """Add new and changed images under ``paths``, follow moved ones, forget deleted ones.

        Files that failed before are tried again only when they changed, or with ``retry_errors``.
        ``exclude`` takes glob patterns matched against names and full paths; hidden files and
        the usual non-photo folders (``.git``, ``node_modules``, ``@eaDir``, ...) are skipped.
        ``limits`` bounds each file's decode (time, megapixels, memory); ``workers`` is the
        number of decode processes (default: one per CPU core). ``precision`` is how images
        are computed: ``auto`` (the default, or ``$CLIPSEARCH_PRECISION``), ``fp32``,
        ``fp16``, ``bf16`` or ``int8``; see ``precision.py``.

        ``engine="ray"`` decodes and embeds on a Ray cluster (``ray``: where and how; by
        default a Ray started on this machine) while this process scans and commits, with
        the same guarantees (``cluster.py``).
        """
        from .scanner import ScanOptions, resolve_roots

        if engine not in ENGINES:
            raise ArgumentError(f"unknown engine {engine!r}", hint=f"choose one of: {', '.join(ENGINES)}")
        options = ScanOptions(include_hidden=include_hidden, follow_symlinks=follow_symlinks,
                              excludes=tuple(exclude))
        roots = resolve_roots(paths)
        with self._writer():
            self.store.add_roots(roots)
            return self._run(roots, options, batch_size, progress, retry_errors, limits, workers, precision, engine,
                             ray)

    def update(self, paths: Iterable[str | os.PathLike], *, progress: IndexProgress | None = None,
               exclude: Iterable[str] = (), include_hidden: bool = False, follow_symlinks: bool = False,
               limits: DecodeLimits | None = None, workers: int | None = None) -> IndexReport:
        """Bring ``paths``, files and folders inside the indexed folders, up to date: what
        appeared, changed or vanished there, a file or folder moved from one to another
        followed by its content (``watch`` calls this with what its events name). Paths
        outside every indexed folder are left out, and none becomes a folder of the
        library. Options as for :meth:`index`."""
        from .scanner import ScanOptions, scanned_part

        options = ScanOptions(include_hidden=include_hidden, follow_symlinks=follow_symlinks, excludes=tuple(exclude))
        inside = scanned_part(paths, [Path(r) for r in self.store.roots()], options)
        if not inside:
            return IndexReport()
        with self._writer():
            return self._run(inside, options, None, progress, False, limits, workers, None, "local", None,
                             require_images=False)

    @contextmanager
    def writing(self, who: str) -> Iterator[None]:
        """Hold the library's writer lock across calls, as ``watch`` does for as long as it
        runs: another process that tries to write meanwhile is told that ``who`` holds it."""
        with writer_lock(self.root, who):
            self._held = True
            try:
                yield
            finally:
                self._held = False

    def _writer(self):
        return nullcontext() if self._held else writer_lock(self.root)

    def _run(self, roots: list[Path], options: ScanOptions, batch_size, progress, retry_errors, limits, workers,
             precision, engine, ray, require_images: bool = True) -> IndexReport:
        """An index run over ``roots``, the writer lock held."""
        from .cluster import RayOptions
        from .decodepool import DecodeLimits, default_workers
        from .duplicates import SIGNATURES, SignatureStore
        from .indexer import Indexer

        limits = limits or DecodeLimits()
        want = precisions.requested(precision)
        self._embedder.default_model()
        if self.store.model_identity() is not None:
            self.vectors  # up to date with whoever wrote before we took the lock
        self.encoder.use_precision(want, self._embedder.precisions())
        embedder = self._ray_embedder(want, ray or RayOptions(), limits) if engine == "ray" else None
        indexer = Indexer(self.store, self.encoder, lambda: self.vectors, batch_size,
                          workers=workers or default_workers(), before_encoding=self._embedder.record,
                          limits=limits, embedder=embedder, signatures=SignatureStore(self.root / SIGNATURES))
        version = self.store.vectors_version()
        with self._index.writing():
            report = indexer.run(roots, progress, retry_errors=retry_errors, scan_options=options,
                                 require_images=require_images)
            # Saved only after a complete run: the index of an interrupted one lags the
            # vector file, and whoever loads it next adds the missing rows (see
            # VectorIndex.load).
            if self.store.model_identity() is not None:
                self._index.after_run(version, progress)
        if report.precision is not None:  # it embedded images
            self._embedder.export_text_tower(progress.rebuilding if progress is not None else None)
        return report

    def _ray_embedder(self, want: str, options: RayOptions, limits: DecodeLimits) -> RayEmbedder:
        from .cluster import RayEmbedder

        device, recorded = "cuda" if options.gpus_per_worker > 0 else "cpu", self._embedder.precisions()
        chosen = precisions.unchecked(want, recorded, device)
        if chosen == "int8":
            # Made and checked here, once, in the library folder that every worker reads.
            self.encoder.use_precision("int8", recorded)
            self.encoder.load()
        return RayEmbedder(self.model, options, chosen, recorded, self.root, limits)

    # -- searching --------------------------------------------------------------------

    def search(self, text: str | None = None, image: str | os.PathLike | None = None, k: int = 10, *,
               query: Query | None = None, offset: int = 0, min_score: float | None = None,
               folders: Iterable[str | os.PathLike] = (), extensions: Iterable[str] = (),
               after: datetime | None = None, before: datetime | None = None, tags: Iterable[str] = (),
               no_tags: Iterable[str] = (), sort: str = "score", include_query_images: bool = False,
               leave_out: Iterable[int] = ()) -> list[SearchHit]:
        """The ``k`` images nearest to a query, best first.

        Give ``text`` and/or ``image``, or a composed :class:`Query`. Images of the query
        that are in the library are left out of the results unless ``include_query_images``.
        ``folders``, ``extensions``, the ``after``/``before`` dates (EXIF time taken, else
        modification time; ``before`` is exclusive), ``tags`` (all of them) and ``no_tags``
        (none of them) restrict the search to those images,
        never by over-fetching: up to 50k allowed images are searched exactly, more through
        the index with only their ids allowed. ``min_score`` drops weaker hits.
        ``sort`` is ``score`` (best first), ``date`` (newest first) or ``path``; with
        ``min_score`` it orders every hit above the cutoff, without it the ``offset + k``
        best. ``offset`` skips the first hits, for paging. No image in ``leave_out`` (ids) is
        returned.
        """
        if k < 1:
            raise ArgumentError(f"the number of results must be at least 1, not {k}")
        if offset < 0:
            raise ArgumentError(f"the offset must not be negative, not {offset}")
        check_sort(sort)
        xq, query_ids = self.query_vector(query or Query.build(text, image))
        vectors = self.vectors
        skip = (set() if include_query_images else query_ids) | {int(i) for i in leave_out}
        allowed = Filter.build(folders, extensions, after, before, tags, no_tags)
        subset = allowed.ids(self.store) if allowed is not None else None
        if subset is not None and skip:
            subset = subset[~np.isin(subset, list(skip))]
        every_hit_above_cutoff = sort != "score" and min_score is not None
        if every_hit_above_cutoff:
            D, I = vectors.range(xq, min_score, subset=subset)
        else:
            D, I = vectors.top(xq, offset + k + (len(skip) if subset is None else 0), subset)
        # Ties (exact duplicates share one vector) are broken by id, so pages never overlap.
        found = sorted(((float(s), int(i)) for s, i in zip(D, I) if i >= 0 and int(i) not in skip),
                       key=lambda hit: (-hit[0], hit[1]))
        if not every_hit_above_cutoff:
            found = found[:offset + k]
        if min_score is not None:
            found = [(s, i) for s, i in found if s >= min_score]
        return sort_hits(self._hits(found), sort)[offset:offset + k]

    def query_vector(self, query: Query) -> tuple[np.ndarray, set[int]]:
        """The unit vector a search for ``query`` looks near, and the ids of the library's
        own images among its terms."""
        return self._embedder.query_vector(query, self.vectors.dim)

    def scored(self, ids: Iterable[int], vector: np.ndarray) -> list[SearchHit]:
        """Those of ``ids`` that are indexed images, as hits scored against a unit
        ``vector``, best first."""
        located = self.store.locate([int(i) for i in ids])
        if not located:
            return []
        order = list(located)
        scores = self.store.vector_file().rows([located[i][1] for i in order]) @ np.asarray(vector, np.float32)
        return self._hits(sorted(zip(map(float, scores), order), key=lambda hit: (-hit[0], hit[1])))

    @property
    def albums(self) -> Albums:
        """The library's saved searches, whose members follow it (``albums.py``)."""
        from .albums import Albums

        return Albums(self)

    def similar(self, image: str | os.PathLike | int, k: int = 10) -> list[SearchHit]:
        """The images most like an indexed image (by id or path), itself left out."""
        term = Term("id", image) if isinstance(image, int) else Term.parse(str(image))
        if term.kind == "text":
            raise PathNotFoundError(f"no such image file or id: {image}", hint="give a path or id:N")
        return self.search(query=Query((term,)), k=k)

    def duplicates(self, threshold: float = DUPLICATE_THRESHOLD, neighbours: int = 16, crops: bool = True,
                   progress: Progress | None = None) -> list[DuplicateGroup]:
        """Groups of duplicate images (copies, re-encodes, resizes, crops), best first. No
        model is needed.

        Candidates are pairs among each image's ``neighbours`` nearest at cosine >=
        ``threshold``, and with ``crops`` from ``CROP_CANDIDATE``; byte copies and identical
        vectors are duplicates outright, every other pair only if its pixels show the same
        picture (``duplicates.py``). ``progress(stage, done, total)`` is told how far it got.
        """
        if not 0 < threshold <= 1:
            raise ArgumentError(f"the threshold is a cosine similarity in (0, 1], not {threshold}")
        from .duplicates import find_groups, ranked_groups

        found = find_groups(self.store, self.vectors, self.root, threshold, neighbours, crops, progress)
        return ranked_groups(found, self._hits)

    def _hits(self, found: list[tuple[float, int]]) -> list[SearchHit]:
        rows = self.store.hits([i for _, i in found])
        return [SearchHit(i, rows[i][0], s, rows[i][1], rows[i][2], _iso(rows[i][3])) for s, i in found if i in rows]

    # -- single images ----------------------------------------------------------------

    def image(self, image_id: int) -> ImageInfo:
        """An indexed image's facts and tags."""
        row = self.store.images([image_id]).get(image_id)
        if row is None or row.status != STATUS_INDEXED:
            raise PathNotFoundError(f"no indexed image has id {image_id}")
        tags = [{"label": t.label, "score": round(float(t.score), 6), "source": t.source, "label_set": t.label_set}
                for t in self.store.tags_of([image_id]).get(image_id, [])]
        return ImageInfo(row.id, row.path, row.width, row.height, _iso(row.when_ns), row.size, row.content_hash,
                         tags)

    def image_paths(self, ids: Iterable[int]) -> dict[int, str]:
        """``id -> path`` of those of ``ids`` that are indexed images."""
        return {i: path for i, (path, _row) in self.store.locate(list(ids)).items()}

    def stored_vectors(self, ids: Iterable[int]) -> np.ndarray:
        """The stored unit vectors of indexed images, in the order given."""
        ids = [int(i) for i in ids]
        located = self.store.locate(ids)
        missing = [i for i in ids if i not in located]
        if missing:
            raise PathNotFoundError(f"no indexed image has id {missing[0]}")
        return self.store.vector_file().rows([located[i][1] for i in ids])

    def file(self, image_id: int) -> Path:
        """The path of an indexed image's file, only if it lies inside a folder given to
        ``index`` once symlinks are resolved: a file replaced by a link to elsewhere is not
        handed out. Raises :class:`PathNotFoundError` otherwise."""
        return self._served(self.image(image_id))

    def _served(self, info: ImageInfo) -> Path:
        """``info``'s file, if it may be served (see :meth:`file`)."""
        real = self._within_roots(Path(info.path))
        if real is None or not real.is_file():
            raise PathNotFoundError(f"the file of image {info.id} is missing or lies outside the indexed folders")
        return real

    def within_roots(self, path: str | os.PathLike) -> Path:
        """``path`` with symlinks resolved, if it lies inside a folder given to ``index``
        (what the web app lets a request name); raises :class:`PathNotFoundError` otherwise."""
        try:
            real = self._within_roots(Path(path).expanduser(), default_root=False)
        except ValueError:  # a NUL byte, or text no file name can hold
            real = None
        if real is None or not real.exists():
            raise PathNotFoundError(f"{path} is missing or lies outside the indexed folders",
                                    hint="name a folder inside one given to `clipsearch index`")
        return real

    def _within_roots(self, path: Path, default_root: bool = True) -> Path | None:
        real = Path(os.path.realpath(path))
        # A library from before roots were recorded trusts the folder its file is in.
        roots = [Path(os.path.realpath(r)) for r in self.store.roots()] or ([path.parent] if default_root else [])
        return real if any(real == r or r in real.parents for r in roots) else None

    def image_id(self, path: str | os.PathLike) -> int | None:
        """The id of the indexed image at ``path``, if there is one."""
        return self.store.id_for_path(str(Path(path).absolute()))

    def thumbnail(self, image_id: int, size: int = 256, fmt: str = "webp") -> Thumbnail:
        """A thumbnail (``webp`` or ``jpeg``) of an indexed image, cached in the library
        (see ``thumbnails.py``)."""
        from .thumbnails import FORMATS, thumbnail

        if fmt not in FORMATS:
            raise ArgumentError(f"unknown thumbnail format {fmt!r}", hint=f"choose one of: {', '.join(FORMATS)}")
        info = self.image(image_id)
        source = self._served(info)
        try:
            return thumbnail(source, self.root / "thumbs", image_id, info.content_hash, size, fmt)
        except ImageError as exc:
            raise ImageError(f"cannot make a thumbnail of image {image_id}: {exc.message}") from exc

    # -- classification and tagging ---------------------------------------------------

    def head(self, labels: str | os.PathLike | LabelSet | None = None, *, templates: Iterable[str] = (),
             classifier: str | None = None, progress: Progress | None = None) -> Head:
        """A classifier for this library's vectors: the zero-shot head of a label set (a
        bundled set's name, a label file or a :class:`LabelSet`) with ``templates`` (default:
        the set's own, else ``photo``), or a trained few-shot ``classifier`` by name.

        A label set's embeddings are cached in the library (``labels/``) under its model,
        labels and templates; only the first use of a combination loads the model.
        """
        if (labels is None) == (classifier is None):
            raise ClassifierError("give either a label set or a trained classifier",
                                  hint="[[labels=SET_OR_FILE]], or [[classifier=NAME]]")
        from .classifier import zero_shot_head
        from .labels import DEFAULT_TEMPLATES, LabelSet, resolve_templates

        if classifier is not None:
            return self._classifier_head(classifier)
        label_set = labels if isinstance(labels, LabelSet) else LabelSet.load(labels)
        chosen = resolve_templates(tuple(templates) or label_set.templates or DEFAULT_TEMPLATES)

        def embedding(done: int, total: int) -> None:
            if progress:
                progress("embedding labels", done, total)

        return zero_shot_head(label_set, chosen, str(self._embedder.model_or_fail()), self.root / "labels",
                              self.encoder.encode_texts, lambda: self.encoder.logit_scale, embedding)

    def classify(self, images: Iterable[str | os.PathLike | int], labels: str | os.PathLike | LabelSet | None = None,
                 *, templates: Iterable[str] = (), classifier: str | None = None,
                 top_k: int = 5) -> list[Classification]:
        """The ``top_k`` most probable labels of each image (a path, inside the library or
        not, or an id); indexed images use their stored vectors. A file that cannot be
        decoded gets no labels and an ``error``. See :meth:`head`."""
        if top_k < 1:
            raise ArgumentError(f"[[top_k]] must be at least 1, not {top_k}")
        head = self.head(labels, templates=templates, classifier=classifier)
        unreadable: dict[int, str] = {}
        vectors, ids, paths = self._embedder.image_vectors(images, unreadable)
        found = head.predict(vectors, top_k)
        out = [Classification(path, image_id, [], unreadable.get(n)) for n, (path, image_id) in enumerate(zip(paths, ids))]
        for r, c, p, cos in zip(found.rows, found.labels, found.probability, found.cosine):
            if r not in unreadable:
                out[r].labels.append(Prediction(head.vocabulary[c], round(float(p), 6), round(float(cos), 6)))
        return out

    def tag(self, labels: str | os.PathLike | LabelSet | None = None, *, templates: Iterable[str] = (),
            classifier: str | None = None, threshold: float = TAG_THRESHOLD, top_k: int | None = TAG_TOP_K,
            min_cosine: float | None = None, folders: Iterable[str | os.PathLike] = (), dry_run: bool = False,
            progress: Progress | None = None) -> TagReport:
        """Tag the library's images (those under ``folders``, if given) from their stored
        vectors; see ``tagging.py`` for what the thresholds mean. A run replaces the tags of
        its own source and label set (or classifier) only; manual tags always win."""
        if not 0 <= threshold <= 1:
            raise ArgumentError(f"the threshold is a probability in [0, 1], not {threshold}")
        if top_k is not None and top_k < 1:
            raise ArgumentError(f"[[top_k]] must be at least 1, not {top_k}")
        from .tagging import tag_images

        if self.store.model_identity() is None:
            raise LibraryEmptyError.at(self.root)
        started = time.perf_counter()
        head = self.head(labels, templates=templates, classifier=classifier, progress=progress)
        options = dict(threshold=threshold, top_k=top_k, min_cosine=min_cosine, folders=absolute_folders(folders),
                       dry_run=dry_run, progress=progress)
        if dry_run:
            report = tag_images(self.store, head, **options)
        else:
            with self._writer():
                report = tag_images(self.store, head, **options)
        report.seconds = time.perf_counter() - started  # the whole run: embedding the labels too
        return report

    def add_tag(self, image: str | os.PathLike | int, label: str) -> int:
        """Tag an indexed image by hand; returns its id. Manual tags win over automatic ones."""
        image_id = self.indexed_id(image)
        self.store.set_manual_tag(image_id, _label(label), removed=False)
        return image_id

    def remove_tag(self, image: str | os.PathLike | int, label: str) -> int:
        """Take a label off an indexed image by hand, automatic tags included; later tag runs
        do not put it back. Returns the image's id."""
        image_id = self.indexed_id(image)
        self.store.set_manual_tag(image_id, _label(label), removed=True)
        return image_id

    def tags(self) -> list[TagCount]:
        """Every label in use, with the number of images carrying it."""
        return self.store.tag_counts()

    def image_tags(self, folders: Iterable[str | os.PathLike] = ()) -> list[ImageTag]:
        """Every tag of every image (under ``folders``), manual removals applied."""
        from .tagging import image_tags

        return image_tags(self.store, absolute_folders(folders))

    def write_xmp(self, folders: Iterable[str | os.PathLike] = (), style: str = "default",
                  dry_run: bool = False) -> XmpReport:
        """Write each tagged image's tags into its XMP sidecar as ``dc:subject`` keywords,
        merged into an existing sidecar without disturbing it (see ``xmp.py``)."""
        from . import xmp

        return xmp.write_keywords(self.image_tags(folders), style, dry_run)

    def train_classifier(self, name: str, examples: str | os.PathLike,
                         labels: str | os.PathLike | LabelSet | None = None, *, templates: Iterable[str] = (),
                         progress: Progress | None = None) -> ClassifierReport:
        """Train a few-shot classifier from ``examples``, a folder with one sub-folder of
        images per label. The zero-shot head of those labels (their prompts, synonyms and
        parents taken from ``labels`` when given) is the starting point and the prior; see
        ``classifier.py``. The head is saved in the library under ``name``."""
        started = time.perf_counter()
        name = name.strip()
        if not name or len(name) > 128:
            raise ClassifierError("a classifier needs a name of 1 to 128 characters")
        from .classifier import example_folders, train_probe
        from .labels import LabelSet

        classes = example_folders(examples)
        label_set = LabelSet.of_examples(name, classes, labels)
        head = self.head(label_set, templates=templates, progress=progress)
        files = [f for fs in classes.values() for f in fs]
        y = np.repeat(np.arange(len(classes)), [len(fs) for fs in classes.values()])
        x, _, _ = self._embedder.image_vectors(files)
        fit = train_probe(x, y, head)
        report = ClassifierReport(name, list(head.labels), len(files), {k: len(v) for k, v in classes.items()},
                                  fit.folds, round(fit.cv_accuracy, 4), round(fit.zero_shot_accuracy, 4),
                                  fit.regularisation, time.perf_counter() - started)
        self.store.save_classifier(name, str(self.model), head.record(label_set.source or label_set.name),
                                   fit.weights, fit.bias, head.scale, json.dumps(report.to_dict()))
        return report

    def evaluate(self, examples: str | os.PathLike, labels: str | os.PathLike | LabelSet | None = None, *,
                 templates: Iterable[str] = (), classifier: str | None = None, compare_templates: bool = False,
                 few_shot: int | None = None, progress: Progress | None = None,
                 roots_only: bool = False) -> Evaluation:
        """How well a label set (zero-shot, with ``templates``) or a trained ``classifier``
        names the images of ``examples``, a folder with one sub-folder per true label; see
        ``evaluation.py``. Without ``labels`` or ``classifier`` the sub-folders' names are
        the labels. ``compare_templates`` scores each template alone and their ensemble;
        ``few_shot`` K adds K-shot probes (1, 2, 4, ... K) against zero-shot. With
        ``roots_only``, only files that lie inside the indexed folders once symlinks are
        resolved are read (what a web request may read)."""
        from . import evaluation
        from .classifier import example_folders
        from .labels import DEFAULT_TEMPLATES, LabelSet, resolve_templates

        classes = example_folders(examples, keep=(lambda p: self._within_roots(p, default_root=False) is not None)
                                  if roots_only else None)
        if classifier is not None:
            if compare_templates or few_shot:
                raise ClassifierError("[[compare_templates]] and [[few_shot]] evaluate label sets, not a trained "
                                      "classifier", hint="give [[labels]] instead of [[classifier]]")
            head = self._classifier_head(classifier)
            unknown = [c for c in classes if c not in head.labels]
            if unknown:
                raise ClassifierError(f"the classifier {classifier!r} has no label {unknown[0]!r}",
                                      hint=f"its labels: {', '.join(head.labels)}")
        else:
            label_set = LabelSet.of_examples(Path(examples).name or "examples", classes, labels)
            chosen = resolve_templates(tuple(templates) or label_set.templates or DEFAULT_TEMPLATES)
            head = self.head(label_set, templates=chosen, progress=progress)
        position = {label: n for n, label in enumerate(head.labels)}
        files = [f for fs in classes.values() for f in fs]
        truth = np.array([position[c] for c, fs in classes.items() for _ in fs], np.int64)
        x, paths, kept, unreadable = self._readable_vectors(files)
        truth = truth[kept]
        result = evaluation.evaluate(head, x, truth, paths)
        result.unreadable = unreadable
        if compare_templates:
            alone = [(t, self.head(label_set, templates=(t,), progress=progress)) for t in chosen]
            result.templates = evaluation.template_scores(
                alone + ([(f"ensemble of {len(chosen)}", head)] if len(chosen) > 1 else []), x, truth)
        if few_shot:
            result.few_shot = evaluation.few_shot_curve(head, x, truth, few_shot)
            result.shots_to_beat_zero_shot = evaluation.shots_to_beat(result.few_shot)
        return result

    def similarity_matrix(self, images: Iterable[str | os.PathLike | int],
                          labels: str | os.PathLike | LabelSet, *, templates: Iterable[str] = ()) -> SimilarityMatrix:
        """The cosine similarity of each image (path or id) to each label's text embedding, as
        in the CLIP tutorial's image x text matrix. Unreadable files are left out and listed."""
        head = self.head(labels, templates=templates)
        x, paths, _, unreadable = self._readable_vectors(images)
        cosine = x @ (head.weights / np.linalg.norm(head.weights, axis=1, keepdims=True)).T
        return SimilarityMatrix(paths, list(head.labels), np.round(cosine, 6).tolist(), unreadable)

    def _readable_vectors(self, images: Iterable[str | os.PathLike | int],
                          ) -> tuple[np.ndarray, list[str], np.ndarray, list[FileError]]:
        """The vectors and paths of those ``images`` that could be read, their positions among
        ``images``, and the files that could not be, with the reason."""
        unreadable: dict[int, str] = {}
        x, _, paths = self._embedder.image_vectors(images, unreadable)
        kept = np.array([n for n in range(len(paths)) if n not in unreadable], np.int64)
        return (x[kept], [paths[n] for n in kept], kept,
                [FileError(paths[n], reason) for n, reason in sorted(unreadable.items())])

    def classifiers(self) -> list[ClassifierReport]:
        """The few-shot classifiers trained in this library."""
        return [ClassifierReport(**json.loads(row.report)) for row in self.store.classifiers()]

    def remove_classifier(self, name: str) -> None:
        if not self.store.delete_classifier(name):
            raise ClassifierError(f"no classifier called {name!r}", hint="see `clipsearch classifier list`")

    def _classifier_head(self, name: str) -> Head:
        from .classifier import Head

        row = self.store.classifier(name)
        if row is None:
            known = ", ".join(r.name for r in self.store.classifiers()) or "none yet"
            raise ClassifierError(f"no classifier called {name!r} (trained: {known})",
                                  hint="train one: `clipsearch classifier train NAME --examples DIR`")
        if row.model != str(self._embedder.model_or_fail()):
            raise ClassifierError(f"the classifier {name!r} was trained for {row.model}, not {self.model}")
        return Head.stored(name, row.labels, row.weights, row.bias, row.scale)

    def indexed_id(self, image: str | os.PathLike | int) -> int:
        """The id of an indexed image given by path, ``id:N`` or id; raises
        :class:`PathNotFoundError` for anything else."""
        try:
            _, image_id = self._embedder.image_term(image)
        except PathNotFoundError:
            image_id = None
        if image_id is None or not self.store.locate([image_id]):
            raise PathNotFoundError(f"{image} is not an indexed image", hint="give the path or id:N of an image "
                                    "in the library (clipsearch index PATH adds it)")
        return image_id

    # -- reporting --------------------------------------------------------------------

    def optimize(self, memory_budget: int | None = None, target_recall: float | None = None,
                 on_disk: bool | None = None) -> OptimizeReport:
        """Compact the vector file and rebuild the index for the library's size.

        The index type follows :func:`choose_index` within ``memory_budget`` bytes, and its
        search parameter is tuned until recall@10 against exact search reaches
        ``target_recall``. ``on_disk`` builds an IVF index whose lists are memory-mapped
        from the library folder, for libraries larger than RAM (``index.py``). All three are
        remembered for the automatic rebuilds of later runs.
        """
        if target_recall is not None and not 0 < target_recall <= 1:
            raise ArgumentError(f"the recall target is a fraction in (0, 1], not {target_recall}")
        started = time.perf_counter()
        with self._writer():
            if self.store.model_identity() is None:
                raise LibraryEmptyError.at(self.root)
            budget, target = self._index.settings()
            budget, target = memory_budget or budget, target_recall or target
            dropped = self._index.reconfigure(budget, target, self._index.on_disk() if on_disk is None else on_disk)
            built = self.vectors
        return OptimizeReport(built.factory, built.facts.reason, built.ntotal, dropped, built.facts.recall_at_10,
                              built.facts.search_param, budget, target, self._index.nbytes(built),
                              time.perf_counter() - started, built.on_disk)

    def info(self) -> LibraryInfo:
        from .duplicates import SIGNATURES, SignatureStore

        counts = self.store.counts()
        identity = self.store.model_identity()
        vectors = self.vectors if identity else None
        return LibraryInfo(
            library=str(self.root),
            images=counts["indexed"],
            vectors=vectors.ntotal if vectors else 0,
            errors=counts["error"],
            model=str(ModelSpec.from_identity(identity)) if identity else None,
            pretrained=identity.pretrained if identity else None,
            dim=identity.dim if identity else None,
            precision=",".join(self._embedder.precisions()) or None,
            database=self.store.where,
            database_bytes=self.store.database_bytes(),
            index_bytes=self._index.nbytes(vectors),
            vector_file_bytes=vectors.file.nbytes if vectors else 0,
            signature_bytes=SignatureStore(self.root / SIGNATURES).nbytes(),
            index_type=vectors.factory if vectors else None,
            index_reason=vectors.facts.reason if vectors else None,
            index_search_param=(vectors.facts.search_param or None) if vectors else None,
            index_recall_at_10=vectors.facts.recall_at_10 if vectors else None,
            dead_vectors=vectors.dead if vectors else 0,
            index_on_disk=vectors.on_disk if vectors else False,
            roots=self.store.roots(),
        )

    def errors(self) -> list[FileError]:
        """Files that could not be indexed, with the reason."""
        return self.store.errors()


def _label(label: str) -> str:
    label = label.strip()
    if not label:
        raise ArgumentError("a tag needs a label")
    return label


def _iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, timezone.utc).isoformat(timespec="seconds")
