"""clipsearch: search a folder of images by meaning, with CLIP.

The public API is :class:`Library`, its typed results and its exceptions. Importing
this package is cheap: torch and open_clip load only when a model is first needed.
"""

from .errors import (
    ClassifierError, ClipSearchError, ImageError, LabelError, InputError, LibraryEmptyError, LibraryError, LibraryLockedError,
    ModelError, ModelMismatchError, ModelNotFoundError, NoImagesError, PathNotFoundError, PrecisionMismatchError,
    QueryError,
    SchemaTooNewError, WeightsUnavailableError,
)
from .results import FileError, IndexReport, LibraryInfo, ModelIdentity, SearchHit

__version__ = "0.1.0"


def __getattr__(name: str):
    # The facade pulls in SQLAlchemy and FAISS; load it on first use so that
    # `clipsearch --help` and `import clipsearch.errors` stay fast.
    if name in ("Library", "default_library_dir"):
        from . import library

        return getattr(library, name)
    raise AttributeError(f"module 'clipsearch' has no attribute {name!r}")

__all__ = [
    "ClassifierError", "ClipSearchError", "LabelError", "FileError", "ImageError", "IndexReport", "InputError", "Library", "LibraryEmptyError",
    "LibraryError", "LibraryInfo", "LibraryLockedError", "ModelError", "ModelIdentity", "ModelMismatchError",
    "ModelNotFoundError", "NoImagesError", "PathNotFoundError", "PrecisionMismatchError", "QueryError", "SchemaTooNewError", "SearchHit",
    "WeightsUnavailableError", "__version__", "default_library_dir",
]
