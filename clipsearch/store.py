"""The metadata database: SQLite or PostgreSQL through SQLAlchemy, its schema owned by Alembic.

The database is the source of truth. It holds a row per file, with the row of its
exact vector in the append-only vector file (``vectorstore.py``), and a
``vectors_version`` counter that every committed change to the set of vectors bumps.
The FAISS index is derived from the two (see ``index.py``), so a crash between a
database commit and an index save loses nothing. Which database holds a library's
metadata, and how it is reached, is ``database.py``'s business.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from sqlalchemy import (
    URL, BigInteger, Boolean, DateTime, Float, ForeignKey, Integer, LargeBinary, String, Text, TypeDecorator,
    delete, exists, func, insert, not_, or_, select, text, update,
)
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.hybrid import hybrid_property
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, aliased, mapped_column

from . import database
from .errors import LibraryError
from .results import FileError, ModelIdentity, TagCount
from .vectorstore import VectorFile

STATUS_INDEXED = "indexed"
STATUS_ERROR = "error"
MANUAL = "manual"
_CACHE_TOUCH_NS = 3600 * 10**9  # how stale a cached text's last use may be before it is renewed


class UTCDateTime(TypeDecorator):
    """A moment, read back as naive UTC on either backend: SQLite keeps no offset and
    PostgreSQL answers in the session's time zone, and exports must not depend on which."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        # Naive means UTC, as it is read back: a row copied to the other backend keeps its
        # moment instead of taking the PostgreSQL session's time zone.
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(timezone.utc).replace(tzinfo=None)
        return value


# 64-bit ids (migration 0007). On SQLite an ``INTEGER PRIMARY KEY`` is the 64-bit rowid,
# which a ``BIGINT`` one would not be: it would no longer number new rows itself.
ID = BigInteger().with_variant(Integer, "sqlite")


class Base(DeclarativeBase):
    pass


class ImageRow(Base):
    __tablename__ = "images"

    id: Mapped[int] = mapped_column(ID, primary_key=True)
    # Compared in byte order (COLLATE "C" on PostgreSQL, migration 0006): see _under().
    path: Mapped[str] = mapped_column(Text, unique=True)
    size: Mapped[int] = mapped_column(BigInteger)
    mtime_ns: Mapped[int] = mapped_column(BigInteger)
    content_hash: Mapped[str | None] = mapped_column(String(64), index=True)
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), index=True)
    error: Mapped[str | None] = mapped_column(Text)
    indexed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    taken_ns: Mapped[int | None] = mapped_column(BigInteger, index=True)  # EXIF DateTimeOriginal
    row: Mapped[int | None] = mapped_column(BigInteger)  # of the vector file; None unless indexed

    @hybrid_property
    def when_ns(self) -> int:
        """When the photo was taken: EXIF if known, else the file's modification time."""
        return self.taken_ns if self.taken_ns is not None else self.mtime_ns

    @when_ns.inplace.expression
    @classmethod
    def _when_ns_sql(cls):
        # The same rule in SQL, for date filters and search results.
        return func.coalesce(cls.taken_ns, cls.mtime_ns)


class TextCacheRow(Base):
    """Text embeddings already computed, so a repeated query is not encoded again."""

    __tablename__ = "text_cache"

    model: Mapped[str] = mapped_column(String(256), primary_key=True)
    text: Mapped[str] = mapped_column(Text, primary_key=True)
    vector: Mapped[bytes] = mapped_column(LargeBinary)
    used_at: Mapped[int] = mapped_column(BigInteger, index=True)


class ImageCacheRow(Base):
    """Embeddings of images outside the library (evaluation examples, query files and
    uploads), by content, so that they are encoded once."""

    __tablename__ = "image_cache"

    model: Mapped[str] = mapped_column(String(256), primary_key=True)
    content_hash: Mapped[str] = mapped_column(String(32), primary_key=True)
    vector: Mapped[bytes] = mapped_column(LargeBinary)
    used_at: Mapped[int] = mapped_column(BigInteger, index=True)


