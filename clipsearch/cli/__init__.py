"""The ``clipsearch`` command: parses arguments, calls :class:`Library`, formats the result.

One module per group of commands; ``common.py`` holds what they share. Importing this
package registers every command, in the order ``clipsearch --help`` lists them, and
imports neither torch nor the library: each command loads what it needs when it runs.
"""

from . import indexing, searching, upkeep, labelling, serving  # noqa: F401 (they register the commands)
from .common import RESUMABLE, app

__all__ = ["RESUMABLE", "app", "main"]


def main() -> None:
    app(prog_name="clipsearch")
