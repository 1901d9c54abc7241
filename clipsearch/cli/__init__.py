"""The ``clipsearch`` command: parses arguments, calls :class:`Library`, formats the result.

One module per group of commands; ``common.py`` holds what they share. The commands are
registered, in the order ``clipsearch --help`` lists them, when ``app`` is first used;
nothing here imports torch or the library: each command loads what it needs when it
runs. A search that a running service answers (``client.py``) does not even load typer.
"""

from __future__ import annotations

__all__ = ["RESUMABLE", "app", "main"]


def _commands():
    from . import albums, indexing, labelling, searching, serving, upkeep  # noqa: F401 (they register the commands)
    from . import common

    return common


def __getattr__(name: str):
    if name in ("app", "RESUMABLE"):
        return getattr(_commands(), name)
    raise AttributeError(f"module 'clipsearch.cli' has no attribute {name!r}")


def main() -> None:
    import sys

    from .client import answer_from_service

    answer_from_service(sys.argv[1:])  # exits when a running service answered
    _commands().app(prog_name="clipsearch")
