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
from dataclasses import dataclass, field
from pathlib import Path

from .errors import PathNotFoundError, QueryError

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
