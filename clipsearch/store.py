"""The metadata database: SQLite or PostgreSQL, its schema owned by Alembic.

The database is the source of truth. It holds a row per file, with the row of its
exact vector in the append-only vector file (``vectorstore.py``), and a
``vectors_version`` counter that every committed change to the set of vectors bumps.
The FAISS index is derived from the two (see ``index.py``), so a crash between a
database commit and an index save loses nothing. Which database holds a library's
metadata, and how it is reached, is ``database.py``'s business.

What a search reads runs as plain SQL (``plainsql.py``); the rest goes through
SQLAlchemy's ORM and the models in ``tables.py``, imported by the methods that use them,
so that a cold search on a SQLite library never imports SQLAlchemy.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import database
from .errors import LibraryError
from .plainsql import PlainSQL, Run, in_list
from .results import FileError, ModelIdentity, TagCount
from .vectorstore import VectorFile

if TYPE_CHECKING:
    from sqlalchemy import URL, Engine
    from sqlalchemy.orm import Session

    from .tables import AlbumRow, ClassifierRow, ImageRow

STATUS_INDEXED = "indexed"
STATUS_ERROR = "error"
MANUAL = "manual"
_CACHE_TOUCH_NS = 3600 * 10**9  # how stale a cached text's last use may be before it is renewed
# When a photo was taken: EXIF DateTimeOriginal if known, else the file's modification time.
WHEN_NS = "coalesce(taken_ns, mtime_ns)"
# A condition on a row of ``tags``: the user took its label off its image by hand, which
# hides that label's automatic tags there.
HIDDEN = ("EXISTS (SELECT 1 FROM tags AS manual WHERE manual.image_id = tags.image_id "
          f"AND manual.label = tags.label AND manual.source = '{MANUAL}' AND manual.removed)")
_CACHES = {"text": "text_cache", "content_hash": "image_cache"}  # an embedding cache's key -> its table


@dataclass(frozen=True)
class KnownFile:
    """What the database remembers of a file, enough to tell whether it changed."""

    id: int
    path: str
    size: int
    mtime_ns: int
    status: str


@dataclass(frozen=True)
class IndexedImage:
    """One freshly embedded file, ready to be written."""

    path: str
    size: int
    mtime_ns: int
    content_hash: str
    width: int
    height: int
    vector: np.ndarray
    taken_ns: int | None = None
    new_id: int | None = None  # the id a new row takes (see Store.next_image_id)


@dataclass(frozen=True)
class MovedImage:
    """A file found at a new path with the content of row ``id``: the row follows it."""

    id: int
    path: str
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class FailedImage:
    path: str
    size: int
    mtime_ns: int
    reason: str
    new_id: int | None = None


def _now() -> datetime:
    return datetime.now(timezone.utc)


_COPY_ROWS = 10_000  # rows per insert when copying a library to another database


def under(roots: Iterable[Path | str], column: str = "path") -> tuple[str, dict[str, str]] | None:
    """A SQL condition, and its parameters, for paths in ``column`` equal to or inside any
    of ``roots``; None for no roots."""
    clauses, params = [], {}
    for n, root in enumerate(roots):
        r = str(root)
        prefix = r.rstrip("/") + "/"
        # A range on the path, not LIKE: paths may contain % and _, and this uses the index.
        # '0' is the character right after '/', so this is "starts with prefix" in byte
        # order, which SQLite uses and images.path has on PostgreSQL (migration 0006).
        params |= {f"root{n}": r, f"from{n}": prefix, f"to{n}": prefix[:-1] + "0"}
        clauses.append(f"{column} = :root{n} OR ({column} >= :from{n} AND {column} < :to{n})")
    return ("(" + " OR ".join(clauses) + ")", params) if clauses else None


class Store:
    """A library's metadata database (see :meth:`open`)."""

    def __init__(self, folder: Path, url: str | URL | None = None):
        """The database at ``url`` (default: ``folder``'s own SQLite file), its schema brought
        up to date; the vector files are in ``folder``."""
        self.folder = Path(folder)
        self._url = database.parse_url(url) if isinstance(url, str) else url
        self.is_sqlite = self._url is None or database.is_sqlite(self._url)
        sqlite_file = (None if not self.is_sqlite else self.folder / database.DB_FILE if self._url is None
                       else Path(self._url.database))
        self._engine: Engine | None = None
        self._engine_lock = threading.Lock()
        self.sql = PlainSQL(sqlite_file, lambda: self.engine)
        try:
            if not self._schema_is_current():
                database.migrate(self.engine, self.folder)
        except BaseException:
            self.close()
            raise
        self._vector_file: VectorFile | None = None

    @cached_property
    def url(self) -> URL:
        return database.sqlite_url(self.folder) if self._url is None else self._url

    @property
    def engine(self) -> Engine:
        """SQLAlchemy's engine, made the first time a statement needs it (not for a search):
        once, though the web server's threads may all ask at the same moment."""
        with self._engine_lock:
            if self._engine is None:
                self._engine = database.engine(self.url)
            return self._engine

    def _schema_is_current(self) -> bool:
        """Whether the schema is at the newest revision: one query, without SQLAlchemy on SQLite."""
        if self.is_sqlite and not self.sql.path.exists():
            return False
        try:
            return self.sql.rows("SELECT version_num FROM alembic_version") == [(database.SCHEMA_HEAD,)]
        except self.sql.errors:
            return False  # a new database, or not one: database.migrate says which

    @classmethod
    def open(cls, folder: Path, url: str | None = None, *, create: bool = True) -> "Store":
        """The metadata of the library in ``folder``: in the PostgreSQL database at ``url``,
        else in the one the folder names, else in its own SQLite file (``database.py``).
        Without ``create``, a folder with no library is a :class:`LibraryEmptyError`."""
        made = not folder.exists()
        try:
            store = cls(folder, database.locate(folder, url, create))
            try:
                if not store.is_sqlite:
                    store.pair(create)
            except BaseException:
                store.close()
                raise
        except BaseException:
            if made:  # a database that could not be reached leaves no empty library folder behind
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only when empty: anything written there is kept
            raise
        return store

    def close(self) -> None:
        self.sql.close()
        if self._engine is not None:
            self._engine.dispose()

    @property
    def where(self) -> str:
        """The database's URL, without a password."""
        return database.display(self.url)

    def database_bytes(self) -> int:
        """The metadata's size: the SQLite file and its journals, or the PostgreSQL database."""
        if self.is_sqlite:
            files = [self.folder / (database.DB_FILE + journal) for journal in ("", *database.JOURNALS)]
            return sum(p.stat().st_size for p in files if p.exists())
        return int(self.sql.rows("SELECT pg_database_size(current_database())")[0][0])

    def pair(self, create: bool) -> None:
        """Check that the folder and the database hold the same library, by the id both keep,
        and pair them when the library is new. Its vectors are in the folder and its rows
        here: a folder read with another library's rows would show the wrong images."""
        link = database.read_link(self.folder)
        if link is not None and self.get_meta("library_id") == link.library_id:
            return  # the usual case
        from .tables import ImageRow, MetaRow, insert, select

        with database.serialized(self.engine, self.folder) as conn:
            link = database.read_link(self.folder)  # a process beside us may have just paired them
            ours = conn.scalar(select(MetaRow.value).where(MetaRow.key == "library_id"))
            if link is None:  # a new library: database.locate let it through only to create one
                if ours is not None:
                    raise LibraryError(f"{self.where} holds the metadata of another library folder, not {self.folder}",
                                       hint="open that library's own folder with it, or give this folder a "
                                            "database of its own")
                # The folder first: a crash before the commit leaves a link that the next
                # open completes (below), never a database that no folder names.
                ours = uuid.uuid4().hex
                database.write_link(self.folder, self.url, ours)
                conn.execute(insert(MetaRow).values(key="library_id", value=ours))
            elif ours is None:
                # A library whose creation stopped before its commit, if nothing was written
                # since; else a database emptied or replaced under the folder's vectors.
                if conn.scalar(select(ImageRow.id).limit(1)) is not None or any(self.folder.glob("vectors.*.f16")):
                    raise LibraryError(f"the vectors in {self.folder} belong to library {link.library_id}, "
                                       f"but {self.where} holds no library",
                                       hint="open the folder with the database it was made with, or index "
                                            "into a new [[library]] folder")
                if create:
                    conn.execute(insert(MetaRow).values(key="library_id", value=link.library_id))
            elif ours != link.library_id:
                raise LibraryError(f"the vectors in {self.folder} belong to library {link.library_id}, "
                                   f"but {self.where} holds library {ours}",
                                   hint=f"open the folder with its own database ({link.url}), or pick the "
                                        "folder that belongs to this database")

    # -- meta -------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        return self._meta(key).get(key)

    def set_meta(self, key: str, value: str) -> None:
        self._set_meta({key: value})

    def _meta(self, *keys: str, run: Run | None = None) -> dict[str, str]:
        """The values of ``keys`` that are set, read in a transaction of their own or in ``run``'s."""
        listed, params = in_list("key", keys)
        return dict((run or self.sql.rows)(f"SELECT key, value FROM meta WHERE key IN {listed}", params))

    def _set_meta(self, values: dict[str, str]) -> None:
        with self.sql.transaction(write=True) as run:
            for key, value in values.items():
                run("INSERT INTO meta (key, value) VALUES (:key, :value) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value", {"key": key, "value": value})

    def model_identity(self) -> ModelIdentity | None:
        meta = self._meta("model", "pretrained", "dim")
        if "model" not in meta:
            return None
        return ModelIdentity(meta["model"], meta.get("pretrained") or None, int(meta["dim"]))

    def set_model_identity(self, identity: ModelIdentity) -> None:
        self._set_meta({"model": identity.name, "pretrained": identity.pretrained or "", "dim": str(identity.dim)})

    def roots(self) -> list[str]:
        """Every folder (or file) ever given to ``index``: what the library may serve."""
        return json.loads(self.get_meta("roots") or "[]")

    def add_roots(self, roots: Iterable[Path | str]) -> None:
        known = self.roots()
        new = [str(r) for r in roots if str(r) not in known]
        if new:
            self.set_meta("roots", json.dumps(known + new))

    def vector_state(self) -> tuple[int, int]:
        """``(vectors_version, generation)`` in one read: what a reader checks before every query."""
        meta = self._meta("vectors_version", "vectors_generation")
        return int(meta.get("vectors_version") or 0), int(meta.get("vectors_generation") or 1)

    def vectors_version(self) -> int:
        return int(self.get_meta("vectors_version") or 0)

    # -- files ------------------------------------------------------------------------

    def known_files(self, roots: Iterable[Path]) -> dict[str, KnownFile]:
        """Every file the database has under any of ``roots`` (a root may also be a file)."""
        found = under(roots)
        if found is None:
            return {}
        rows = self.sql.rows(f"SELECT id, path, size, mtime_ns, status FROM images WHERE {found[0]}", found[1])
        return {row[1]: KnownFile(*row) for row in rows}

    def commit_batch(
        self,
        indexed: Sequence[IndexedImage] = (),
        failed: Sequence[FailedImage] = (),
        removed: Sequence[int] = (),
        moved: Sequence[MovedImage] = (),
    ) -> tuple[np.ndarray, np.ndarray]:
        """Write one batch in one transaction; returns the ids of ``indexed`` and their rows."""
        from .tables import ImageRow, MetaRow, Session, TagRow, delete, past_explicit_ids, update

        rows = np.empty(0, np.int64)
        if indexed:
            # Durable before the transaction that points at them (see vectorstore.py).
            rows = self.vector_file().append(np.stack([i.vector for i in indexed]))
        ids: list[int] = []
        with Session(self.engine) as s, s.begin():
            if removed:
                s.execute(delete(ImageRow).where(ImageRow.id.in_([int(i) for i in removed])))
            for m in moved:
                s.execute(update(ImageRow).where(ImageRow.id == m.id).values(
                    path=m.path, size=m.size, mtime_ns=m.mtime_ns, indexed_at=_now()))
            # One query for the batch's existing rows and one flush for all of them: a
            # query and a flush per file cost ~0.8 ms each, a fifth to a half of the wall
            # time of an index run on a GPU (benchmarks/bench_store.py measures commits).
            existing = self._rows_at(s, [i.path for i in (*indexed, *failed)])
            changed = [existing[i.path].id for i in indexed if i.path in existing]
            if changed:  # new content: tags made from the old vector no longer hold
                s.execute(delete(TagRow).where(TagRow.image_id.in_(changed), TagRow.source != MANUAL))
            written = []
            for item, vector_row in zip(indexed, rows):
                row = self._upsert(s, existing, item.path, item.size, item.mtime_ns, item.new_id)
                row.content_hash, row.width, row.height = item.content_hash, item.width, item.height
                row.taken_ns, row.row = item.taken_ns, int(vector_row)
                row.status, row.error = STATUS_INDEXED, None
                written.append(row)
            for item in failed:
                row = self._upsert(s, existing, item.path, item.size, item.mtime_ns, item.new_id)
                row.status, row.error, row.width, row.height, row.content_hash, row.row = (
                    STATUS_ERROR, item.reason, None, None, None, None)
            s.flush()
            ids = [row.id for row in written]
            if any(i.new_id for i in (*indexed, *failed)):
                past_explicit_ids(s.connection(), "images")
            if indexed or removed or failed or moved:
                current = s.get(MetaRow, "vectors_version")
                version = int(current.value) + 1 if current else 1
                s.merge(MetaRow(key="vectors_version", value=str(version)))
        return np.asarray(ids, np.int64), rows

    def copy_to(self, target: "Store", progress: Callable[[str, int, int], None] | None = None) -> dict[str, int]:
        """Copy every row into ``target``, the same schema in another database, in place of
        what it holds, in one transaction; returns ``table -> rows``. The caller checks that
        ``target`` holds no other library (``Library.move_metadata``). ``progress(table, done,
        total)`` follows it."""
        from .tables import Base, func, past_explicit_ids, select

        tables = Base.metadata.sorted_tables  # a row's parent before it
        copied: dict[str, int] = {}
        with self.engine.connect() as source, target.engine.begin() as conn:
            totals = {t.name: source.scalar(select(func.count()).select_from(t)) for t in tables}
            for table in reversed(tables):
                conn.execute(table.delete())  # the rows of an interrupted move
            for table in tables:
                copied[table.name] = 0
                rows = source.execution_options(yield_per=_COPY_ROWS).execute(select(table))
                for chunk in rows.partitions():
                    conn.execute(table.insert(), [row._asdict() for row in chunk])
                    copied[table.name] += len(chunk)
                    if progress:
                        progress(table.name, copied[table.name], totals[table.name])
            for table in ("images", "tags", "albums"):
                past_explicit_ids(conn, table)
        return copied

    def checkpoint(self) -> None:
        """Fold SQLite's write-ahead log into the database file, so that the file alone holds
        every committed row (before it is moved aside). Nothing to do on PostgreSQL."""
        if self.is_sqlite:
            with self.engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")

    def next_image_id(self) -> int:
        """The first id no row has taken. An index run numbers its new files from here in
        scan order, so the ids do not depend on which file finished decoding first (or on
        which machine): the same folder indexed twice, locally or on a cluster, gets the same ids."""
        return int(self.sql.rows("SELECT coalesce(max(id), 0) FROM images")[0][0]) + 1

    @staticmethod
    def _rows_at(s: Session, paths: Sequence[str]) -> dict[str, ImageRow]:
        from .tables import ImageRow, select

        found: dict[str, ImageRow] = {}
        for start in range(0, len(paths), 5000):  # under any database's bound-parameter limit
            found.update((r.path, r) for r in s.scalars(
                select(ImageRow).where(ImageRow.path.in_(paths[start:start + 5000]))))
        return found

    @staticmethod
    def _upsert(s: Session, existing: dict[str, ImageRow], path: str, size: int, mtime_ns: int,
                new_id: int | None = None) -> ImageRow:
        from .tables import ImageRow

        row = existing.get(path)
        if row is None:
            row = existing[path] = ImageRow(id=new_id, path=path)
            s.add(row)
        row.size, row.mtime_ns, row.indexed_at = size, mtime_ns, _now()
        return row

    def find_by_hash(self, content_hash: str) -> tuple[int, str] | None:
        """An indexed file with exactly this content, as ``(id, path)``."""
        # Status is checked here, not in SQL: given both conditions, SQLite (which keeps no
        # statistics) walks the status index, every indexed row, on each call, and indexing
        # asks once per new file. A content has few rows, so this reads the hash index only.
        rows = self.sql.rows("SELECT id, path, status FROM images WHERE content_hash = :hash ORDER BY id",
                             {"hash": content_hash})
        return next(((i, path) for i, path, status in rows if status == STATUS_INDEXED), None)

    def id_for_path(self, path: str) -> int | None:
        """The id of an indexed image at exactly this path."""
        rows = self.sql.rows("SELECT id FROM images WHERE path = :path AND status = :indexed",
                             {"path": path, "indexed": STATUS_INDEXED})
        return rows[0][0] if rows else None

    def ids_matching(self, folders: Sequence[str] = (), extensions: Sequence[str] = (),
                     after_ns: int | None = None, before_ns: int | None = None,
                     tags: Sequence[str] = (), no_tags: Sequence[str] = ()) -> np.ndarray:
        """Ids of indexed images inside any of ``folders``, with any of ``extensions``, taken
        in ``[after_ns, before_ns)`` (EXIF time, else modification time), carrying every
        label in ``tags`` and none in ``no_tags``."""
        where, params = ["status = :indexed"], {"indexed": STATUS_INDEXED}
        for labels, test in ((tags, "IN"), (no_tags, "NOT IN")):
            for label in labels:
                key = f"label{len(params)}"
                where.append(f"id {test} (SELECT image_id FROM tags WHERE label = :{key} AND NOT removed "
                             f"AND NOT {HIDDEN})")
                params[key] = label
        for bound, test in ((after_ns, ">="), (before_ns, "<")):
            if bound is not None:
                key = f"bound{len(params)}"
                where.append(f"{WHEN_NS} {test} :{key}")
                params[key] = bound
        inside = under(folders)
        if inside is not None:
            where.append(inside[0])
            params |= inside[1]
        if extensions:
            # Case-insensitive on both backends (SQLite's LIKE is, PostgreSQL's is not);
            # extensions are checked to be plain.
            listed = {f"ext{n}": f"%.{e.lower()}" for n, e in enumerate(extensions)}
            where.append("(" + " OR ".join(f"lower(path) LIKE :{key}" for key in listed) + ")")
            params |= listed
        rows = self.sql.rows("SELECT id FROM images WHERE " + " AND ".join(where), params)
        return np.fromiter((i for (i,) in rows), np.int64, len(rows))

    # -- vectors ----------------------------------------------------------------------

    def generation(self) -> int:
        return int(self.get_meta("vectors_generation") or 1)

    def vector_file(self) -> VectorFile:
        """The current generation's vector file (the model's dimension must be known)."""
        generation = self.generation()
        if self._vector_file is None or self._vector_file.generation != generation:
            identity = self.model_identity()
            if identity is None:
                raise LibraryError("the library has no model yet, so no vectors")
            self._vector_file = VectorFile(self.folder, generation, identity.dim)
        return self._vector_file

    def vector_of(self, image_id: int) -> np.ndarray:
        found = self.locate([image_id])
        if not found:
            raise KeyError(image_id)
        return self.vector_file().rows([found[int(image_id)][1]])[0]

    def locate(self, ids: Sequence[int]) -> dict[int, tuple[str, int]]:
        """``id -> (path, vector row)`` of those of ``ids`` that are indexed."""
        listed, params = in_list("id", [int(i) for i in ids])
        rows = self.sql.rows(f"SELECT id, path, row FROM images WHERE id IN {listed} AND status = :indexed",
                             {**params, "indexed": STATUS_INDEXED})
        return {i: (path, row) for i, path, row in rows}

    def live(self, folders: Sequence[str] = ()) -> tuple[np.ndarray, np.ndarray, int]:
        """Every indexed image (under ``folders``, if any) as ``(ids, rows)`` in row order,
        plus the vector version they belong to."""
        found = under(folders)
        inside, params = (f"AND {found[0]} ", found[1]) if found else ("", {})
        # One transaction, so the version matches the rows read. A cold query reads every
        # image's row before it can search: the integers go from the cursor's tuples straight
        # into numpy (a SQLAlchemy Row per image doubled the time, 0.07 s against 0.035 s for
        # 100k rows on SQLite).
        with self.sql.transaction() as run:
            version = int(self._meta("vectors_version", run=run).get("vectors_version") or 0)
            rows = run(f"SELECT id, row FROM images WHERE status = :indexed {inside}ORDER BY row",
                       {**params, "indexed": STATUS_INDEXED})
            flat = np.fromiter(itertools.chain.from_iterable(rows), np.int64).reshape(-1, 2)
        return np.ascontiguousarray(flat[:, 0]), np.ascontiguousarray(flat[:, 1]), version

    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """Every indexed image's id and exact vector (float32): for small libraries and tests."""
        ids, rows, _ = self.live()
        if not len(ids):
            return ids, np.empty((0, 0), np.float32)
        return ids, self.vector_file().rows(rows)

    def compact(self) -> VectorFile:
        """Copy the live rows to the next generation and drop the dead ones.

        The database switches to the new file in one transaction; a crash before it
        leaves the old generation in use and a stray new file that the next compaction
        overwrites.
        """
        from .tables import ImageRow, MetaRow, Session, update

        old = self.vector_file()
        ids, rows, _ = self.live()
        new = VectorFile(old.folder, old.generation + 1, old.dim)
        new.delete()  # left by an interrupted compaction
        old.copy_rows(new, rows)
        with Session(self.engine) as s, s.begin():
            s.execute(update(ImageRow), [{"id": int(i), "row": n} for n, i in enumerate(ids)])
            s.merge(MetaRow(key="vectors_generation", value=str(new.generation)))
        old.delete()
        self._vector_file = new
        return new

    # -- the embedding caches: texts, and images outside the library -----------------

    def cached_texts(self, model: str, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """The cached embeddings among ``texts``, marked as used (to the hour)."""
        return self._cached("text", model, texts)

    def cache_texts(self, model: str, vectors: dict[str, np.ndarray], keep: int = 10_000) -> None:
        """Remember text embeddings; the least recently used beyond ``keep`` are forgotten."""
        self._cache("text", model, vectors, keep)

    def cached_images(self, model: str, hashes: Sequence[str]) -> dict[str, np.ndarray]:
        """The cached embeddings of image contents among ``hashes``, marked as used."""
        return self._cached("content_hash", model, hashes)

    def cache_images(self, model: str, vectors: dict[str, np.ndarray], keep: int = 100_000) -> None:
        """Remember embeddings of images outside the library, by content hash."""
        self._cache("content_hash", model, vectors, keep)

    def _cached(self, key: str, model: str, keys: Sequence[str]) -> dict[str, np.ndarray]:
        table, now = _CACHES[key], time.time_ns()
        listed, params = in_list("key", list(keys))
        found = self.sql.rows(f"SELECT {key}, vector, used_at FROM {table} WHERE model = :model AND {key} IN {listed}",
                              {**params, "model": model})
        # A write per query would cost more than the lookup (half the latency of a warm
        # search), and least-recently-used to the hour keeps the right entries.
        stale = [k for k, _, used in found if now - used > _CACHE_TOUCH_NS]
        if stale:
            listed, params = in_list("key", stale)
            try:
                with self.sql.transaction(write=True) as run:
                    run(f"UPDATE {table} SET used_at = :now WHERE model = :model AND {key} IN {listed}",
                        {**params, "model": model, "now": now})
            except self.sql.errors:  # a read-only library (file, role or replica) can still search
                pass
        return {k: np.frombuffer(v, np.float32).copy() for k, v, _ in found}

    def _cache(self, key: str, model: str, vectors: dict[str, np.ndarray], keep: int) -> None:
        table, now = _CACHES[key], time.time_ns()
        try:
            with self.sql.transaction(write=True) as run:
                for k, vector in vectors.items():
                    run(f"INSERT INTO {table} (model, {key}, vector, used_at) VALUES (:model, :key, :vector, :now) "
                        f"ON CONFLICT (model, {key}) DO UPDATE SET vector = excluded.vector, used_at = excluded.used_at",
                        {"model": model, "key": k, "vector": np.asarray(vector, np.float32).tobytes(), "now": now})
                run(f"DELETE FROM {table} WHERE used_at <= "
                    f"(SELECT used_at FROM {table} ORDER BY used_at DESC LIMIT 1 OFFSET :keep)", {"keep": keep})
        except self.sql.errors:
            # A read-only library (file, role or replica), or a process beside us that cached
            # the same entries first: the cache is only a cache.
            pass

    # -- tags -------------------------------------------------------------------------

    def replace_tags(self, source: str, label_set: str, batches: Iterable[tuple[np.ndarray, Sequence[str], np.ndarray]],
                     folders: Sequence[str] = ()) -> int:
        """Replace the tags of one automatic ``source`` and ``label_set`` on the images under
        ``folders`` (all images if none) with ``batches`` of ``(image ids, labels, scores)``.

        One transaction: readers see the old tags or the new ones, never a mix, and a crash
        leaves the old ones. Tags of other sources and sets are untouched.
        """
        from .tables import ImageRow, Session, TagRow, delete, select, within

        now = _now()
        written = 0
        with Session(self.engine) as s, s.begin():
            stmt = delete(TagRow).where(TagRow.source == source, TagRow.label_set == label_set)
            if folders:
                stmt = stmt.where(TagRow.image_id.in_(select(ImageRow.id).where(within(folders))))
            s.execute(stmt)
            conn = s.connection()
            # Plain tuples through the driver: a million tags is a million rows, and the per-row
            # conversions of the ORM (or of a Core insert: twice the time on SQLite) would cost
            # more than scoring them. The one timestamp is converted once; `removed` takes its
            # default, false.
            to_db = TagRow.__table__.c.created_at.type.dialect_impl(conn.dialect).bind_processor(conn.dialect)
            stamp = to_db(now) if to_db else now
            columns = "image_id, label, source, label_set, score, created_at"
            batches = ([(i, label, source, label_set, score, stamp) for i, label, score
                        in zip(np.asarray(ids).tolist(), labels, np.asarray(scores).tolist())]
                       for ids, labels, scores in batches)
            if conn.dialect.name == "postgresql":
                # COPY: psycopg's executemany sends an INSERT per row, and takes 2.5 times as long.
                cursor = conn.connection.driver_connection.cursor()
                with cursor, cursor.copy(f"COPY tags ({columns}) FROM STDIN") as copy:
                    for rows in batches:
                        for row in rows:
                            copy.write_row(row)
                        written += len(rows)
            else:
                for rows in batches:
                    if rows:
                        conn.exec_driver_sql(f"INSERT INTO tags ({columns}) VALUES (?, ?, ?, ?, ?, ?)", rows)
                        written += len(rows)
        return written

    def set_manual_tag(self, image_id: int, label: str, removed: bool) -> None:
        """Put ``label`` on an image by hand, or take it off (which hides automatic tags)."""
        from .tables import Session, TagRow, select

        with Session(self.engine) as s, s.begin():
            row = s.scalar(select(TagRow).where(TagRow.image_id == image_id, TagRow.label == label,
                                                TagRow.source == MANUAL))
            if row is None:
                row = TagRow(image_id=image_id, label=label, source=MANUAL, label_set="")
                s.add(row)
            row.score, row.removed, row.created_at = (0.0 if removed else 1.0), removed, _now()

    def _effective(self, folders: Sequence[str] = ()):
        """Every tag that counts: on an indexed image, not a removal, not taken off by hand."""
        from .tables import ImageRow, TagRow, not_, not_hidden, select, within

        stmt = (select(TagRow.image_id, ImageRow.path, TagRow.label, TagRow.score, TagRow.source, TagRow.label_set,
                       TagRow.created_at)
                .join(ImageRow, ImageRow.id == TagRow.image_id)
                .where(ImageRow.status == STATUS_INDEXED, not_(TagRow.removed), not_hidden()))
        return stmt.where(within(folders)) if folders else stmt

    def tag_counts(self) -> list[TagCount]:
        """Each label with the number of images carrying it, most common first."""
        from .tables import func, select

        eff = self._effective().subquery()
        images = func.count(func.distinct(eff.c.image_id))
        counts = select(eff.c.label, images).group_by(eff.c.label).order_by(images.desc(), eff.c.label)
        with self.engine.connect() as conn:
            sources: dict[str, list[str]] = {}
            for label, source in conn.execute(select(eff.c.label, eff.c.source).distinct()):
                sources.setdefault(label, []).append(source)
            return [TagCount(label, n, sorted(sources[label])) for label, n in conn.execute(counts)]

    def tags_of(self, ids: Sequence[int] | None = None, folders: Sequence[str] = ()) -> dict[int, list]:
        """``id -> tag rows`` (``path, label, score, source, label_set, created_at``) of the
        given images (all if None), one row per label: a manual tag first, then the best score."""
        from .tables import ImageRow, TagRow

        stmt = self._effective(folders)
        if ids is not None:
            stmt = stmt.where(TagRow.image_id.in_([int(i) for i in ids]))
        stmt = stmt.order_by(ImageRow.path, TagRow.label, (TagRow.source == MANUAL).desc(), TagRow.score.desc())
        out: dict[int, list] = {}
        with self.engine.connect() as conn:
            for row in conn.execute(stmt):
                tags = out.setdefault(row.image_id, [])
                if not tags or tags[-1].label != row.label:
                    tags.append(row)
        return out

    # -- classifiers ------------------------------------------------------------------

    def save_classifier(self, name: str, model: str, labels: str, weights: np.ndarray, bias: np.ndarray,
                        scale: float, report: str) -> None:
        from .tables import ClassifierRow, Session

        with Session(self.engine) as s, s.begin():
            s.merge(ClassifierRow(name=name, model=model, labels=labels,
                                  weights=np.ascontiguousarray(weights, np.float32).tobytes(),
                                  bias=np.ascontiguousarray(bias, np.float32).tobytes(), scale=float(scale),
                                  report=report, created_at=_now()))

    def classifier(self, name: str) -> ClassifierRow | None:
        from .tables import ClassifierRow, Session

        with Session(self.engine, expire_on_commit=False) as s:
            return s.get(ClassifierRow, name)

    def classifiers(self) -> list[ClassifierRow]:
        from .tables import ClassifierRow, Session, select

        with Session(self.engine, expire_on_commit=False) as s:
            return list(s.scalars(select(ClassifierRow).order_by(ClassifierRow.name)))

    def delete_classifier(self, name: str) -> bool:
        from .tables import ClassifierRow, Session, delete

        with Session(self.engine) as s, s.begin():
            return s.execute(delete(ClassifierRow).where(ClassifierRow.name == name)).rowcount > 0

    # -- albums -----------------------------------------------------------------------

    def save_album(self, name: str, search: str, vector: np.ndarray, model: str, replace: bool) -> bool:
        """Save an album; an existing one of that name only with ``replace`` (its pins and
        removals kept). False when it exists and ``replace`` is not set."""
        from .tables import AlbumRow, Session, select

        with Session(self.engine) as s, s.begin():
            row = s.scalar(select(AlbumRow).where(AlbumRow.name == name))
            if row is not None and not replace:
                return False
            if row is None:
                row = AlbumRow(name=name, created_at=_now())
                s.add(row)
            row.search, row.model = search, model
            row.vector = np.ascontiguousarray(vector, np.float32).tobytes()
        return True

    def album(self, name: str) -> tuple[AlbumRow, dict[int, bool]] | None:
        """An album's row and what users decided of its images (``id -> pinned``)."""
        from .tables import AlbumMemberRow, AlbumRow, Session, select

        with Session(self.engine, expire_on_commit=False) as s:
            row = s.scalar(select(AlbumRow).where(AlbumRow.name == name))
            if row is None:
                return None
            decided = s.execute(select(AlbumMemberRow.image_id, AlbumMemberRow.pinned)
                                .where(AlbumMemberRow.album_id == row.id))
            return row, {int(i): bool(p) for i, p in decided}

    def album_names(self) -> list[str]:
        from .tables import AlbumRow, select

        with self.engine.connect() as conn:
            return list(conn.scalars(select(AlbumRow.name).order_by(AlbumRow.name)))

    def delete_album(self, name: str) -> bool:
        from .tables import AlbumRow, Session, delete

        with Session(self.engine) as s, s.begin():
            return s.execute(delete(AlbumRow).where(AlbumRow.name == name)).rowcount > 0

    def decide_members(self, album_id: int, image_ids: Sequence[int], pinned: bool | None) -> None:
        """Pin images into an album (``pinned`` True), remove them for good (False), or
        leave them to the search again (None)."""
        from .tables import AlbumMemberRow, Session, delete, insert

        ids = [int(i) for i in image_ids]
        with Session(self.engine) as s, s.begin():
            s.execute(delete(AlbumMemberRow).where(AlbumMemberRow.album_id == album_id,
                                                   AlbumMemberRow.image_id.in_(ids)))
            if pinned is not None and ids:
                s.execute(insert(AlbumMemberRow), [dict(album_id=album_id, image_id=i, pinned=pinned,
                                                        created_at=_now()) for i in ids])

    # -- reading ----------------------------------------------------------------------

    def images(self, ids: Sequence[int]) -> dict[int, ImageRow]:
        from .tables import ImageRow, Session, select

        with Session(self.engine, expire_on_commit=False) as s:
            return {r.id: r for r in s.scalars(select(ImageRow).where(ImageRow.id.in_([int(i) for i in ids])))}

    def hits(self, ids: Sequence[int]) -> dict[int, tuple[str, int | None, int | None, int]]:
        """``id -> (path, width, height, when_ns)`` of indexed images: what a search result shows."""
        listed, params = in_list("id", [int(i) for i in ids])
        rows = self.sql.rows(f"SELECT id, path, width, height, {WHEN_NS} FROM images WHERE id IN {listed}", params)
        return {row[0]: tuple(row[1:]) for row in rows}

    def errors(self) -> list[FileError]:
        rows = self.sql.rows("SELECT path, error FROM images WHERE status = :error ORDER BY path",
                             {"error": STATUS_ERROR})
        return [FileError(path, error or "") for path, error in rows]

    def counts(self) -> dict[str, int]:
        counts = dict(self.sql.rows("SELECT status, count(*) FROM images GROUP BY status"))
        return {"indexed": counts.get(STATUS_INDEXED, 0), "error": counts.get(STATUS_ERROR, 0)}
