"""Composed queries: text and image terms, positive and negative, with weights.

A term is written ``[W:]VALUE``. ``VALUE`` is an image when it names an existing file,
an indexed image when it is ``id:N``, and text otherwise; ``W`` is an optional numeric
weight (default 1). The query vector is the weighted sum of the unit term vectors,
negative terms subtracted, re-normalised to unit length:

    q = normalise( sum_i  w_i * v_i  -  sum_j  w_j * v_j )

so ``"a beach" --not "2:people"`` looks for beaches and pushes people away twice as hard.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from .defaults import SORT_ORDERS
from .errors import ArgumentError, PathNotFoundError, QueryError

if TYPE_CHECKING:
    import numpy as np

_WEIGHT = re.compile(r"^(\d+(?:\.\d*)?|\.\d+):(.*)$", re.DOTALL)
_IMAGE_ID = re.compile(r"^id:(\d+)$")
MAX_IMAGE_ID = 2**63 - 1  # image ids are 64-bit row ids (SQLite's rowid, PostgreSQL's bigint)


@dataclass(frozen=True)
class Term:
    """One part of a query: ``kind`` is ``text``, ``image`` (a file), ``id`` (an indexed
    image), ``data`` (an image's bytes, uploaded) or ``vector`` (an embedding, as numbers)."""

    kind: str
    value: str | int | bytes | tuple
    weight: float = 1.0

    @classmethod
    def parse(cls, raw: str, *, sign: float = 1.0, files: bool = True) -> "Term":
        """A term as a user writes it. With ``files`` False the file system is never
        consulted, so no term is an image file: what a web request sends must not reveal,
        by how it ranks, whether a path exists on the server."""
        text = raw.strip()
        weight = 1.0
        m = _WEIGHT.match(text)
        if m and not (files and Path(text).exists()):  # a file may be called "2:beach.jpg"
            weight, text = float(m.group(1)), m.group(2).strip()
        if not text:
            raise QueryError(f"empty query term {raw!r}")
        if weight <= 0:
            raise QueryError(f"the weight in {raw!r} must be positive",
                             hint="use [[exclude]] to subtract a term" if sign > 0 else
                             "the weight of a term in [[exclude]] says how hard it pushes away, e.g. 2:people")
        if (image_id := _image_id(text)) is not None:
            return cls("id", image_id, sign * weight)
        if files and os.path.isfile(os.path.expanduser(text)):
            return cls("image", _absolute(text), sign * weight)
        return cls("text", text, sign * weight)

    @classmethod
    def image(cls, ref: str | os.PathLike, weight: float = 1.0) -> "Term":
        """An image, never text: ``id:N`` for an indexed one, else a file's path."""
        text = os.fspath(ref)
        if (image_id := _image_id(text.strip())) is not None:
            return cls("id", image_id, weight)
        return cls("image", _absolute(text), weight)


def _image_id(text: str) -> int | None:
    """N of ``id:N``, else None. No image has an id past 64 bits, and the database cannot
    even be asked about one."""
    if not (m := _IMAGE_ID.match(text)):
        return None
    image_id = int(m.group(1))
    if image_id > MAX_IMAGE_ID:
        raise PathNotFoundError(f"no indexed image has id {image_id}")
    return image_id


def _absolute(path: str) -> str:
    """``path`` absolute and normalised (``a/../b`` is ``b``), as the scanner stores paths, so
    that a query file is recognised as the library's own image however it was written."""
    return os.path.abspath(os.path.expanduser(path))


@dataclass(frozen=True)
class Query:
    """Terms to combine into one query vector; see the module docstring."""

    terms: tuple[Term, ...] = field(default_factory=tuple)

    @classmethod
    def build(cls, text: str | None = None, image: str | os.PathLike | bytes | None = None,
              also: tuple[str, ...] | list[str] = (), exclude: tuple[str, ...] | list[str] = ()) -> "Query":
        """The CLI's shape: a main text, an optional main image, ``--and`` and ``--not`` terms."""
        terms: list[Term] = []
        if text is not None:
            if not text.strip():
                raise QueryError("the query text is empty")
            terms.append(Term("text", text.strip()))  # the main text is always words
        if isinstance(image, bytes):
            terms.append(Term("data", image))
        elif image is not None:
            terms.append(Term.image(image))
        terms += [Term.parse(t) for t in also]
        terms += [Term.parse(t, sign=-1.0) for t in exclude]
        if not any(t.weight > 0 for t in terms):
            raise QueryError("give at least one positive term: a text, an image or [[also]]")
        return cls(tuple(terms))


@dataclass(frozen=True)
class Filter:
    """Which images a search may return: those under ``folders``, with one of
    ``extensions``, taken in ``[after_ns, before_ns)`` (EXIF time taken, else modification
    time), carrying every one of ``tags`` and none of ``no_tags``."""

    folders: tuple[str, ...] = ()
    extensions: tuple[str, ...] = ()
    after_ns: int | None = None
    before_ns: int | None = None
    tags: tuple[str, ...] = ()
    no_tags: tuple[str, ...] = ()

    @classmethod
    def build(cls, folders: Iterable[str | os.PathLike] = (), extensions: Iterable[str] = (),
              after: datetime | None = None, before: datetime | None = None, tags: Iterable[str] = (),
              no_tags: Iterable[str] = ()) -> "Filter | None":
        """The filter from :meth:`Library.search`'s arguments, checked; None when it lets
        every image through."""
        extensions = tuple(e.lower().lstrip(".") for e in extensions)
        bad = [e for e in extensions if not e.isalnum()]
        if bad:
            raise ArgumentError(f"not a file extension: {bad[0]!r}", hint="for example [[extensions=jpg]]")
        found = cls(tuple(absolute_folders(folders)), extensions, _epoch_ns(after), _epoch_ns(before),
                    tuple(t.strip() for t in tags), tuple(t.strip() for t in no_tags))
        return None if found == cls() else found

    def ids(self, store) -> np.ndarray:
        """The ids of the ``store``'s images that pass."""
        return store.ids_matching(list(self.folders), list(self.extensions), self.after_ns, self.before_ns,
                                  list(self.tags), list(self.no_tags))


def check_sort(sort: str) -> None:
    """An :class:`ArgumentError` unless ``sort`` is one of :data:`~clipsearch.defaults.SORT_ORDERS`."""
    if sort not in SORT_ORDERS:
        raise ArgumentError(f"unknown sort order {sort!r}", hint=f"choose one of: {', '.join(SORT_ORDERS)}")


def sort_hits(hits: list, sort: str) -> list:
    """Search hits in a search's order: ``score`` (best first, as found), ``date`` (newest
    first; no date last) or ``path``."""
    if sort == "date":
        return sorted(hits, key=lambda h: h.taken_at or "", reverse=True)
    if sort == "path":
        return sorted(hits, key=lambda h: h.path)
    return sorted(hits, key=lambda h: (-h.score, h.id))


def absolute_folders(folders: Iterable[str | os.PathLike]) -> list[str]:
    return [os.path.abspath(os.path.expanduser(os.fspath(f))) for f in folders]


def _epoch_ns(when: datetime | None) -> int | None:
    """Nanoseconds since the epoch; a naive datetime is read as UTC, as EXIF times are.
    Times past what 64 bits of nanoseconds hold (1677 to 2262) are clamped to that range:
    every stored time lies inside it, so the clamped bound selects the same images."""
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return min(max(int(when.timestamp() * 1e9), -2**63), 2**63 - 1)