class TagRow(Base):
    """A label on an image. A manual row with ``removed`` set hides that label's automatic
    tags on the image: manual tags always win."""

    __tablename__ = "tags"

    id: Mapped[int] = mapped_column(ID, primary_key=True)
    image_id: Mapped[int] = mapped_column(ID, ForeignKey("images.id", ondelete="CASCADE"))
    label: Mapped[str] = mapped_column(Text, index=True)
    source: Mapped[str] = mapped_column(String(16))  # zero-shot, few-shot (classifier.py) or MANUAL
    label_set: Mapped[str] = mapped_column(String(256))  # label set or classifier name; "" if manual
    score: Mapped[float] = mapped_column(Float)  # probability; 1.0 for manual tags
    removed: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ClassifierRow(Base):
    """A few-shot linear head over the library's image vectors (raw float32, JSON: no pickle)."""

    __tablename__ = "classifiers"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    model: Mapped[str] = mapped_column(String(256))
    labels: Mapped[str] = mapped_column(Text)
    weights: Mapped[bytes] = mapped_column(LargeBinary)
    bias: Mapped[bytes] = mapped_column(LargeBinary)
    scale: Mapped[float] = mapped_column(Float)
    report: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class AlbumRow(Base):
    """A saved search (``albums.py``): its terms and filters as JSON, its query vector as
    raw float32 bytes, and the model that made the vector."""

    __tablename__ = "albums"

    id: Mapped[int] = mapped_column(ID, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    search: Mapped[str] = mapped_column(Text)
    vector: Mapped[bytes] = mapped_column(LargeBinary)
    model: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class AlbumMemberRow(Base):
    """What a user decided about one image of an album: pinned in, or removed for good."""

    __tablename__ = "album_members"

    album_id: Mapped[int] = mapped_column(ID, ForeignKey("albums.id", ondelete="CASCADE"), primary_key=True)
    image_id: Mapped[int] = mapped_column(ID, ForeignKey("images.id", ondelete="CASCADE"), primary_key=True,
                                          index=True)
    pinned: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class MetaRow(Base):
    __tablename__ = "meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


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


def _past_explicit_ids(conn, table: str) -> None:
    """Rows inserted with their ids do not move PostgreSQL's sequence: move it past them, for
    rows added without one. (SQLite numbers from the largest id anyway.)"""
    if conn.dialect.name == "postgresql":
        conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), max(id)) FROM {table} "
                          "HAVING max(id) IS NOT NULL"))


def _hidden(tag):
    """A clause: the user took ``tag``'s label off its image by hand."""
    manual = aliased(TagRow)
    return exists().where(manual.image_id == tag.image_id, manual.label == tag.label,
                          manual.source == MANUAL, manual.removed)


def _tagged(label: str):
    """Ids of images that carry ``label``: a tag of any source, not taken off by hand."""
    return select(TagRow.image_id).where(TagRow.label == label, not_(TagRow.removed), not_(_hidden(TagRow)))


def _under(roots: Iterable[Path | str]):
    """A clause for paths equal to or inside any of ``roots``; None for no roots."""
    clauses = []
    for root in roots:
        r = str(root)
        prefix = r.rstrip("/") + "/"
        # A range on the path, not LIKE: paths may contain % and _, and this uses the index.
        # '0' is the character right after '/', so this is "starts with prefix" in byte
        # order, which SQLite uses and images.path has on PostgreSQL (migration 0006).
        clauses += [ImageRow.path == r, (ImageRow.path >= prefix) & (ImageRow.path < prefix[:-1] + "0")]
    return or_(*clauses) if clauses else None


