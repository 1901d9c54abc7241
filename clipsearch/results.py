"""Typed results returned by :class:`clipsearch.Library`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

# How far a long run got, told as (stage, done, total): tagging, classifying, duplicates.
Progress = Callable[[str, int, int], None]


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
class AlbumMember(SearchHit):
    """An image of an album: found by its search, or ``pinned`` there by a user (scored
    against the album's query all the same)."""

    pinned: bool = False


@dataclass(frozen=True)
class Album(_Record):
    """A saved search and its members as the library stands now (``albums.py``)."""

    name: str
    query: str  # the search, as clipsearch search's arguments
    members: list[AlbumMember]
    pinned: list[int]  # ids of images kept in by hand
    removed: list[int]  # ids of images taken out for good
    created_at: str


@dataclass
class AlbumExport(_Record):
    """What exporting an album to a folder of links did."""

    folder: str
    linked: int = 0  # links made
    kept: int = 0  # links there already
    unlinked: int = 0  # links to images no longer members, taken away
    errors: list[FileError] = field(default_factory=list)


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
    precision: str | None = None  # how this run computed images; None if it encoded none

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
    precision: str | None  # how its vectors were made: fp32, fp16, bf16 or int8 (a list if mixed)
    database: str  # the metadata's database: a URL (never with a password), sqlite:///... by default
    database_bytes: int
    index_bytes: int
    vector_file_bytes: int = 0
    signature_bytes: int = 0  # duplicates' pixel signatures, about 6 kB an image (kept by index)
    index_type: str | None = None  # a FAISS factory string: Flat, HNSW32, OPQ..,IVF..,PQ..
    index_reason: str | None = None
    index_search_param: str | None = None  # efSearch=N or nprobe=N, tuned for the recall target
    index_recall_at_10: float | None = None  # measured against exact search when it was built
    dead_vectors: int = 0  # of deleted or changed images, until compacted
    index_on_disk: bool = False  # IVF lists memory-mapped from the library folder (optimize --on-disk)
    roots: list[str] = field(default_factory=list)  # the folders and files given to index


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
    index_bytes: int  # the index file, and its lists file when they are on disk
    seconds: float
    on_disk: bool = False  # the lists are memory-mapped from the library folder


@dataclass(frozen=True)
class MetadataMove(_Record):
    """What ``move_metadata`` did."""

    source: str  # "sqlite" (the folder's own file) or a URL without its password
    target: str
    rows: dict[str, int]  # copied, per table (empty when finishing a move that had copied them)
    left_behind: str  # what stays where the metadata was, for the user to keep or delete
    seconds: float


@dataclass(frozen=True)
class Prediction(_Record):
    """One label for one image."""

    label: str
    probability: float  # softmax over the whole label set, with the model's logit scale
    cosine: float  # the image's cosine similarity to the label (to the probe's weights, few-shot)


@dataclass(frozen=True)
class Classification(_Record):
    """The best labels for one image, most probable first."""

    path: str
    id: int | None  # the library's image, when it is one (its stored vector was used)
    labels: list[Prediction]
    error: str | None = None  # why the file could not be classified


@dataclass(frozen=True)
class TagCount(_Record):
    """A label and how many images carry it."""

    label: str
    images: int
    sources: list[str]  # zero-shot, few-shot, manual


@dataclass(frozen=True)
class ImageTag(_Record):
    """One tag on one image, as exported."""

    id: int
    path: str
    label: str
    score: float
    source: str
    label_set: str
    created_at: str


@dataclass
class TagReport(_Record):
    """What one ``tag`` run did (or would do, with ``dry_run``)."""

    label_set: str
    source: str  # zero-shot or few-shot
    images: int = 0  # images looked at
    tagged: int = 0  # images given at least one tag
    tags: int = 0  # tags written, implied parents included
    counts: dict[str, int] = field(default_factory=dict)  # label -> images
    dry_run: bool = False
    seconds: float = 0.0


@dataclass(frozen=True)
class ClassifierReport(_Record):
    """A trained few-shot classifier and how well it does on its own examples."""

    name: str
    labels: list[str]
    examples: int
    shots: dict[str, int]  # label -> examples
    folds: int
    cv_accuracy: float  # cross-validated, with the regularisation chosen on the same folds
    zero_shot_accuracy: float  # the text-only classifier, on the same examples
    regularisation: float | None  # pull toward the zero-shot weights; None: the zero-shot head won
    seconds: float = 0.0


@dataclass
class XmpReport(_Record):
    """What writing XMP sidecars did (or would do, with ``dry_run``)."""

    created: int = 0  # new sidecars
    updated: int = 0  # existing sidecars given keywords they lacked
    unchanged: int = 0  # sidecars that had every keyword already
    keywords: int = 0  # keywords added in all
    errors: list[FileError] = field(default_factory=list)  # sidecars left alone, and why
    dry_run: bool = False


@dataclass(frozen=True)
class ImageInfo(_Record):
    """One indexed image: its facts and its tags."""

    id: int
    path: str
    width: int | None
    height: int | None
    taken_at: str | None
    size: int  # bytes
    content_hash: str | None
    tags: list[dict]  # label, score, source, label_set


@dataclass(frozen=True)
class ClassScore(_Record):
    """How one label fared in an evaluation."""

    label: str
    precision: float | None  # of the images predicted as this label, the share that are; None if none were
    recall: float  # of the images that are this label, the share predicted as it
    support: int  # images of this label


@dataclass(frozen=True)
class Confusion(_Record):
    """Images of one label taken for another."""

    true: str
    predicted: str
    count: int


@dataclass(frozen=True)
class Miss(_Record):
    """A misclassified image and what it was taken for."""

    path: str
    true: str
    predicted: str
    probability: float  # the classifier's probability for its (wrong) answer


@dataclass(frozen=True)
class TemplateScore(_Record):
    """Zero-shot accuracy with one prompt template, or with the ensemble of them."""

    template: str  # the template, or "ensemble of N"
    top1: float
    top5: float


@dataclass(frozen=True)
class ShotScore(_Record):
    """A K-shot probe against zero-shot on the same held-out images, averaged over draws."""

    shots: int  # training images per label
    draws: int
    zero_shot: float
    few_shot: float
    tested: int  # held-out images per draw


@dataclass
class Evaluation(_Record):
    """How a classifier does on a folder of labelled images (``clipsearch eval``)."""

    classifier: str  # the label set or trained classifier
    source: str  # zero-shot or few-shot
    labels: list[str]
    images: int
    top1: float
    top5: float
    classes: list[ClassScore]
    confusion: list[list[int]]  # counts, [true label][predicted label], in ``labels`` order
    most_confused: list[Confusion]
    misses: list[Miss]
    templates: list[TemplateScore] = field(default_factory=list)
    few_shot: list[ShotScore] = field(default_factory=list)
    shots_to_beat_zero_shot: int | None = None  # the fewest shots whose probe beat zero-shot
    unreadable: list[FileError] = field(default_factory=list)


@dataclass(frozen=True)
class SimilarityMatrix(_Record):
    """Cosine similarity of images to labels' text embeddings (``clipsearch matrix``)."""

    paths: list[str]
    labels: list[str]
    cosine: list[list[float]]  # [image][label]
    unreadable: list[FileError] = field(default_factory=list)
