"""The metadata database: SQLite through SQLAlchemy, its schema owned by Alembic.

The database is the source of truth. It holds a row per file, with the row of its
exact vector in the append-only vector file (``vectorstore.py``), and a
``vectors_version`` counter that every committed change to the set of vectors bumps.
The FAISS index is derived from the two (see ``index.py``), so a crash between a
database commit and an index save loses nothing.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from sqlalchemy import (
    BigInteger, Boolean, DateTime, Float, ForeignKey, Integer, LargeBinary, String, Text, create_engine,
    delete, event, exists, func, not_, or_, select, update,
)
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.hybrid import hybrid_property
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, aliased, mapped_column

from .errors import LibraryError, SchemaTooNewError
from .results import FileError, ModelIdentity, TagCount
from .vectorstore import VectorFile

STATUS_INDEXED = "indexed"
STATUS_ERROR = "error"
MANUAL = "manual"
_CACHE_TOUCH_NS = 3600 * 10**9  # how stale a cached text's last use may be before it is renewed


class Base(DeclarativeBase):
    pass


class ImageRow(Base):
    __tablename__ = "images"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    path: Mapped[str] = mapped_column(Text, unique=True)
    size: Mapped[int] = mapped_column(BigInteger)
    mtime_ns: Mapped[int] = mapped_column(BigInteger)
    content_hash: Mapped[str | None] = mapped_column(String(64), index=True)
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), index=True)
    error: Mapped[str | None] = mapped_column(Text)
    indexed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
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

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    label: Mapped[str] = mapped_column(Text, index=True)
    source: Mapped[str] = mapped_column(String(16))  # zero-shot, few-shot (classifier.py) or MANUAL
    label_set: Mapped[str] = mapped_column(String(256))  # label set or classifier name; "" if manual
    score: Mapped[float] = mapped_column(Float)  # probability; 1.0 for manual tags
    removed: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


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
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


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


@contextmanager
def _exclusive(lock_path: Path):
    """A blocking, process-wide exclusive lock on a file (no-op where flock is missing)."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    with open(lock_path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _on_connect(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    # WAL lets searches read a consistent snapshot while an index run writes.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=10000")
    # Up to 64 MB of page cache (the default is 2 MB): writing a million tags, or looking up
    # a large library's rows, stays in memory instead of re-reading B-tree pages.
    cur.execute("PRAGMA cache_size=-65536")
    cur.close()


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
        # '0' is the character right after '/', so this is "starts with prefix".
        clauses += [ImageRow.path == r, (ImageRow.path >= prefix) & (ImageRow.path < prefix[:-1] + "0")]
    return or_(*clauses) if clauses else None


