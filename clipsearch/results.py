"""Typed results returned by :class:`clipsearch.Library`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


class _Record:
    def to_dict(self) -> dict:
        return asdict(self)  # type: ignore[call-overload]


@dataclass(frozen=True)
class SearchHit(_Record):
    """One image found by a search; ``score`` is the cosine similarity to the query."""

    id: int
    path: str
    score: float
    width: int | None = None
    height: int | None = None
    taken_at: str | None = None  # ISO 8601: EXIF DateTimeOriginal, else the file's mtime


@dataclass(frozen=True)
class DuplicateGroup(_Record):
    """Images that look the same: ``score`` is the closest pair's cosine similarity, and each
    image's own ``score`` its similarity to its closest twin in the group."""

    score: float
    images: list[SearchHit]


@dataclass(frozen=True)
class FileError(_Record):
    """A file that could not be indexed, and why."""

    path: str
    reason: str


@dataclass
class IndexReport(_Record):
    """What one ``index`` run did."""

    added: int = 0
    updated: int = 0
    moved: int = 0
    unchanged: int = 0
    removed: int = 0
    errors: list[FileError] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def encoded(self) -> int:
        return self.added + self.updated

    def to_dict(self) -> dict:
        d = asdict(self)
        d["error_count"] = len(self.errors)
        return d


@dataclass(frozen=True)
class ModelIdentity(_Record):
    """The model a library was built with; vectors from another model are not comparable."""

    name: str
    pretrained: str | None
    dim: int


@dataclass(frozen=True)
class LibraryInfo(_Record):
    """A summary of a library, as shown by ``clipsearch info``."""

    library: str
    images: int
    vectors: int
    errors: int
    model: str | None
    pretrained: str | None
    dim: int | None
    database_bytes: int
    index_bytes: int
    vector_file_bytes: int = 0
    index_type: str | None = None  # a FAISS factory string: Flat, HNSW32, OPQ..,IVF..,PQ..
    index_reason: str | None = None
    index_search_param: str | None = None  # efSearch=N or nprobe=N, tuned for the recall target
    index_recall_at_10: float | None = None  # measured against exact search when it was built
    dead_vectors: int = 0  # of deleted or changed images, until compacted


@dataclass(frozen=True)
class OptimizeReport(_Record):
    """What ``optimize`` built."""

    index_type: str
    reason: str
    vectors: int
    dropped: int  # dead vectors compacted away
    recall_at_10: float | None
    search_param: str
    memory_budget: int
    target_recall: float
    index_bytes: int
    seconds: float
