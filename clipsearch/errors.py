"""Every error clipsearch raises on purpose.

    ClipSearchError                  anything clipsearch reports to the user
    ├── LibraryError                 the library folder or its database
    │   ├── SchemaTooNewError        written by a newer clipsearch
    │   ├── LibraryEmptyError        nothing indexed yet
    │   └── LibraryLockedError       another process is indexing
    ├── ModelError                   choosing or loading a CLIP model
    │   ├── ModelNotFoundError       unknown architecture, tag or checkpoint
    │   ├── WeightsUnavailableError  weights could not be downloaded or read
    │   ├── ModelMismatchError       the library was built with another model
    │   └── PrecisionMismatchError   ... or at another numeric precision
    ├── InputError                   what the user asked for cannot be done
    │   ├── PathNotFoundError
    │   ├── NoImagesError
    │   ├── QueryError               empty text, or a query image that is not an image
    │   ├── LabelError               a label set, label file or prompt template is unusable
    │   ├── ClassifierError          a few-shot classifier is unknown, or cannot be trained
    │   ├── JobNotFoundError         no such background job (jobs.py), or forgotten
    │   └── TooManyJobsError         every background-job slot and queue place is taken
    └── ImageError                   one file could not be decoded (recorded, never fatal)

Each error carries a one-line message and, where one helps, a ``hint`` that says what
to do next. The library never prints and never exits; the CLI turns these into a
message and exit code 1, the web layer into a 4xx response.
"""

from __future__ import annotations


class ClipSearchError(Exception):
    """Base class of every error clipsearch raises on purpose."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\nhint: {self.hint}"


class LibraryError(ClipSearchError):
    """The library folder or its database cannot be used."""


class SchemaTooNewError(LibraryError):
    """The database was written by a newer version of clipsearch."""


class LibraryEmptyError(LibraryError):
    """The library has no model or no images yet."""

    @classmethod
    def at(cls, root, state: str = "is empty") -> "LibraryEmptyError":
        """The error for the library at ``root`` that has nothing to use yet, worded one way
        everywhere: ``state`` is what it lacks ("is empty", "has no model yet"), None for a
        folder that holds no library at all."""
        message = f"no library at {root}" if state is None else f"the library at {root} {state}"
        return cls(message, hint="index some images first: clipsearch index PATH")


class LibraryLockedError(LibraryError):
    """Another process is writing to the library."""


class ModelError(ClipSearchError):
    """A CLIP model could not be chosen or loaded."""


class ModelNotFoundError(ModelError):
    """The model name, pretrained tag or checkpoint does not exist."""


class WeightsUnavailableError(ModelError):
    """The weights could not be downloaded or read."""


class ModelMismatchError(ModelError):
    """The library was built with a different model."""


class PrecisionMismatchError(ModelError):
    """The library's vectors were made at a precision this run would not match."""


class InputError(ClipSearchError):
    """The request cannot be carried out as given."""


class PathNotFoundError(InputError):
    """A path given on the command line does not exist."""


class NoImagesError(InputError):
    """No image files were found where the user pointed."""


class QueryError(InputError):
    """The query is empty or its image cannot be read."""


class LabelError(InputError):
    """A label set, label file or prompt template cannot be used."""


class ClassifierError(InputError):
    """A few-shot classifier does not exist, does not fit the library, or cannot be trained."""


class JobNotFoundError(InputError):
    """No background job has this id, or it finished long enough ago to be forgotten."""


class TooManyJobsError(InputError):
    """The background jobs' slots and queue are full."""


class ImageError(ClipSearchError):
    """One image could not be read or decoded."""


class ClusterError(ClipSearchError):
    """An ``--engine ray`` run failed on the cluster; what it committed is kept."""


class RayUnavailableError(ClusterError):
    """``--engine ray`` cannot run: Ray Data is not installed, or the cluster cannot be reached or lacks GPUs."""
