"""The tables of a library's database, as SQLAlchemy models, and the clauses built on them.

Alembic's migrations (``migrations/``) own the schema; these models describe it for the
ORM and for ``alembic revision --autogenerate``. :class:`~clipsearch.store.Store` imports
this module only when it runs a statement through SQLAlchemy: the statements on a search's
path are plain SQL (``plainsql.py``), and a cold search does not pay to import SQLAlchemy.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import (
    BigInteger, Boolean, DateTime, Float, ForeignKey, Integer, LargeBinary, String, Text, TypeDecorator, delete,
    func, insert, not_, select, text, update,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from .store import HIDDEN, under

# SQLAlchemy's vocabulary, for the store's statements to import from here with the tables.
__all__ = [
    "AlbumMemberRow", "AlbumRow", "Base", "ClassifierRow", "ImageCacheRow", "ImageRow", "MetaRow", "Session",
    "TagRow", "TextCacheRow", "UTCDateTime", "delete", "func", "insert", "not_", "not_hidden",
    "past_explicit_ids", "select", "update", "within",
]


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
    # Compared in byte order (COLLATE "C" on PostgreSQL, migration 0006): see store.under().
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

    @property
    def when_ns(self) -> int:
        """When the photo was taken: EXIF if known, else the file's modification time (the
        rule of store.WHEN_NS, which the SQL of searches and date filters reads)."""
        return self.taken_ns if self.taken_ns is not None else self.mtime_ns


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


def past_explicit_ids(conn, table: str) -> None:
    """Rows inserted with their ids do not move PostgreSQL's sequence: move it past them, for
    rows added without one. (SQLite numbers from the largest id anyway.)"""
    if conn.dialect.name == "postgresql":
        conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), max(id)) FROM {table} "
                          "HAVING max(id) IS NOT NULL"))


def not_hidden():
    """A clause on ``tags`` rows: the user did not take the label off its image by hand
    (store.HIDDEN)."""
    return text(f"NOT {HIDDEN}")


def within(roots: Iterable[Path | str]):
    """A clause for images at or inside any of ``roots`` (:func:`~clipsearch.store.under`);
    None for no roots."""
    found = under(roots, "images.path")
    return None if found is None else text(found[0]).bindparams(**found[1])
