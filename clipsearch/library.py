"""``Library``: the one entry point for the CLI, the web layer and Python users.

    from clipsearch import Library

    with Library.open("~/.clipsearch-demo", model="demo") as lib:
        lib.index(["data/samples"])
        for hit in lib.search(text="a red circle", k=5):
            print(hit.score, hit.path)

A library is a folder holding ``library.db`` (SQLite: files, embeddings, the model's
identity) and ``index.v<N>.faiss``, a FAISS index derived from the database at vector
version ``N``. When the saved index does not match the database (a crash between a
commit and a save, say) it is rebuilt from the stored embeddings on open.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .encoder import DEFAULT_MODEL, Encoder, ModelSpec
from .errors import (
    ImageError, LibraryEmptyError, LibraryError, LibraryLockedError, ModelMismatchError, PathNotFoundError,
    QueryError,
)
from .decodepool import DecodeLimits, default_workers
from .index import VectorIndex
from .indexer import Indexer, IndexProgress
from .query import Query, Term
from .results import DuplicateGroup, FileError, IndexReport, LibraryInfo, SearchHit
from .scanner import ScanOptions, resolve_roots
from .store import Store

SORT_ORDERS = ("score", "date", "path")
# Cosine similarity at which two images count as the same picture. Immich uses the same
# 0.99 (a distance of 0.01). On the demo model, JPEG re-encodes score >= 0.997 and 50%
# resizes >= 0.992 against their originals, while different images of one colour and
# shape reach 0.985 at the 95th percentile; light crops (median 0.978) fall below it.
DUPLICATE_THRESHOLD = 0.99
ENV_LIBRARY = "CLIPSEARCH_LIBRARY"  # the CLI names it too, without importing this module
DB_NAME = "library.db"
_INDEX_FILE = re.compile(r"^index\.v(\d+)\.faiss$")


def default_library_dir() -> Path:
    """``$CLIPSEARCH_LIBRARY``, else a per-user data folder."""
    env = os.environ.get(ENV_LIBRARY)
    if env:
        return Path(env).expanduser()
    from platformdirs import user_data_dir

    return Path(user_data_dir("clipsearch", appauthor=False)) / "library"


class Library:
    """A searchable collection of images. Use :meth:`open`; it is a context manager."""

    def __init__(self, root: Path, store: Store, model: str | None = None, device: str = "auto",
                 encoder: Encoder | None = None):
        self.root = root
        self.store = store
        self.device = device
        # An encoder passed in (tests use a fake one) stands for the model it names.
        self._requested = encoder.spec if encoder is not None else ModelSpec.parse(model) if model else None
        recorded = store.model_identity()
        if recorded and self._requested and not self._requested.matches(recorded):
            raise ModelMismatchError(
                f"this library was built with {ModelSpec.from_identity(recorded)}, not {self._requested}",
                hint="leave out --model to use the library's own model, or pick another --library")
        self._encoder = encoder
        self._vectors: VectorIndex | None = None

    @classmethod
    def open(cls, path: str | os.PathLike | None = None, model: str | None = None, *,
             device: str = "auto", create: bool = True, encoder: Encoder | None = None) -> "Library":
        """Open the library at ``path`` (default: see :func:`default_library_dir`)."""
        root = Path(path).expanduser() if path else default_library_dir()
        root = root.absolute()
        db = root / DB_NAME
        if not db.exists():
            if not create:
                raise LibraryEmptyError(f"no library at {root}",
                                        hint="index some images first: clipsearch index PATH")
            if root.exists() and not root.is_dir():
                raise LibraryError(f"{root} is a file, not a library folder")
            root.mkdir(parents=True, exist_ok=True)
        return cls(root, Store(db), model=model, device=device, encoder=encoder)

    def __enter__(self) -> "Library":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.store.close()

    # -- the model --------------------------------------------------------------------

    @property
    def model(self) -> ModelSpec | None:
        """The model this library uses: the recorded one, else the one asked for."""
        recorded = self.store.model_identity()
        return ModelSpec.from_identity(recorded) if recorded else self._requested

    @property
    def encoder(self) -> Encoder:
        if self._encoder is None:
            spec = self.model
            if spec is None:
                raise LibraryEmptyError(f"the library at {self.root} has no model yet",
                                        hint="index some images first: clipsearch index PATH")
            self._encoder = Encoder(spec, self.device)
        return self._encoder

    # -- the vector index -------------------------------------------------------------

    def _index_files(self) -> dict[int, Path]:
        found = {}
        for p in self.root.iterdir():
            m = _INDEX_FILE.match(p.name)
            if m:
                found[int(m.group(1))] = p
        return found

    @property
    def vectors(self) -> VectorIndex:
        """The FAISS index, loaded from disk or rebuilt from the database if stale."""
        if self._vectors is None:
            identity = self.store.model_identity()
            if identity is None:
                raise LibraryEmptyError(f"the library at {self.root} is empty",
                                        hint="index some images first: clipsearch index PATH")
            saved = self._index_files().get(self.store.vectors_version())
            try:
                self._vectors = VectorIndex.load(saved) if saved is not None else None
            except (OSError, RuntimeError):  # replaced by a writer as we looked, or damaged: rebuild
                self._vectors = None
            if self._vectors is None:
                ids, matrix, _ = self.store.vectors()
                self._vectors = VectorIndex.build(ids, matrix, identity.dim)
        return self._vectors

    def _save_vectors(self) -> None:
        version = self.store.vectors_version()
        target = self.root / f"index.v{version}.faiss"
        self.vectors.save(target)
        for v, p in self._index_files().items():
            if v != version:
                p.unlink(missing_ok=True)

    # -- indexing ---------------------------------------------------------------------

    def index(self, paths: Iterable[str | os.PathLike], *, batch_size: int | None = None,
              progress: IndexProgress | None = None, retry_errors: bool = False,
              exclude: Iterable[str] = (), include_hidden: bool = False,
              follow_symlinks: bool = False, limits: DecodeLimits = DecodeLimits(),
              workers: int | None = None) -> IndexReport:
        """Add new and changed images under ``paths``, follow moved ones, forget deleted ones.

        Files that failed before are tried again only when they changed, or with ``retry_errors``.
        ``exclude`` takes glob patterns matched against names and full paths; hidden files and
        the usual non-photo folders (``.git``, ``node_modules``, ``@eaDir``, ...) are skipped.
        ``limits`` bounds each file's decode (time, megapixels, memory); ``workers`` is the
        number of decode processes (default: one per CPU core).
        """
        options = ScanOptions(include_hidden=include_hidden, follow_symlinks=follow_symlinks,
                              excludes=tuple(exclude))
        roots = resolve_roots(paths)
        with _Lock(self.root / "lock"):
            if self.store.model_identity() is None and self._requested is None:
                self._requested = ModelSpec.parse(DEFAULT_MODEL)
            self._vectors = None  # another process may have indexed since we last looked
            indexer = Indexer(self.store, self.encoder, lambda: self.vectors, batch_size,
                              workers=workers or default_workers(), before_encoding=self._record_model,
                              limits=limits)
            report = indexer.run(roots, progress, retry_errors=retry_errors, scan_options=options)
            # Saved only after a complete run. An interrupted one may stop between a batch's
            # commit and its FAISS add; its index file then lags the database's vector
            # version and is rebuilt from the stored embeddings on the next open.
            if self.store.model_identity() is not None:
                self._save_vectors()
            return report

    def _record_model(self) -> None:
        # Called once the model is loaded, before any vector is written: the dimension is
        # part of the identity, and a run that finds nothing to encode records nothing.
        if self.store.model_identity() is None:
            self.store.set_model_identity(self.encoder.identity)

    # -- searching --------------------------------------------------------------------

    def search(self, text: str | None = None, image: str | os.PathLike | None = None, k: int = 10, *,
               query: Query | None = None, offset: int = 0, min_score: float | None = None,
               folders: Iterable[str | os.PathLike] = (), extensions: Iterable[str] = (),
               after: datetime | None = None, before: datetime | None = None, sort: str = "score",
               include_query_images: bool = False) -> list[SearchHit]:
        """The ``k`` images nearest to a query, best first.

        Give ``text`` and/or ``image``, or a composed :class:`Query`. Images of the query
        that are in the library are left out of the results unless ``include_query_images``.
        ``folders``, ``extensions`` and the ``after``/``before`` dates (EXIF time taken, else
        modification time; ``before`` is exclusive) restrict the search to those images,
        exactly: the index searches only the allowed ids. ``min_score`` drops weaker hits.
        ``sort`` is ``score`` (best first), ``date`` (newest first) or ``path``; with
        ``min_score`` it orders every hit above the cutoff, without it the ``offset + k``
        best. ``offset`` skips the first hits, for paging.
        """
        if k < 1:
            raise QueryError(f"the number of results must be at least 1, not {k}")
        if offset < 0:
            raise QueryError(f"the offset must not be negative, not {offset}")
        if sort not in SORT_ORDERS:
            raise QueryError(f"unknown sort order {sort!r}", hint=f"choose one of: {', '.join(SORT_ORDERS)}")
        query = query or Query.build(text, image)
        vectors = self.vectors
        xq, query_ids = self._query_vector(query)
        skip = set() if include_query_images else query_ids
        subset = self._allowed_ids(folders, extensions, after, before)
        if subset is not None and skip:
            subset = subset[~np.isin(subset, list(skip))]
        every_hit_above_cutoff = sort != "score" and min_score is not None
        if every_hit_above_cutoff:
            D, I = vectors.range(xq, min_score, subset=subset)
        else:
            D, I = self._top(xq, offset + k + (len(skip) if subset is None else 0), subset)
        # Ties (exact duplicates share one vector) are broken by id, so pages never overlap.
        found = sorted(((float(s), int(i)) for s, i in zip(D, I) if i >= 0 and int(i) not in skip),
                       key=lambda hit: (-hit[0], hit[1]))
        if not every_hit_above_cutoff:
            found = found[:offset + k]
        if min_score is not None:
            found = [(s, i) for s, i in found if s >= min_score]
        hits = self._hits(found)
        if sort == "date":
            hits.sort(key=lambda h: h.taken_at or "", reverse=True)
        elif sort == "path":
            hits.sort(key=lambda h: h.path)
        return hits[offset:offset + k]

    def _top(self, xq: np.ndarray, need: int, subset) -> tuple[np.ndarray, np.ndarray]:
        """At least the ``need`` best hits, plus every hit tied with the last of them.

        FAISS cuts a group of equal scores arbitrarily; fetching past the group lets the
        caller order it deterministically.
        """
        n = need + 1
        while True:
            D, I = (a[0] for a in self.vectors.search(xq, n, subset))
            found = int((I >= 0).sum())
            if found < n or D[n - 1] < D[need - 1]:
                return D, I
            n *= 2

    def similar(self, image: str | os.PathLike | int, k: int = 10) -> list[SearchHit]:
        """The images most like an indexed image (by id or path), itself left out."""
        term = Term("id", image) if isinstance(image, int) else Term.parse(str(image))
        if term.kind == "text":
            raise PathNotFoundError(f"no such image file or id: {image}", hint="give a path or id:N")
        return self.search(query=Query((term,)), k=k)

    def duplicates(self, threshold: float = DUPLICATE_THRESHOLD, neighbours: int = 16) -> list[DuplicateGroup]:
        """Groups of near-identical images: pairs at cosine >= ``threshold`` among each image's
        ``neighbours`` nearest, merged transitively; best-first. No model is needed."""
        if not 0 < threshold <= 1:
            raise QueryError(f"the threshold is a cosine similarity in (0, 1], not {threshold}")
        ids, matrix, _ = self.store.vectors()
        parent = {int(i): int(i) for i in ids}

        def root(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        best: dict[int, float] = {}
        for start in range(0, len(ids), 1024):
            D, I = self.vectors.search(matrix[start:start + 1024], min(neighbours + 1, len(ids)))
            for a, scores, others in zip(ids[start:start + 1024], D, I):
                for score, b in zip(scores, others):
                    if b < 0 or b == a or score < threshold:
                        continue
                    a_, b_ = int(a), int(b)
                    best[a_] = max(best.get(a_, -1.0), float(score))
                    best[b_] = max(best.get(b_, -1.0), float(score))
                    parent[root(a_)] = root(b_)
        members: dict[int, list[int]] = {}
        for i in best:
            members.setdefault(root(i), []).append(i)
        groups = []
        for group in members.values():
            hits = sorted(self._hits([(best[i], i) for i in group]), key=lambda h: (-h.score, h.path))
            groups.append(DuplicateGroup(max(h.score for h in hits), hits))
        groups.sort(key=lambda g: (-g.score, -len(g.images), g.images[0].path))
        return groups

    def _allowed_ids(self, folders, extensions, after: datetime | None, before: datetime | None) -> np.ndarray | None:
        folders = [os.path.abspath(os.path.expanduser(os.fspath(f))) for f in folders]
        extensions = [e.lower().lstrip(".") for e in extensions]
        bad = [e for e in extensions if not e.isalnum()]
        if bad:
            raise QueryError(f"not a file extension: {bad[0]!r}", hint="for example --ext jpg --ext heic")
        if not folders and not extensions and after is None and before is None:
            return None
        return self.store.ids_matching(folders, extensions, _epoch_ns(after), _epoch_ns(before))

    def _query_vector(self, query: Query) -> tuple[np.ndarray, set[int]]:
        """The unit query vector, and the ids of library images that are part of the query."""
        texts = [t for t in query.terms if t.kind == "text"]
        text_vectors = dict(zip(texts, self.encoder.encode_texts([t.value for t in texts]))) if texts else {}
        total = np.zeros(self.vectors.dim, np.float32)
        in_library: set[int] = set()
        for term in query.terms:
            if term.kind == "text":
                vec = text_vectors[term]
            else:
                image_id = term.value if term.kind == "id" else self.store.id_for_path(term.value)
                if image_id is not None:
                    # An indexed image: its stored vector, no decoding or encoding.
                    try:
                        vec = self.store.vector_of(image_id)
                    except KeyError:
                        raise QueryError(f"no indexed image has id {image_id}") from None
                    in_library.add(int(image_id))
                else:
                    vec = self.encoder.encode_images([self._query_image(term.value)])[0]
            total += term.weight * vec
        norm = float(np.linalg.norm(total))
        if norm < 1e-6:
            raise QueryError("the query's terms cancel each other out")
        return total / norm, in_library

    def _query_image(self, image: str | os.PathLike):
        from .images import read_image

        path = Path(image).expanduser()
        if not path.is_file():
            raise PathNotFoundError(f"query image not found: {image}")
        try:
            return read_image(path, self.encoder.image_size).image
        except ImageError as exc:
            raise QueryError(f"cannot use {image} as a query image: {exc.message}") from exc

    def _hits(self, found: list[tuple[float, int]]) -> list[SearchHit]:
        rows = self.store.images([i for _, i in found])
        return [SearchHit(i, rows[i].path, s, rows[i].width, rows[i].height, _iso(rows[i].when_ns))
                for s, i in found if i in rows]

    # -- reporting --------------------------------------------------------------------

    def info(self) -> LibraryInfo:
        counts = self.store.counts()
        identity = self.store.model_identity()
        index_files = self._index_files()
        return LibraryInfo(
            library=str(self.root),
            images=counts["indexed"],
            vectors=self.vectors.ntotal if identity else 0,
            errors=counts["error"],
            model=str(ModelSpec.from_identity(identity)) if identity else None,
            pretrained=identity.pretrained if identity else None,
            dim=identity.dim if identity else None,
            database_bytes=sum(p.stat().st_size for p in self.root.glob(DB_NAME + "*")),
            index_bytes=sum(p.stat().st_size for p in index_files.values()),
        )

    def errors(self) -> list[FileError]:
        """Files that could not be indexed, with the reason."""
        return self.store.errors()


def _epoch_ns(when: datetime | None) -> int | None:
    """Nanoseconds since the epoch; a naive datetime is read as UTC, as EXIF times are."""
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return int(when.timestamp() * 1e9)


def _iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, timezone.utc).isoformat(timespec="seconds")


class _Lock:
    """An exclusive, non-blocking lock on the library: one writer at a time."""

    def __init__(self, path: Path):
        self.path = path
        self._fd: int | None = None

    def __enter__(self) -> "_Lock":
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks; one writer is the user's job
            return self
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            self._fd = None
            raise LibraryLockedError(f"another clipsearch process is indexing {self.path.parent}",
                                     hint="wait for it to finish, then run this again") from None
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the lock
            self._fd = None
