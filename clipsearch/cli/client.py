"""The CLI's side of the query service (``service.py``): a ``search`` handed to a running
``serve`` or ``watch`` of the same library, before typer, SQLAlchemy or FAISS is loaded."""

from __future__ import annotations

import os
import sys

from ..defaults import ENV_DB_URL, library_folder
from ..service import ask

NO_SERVICE = "--no-service"


def answer_from_service(argv: list[str]) -> None:
    """Print what a running service answers for ``argv`` and exit with its code; return
    when there is none (or it may not answer this), for the CLI to run the command."""
    if not argv or argv[0] != "search" or NO_SERVICE in argv or "--help" in argv or os.environ.get(ENV_DB_URL) \
            or any(a == "--db-url" or a.startswith("--db-url=") for a in argv):
        return
    folder = library_folder(_library_option(argv[1:]))
    # The library named explicitly: the service must not read it from its own environment.
    answer = ask(folder, [*argv, "--library", str(folder)], os.getcwd())
    if answer is None or answer[2] == 2:  # none, or a usage error: the CLI words those itself
        return
    stdout, stderr, code = answer
    sys.stdout.write(stdout)
    sys.stdout.flush()
    sys.stderr.write(stderr)
    raise SystemExit(code)


def _library_option(args: list[str]) -> str | None:
    """The value of the last -L/--library in ``args``, as click reads it."""
    found = None
    items = iter(args)
    for arg in items:
        if arg == "--":
            break
        if arg in ("-L", "--library"):
            found = next(items, None)
        elif arg.startswith("--library="):
            found = arg.split("=", 1)[1]
        elif arg.startswith("-L") and not arg.startswith("--"):
            found = arg[2:]
    return found or None
