"""Albums: saved searches whose members follow the library (smart albums).

An album keeps a search by name: the query vector its terms made when it was saved, with
its filters, ``min_score``, limit and order. Its members are not a stored list: they are
that search's answer whenever they are asked for, so an album follows the library as
images are added, changed, moved or deleted. Answering needs no model and embeds nothing
again: a library keeps one model for life, so the saved vector keeps its meaning, and
the terms (a query image may since have been deleted) are kept only to show what the
album is.

What a user decides about an image overrides the search, however the library changes:
a *pinned* image is a member even where the search would not find it (scored against the
album's vector like the rest), a *removed* one never is again. Both are rows of
``album_members``, deleted with the album or the image.
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import AlbumError, AlbumNotFoundError, ArgumentError
from .query import Filter, Query, Term, check_sort, sort_hits
from .results import Album, AlbumExport, AlbumMember, FileError, ImageTag, XmpReport

if TYPE_CHECKING:
    from .library import Library

DEFAULT_LIMIT = 100  # members an album's search gives at most, besides pinned images
MAX_NAME = 200  # the column's width (migration 0008)
XMP_SOURCE = "album"  # what an album's keyword is, among an image's tags
_SEE_ALBUMS = "list the albums to see their names"


@dataclass(frozen=True)
class SavedSearch:
    """What an album searches for, as saved: its terms as written (for showing; the vector
    stands for them), its filters, cutoff, limit and order, and the query's own library
    images, left out unless the search kept them."""

    terms: tuple[tuple[str, str, float], ...]  # (kind, value as written, weight)
    limit: int = DEFAULT_LIMIT
    min_score: float | None = None
    folders: tuple[str, ...] = ()
    extensions: tuple[str, ...] = ()
    after: str | None = None  # ISO 8601
    before: str | None = None
    tags: tuple[str, ...] = ()
    no_tags: tuple[str, ...] = ()
    sort: str = "score"
    leave_out: tuple[int, ...] = ()

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> "SavedSearch":
        raw = json.loads(text)
        return cls(**{k: tuple(tuple(t) for t in v) if k == "terms" else (tuple(v) if isinstance(v, list) else v)
                      for k, v in raw.items()})

    def filters(self) -> dict:
        """The keyword arguments of :meth:`Library.search` this search stands for."""
        return dict(min_score=self.min_score, folders=self.folders, extensions=self.extensions,
                    after=_moment(self.after), before=_moment(self.before), tags=self.tags, no_tags=self.no_tags,
                    sort=self.sort)

    def described(self) -> str:
        """The search as ``clipsearch search``'s arguments would write it."""
        words: list[str] = []
        for n, (kind, value, weight) in enumerate(self.terms):
            term = value if abs(weight) == 1 else f"{abs(weight):g}:{value}"
            if n == 0 and kind == "text" and weight == 1:
                words.append(shlex.quote(value))
            else:
                words += ["--and" if weight > 0 else "--not", shlex.quote(term)]
        options = [("--in", f) for f in self.folders] + [("--ext", e) for e in self.extensions]
        options += [("--after", self.after), ("--before", self.before), ("--min-score", self.min_score)]
        options += [("--tag", t) for t in self.tags] + [("--no-tag", t) for t in self.no_tags]
        options += [("--sort", None if self.sort == "score" else self.sort), ("-n", self.limit)]
        words += [f"{flag} {shlex.quote(str(value))}" for flag, value in options if value is not None]
        return " ".join(words)


def _moment(iso: str | None) -> datetime | None:
    return None if iso is None else datetime.fromisoformat(iso)


def _written(term: Term) -> tuple[str, str, float]:
    value = {"id": f"id:{term.value}", "data": "(an uploaded image)", "vector": "(a vector)"}.get(term.kind, term.value)
    return term.kind, str(value), term.weight


def _check_name(name: str) -> str:
    name = name.strip()
    if not name:
        raise ArgumentError("an album needs a name")
    if len(name) > MAX_NAME or any(not c.isprintable() or c in "/\\" for c in name):
        # No slashes: a name is a part of the web API's paths (/api/albums/NAME/members).
        raise ArgumentError(f"an album's name is at most {MAX_NAME} printable characters, without / or \\, "
                            f"not {name[:60]!r}")
    return name


