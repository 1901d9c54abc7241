"""Looking after a library: ``info``, ``optimize``, ``move-db``, ``errors`` and ``models``."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from .common import (
    JsonOpt, LibraryOpt, Stages, command, open_library, show, stderr,
)


@command
def info(library: LibraryOpt = None, json_out: JsonOpt = False) -> None:
    """Show what a library holds: images, vectors, errors, its model and its index.

    Example: `clipsearch info --json`
    """
    with open_library(library, create=False) as lib:
        summary = lib.info()
    data = summary.to_dict()
    show(json_out, data, _record_lines(data))


def _record_lines(data: dict) -> list[str]:
    """A report as ``key value`` lines for people: sizes and times in their units (``--json``
    keeps the raw numbers)."""
    width = max(map(len, data)) + 1
    return [f"{key:{width}} {_readable(key, value)}" for key, value in data.items()]


def _readable(key: str, value) -> str:
    if isinstance(value, list):
        return ", ".join(map(str, value))
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if key.endswith("_bytes") or key == "memory_budget":
        return _size(value)
    if key == "seconds":
        return f"{value:.1f}s"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _size(n: float) -> str:
    """Bytes in binary units, as ``--memory-budget`` reads them (1 GB = 1024 MB)."""
    n /= 1024
    for unit in ("KB", "MB", "GB"):
        if n < 1024:
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


@command
def optimize(
    memory_budget: Annotated[Optional[str], typer.Option(
        "--memory-budget", metavar="SIZE", help="Most memory the index may use, e.g. 2GB or 512MB. Default: the last "
                                "one given, else 2GB.", show_default=False)] = None,
    target_recall: Annotated[Optional[float], typer.Option(
        "--target-recall", min=0.01, max=1.0,
        help="Tune the index until this share of the exact top 10 is found. Default: the last one "
             "given, else 0.95.", show_default=False)] = None,
    on_disk: Annotated[Optional[bool], typer.Option(
        "--on-disk/--in-memory",
        help="Keep the index's IVF lists on disk, memory-mapped, for libraries larger than RAM (from 10,000 "
             "images); only the quantizer counts against the budget. Default: as last chosen, else in memory.",
        show_default=False)] = None,
    library: LibraryOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Compact the library and rebuild its index for its size: exact, HNSW or IVF-PQ.

    `index` does this by itself when a library outgrows its index; run it to apply a new
    memory budget or recall target, or to shrink the index after many deletions.

    Example: `clipsearch optimize --memory-budget 1GB --target-recall 0.9`
    """
    from ..index import parse_size

    budget = parse_size(memory_budget) if memory_budget else None
    with open_library(library, create=False) as lib, stderr().status("compacting, rebuilding and tuning the index"):
        report = lib.optimize(budget, target_recall, on_disk=on_disk)
    data = report.to_dict()
    show(json_out, data, _record_lines(data))


@command(name="move-db", db_url=False, interrupted="interrupted: run the command again to finish the move")
def move_db(
    target: Annotated[str, typer.Argument(
        metavar="URL|sqlite",
        help="postgresql://USER@HOST:PORT/DBNAME (an empty database; the password from PGPASSWORD or "
             "~/.pgpass), or `sqlite` for the library folder's own file.", show_default=False)],
    library: LibraryOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Move the library's metadata to PostgreSQL, or back to its own SQLite file.

    Every row is copied with its id, so the vectors and indexes in the folder stay as they
    are and nothing is embedded again. Stop `serve` processes first; an `index` run must
    not be writing. A move that stops is finished by running it again. What it moved away
    from is kept: the SQLite file as library.db.moved-TIME.

    Example: `clipsearch move-db postgresql://clip@db.example.org/photos`
    """
    from ..library import Library

    stages = Stages(quiet or json_out)
    try:
        report = Library.move_metadata(library, None if target == "sqlite" else target, progress=stages)
    finally:
        stages.stop()
    data = report.to_dict()
    lines = [f"moved the metadata from {report.source} to {report.target} in {report.seconds:.1f}s",
             *(f"  {table:12} {rows:,} rows" for table, rows in report.rows.items()),
             f"left behind: {report.left_behind}"]
    show(json_out, data, lines)


@command
def errors(library: LibraryOpt = None, json_out: JsonOpt = False) -> None:
    """List the files that could not be indexed, with the reason.

    Example: `clipsearch errors --json`
    """
    with open_library(library, create=False) as lib:
        failed = lib.errors()
    show(json_out, [f.to_dict() for f in failed], [f"{f.path}\t{f.reason}" for f in failed], "no errors")


@command
def models(
    arch: Annotated[Optional[str], typer.Argument(metavar="ARCH", help="Show the pretrained tags of this "
                                                                     "architecture.", show_default=False)] = None,
    json_out: JsonOpt = False,
) -> None:
    """List the open_clip architectures and their pretrained tags.

    Example: `clipsearch models ViT-B-32`
    """
    from ..encoder import available_models

    table = available_models(arch)
    show(json_out, table, [f"{name}\t{' '.join(tags)}" for name, tags in table.items()])