class Store:
    """A library's metadata database (see :meth:`open`)."""

    def __init__(self, folder: Path, url: str | URL | None = None):
        """The database at ``url`` (default: ``folder``'s own SQLite file), its schema brought
        up to date; the vector files are in ``folder``."""
        self.folder = Path(folder)
        self.url = (database.sqlite_url(self.folder) if url is None
                    else database.parse_url(url) if isinstance(url, str) else url)
        self.engine = database.engine(self.url)
        try:
            database.migrate(self.engine, self.folder)
        except BaseException:
            self.engine.dispose()
            raise
        self._vector_file: VectorFile | None = None

    @classmethod
    def open(cls, folder: Path, url: str | None = None, *, create: bool = True) -> "Store":
        """The metadata of the library in ``folder``: in the PostgreSQL database at ``url``,
        else in the one the folder names, else in its own SQLite file (``database.py``).
        Without ``create``, a folder with no library is a :class:`LibraryEmptyError`."""
        made = not folder.exists()
        try:
            store = cls(folder, database.locate(folder, url, create))
            try:
                if not database.is_sqlite(store.url):
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
        self.engine.dispose()

    @property
    def where(self) -> str:
        """The database's URL, without a password."""
        return database.display(self.url)

    def database_bytes(self) -> int:
        """The metadata's size: the SQLite file and its journals, or the PostgreSQL database."""
        if database.is_sqlite(self.url):
            files = [self.folder / (database.DB_FILE + journal) for journal in ("", *database.JOURNALS)]
            return sum(p.stat().st_size for p in files if p.exists())
        with self.engine.connect() as conn:
            return int(conn.scalar(text("SELECT pg_database_size(current_database())")))

    def pair(self, create: bool) -> None:
        """Check that the folder and the database hold the same library, by the id both keep,
        and pair them when the library is new. Its vectors are in the folder and its rows
        here: a folder read with another library's rows would show the wrong images."""
        link = database.read_link(self.folder)
        if link is not None and self.get_meta("library_id") == link.library_id:
            return  # the usual case
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
        with Session(self.engine) as s:
            row = s.get(MetaRow, key)
            return row.value if row else None

    def set_meta(self, key: str, value: str) -> None:
        with Session(self.engine) as s, s.begin():
            s.merge(MetaRow(key=key, value=value))

    def model_identity(self) -> ModelIdentity | None:
        with Session(self.engine) as s:
            meta = {r.key: r.value for r in s.scalars(select(MetaRow))}
        if "model" not in meta:
            return None
        return ModelIdentity(meta["model"], meta.get("pretrained") or None, int(meta["dim"]))

    def set_model_identity(self, identity: ModelIdentity) -> None:
        with Session(self.engine) as s, s.begin():
            for key, value in (("model", identity.name), ("pretrained", identity.pretrained or ""),
                               ("dim", str(identity.dim))):
                s.merge(MetaRow(key=key, value=value))

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
        with self.engine.connect() as conn:
            meta = dict(conn.execute(select(MetaRow.key, MetaRow.value).where(
                MetaRow.key.in_(("vectors_version", "vectors_generation")))).all())
        return int(meta.get("vectors_version") or 0), int(meta.get("vectors_generation") or 1)

    def vectors_version(self) -> int:
        return int(self.get_meta("vectors_version") or 0)

    # -- files ------------------------------------------------------------------------

    def known_files(self, roots: Iterable[Path]) -> dict[str, KnownFile]:
        """Every file the database has under any of ``roots`` (a root may also be a file)."""
        clause = _under(roots)
        if clause is None:
            return {}
        stmt = select(ImageRow.id, ImageRow.path, ImageRow.size, ImageRow.mtime_ns, ImageRow.status).where(clause)
        with Session(self.engine) as s:
            return {r.path: KnownFile(r.id, r.path, r.size, r.mtime_ns, r.status) for r in s.execute(stmt)}

    def commit_batch(
        self,
        indexed: Sequence[IndexedImage] = (),
        failed: Sequence[FailedImage] = (),
        removed: Sequence[int] = (),
        moved: Sequence[MovedImage] = (),
    ) -> tuple[np.ndarray, np.ndarray]:
        """Write one batch in one transaction; returns the ids of ``indexed`` and their rows."""
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
                _past_explicit_ids(s.connection(), "images")
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
                _past_explicit_ids(conn, table)
        return copied

    def checkpoint(self) -> None:
        """Fold SQLite's write-ahead log into the database file, so that the file alone holds
        every committed row (before it is moved aside). Nothing to do on PostgreSQL."""
        if database.is_sqlite(self.url):
            with self.engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")

    def next_image_id(self) -> int:
        """The first id no row has taken. An index run numbers its new files from here in
        scan order, so the ids do not depend on which file finished decoding first (or on
        which machine): the same folder indexed twice, locally or on a cluster, gets the same ids."""
        with self.engine.connect() as conn:
            return int(conn.scalar(select(func.coalesce(func.max(ImageRow.id), 0))) or 0) + 1

    @staticmethod
    def _rows_at(s: Session, paths: Sequence[str]) -> dict[str, ImageRow]:
        found: dict[str, ImageRow] = {}
        for start in range(0, len(paths), 5000):  # under any database's bound-parameter limit
            found.update((r.path, r) for r in s.scalars(
                select(ImageRow).where(ImageRow.path.in_(paths[start:start + 5000]))))
        return found

    @staticmethod
    def _upsert(s: Session, existing: dict[str, ImageRow], path: str, size: int, mtime_ns: int,
                new_id: int | None = None) -> ImageRow:
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
        with Session(self.engine) as s:
            rows = s.execute(select(ImageRow.id, ImageRow.path, ImageRow.status)
                             .where(ImageRow.content_hash == content_hash).order_by(ImageRow.id))
            row = next((r for r in rows if r.status == STATUS_INDEXED), None)
        return (row.id, row.path) if row else None

    def id_for_path(self, path: str) -> int | None:
        """The id of an indexed image at exactly this path."""
        with Session(self.engine) as s:
            return s.scalar(select(ImageRow.id).where(ImageRow.path == path, ImageRow.status == STATUS_INDEXED))

    def ids_matching(self, folders: Sequence[str] = (), extensions: Sequence[str] = (),
                     after_ns: int | None = None, before_ns: int | None = None,
                     tags: Sequence[str] = (), no_tags: Sequence[str] = ()) -> np.ndarray:
        """Ids of indexed images inside any of ``folders``, with any of ``extensions``, taken
        in ``[after_ns, before_ns)`` (EXIF time, else modification time), carrying every
        label in ``tags`` and none in ``no_tags``."""
        stmt = select(ImageRow.id).where(ImageRow.status == STATUS_INDEXED)
        for label in tags:
            stmt = stmt.where(ImageRow.id.in_(_tagged(label)))
        for label in no_tags:
            stmt = stmt.where(ImageRow.id.not_in(_tagged(label)))
        if after_ns is not None:
            stmt = stmt.where(ImageRow.when_ns >= after_ns)
        if before_ns is not None:
            stmt = stmt.where(ImageRow.when_ns < before_ns)
        if folders:
            stmt = stmt.where(_under(folders))
        if extensions:
            # Case-insensitive on both backends (SQLite's LIKE is, PostgreSQL's is not);
            # extensions are checked to be plain.
            stmt = stmt.where(or_(*[ImageRow.path.ilike(f"%.{e}") for e in extensions]))
        with Session(self.engine) as s:
            return np.fromiter(s.scalars(stmt), np.int64)

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
        stmt = select(ImageRow.id, ImageRow.path, ImageRow.row).where(
            ImageRow.id.in_([int(i) for i in ids]), ImageRow.status == STATUS_INDEXED)
        with self.engine.connect() as conn:
            return {r[0]: (r[1], r[2]) for r in conn.execute(stmt)}

    def live(self, folders: Sequence[str] = ()) -> tuple[np.ndarray, np.ndarray, int]:
        """Every indexed image (under ``folders``, if any) as ``(ids, rows)`` in row order,
        plus the vector version they belong to."""
        stmt = select(ImageRow.id, ImageRow.row).where(ImageRow.status == STATUS_INDEXED).order_by(ImageRow.row)
        if folders:
            stmt = stmt.where(_under(folders))
        # One transaction, so the version matches the rows read. A cold query reads every
        # image's row before it can search: the integers come straight from the DB-API cursor,
        # without a SQLAlchemy Row per image, which doubled the time (0.07 s against 0.035 s
        # for 100k rows on SQLite).
        with self.engine.begin() as conn:
            version = int(conn.scalar(select(MetaRow.value).where(MetaRow.key == "vectors_version")) or 0)
            with conn.execute(stmt) as result:
                flat = np.fromiter(itertools.chain.from_iterable(result.cursor), np.int64).reshape(-1, 2)
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
        return self._cached(TextCacheRow, TextCacheRow.text, model, texts)

    def cache_texts(self, model: str, vectors: dict[str, np.ndarray], keep: int = 10_000) -> None:
        """Remember text embeddings; the least recently used beyond ``keep`` are forgotten."""
        self._cache(TextCacheRow, "text", model, vectors, keep)

    def cached_images(self, model: str, hashes: Sequence[str]) -> dict[str, np.ndarray]:
        """The cached embeddings of image contents among ``hashes``, marked as used."""
        return self._cached(ImageCacheRow, ImageCacheRow.content_hash, model, hashes)

    def cache_images(self, model: str, vectors: dict[str, np.ndarray], keep: int = 100_000) -> None:
        """Remember embeddings of images outside the library, by content hash."""
        self._cache(ImageCacheRow, "content_hash", model, vectors, keep)

    def _cached(self, row, key, model: str, keys: Sequence[str]) -> dict[str, np.ndarray]:
        now = time.time_ns()
        with self.engine.connect() as conn:
            found = conn.execute(select(key, row.vector, row.used_at).where(
                row.model == model, key.in_(list(keys)))).all()
        # A write per query would cost more than the lookup (half the latency of a warm
        # search), and least-recently-used to the hour keeps the right entries.
        stale = [k for k, _, used in found if now - used > _CACHE_TOUCH_NS]
        if stale:
            try:
                with Session(self.engine) as s, s.begin():
                    s.execute(update(row).where(row.model == model, key.in_(stale)).values(used_at=now))
            except DBAPIError:  # a read-only library (file, role or replica) can still search
                pass
        return {k: np.frombuffer(v, np.float32).copy() for k, v, _ in found}

    def _cache(self, row, key: str, model: str, vectors: dict[str, np.ndarray], keep: int) -> None:
        now = time.time_ns()
        try:
            with Session(self.engine) as s, s.begin():
                for k, vec in vectors.items():
                    s.merge(row(model=model, **{key: k}, vector=np.asarray(vec, np.float32).tobytes(), used_at=now))
                s.flush()
                cutoff = s.scalar(select(row.used_at).order_by(row.used_at.desc()).offset(keep).limit(1))
                if cutoff is not None:
                    s.execute(delete(row).where(row.used_at <= cutoff))
        except DBAPIError:
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
        now = _now()
        written = 0
        with Session(self.engine) as s, s.begin():
            stmt = delete(TagRow).where(TagRow.source == source, TagRow.label_set == label_set)
            if folders:
                stmt = stmt.where(TagRow.image_id.in_(select(ImageRow.id).where(_under(folders))))
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
        with Session(self.engine) as s, s.begin():
            row = s.scalar(select(TagRow).where(TagRow.image_id == image_id, TagRow.label == label,
                                                TagRow.source == MANUAL))
            if row is None:
                row = TagRow(image_id=image_id, label=label, source=MANUAL, label_set="")
                s.add(row)
            row.score, row.removed, row.created_at = (0.0 if removed else 1.0), removed, _now()

    def _effective(self, folders: Sequence[str] = ()):
        """Every tag that counts: on an indexed image, not a removal, not taken off by hand."""
        stmt = (select(TagRow.image_id, ImageRow.path, TagRow.label, TagRow.score, TagRow.source, TagRow.label_set,
                       TagRow.created_at)
                .join(ImageRow, ImageRow.id == TagRow.image_id)
                .where(ImageRow.status == STATUS_INDEXED, not_(TagRow.removed), not_(_hidden(TagRow))))
        return stmt.where(_under(folders)) if folders else stmt

    def tag_counts(self) -> list[TagCount]:
        """Each label with the number of images carrying it, most common first."""
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
        with Session(self.engine) as s, s.begin():
            s.merge(ClassifierRow(name=name, model=model, labels=labels,
                                  weights=np.ascontiguousarray(weights, np.float32).tobytes(),
                                  bias=np.ascontiguousarray(bias, np.float32).tobytes(), scale=float(scale),
                                  report=report, created_at=_now()))

    def classifier(self, name: str) -> ClassifierRow | None:
        with Session(self.engine, expire_on_commit=False) as s:
            return s.get(ClassifierRow, name)

    def classifiers(self) -> list[ClassifierRow]:
        with Session(self.engine, expire_on_commit=False) as s:
            return list(s.scalars(select(ClassifierRow).order_by(ClassifierRow.name)))

    def delete_classifier(self, name: str) -> bool:
        with Session(self.engine) as s, s.begin():
            return s.execute(delete(ClassifierRow).where(ClassifierRow.name == name)).rowcount > 0

    # -- albums -----------------------------------------------------------------------

    def save_album(self, name: str, search: str, vector: np.ndarray, model: str, replace: bool) -> bool:
        """Save an album; an existing one of that name only with ``replace`` (its pins and
        removals kept). False when it exists and ``replace`` is not set."""
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
        with Session(self.engine, expire_on_commit=False) as s:
            row = s.scalar(select(AlbumRow).where(AlbumRow.name == name))
            if row is None:
                return None
            decided = s.execute(select(AlbumMemberRow.image_id, AlbumMemberRow.pinned)
                                .where(AlbumMemberRow.album_id == row.id))
            return row, {int(i): bool(p) for i, p in decided}

    def album_names(self) -> list[str]:
        with self.engine.connect() as conn:
            return list(conn.scalars(select(AlbumRow.name).order_by(AlbumRow.name)))

    def delete_album(self, name: str) -> bool:
        with Session(self.engine) as s, s.begin():
            return s.execute(delete(AlbumRow).where(AlbumRow.name == name)).rowcount > 0

    def decide_members(self, album_id: int, image_ids: Sequence[int], pinned: bool | None) -> None:
        """Pin images into an album (``pinned`` True), remove them for good (False), or
        leave them to the search again (None)."""
        ids = [int(i) for i in image_ids]
        with Session(self.engine) as s, s.begin():
            s.execute(delete(AlbumMemberRow).where(AlbumMemberRow.album_id == album_id,
                                                   AlbumMemberRow.image_id.in_(ids)))
            if pinned is not None and ids:
                s.execute(insert(AlbumMemberRow), [dict(album_id=album_id, image_id=i, pinned=pinned,
                                                        created_at=_now()) for i in ids])

    # -- reading ----------------------------------------------------------------------

    def images(self, ids: Sequence[int]) -> dict[int, ImageRow]:
        with Session(self.engine, expire_on_commit=False) as s:
            return {r.id: r for r in s.scalars(select(ImageRow).where(ImageRow.id.in_([int(i) for i in ids])))}

    def hits(self, ids: Sequence[int]) -> dict[int, tuple[str, int | None, int | None, int]]:
        """``id -> (path, width, height, when_ns)`` of indexed images: what a search result
        shows, read as plain rows (no ORM objects: this is on every query's path)."""
        stmt = select(ImageRow.id, ImageRow.path, ImageRow.width, ImageRow.height, ImageRow.when_ns).where(
            ImageRow.id.in_([int(i) for i in ids]))
        with self.engine.connect() as conn:
            return {r[0]: tuple(r[1:]) for r in conn.execute(stmt)}

    def errors(self) -> list[FileError]:
        with Session(self.engine) as s:
            rows = s.execute(select(ImageRow.path, ImageRow.error).where(ImageRow.status == STATUS_ERROR)
                             .order_by(ImageRow.path))
            return [FileError(p, e or "") for p, e in rows]

    def counts(self) -> dict[str, int]:
        with Session(self.engine) as s:
            rows = s.execute(select(ImageRow.status, func.count()).group_by(ImageRow.status)).all()
        counts = {status: n for status, n in rows}
        return {"indexed": counts.get(STATUS_INDEXED, 0), "error": counts.get(STATUS_ERROR, 0)}