class Albums:
    """The albums of one library: made, read and changed through :attr:`Library.albums`."""

    def __init__(self, library: "Library"):
        self._lib = library
        self._store = library.store

    def create(self, name: str, query: Query, *, limit: int = DEFAULT_LIMIT, min_score: float | None = None,
               folders: Iterable[str | os.PathLike] = (), extensions: Iterable[str] = (),
               after: datetime | None = None, before: datetime | None = None, tags: Iterable[str] = (),
               no_tags: Iterable[str] = (), sort: str = "score", include_query_images: bool = False,
               replace: bool = False) -> Album:
        """Save ``query`` with :meth:`Library.search`'s filters as the album ``name``: up to
        ``limit`` members (pinned images besides). An existing album of that name is kept
        unless ``replace``, which keeps its pins and removals."""
        name = _check_name(name)
        if limit < 1:
            raise ArgumentError(f"an album's limit must be at least 1, not {limit}")
        check_sort(sort)
        checked = Filter.build(folders, extensions, after, before, tags, no_tags) or Filter()
        vector, query_ids = self._lib.query_vector(query)
        search = SavedSearch(
            tuple(_written(t) for t in query.terms), limit, min_score, checked.folders, checked.extensions,
            after.isoformat() if after else None, before.isoformat() if before else None, checked.tags,
            checked.no_tags, sort, () if include_query_images else tuple(sorted(query_ids)))
        if not self._store.save_album(name, search.to_json(), vector, str(self._lib.model), replace):
            raise AlbumError(f"there is an album called {name!r} already",
                             hint="give another name, or [[replace]] to save this search over it")
        return self.get(name)

    def get(self, name: str) -> Album:
        """An album, its members worked out now: the search's hits less removed images,
        and pinned images wherever the search put them or not."""
        row, decided = self._row(name)
        search = SavedSearch.from_json(row.search)
        vector = np.frombuffer(row.vector, np.float32)
        removed = sorted(i for i, pinned in decided.items() if not pinned)
        pinned = sorted(i for i, p in decided.items() if p)
        hits = self._lib.search(query=Query((Term("vector", tuple(map(float, vector))),)), k=search.limit,
                                leave_out=(*search.leave_out, *removed), **search.filters())
        found = {h.id for h in hits}
        extra = self._lib.scored([i for i in pinned if i not in found], vector)
        members = [AlbumMember(**h.to_dict(), pinned=h.id in decided) for h in sort_hits(hits + extra, search.sort)]
        return Album(row.name, search.described(), members, pinned, removed, row.created_at.isoformat())

    def _row(self, name: str):
        found = self._store.album(name)
        if found is None:
            raise AlbumNotFoundError(f"no album is called {name!r}", hint=_SEE_ALBUMS)
        row, decided = found
        if row.model != str(self._lib.model):
            raise AlbumError(f"the album {name!r} was saved under the model {row.model}, not this library's",
                             hint="save its search again")
        return row, decided

    def all(self) -> list[Album]:
        """Every album, by name, with its members."""
        return [self.get(name) for name in self._store.album_names()]

    def delete(self, name: str) -> None:
        if not self._store.delete_album(name):
            raise AlbumNotFoundError(f"no album is called {name!r}", hint=_SEE_ALBUMS)

    def pin(self, name: str, images: Iterable[str | os.PathLike | int]) -> Album:
        """Keep these indexed images in the album whatever its search says."""
        return self._decide(name, images, True)

    def remove(self, name: str, images: Iterable[str | os.PathLike | int]) -> Album:
        """Take these images out of the album for good: its search never adds them again."""
        return self._decide(name, images, False)

    def reset(self, name: str, images: Iterable[str | os.PathLike | int]) -> Album:
        """Undo pins and removals of these images: the search decides again."""
        return self._decide(name, images, None)

    def _decide(self, name: str, images: Iterable[str | os.PathLike | int], pinned: bool | None) -> Album:
        row, _ = self._row(name)
        ids = [self._lib.indexed_id(i) for i in images]
        if not ids:
            raise ArgumentError("name at least one image: a path or id:N")
        self._store.decide_members(row.id, ids, pinned)
        return self.get(name)

    def export(self, name: str, folder: str | os.PathLike) -> AlbumExport:
        """A folder of symbolic links to the album's members, made or brought up to date:
        links to images no longer members are taken away, anything else in it is left."""
        album = self.get(name)
        target = Path(folder).expanduser().absolute()
        if target.exists() and not target.is_dir():
            raise ArgumentError(f"{target} is a file, not a folder", hint="name a folder to export the album into")
        target.mkdir(parents=True, exist_ok=True)
        report = AlbumExport(str(target))
        wanted = {m.path for m in album.members}
        ours = self._links(target)
        for link, points_to in ours.items():
            if points_to not in wanted:
                link.unlink()
                report.unlinked += 1
        present = {points_to for link, points_to in ours.items() if points_to in wanted}
        for member in album.members:
            if member.path in present:
                report.kept += 1
                continue
            link = target / Path(member.path).name
            if link.exists() or link.is_symlink():  # another member's name, or a file of the user's
                link = target / f"{member.id}-{Path(member.path).name}"
            try:
                link.symlink_to(member.path)
            except OSError as exc:
                report.errors.append(FileError(member.path, f"not linked: {exc}"))
                continue
            report.linked += 1
        return report

    def _links(self, folder: Path) -> dict[Path, str]:
        """The symbolic links in ``folder`` that point at images of this library: those an
        export made (a link made by hand to a library image counts too: it is replaceable)."""
        links = {p: os.readlink(p) for p in folder.iterdir() if p.is_symlink()}
        return {p: t for p, t in links.items() if self._lib.image_id(t) is not None}

    def write_xmp(self, name: str, style: str = "default", dry_run: bool = False) -> XmpReport:
        """Add the album's name as a keyword to each member's XMP sidecar (``xmp.py``)."""
        from . import xmp

        album = self.get(name)
        return xmp.write_keywords((ImageTag(m.id, m.path, album.name, m.score, XMP_SOURCE, album.name,
                                            album.created_at) for m in album.members), style, dry_run)
