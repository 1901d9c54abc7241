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
    │   ├── PathNotFoundError        no such file, folder or indexed image
    │   ├── NoImagesError            no image files where the user pointed
    │   ├── ArgumentError            a number out of its range, a name not among its choices
    │   ├── ConfigurationError       no search index fits the settings (memory budget, on-disk)
    │   ├── QueryError               a query term cannot be used: empty, cancelled out, not an image
    │   ├── LabelError               a label set, label file or prompt template is unusable
    │   ├── ClassifierError          a few-shot classifier is unknown, or cannot be trained
    │   ├── AlbumError               an album of that name exists already, or was saved under another model
    │   │   └── AlbumNotFoundError   no album has that name
    │   ├── JobNotFoundError         no such background job (jobs.py), or forgotten
    │   └── TooManyJobsError         every background-job slot and queue place is taken
    ├── ImageError                   one file could not be read or decoded (index records it
    │                                and goes on)
    └── ClusterError                 an --engine ray run failed on the cluster
        └── RayUnavailableError      Ray Data is missing, or the cluster is unreachable

Each error carries a one-line message and, where one helps, a ``hint`` that says what
to do next. The library never prints and never exits; the CLI turns these into a
message and exit code 1, the web layer into a 4xx response.

Where a message or hint names an option the caller can change, it writes it as
``[[name]]`` or ``[[name=value]]``, by the keyword a Python caller passes (``top_k``,
``memory_budget``), and each surface words it its own way: ``message`` and ``hint`` as
Python keywords (```top_k=3```), :meth:`ClipSearchError.worded` for the CLI as flags
(``--top-k 3``) and for the web API as its request parameters (```top_k=3```), or as
the server's flag where a request cannot set it (``--model``). A command to run in a shell
(```clipsearch index PATH```) reads the same everywhere.
"""

from __future__ import annotations

import re
from typing import Literal

Surface = Literal["python", "cli", "web"]

# Every option a message or hint may name, by its Python keyword.
OPTIONS = frozenset({
    "k", "extensions", "folders", "also", "exclude", "top_k", "few_shot", "compare_templates", "labels",
    "classifier", "model", "library", "db_url", "device", "precision", "engine", "memory_budget", "on_disk",
    "gpus_per_worker", "ray_address", "replace",
})
# Where an option's CLI flag or web parameter is not its Python keyword with "-" for "_":
# name -> (CLI flag, web parameter).
_SPELLINGS: dict[str, tuple[str, str]] = {
    "k": ("-n", "n"),
    "extensions": ("--ext", "ext"),
    "folders": ("--in", "in"),
    "also": ("--and", "and"),
    "exclude": ("--not", "not"),
}
# Options a web request cannot set: the server's operator sets them with these flags.
_SERVER_ONLY = {"model", "library", "db_url", "device", "precision", "engine", "memory_budget", "on_disk",
                "gpus_per_worker", "ray_address"}
# Where the Python keyword is not the option's name: Library.open's path, RayOptions' fields.
_PYTHON = {"library": "path", "ray_address": "RayOptions.address", "gpus_per_worker": "RayOptions.gpus_per_worker"}
_OPTION = re.compile(r"\[\[(\w+)(?:=([^\]]*))?\]\]")
_PYTHON_WORDING = re.compile(r"`([\w.]+)(?:=([^`]*))?`")


def _spelt(name: str, value: str | None, surface: Surface) -> str:
    flag, parameter = _SPELLINGS.get(name, ("--" + name.replace("_", "-"), name))
    if surface == "cli" or (surface == "web" and name in _SERVER_ONLY):
        return flag if value is None else f"{flag} {value}"
    word = _PYTHON.get(name, name) if surface == "python" else parameter
    return f"`{word}`" if value is None else f"`{word}={value}`"


def marked(text: str | None) -> str | None:
    """Python wording back to marks, for an error that reached us as text (from a Ray
    worker, say): ```top_k=3``` -> ``[[top_k=3]]``."""
    names = {_PYTHON.get(n, n): n for n in OPTIONS}

    def mark(m: re.Match) -> str:
        name = names.get(m[1])
        return m[0] if name is None else f"[[{name}]]" if m[2] is None else f"[[{name}={m[2]}]]"

    return None if text is None else _PYTHON_WORDING.sub(mark, text)


def worded(text: str | None, surface: Surface) -> str | None:
    """``text`` with its ``[[option]]`` marks spelt for ``surface``."""
    return None if text is None else _OPTION.sub(lambda m: _spelt(m[1], m[2], surface), text)


class ClipSearchError(Exception):
    """Base class of every error clipsearch raises on purpose."""

    def __init__(self, message: str, hint: str | None = None):
        self._text = (message, hint)
        self.message = worded(message, "python")
        self.hint = worded(hint, "python")
        super().__init__(self.message)

    def worded(self, surface: Surface) -> tuple[str, str | None]:
        """The message and hint as ``surface`` names options (see the module's docstring)."""
        message, hint = self._text
        return worded(message, surface), worded(hint, surface)

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


class ArgumentError(InputError):
    """An argument is out of its range, or not one of the choices it has."""


class ConfigurationError(InputError):
    """No search index can be built within the library's settings."""


class QueryError(InputError):
    """A query term cannot be used: it is empty, the terms cancel out, or an image term is
    not a readable image."""


class LabelError(InputError):
    """A label set, label file or prompt template cannot be used."""


class ClassifierError(InputError):
    """A few-shot classifier does not exist, does not fit the library, or cannot be trained."""


class AlbumError(InputError):
    """An album cannot be saved or read: one has its name already, or it was saved under
    another model."""


class AlbumNotFoundError(AlbumError):
    """No album has this name."""


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
