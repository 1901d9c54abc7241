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
the vector file without re-encoding anything.
"""

from __future__ import annotations

import os
import re
import time
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
from .index import (
    DEFAULT_MEMORY_BUDGET, DEFAULT_TARGET_RECALL, IndexPlan, VectorIndex, choose_index,
)
from .indexer import Indexer, IndexProgress
from .query import Query, Term
from .results import DuplicateGroup, FileError, IndexReport, LibraryInfo, OptimizeReport, SearchHit
from .scanner import ScanOptions, resolve_roots
from .store import Store

SORT_ORDERS = ("score", "date", "path")
# Cosine similarity at which two images count as the same picture without looking at
# their pixels. On the demo model JPEG re-encodes score >= 0.997 against their originals,
# while different images of one colour and shape reach 0.985 at the 95th percentile and
# 0.9935 at most (Immich's 0.99 would group some of them).
DUPLICATE_THRESHOLD = 0.995
# From here up to the threshold, pairs count when their pixels show the same picture up
# to a crop or resize (pixelcheck.py): on the demo model, 50% resizes score >= 0.992 and
# 5-10% crops 0.93-0.98, inside this band.
CROP_CANDIDATE = 0.9
ENV_LIBRARY = "CLIPSEARCH_LIBRARY"  # the CLI names it too, without importing this module
DB_NAME = "library.db"
_INDEX_FILE = re.compile(r"^index\.v?\d+\.(faiss|json)$")  # index.v<N>.faiss: before vector files
# Dead vectors (of deleted or changed images) are compacted away after an index run
# once they are this share of the vector file, and at least this many.
_COMPACT_SHARE, _COMPACT_MIN = 0.25, 10_000


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
        self._vectors_seen: tuple[int, int] | None = None  # (vector version, generation) it reflects
        self._writing = False

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

    def _index_path(self) -> Path:
        return self.root / f"index.{self.store.generation()}.faiss"

    @property
    def vectors(self) -> VectorIndex:
        """The search index, loaded or rebuilt, and brought up to date with the database."""
        if self._vectors is not None and self._writing:
            return self._vectors  # we hold the writer lock: nobody else changes anything
        version = self.store.vectors_version()
        if self._vectors is not None and self._vectors_seen == (version, self.store.generation()):
            return self._vectors
        if self.store.model_identity() is None:
            raise LibraryEmptyError(f"the library at {self.root} is empty",
                                    hint="index some images first: clipsearch index PATH")
        ids, rows, version = self.store.live()
        file = self.store.vector_file()
        if self._vectors is not None and self._vectors.file.generation == file.generation:
            # Another process indexed since we looked: take its rows, forget what it removed.
            self._vectors.remove(np.setdiff1d(self._vectors.ids(), ids))
            self._vectors.assign(ids, rows)
        else:
            path = self._index_path()
            try:
                self._vectors = VectorIndex.load(path, file, ids, rows) if path.exists() else None
            except (OSError, RuntimeError, ValueError):  # damaged, or replaced as we read: rebuild
                self._vectors = None
            if self._vectors is None:
                self._vectors = self._build(ids, rows)
        self._vectors_seen = (version, file.generation)
        return self._vectors

    def _settings(self) -> tuple[int, float]:
        """The memory budget and recall target that ``optimize`` last set."""
        budget = self.store.get_meta("memory_budget")
        target = self.store.get_meta("target_recall")
        return (int(budget) if budget else DEFAULT_MEMORY_BUDGET,
                float(target) if target else DEFAULT_TARGET_RECALL)

    def _plan(self, n: int) -> IndexPlan:
        return choose_index(n, self.store.vector_file().dim, self._settings()[0])

    def _build(self, ids: np.ndarray, rows: np.ndarray, plan: IndexPlan | None = None) -> VectorIndex:
        budget, target = self._settings()
        built = VectorIndex.build(plan or self._plan(len(ids)), self.store.vector_file(), ids, rows, budget)
        built.tune(target)
        return built

    def _save_vectors(self) -> None:
        path = self._index_path()
        self.vectors.save(path)
        for p in self.root.iterdir():
            if _INDEX_FILE.match(p.name) and p.stem != path.stem:
                p.unlink(missing_ok=True)

    def _maintain(self, progress: IndexProgress | None) -> bool:
        """After an index run: compact many dead vectors, and move to a bigger index type
        when the library has outgrown its own (never down: ``optimize`` does that).
        Returns whether it rebuilt (and saved) the index."""
        current = self.vectors
        rows = len(current.file)
        dead = rows - current.ntotal
        plan = self._plan(current.ntotal)
        have = IndexPlan(current.factory, 0, "")
        compact = dead >= max(_COMPACT_MIN, _COMPACT_SHARE * rows)
        grow = plan.tier > have.tier or (plan.nlist and plan.nlist >= 2 * max(have.nlist, 1))
        if not (compact or grow):
            return False
        if grow and progress is not None:
            progress.rebuilding(f"the library outgrew its index: building {plan.factory} for {current.ntotal:,} images")
        elif progress is not None:
            progress.rebuilding(f"compacting {dead:,} vectors of deleted or changed images")
        self._rebuild(compact=compact, plan=plan if grow or plan.tier >= have.tier else None)
        return True

    def _rebuild(self, compact: bool, plan: IndexPlan | None) -> None:
        if plan is None:  # keep the type
            plan = IndexPlan(self.vectors.factory, 0, self.vectors.facts.reason)
        if compact:
            self.store.compact()
        ids, rows, version = self.store.live()
        self._vectors = self._build(ids, rows, plan)
        self._vectors_seen = (version, self.store.generation())
        self._save_vectors()

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
            if self.store.model_identity() is not None:
                self.vectors  # up to date with whoever wrote before we took the lock
            self._writing = True
            try:
                report = self._index_locked(roots, batch_size, progress, retry_errors, options, limits, workers)
            except BaseException:
                self._vectors_seen = None  # re-checked against the database on next use
                raise
            finally:
                self._writing = False
            self._vectors_seen = (self.store.vectors_version(), self.store.generation())
            return report

    def _index_locked(self, roots, batch_size, progress, retry_errors, options, limits, workers) -> IndexReport:
        indexer = Indexer(self.store, self.encoder, lambda: self.vectors, batch_size,
                          workers=workers or default_workers(), before_encoding=self._record_model,
                          limits=limits)
        version = self.store.vectors_version()
        report = indexer.run(roots, progress, retry_errors=retry_errors, scan_options=options)
        # Saved only after a complete run: the index of an interrupted one lags the vector
        # file, and whoever loads it next adds the missing rows (see VectorIndex.load).
        # A run that changed nothing does not rewrite what may be a gigabyte of index.
        if self.store.model_identity() is not None and not self._maintain(progress):
            if self.store.vectors_version() != version or not self._index_path().exists():
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
        never by over-fetching: up to 50k allowed images are searched exactly, more through
        the index with only their ids allowed. ``min_score`` drops weaker hits.
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

    def duplicates(self, threshold: float = DUPLICATE_THRESHOLD, neighbours: int = 16,
                   crops: bool = True) -> list[DuplicateGroup]:
        """Groups of near-identical images, best first. No model is needed.

        Pairs among each image's ``neighbours`` nearest at cosine >= ``threshold`` are
        duplicates (re-encodes, resizes, copies). With ``crops``, pairs from
        ``CROP_CANDIDATE`` up to the threshold are duplicates too when their pixels show the
        same picture up to a crop (``pixelcheck.py``), which CLIP alone cannot tell from two
        photos of the same thing. Pairs are merged transitively into groups.
        """
        if not 0 < threshold <= 1:
            raise QueryError(f"the threshold is a cosine similarity in (0, 1], not {threshold}")
        floor = min(threshold, CROP_CANDIDATE) if crops else threshold
        vectors = self.vectors
        ids, rows, _ = self.store.live()
        pairs: dict[tuple[int, int], float] = {}
        for start in range(0, len(ids), 1024):
            block = vectors.file.rows(rows[start:start + 1024])
            D, I = vectors.search(block, min(neighbours + 1, len(ids)))
            for a, scores, others in zip(ids[start:start + 1024], D, I):
                for score, b in zip(scores, others):
                    if b >= 0 and b != a and score >= floor:
                        pairs[(min(int(a), int(b)), max(int(a), int(b)))] = float(score)
        pairs = self._verified(pairs, threshold)

        parent = {i: i for pair in pairs for i in pair}

        def root(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        best: dict[int, float] = {}
        for (a, b), score in pairs.items():
            best[a], best[b] = max(best.get(a, -1.0), score), max(best.get(b, -1.0), score)
            parent[root(a)] = root(b)
        members: dict[int, list[int]] = {}
        for i in best:
            members.setdefault(root(i), []).append(i)
        groups = []
        for group in members.values():
            hits = sorted(self._hits([(best[i], i) for i in group]), key=lambda h: (-h.score, h.path))
            groups.append(DuplicateGroup(max(h.score for h in hits), hits))
        groups.sort(key=lambda g: (-g.score, -len(g.images), g.images[0].path))
        return groups

    def _verified(self, pairs: dict[tuple[int, int], float], threshold: float) -> dict[tuple[int, int], float]:
        """The pairs at or above ``threshold``, and those below it whose pixels match."""
        from .pixelcheck import SAME_PICTURE, same_picture, thumbnail

        doubtful = [pair for pair, score in pairs.items() if score < threshold]
        paths = {i: row.path for i, row in self.store.images({i for pair in doubtful for i in pair}).items()}
        thumbs: dict[int, object] = {}

        def thumb(i: int):
            if i not in thumbs:
                thumbs[i] = thumbnail(paths[i]) if i in paths else None
            return thumbs[i]

        keep = {pair: score for pair, score in pairs.items() if score >= threshold}
        for a, b in doubtful:
            ta, tb = thumb(a), thumb(b)
            if ta is not None and tb is not None and same_picture(ta, tb) >= SAME_PICTURE:
                keep[(a, b)] = pairs[(a, b)]
        return keep

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
        text_vectors = self._text_vectors([t.value for t in query.terms if t.kind == "text"])
        total = np.zeros(self.vectors.dim, np.float32)
        in_library: set[int] = set()
        for term in query.terms:
            if term.kind == "text":
                vec = text_vectors[term.value]
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

    def _text_vectors(self, texts: list[str]) -> dict[str, np.ndarray]:
        """Text embeddings, from the library's cache when the text was seen before: a repeated
        query then needs no model at all."""
        if not texts:
            return {}
        from sqlalchemy.exc import OperationalError

        model = str(self.model)
        found = self.store.cached_texts(model, texts)
        missing = [t for t in dict.fromkeys(texts) if t not in found]
        if missing:
            fresh = dict(zip(missing, self.encoder.encode_texts(missing)))
            try:
                self.store.cache_texts(model, fresh)
            except OperationalError:  # a read-only or busy library: the cache is only a cache
                pass
            found.update(fresh)
        return found

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
        rows = self.store.hits([i for _, i in found])
        return [SearchHit(i, rows[i][0], s, rows[i][1], rows[i][2], _iso(rows[i][3])) for s, i in found if i in rows]

    # -- reporting --------------------------------------------------------------------

    def optimize(self, memory_budget: int | None = None, target_recall: float | None = None) -> OptimizeReport:
        """Compact the vector file and rebuild the index for the library's size.

        The index type follows :func:`choose_index` within ``memory_budget`` bytes, and its
        search parameter is tuned until recall@10 against exact search reaches
        ``target_recall``. Both are remembered for the automatic rebuilds of later runs.
        """
        if target_recall is not None and not 0 < target_recall <= 1:
            raise QueryError(f"the recall target is a fraction in (0, 1], not {target_recall}")
        started = time.perf_counter()
        with _Lock(self.root / "lock"):
            if self.store.model_identity() is None:
                raise LibraryEmptyError(f"the library at {self.root} is empty",
                                        hint="index some images first: clipsearch index PATH")
            budget, target = self._settings()
            budget, target = memory_budget or budget, target_recall or target
            current = self.vectors
            plan = choose_index(current.ntotal, current.dim, budget)  # fails before anything changes
            self.store.set_meta("memory_budget", str(budget))
            self.store.set_meta("target_recall", str(target))
            dropped = current.dead
            self._writing = True
            try:
                self._rebuild(compact=dropped > 0, plan=plan)
            finally:
                self._writing = False
            built = self.vectors
        return OptimizeReport(built.factory, built.facts.reason, built.ntotal, dropped, built.facts.recall_at_10,
                              built.facts.search_param, budget, target, self._index_path().stat().st_size,
                              time.perf_counter() - started)

    def info(self) -> LibraryInfo:
        counts = self.store.counts()
        identity = self.store.model_identity()
        vectors = self.vectors if identity else None
        index_path = self._index_path()
        return LibraryInfo(
            library=str(self.root),
            images=counts["indexed"],
            vectors=vectors.ntotal if vectors else 0,
            errors=counts["error"],
            model=str(ModelSpec.from_identity(identity)) if identity else None,
            pretrained=identity.pretrained if identity else None,
            dim=identity.dim if identity else None,
            database_bytes=sum(p.stat().st_size for p in self.root.glob(DB_NAME + "*")),
            index_bytes=index_path.stat().st_size if index_path.exists() else 0,
            vector_file_bytes=vectors.file.nbytes if vectors else 0,
            index_type=vectors.factory if vectors else None,
            index_reason=vectors.facts.reason if vectors else None,
            index_search_param=(vectors.facts.search_param or None) if vectors else None,
            index_recall_at_10=vectors.facts.recall_at_10 if vectors else None,
            dead_vectors=vectors.dead if vectors else 0,
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
