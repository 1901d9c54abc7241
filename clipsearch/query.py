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

from .errors import QueryError

_WEIGHT = re.compile(r"^(\d+(?:\.\d*)?|\.\d+):(.*)$", re.DOTALL)
_IMAGE_ID = re.compile(r"^id:(\d+)$")


@dataclass(frozen=True)
class Term:
    """One part of a query: ``kind`` is ``text``, ``image`` (a file), ``id`` (an indexed
    image), ``data`` (an image's bytes, uploaded) or ``vector`` (an embedding, as numbers)."""

    kind: str
    value: str | int | bytes | tuple
    weight: float = 1.0

    @classmethod
    def parse(cls, raw: str, *, sign: float = 1.0) -> "Term":
        text = raw.strip()
        weight = 1.0
        m = _WEIGHT.match(text)
        if m and not Path(text).exists():
            weight, text = float(m.group(1)), m.group(2).strip()
        if not text:
            raise QueryError(f"empty query term {raw!r}")
        if weight <= 0:
            raise QueryError(f"the weight of {raw!r} must be positive; use --not to subtract")
        if m_id := _IMAGE_ID.match(text):
            return cls("id", int(m_id.group(1)), sign * weight)
        if os.path.isfile(os.path.expanduser(text)):
            return cls("image", str(Path(text).expanduser().absolute()), sign * weight)
        return cls("text", text, sign * weight)

    @classmethod
    def image(cls, path: str | os.PathLike, weight: float = 1.0) -> "Term":
        return cls("image", str(Path(path).expanduser().absolute()), weight)


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
            raise QueryError("give at least one positive term: a text, an image or --and")
        return cls(tuple(terms))
