"""clipsearch: search a folder of images by meaning, with CLIP.

The public API is :class:`Library`, what its methods take and return, and its
exceptions: every such name is importable from here, and ``__all__`` lists them
(``tests/test_docs.py`` checks that it lists exactly those). Importing this package is
cheap: the errors and result types load at once, everything else (SQLAlchemy, FAISS,
Pillow, torch) on first use of its name.
"""

from .errors import (
    AlbumError, AlbumNotFoundError, ArgumentError, ClassifierError, ClipSearchError, ClusterError, ConfigurationError, ImageError, InputError, JobNotFoundError, LabelError,
    LibraryEmptyError, LibraryError, LibraryLockedError, ModelError, ModelMismatchError, ModelNotFoundError,
    NoImagesError, PathNotFoundError, PrecisionMismatchError, QueryError, RayUnavailableError, SchemaTooNewError,
    TooManyJobsError, WeightsUnavailableError,
)
from .results import (
    Album, AlbumExport, AlbumMember, Classification, ClassifierReport, ClassScore, Confusion, DuplicateGroup, Evaluation, FileError, ImageInfo,
    ImageTag, IndexReport, LibraryInfo, MetadataMove, Miss, ModelIdentity, OptimizeReport, Prediction, SearchHit,
    ShotScore, SimilarityMatrix, TagCount, TagReport, TemplateScore, XmpReport,
)

__version__ = "0.1.0"

# Loaded on first use: name -> the module that defines it.
_LAZY = {
    "Library": "library", "default_library_dir": "defaults",
    "Query": "query", "Term": "query",
    "Albums": "albums",
    "Label": "labels", "LabelSet": "labels",
    "DecodeLimits": "decodepool",
    "RayOptions": "cluster",
    "IndexProgress": "indexer",
    "Head": "classifier",
    "Thumbnail": "thumbnails",
    "Encoder": "encoder", "ModelSpec": "encoder",
    "VectorIndex": "index",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'clipsearch' has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f".{module}", __name__), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    # the facade and what it takes
    "Library", "default_library_dir", "Query", "Term", "Label", "LabelSet", "DecodeLimits", "RayOptions",
    "IndexProgress", "Encoder", "ModelSpec", "Albums",
    # what it returns
    "SearchHit", "DuplicateGroup", "FileError", "IndexReport", "ModelIdentity", "LibraryInfo", "OptimizeReport",
    "MetadataMove", "Prediction", "Classification", "TagCount", "ImageTag", "TagReport", "ClassifierReport",
    "XmpReport", "ImageInfo", "ClassScore", "Confusion", "Miss", "TemplateScore", "ShotScore", "Evaluation",
    "SimilarityMatrix", "Head", "Thumbnail", "VectorIndex", "Album", "AlbumMember", "AlbumExport",
    # what it raises (errors.py draws the tree)
    "ClipSearchError", "LibraryError", "SchemaTooNewError", "LibraryEmptyError", "LibraryLockedError", "ModelError",
    "ModelNotFoundError", "WeightsUnavailableError", "ModelMismatchError", "PrecisionMismatchError", "InputError",
    "PathNotFoundError", "NoImagesError", "ArgumentError", "ConfigurationError", "QueryError", "LabelError", "ClassifierError",
    "AlbumError", "AlbumNotFoundError", "JobNotFoundError",
    "TooManyJobsError", "ImageError", "ClusterError", "RayUnavailableError",
    "__version__",
]