class Store:
    """The library's SQLite database."""

    def __init__(self, db_path: Path):
        self.path = Path(db_path)
        self.engine = create_engine(f"sqlite:///{self.path}")
        event.listen(self.engine, "connect", _on_connect)
        self._migrate()
        self._vector_file: VectorFile | None = None

    def close(self) -> None:
        self.engine.dispose()

    # -- schema -----------------------------------------------------------------------

    def _migrate(self) -> None:
        from alembic.config import Config
        from alembic.runtime.migration import MigrationContext
        from alembic.script import ScriptDirectory

        from .resources import migrations_dir

        cfg = Config()
        cfg.set_main_option("script_location", str(migrations_dir()))
        script = ScriptDirectory.from_config(cfg)
        head = script.get_current_head()
        try:
            with self.engine.connect() as conn:
                if MigrationContext.configure(conn).get_current_revision() == head:
                    return  # the usual case: no lock needed
            # Two processes opening a new library at once must not both create the schema.
            with _exclusive(self.path.with_name(self.path.name + ".migrate.lock")):
                self._upgrade(cfg, script, head)
        except LibraryError:
            raise
        except Exception as exc:  # sqlite3.DatabaseError and friends: not a usable database
            raise LibraryError(f"cannot open the database {self.path}: {exc}",
                               hint="is this a clipsearch library folder?") from exc

    def _upgrade(self, cfg, script, head: str) -> None:
        from alembic import command
        from alembic.runtime.migration import MigrationContext

        with self.engine.begin() as conn:
            current = MigrationContext.configure(conn).get_current_revision()
            if current == head:
                return  # another process got here first
            known = {rev.revision for rev in script.walk_revisions()}
            if current is not None and current not in known:
                raise SchemaTooNewError(
                    f"the library at {self.path.parent} was written by a newer clipsearch (schema {current})",
                    hint="upgrade clipsearch: pip install -U clipsearch")
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

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
            for item, vector_row in zip(indexed, rows):
                row = self._upsert(s, item.path, item.size, item.mtime_ns)
                if row.id is not None:  # new content: tags made from the old vector no longer hold
                    s.execute(delete(TagRow).where(TagRow.image_id == row.id, TagRow.source != MANUAL))
                row.content_hash, row.width, row.height = item.content_hash, item.width, item.height
                row.taken_ns, row.row = item.taken_ns, int(vector_row)
                row.status, row.error = STATUS_INDEXED, None
                s.flush()
                ids.append(row.id)
            for item in failed:
                row = self._upsert(s, item.path, item.size, item.mtime_ns)
                row.status, row.error, row.width, row.height, row.content_hash, row.row = (
                    STATUS_ERROR, item.reason, None, None, None, None)
            if indexed or removed or failed or moved:
                current = s.get(MetaRow, "vectors_version")
                version = int(current.value) + 1 if current else 1
                s.merge(MetaRow(key="vectors_version", value=str(version)))
        return np.asarray(ids, np.int64), rows

    @staticmethod
    def _upsert(s: Session, path: str, size: int, mtime_ns: int) -> ImageRow:
        row = s.scalar(select(ImageRow).where(ImageRow.path == path))
        if row is None:
            row = ImageRow(path=path)
            s.add(row)
        row.size, row.mtime_ns, row.indexed_at = size, mtime_ns, _now()
        return row

    def find_by_hash(self, content_hash: str) -> tuple[int, str] | None:
        """An indexed file with exactly this content, as ``(id, path)``."""
        with Session(self.engine) as s:
            row = s.execute(select(ImageRow.id, ImageRow.path).where(
                ImageRow.content_hash == content_hash, ImageRow.status == STATUS_INDEXED).limit(1)).first()
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
            # LIKE is case-insensitive for ASCII in SQLite; extensions are checked to be plain.
            stmt = stmt.where(or_(*[ImageRow.path.like(f"%.{e}") for e in extensions]))
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
            self._vector_file = VectorFile(self.path.parent, generation, identity.dim)
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
        # One transaction, so the version matches the rows read; plain rows through Core, as
        # a cold query reads every image's row before it can search.
        with self.engine.begin() as conn:
            version = int(conn.scalar(select(MetaRow.value).where(MetaRow.key == "vectors_version")) or 0)
            flat = np.fromiter(itertools.chain.from_iterable(conn.execute(stmt)), np.int64).reshape(-1, 2)
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
            except OperationalError:  # a read-only library can still search
                pass
        return {k: np.frombuffer(v, np.float32).copy() for k, v, _ in found}

    def _cache(self, row, key: str, model: str, vectors: dict[str, np.ndarray], keep: int) -> None:
        now = time.time_ns()
        with Session(self.engine) as s, s.begin():
            for k, vec in vectors.items():
                s.merge(row(model=model, **{key: k}, vector=np.asarray(vec, np.float32).tobytes(), used_at=now))
            s.flush()
            cutoff = s.scalar(select(row.used_at).order_by(row.used_at.desc()).offset(keep).limit(1))
            if cutoff is not None:
                s.execute(delete(row).where(row.used_at <= cutoff))

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
            # Plain tuples through the driver: a million tags is a million rows, and the ORM's
            # per-row conversions would cost more than scoring them.
            stamp = now.replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")
            sql = ("INSERT INTO tags (image_id, label, source, label_set, score, removed, created_at) "
                   "VALUES (?, ?, ?, ?, ?, 0, ?)")
            for ids, labels, scores in batches:
                if len(ids):
                    conn.exec_driver_sql(sql, [(i, label, source, label_set, score, stamp) for i, label, score
                                               in zip(np.asarray(ids).tolist(), labels, np.asarray(scores).tolist())])
                    written += len(ids)
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
