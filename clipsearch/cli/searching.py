"""``clipsearch search``, ``similar`` and ``duplicates``: finding images."""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..defaults import CROP_CANDIDATE, DUPLICATE_THRESHOLD, SORT_ORDERS
from .common import (
    DeviceOpt, FolderOpt, JsonOpt, LibraryOpt, LimitOpt, Stages, command, open_library, show,
)


_DATE_FORMATS = ["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"]


SortOrder = Enum("SortOrder", [(s, s) for s in SORT_ORDERS], type=str)


PathsOnlyOpt = Annotated[bool, typer.Option("--paths-only", "-f", help="Print only paths, one per line (for pipes).")]


def _print_hits(hits, json_out: bool, paths_only: bool) -> None:
    lines = [h.path for h in hits] if paths_only else [f"{h.score:.4f}\t{h.path}" for h in hits]
    show(json_out, [h.to_dict() for h in hits], lines, "no results")


TextArg = Annotated[Optional[str], typer.Argument(metavar="TEXT", help="What to look for, in words.",
                                                 show_default=False)]
ImageOpt = Annotated[Optional[Path], typer.Option("--image", "-i", metavar="IMAGE",
                                                  help="Search by this image file, or an indexed one as id:N.",
                                                  show_default=False)]
AlsoOpt = Annotated[Optional[list[str]], typer.Option(
    "--and", "-a", metavar="TERM",
    help="Add a term: text, an image path or id:N, optionally weighted as W:TERM. Repeatable.",
    show_default=False)]
ExcludeOpt = Annotated[Optional[list[str]], typer.Option(
    "--not", metavar="TERM", help="Subtract a term, same forms as --and. Repeatable.", show_default=False)]
ExtOpt = Annotated[Optional[list[str]], typer.Option(
    "--ext", metavar="EXT", help="Only files with this extension, e.g. jpg. Repeatable.", show_default=False)]
AfterOpt = Annotated[Optional[datetime], typer.Option(
    "--after", formats=_DATE_FORMATS, metavar="DATE",
    help="Only photos taken on or after this date, YYYY-MM-DD (EXIF, else the file's time).", show_default=False)]
BeforeOpt = Annotated[Optional[datetime], typer.Option(
    "--before", formats=_DATE_FORMATS, metavar="DATE", help="Only photos taken before this date, YYYY-MM-DD.",
    show_default=False)]
TagOpt = Annotated[Optional[list[str]], typer.Option(
    "--tag", metavar="LABEL", help="Only images with this tag. Repeatable: all must be present.", show_default=False)]
NoTagOpt = Annotated[Optional[list[str]], typer.Option(
    "--no-tag", metavar="LABEL", help="Only images without this tag. Repeatable.", show_default=False)]
MinScoreOpt = Annotated[Optional[float], typer.Option(
    "--min-score", help="Drop hits with a lower cosine score.", show_default=False)]
SortOpt = Annotated[SortOrder, typer.Option("--sort", help="Order: best score first, newest first, or by path.")]
IncludeQueryOpt = Annotated[bool, typer.Option("--include-query", help="Keep the query's own images in the results.")]


def build_query(text: str | None, image: Path | None, also: list[str] | None, exclude: list[str] | None):
    """The query of a search's TEXT, --image, --and and --not, or a usage error."""
    from ..query import Query

    if text is None and image is None and not also:
        raise typer.BadParameter("give a text query, --image PATH or --and TERM", param_hint="TEXT")
    if text is not None and not text.strip():
        raise typer.BadParameter("the query text is empty", param_hint="TEXT")
    return Query.build(text, image, also or (), exclude or ())


@command
def search(
    text: TextArg = None,
    image: ImageOpt = None,
    also: AlsoOpt = None,
    exclude: ExcludeOpt = None,
    folder: FolderOpt = None,
    ext: ExtOpt = None,
    after: AfterOpt = None,
    before: BeforeOpt = None,
    tag: TagOpt = None,
    no_tag: NoTagOpt = None,
    min_score: MinScoreOpt = None,
    sort: SortOpt = SortOrder.score,
    limit: LimitOpt = 10,
    offset: Annotated[int, typer.Option("--offset", min=0, help="Skip this many hits first (paging).")] = 0,
    include_query: IncludeQueryOpt = False,
    library: LibraryOpt = None,
    device: DeviceOpt = "auto",
    paths_only: PathsOnlyOpt = False,
    json_out: JsonOpt = False,
    no_service: Annotated[bool, typer.Option(
        "--no-service", help="Search in this process even when a running serve or watch of the library could "
                             "answer at once.")] = False,
) -> None:
    """Find the images closest to a text, an image, or a mix of both.

    The query vector is the weighted sum of the terms' unit vectors, `--not` terms
    subtracted, normalised again. An image already in the library uses its stored vector.
    Prints one line per hit, the cosine score then the path; `--json` prints an array.
    A running `serve` or `watch` of the library answers instead, in a fraction of the time.

    Example: `clipsearch search "a beach" --and ./sunset.jpg --not "2:people" -n 5`
    """
    query = build_query(text, image, also, exclude)
    with open_library(library, device=device, create=False) as lib:
        hits = lib.search(query=query, k=limit, offset=offset, min_score=min_score, folders=folder or (),
                          extensions=ext or (), after=after, before=before, tags=tag or (),
                          no_tags=no_tag or (), sort=sort.value, include_query_images=include_query)
    _print_hits(hits, json_out, paths_only)


@command
def similar(
    image: Annotated[str, typer.Argument(metavar="IMAGE", help="An indexed image: its path, or id:N.",
                                         show_default=False)],
    limit: LimitOpt = 10,
    library: LibraryOpt = None,
    paths_only: PathsOnlyOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Find the images most like one already in the library (no model needed).

    Example: `clipsearch similar ~/Photos/beach.jpg -n 5`
    """
    with open_library(library, create=False) as lib:
        hits = lib.similar(image, k=limit)
    _print_hits(hits, json_out, paths_only)


@command
def duplicates(
    threshold: Annotated[Optional[float], typer.Option(
        "--threshold", "-t", min=0.0, max=1.0,
        help="Cosine similarity from which pairs are compared as whole pictures (copies, re-encodes, resizes); "
             f"the pixels decide. Default: {DUPLICATE_THRESHOLD}.", show_default=False)] = None,
    crops: Annotated[bool, typer.Option(
        "--crops/--no-crops",
        help=f"Also compare pairs from cosine {CROP_CANDIDATE}, for crops of up to 10% of a side.")] = True,
    library: LibraryOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Find groups of near-identical images: re-encodes, resizes, light crops, copies.

    One group per block, best first: a header line, then the score and path of each image.

    Example: `clipsearch duplicates --threshold 0.98`
    """

    stages = Stages(quiet or json_out)
    try:
        with open_library(library, create=False) as lib:
            groups = lib.duplicates(DUPLICATE_THRESHOLD if threshold is None else threshold, crops=crops,
                                    progress=stages)
    finally:
        stages.stop()
    lines = []
    for n, g in enumerate(groups, 1):
        lines += [f"# group {n}: {len(g.images)} images, similarity {g.score:.4f}"]
        lines += [f"{h.score:.4f}\t{h.path}" for h in g.images] + [""]
    show(json_out, [g.to_dict() for g in groups], lines[:-1], "no duplicates")
