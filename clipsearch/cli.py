"""The ``clipsearch`` command: parses arguments, calls :class:`Library`, formats the result.

Results go to stdout (plain lines or ``--json``) so they can be piped; progress,
warnings and errors go to stderr. A :class:`ClipSearchError` becomes a one-line message
and exit code 1; usage errors exit with 2.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
import warnings
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from .errors import ClipSearchError

ENV_LIBRARY = "CLIPSEARCH_LIBRARY"  # also read by library.default_library_dir

app = typer.Typer(
    help="Search a folder of images by meaning, with CLIP.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)

# Options shared by several commands, defined once.
LibraryOpt = Annotated[Optional[Path], typer.Option(
    "--library", "-L", envvar=ENV_LIBRARY, show_envvar=True,
    help="Library folder. Default: $CLIPSEARCH_LIBRARY, else a per-user data folder.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
LimitOpt = Annotated[int, typer.Option("--limit", "-n", min=1, help="How many results.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or mps. auto picks CUDA, then MPS, then CPU.")]
ModelOpt = Annotated[Optional[str], typer.Option(
    "--model", "-m",
    help="CLIP model, recorded in the library on first index: ARCH/TAG (default "
         "ViT-B-32/laion2b_s34b_b79k), ARCH/path/to/checkpoint, hf-hub:ORG/NAME, a model folder, "
         "`demo` (bundled, offline) or ARCH/random (benchmarks only).")]


def _stderr():
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def _fail(exc: ClipSearchError) -> None:
    err = _stderr()
    err.print(f"[bold red]error:[/] {exc.message}", markup=True, soft_wrap=True)
    if exc.hint:
        err.print(f"[dim]hint:[/] {exc.hint}", soft_wrap=True)
    raise typer.Exit(1)


def command(fn):
    """Register a command whose ClipSearchErrors become a message and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ClipSearchError as exc:
            _fail(exc)
        except KeyboardInterrupt:
            # Every finished batch is already committed; the next run resumes from there.
            _stderr().print("interrupted: what was finished is saved; run the command again to continue")
            raise typer.Exit(130) from None

    return app.command()(wrapper)


def _open(library: Path | None, **kwargs):
    # Imported here, not at the top: `clipsearch --help` must not pay for SQLAlchemy and FAISS.
    from .library import Library

    return Library.open(library, **kwargs)


def _output(json_out: bool, data, lines: list[str], empty: str | None = None) -> None:
    """Every command's result: ``data`` as JSON, or text lines; ``empty`` goes to stderr."""
    if json_out:
        sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    elif not lines and empty:
        _stderr().print(empty)
    else:
        sys.stdout.writelines(line + "\n" for line in lines)


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show library log messages.")] = False):
    # Failures reach the user as our own one-line errors; the libraries' log lines
    # (huggingface_hub's download retries, open_clip's notes) only with -v.
    logging.basicConfig(level=logging.INFO if verbose else logging.CRITICAL, format="%(levelname)s: %(message)s")
    if not verbose:
        logging.getLogger("huggingface_hub").setLevel(logging.CRITICAL)
    # Our own warnings (random weights, ...) as one clean line; other libraries' only with -v.
    warnings.simplefilter("default" if verbose else "ignore")
    warnings.filterwarnings("default", module=r"clipsearch(\.|$)")
    warnings.showwarning = lambda message, *a, **k: _stderr().print(f"[yellow]warning:[/] {message}")


class _ProgressBar:
    """Draws an ``index`` run on stderr: a bar with images/s and time left."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self._progress = None
        self._task = None
        self._status = None
        self._console = _stderr()

    def scanned(self, count: int) -> None:
        # A slow walk (network disks, huge trees) still shows signs of life.
        if not self.quiet:
            if self._status is None:
                self._status = self._console.status("")
                self._status.start()
            self._status.update(f"scanning: {count} image files found")

    def start(self, total: int) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None
        if self.quiet or not total:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._progress = Progress(
            TextColumn("indexing"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), console=self._console, transient=True)
        self._task = self._progress.add_task("index", total=total, rate="")
        self._progress.start()

    def advance(self, count: int) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, count)
            speed = self._progress.tasks[0].speed
            self._progress.update(self._task, rate=f"{speed:.1f} img/s" if speed else "")

    def skipped(self, path: str, reason: str) -> None:
        if not self.quiet:
            self._console.print(f"skipping {path}: {reason}", markup=False, highlight=False, soft_wrap=True)

    def rebuilding(self, what: str) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        if not self.quiet:
            self._status = self._console.status(what)
            self._status.start()

    def stop(self) -> None:
        if self._status is not None:
            self._status.stop()
        if self._progress is not None:
            self._progress.stop()


@command
def index(
    paths: Annotated[list[Path], typer.Argument(help="Image files or folders, searched recursively.",
                                                show_default=False)],
    library: LibraryOpt = None,
    model: ModelOpt = None,
    batch_size: Annotated[Optional[int], typer.Option(
        "--batch-size", min=1, help="Images per model call. Default: 32 on CPU, 256 on CUDA.")] = None,
    device: DeviceOpt = "auto",
    exclude: Annotated[Optional[list[str]], typer.Option(
        "--exclude", "-x", help="Skip files and folders matching this glob (name or full path). Repeatable.",
        show_default=False)] = None,
    include_hidden: Annotated[bool, typer.Option("--include-hidden", help="Also index hidden files and folders.")] = False,
    follow_symlinks: Annotated[bool, typer.Option("--follow-symlinks", help="Descend into symlinked folders.")] = False,
    max_megapixels: Annotated[float, typer.Option(
        "--max-megapixels", min=0.01, help="Skip images larger than this (decompression bombs).")] = 200.0,
    decode_timeout: Annotated[float, typer.Option(
        "--decode-timeout", min=0.01, help="Seconds one file may take to read and decode before it is skipped.")
    ] = 60.0,
    workers: Annotated[Optional[int], typer.Option(
        "--workers", min=1, help="Decode processes. Default: one per CPU core.", show_default=False)] = None,
    retry_errors: Annotated[bool, typer.Option(
        "--retry-errors", help="Try files that failed before again, even if they did not change.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or skipped-file lines.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Index images: embed new and changed files, follow moved ones, forget deleted ones.

    Hidden files and folders are skipped. Re-running on an unchanged folder encodes nothing;
    a moved, renamed or copied file keeps its vector (matched by content hash).

    Example: `clipsearch index ~/Photos --model demo`
    """
    from .decodepool import DecodeLimits

    bar = _ProgressBar(quiet or json_out)
    with _open(library, model=model, device=device) as lib:
        spec = lib.model
        if spec is not None and spec.is_random:
            _stderr().print(f"[bold yellow]warning:[/] {spec} has RANDOM weights; results are meaningless.")
        try:
            report = lib.index(paths, batch_size=batch_size, progress=bar, retry_errors=retry_errors,
                               exclude=exclude or (), include_hidden=include_hidden,
                               follow_symlinks=follow_symlinks, workers=workers,
                               limits=DecodeLimits(timeout_s=decode_timeout, max_megapixels=max_megapixels))
        finally:
            bar.stop()
    if json_out:
        _output(True, report.to_dict(), [])
        return
    _stderr().print(
        f"added {report.added}, updated {report.updated}, moved {report.moved}, unchanged {report.unchanged}, "
        f"removed {report.removed}, errors {len(report.errors)} in {report.seconds:.1f}s")


_DATE_FORMATS = ["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"]


class SortOrder(str, Enum):
    score = "score"
    date = "date"
    path = "path"


PathsOnlyOpt = Annotated[bool, typer.Option("--paths-only", "-f", help="Print only paths, one per line (for pipes).")]


def _print_hits(hits, json_out: bool, paths_only: bool) -> None:
    lines = [h.path for h in hits] if paths_only else [f"{h.score:.4f}\t{h.path}" for h in hits]
    _output(json_out, [h.to_dict() for h in hits], lines, "no results")


@command
def search(
    text: Annotated[Optional[str], typer.Argument(help="What to look for, in words.", show_default=False)] = None,
    image: Annotated[Optional[Path], typer.Option("--image", "-i", help="Search by this image.",
                                                  show_default=False)] = None,
    also: Annotated[Optional[list[str]], typer.Option(
        "--and", "-a", help="Add a term: text, an image path or id:N, optionally weighted as W:TERM. Repeatable.",
        show_default=False)] = None,
    exclude: Annotated[Optional[list[str]], typer.Option(
        "--not", help="Subtract a term, same forms as --and. Repeatable.", show_default=False)] = None,
    folder: Annotated[Optional[list[Path]], typer.Option(
        "--in", help="Only images inside this folder. Repeatable.", show_default=False)] = None,
    ext: Annotated[Optional[list[str]], typer.Option(
        "--ext", help="Only files with this extension, e.g. jpg. Repeatable.", show_default=False)] = None,
    after: Annotated[Optional[datetime], typer.Option(
        "--after", formats=_DATE_FORMATS, help="Only photos taken on or after this date (EXIF, else file time).",
        show_default=False)] = None,
    before: Annotated[Optional[datetime], typer.Option(
        "--before", formats=_DATE_FORMATS, help="Only photos taken before this date.", show_default=False)] = None,
    min_score: Annotated[Optional[float], typer.Option(
        "--min-score", help="Drop hits with a lower cosine score.", show_default=False)] = None,
    sort: Annotated[SortOrder, typer.Option(
        "--sort", help="Order: best score first, newest first, or by path.")] = SortOrder.score,
    limit: LimitOpt = 10,
    offset: Annotated[int, typer.Option("--offset", min=0, help="Skip this many hits first (paging).")] = 0,
    include_query: Annotated[bool, typer.Option(
        "--include-query", help="Keep the query's own images in the results.")] = False,
    library: LibraryOpt = None,
    device: DeviceOpt = "auto",
    paths_only: PathsOnlyOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Find the images closest to a text, an image, or a mix of both.

    The query vector is the weighted sum of the terms' unit vectors, `--not` terms
    subtracted, normalised again. An image already in the library uses its stored vector.
    Prints one line per hit, the cosine score then the path; `--json` prints an array.

    Example: `clipsearch search "a beach" --and ./sunset.jpg --not "2:people" -n 5`
    """
    from .query import Query

    if text is None and image is None and not also:
        raise typer.BadParameter("give a text query, --image PATH or --and TERM", param_hint="TEXT")
    query = Query.build(text, image, also or (), exclude or ())
    with _open(library, device=device, create=False) as lib:
        hits = lib.search(query=query, k=limit, offset=offset, min_score=min_score, folders=folder or (),
                          extensions=ext or (), after=after, before=before, sort=sort.value,
                          include_query_images=include_query)
    _print_hits(hits, json_out, paths_only)


@command
def similar(
    image: Annotated[str, typer.Argument(help="An indexed image: its path, or id:N.", show_default=False)],
    limit: LimitOpt = 10,
    library: LibraryOpt = None,
    paths_only: PathsOnlyOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Find the images most like one already in the library (no model needed).

    Example: `clipsearch similar ~/Photos/beach.jpg -n 5`
    """
    with _open(library, create=False) as lib:
        hits = lib.similar(image, k=limit)
    _print_hits(hits, json_out, paths_only)


@command
def duplicates(
    threshold: Annotated[Optional[float], typer.Option(
        "--threshold", "-t", min=0.0, max=1.0,
        help="Cosine similarity at which images count as duplicates without looking at their pixels. "
             "Default: 0.995.", show_default=False)] = None,
    crops: Annotated[bool, typer.Option(
        "--crops/--no-crops",
        help="Also compare the pixels of pairs from 0.9 up to the threshold, to catch crops and resizes.")] = True,
    library: LibraryOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Find groups of near-identical images: re-encodes, resizes, light crops, copies.

    One group per block, best first: a header line, then the score and path of each image.

    Example: `clipsearch duplicates --threshold 0.98`
    """
    from .library import DUPLICATE_THRESHOLD

    with _open(library, create=False) as lib:
        groups = lib.duplicates(DUPLICATE_THRESHOLD if threshold is None else threshold, crops=crops)
    lines = []
    for n, g in enumerate(groups, 1):
        lines += [f"# group {n}: {len(g.images)} images, similarity {g.score:.4f}"]
        lines += [f"{h.score:.4f}\t{h.path}" for h in g.images] + [""]
    _output(json_out, [g.to_dict() for g in groups], lines[:-1], "no duplicates")


@command
def info(library: LibraryOpt = None, json_out: JsonOpt = False) -> None:
    """Show what a library holds: images, vectors, errors, its model and its index.

    Example: `clipsearch info --json`
    """
    with _open(library, create=False) as lib:
        summary = lib.info()
    data = summary.to_dict()
    _output(json_out, data, [f"{key:18} {value}" for key, value in data.items()])


@command
def optimize(
    memory_budget: Annotated[Optional[str], typer.Option(
        "--memory-budget", help="Most memory the index may use, e.g. 2GB or 512MB. Default: the last "
                                "one given, else 2GB.", show_default=False)] = None,
    target_recall: Annotated[Optional[float], typer.Option(
        "--target-recall", min=0.01, max=1.0,
        help="Tune the index until this share of the exact top 10 is found. Default: the last one "
             "given, else 0.95.", show_default=False)] = None,
    library: LibraryOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Compact the library and rebuild its index for its size: exact, HNSW or IVF-PQ.

    `index` does this by itself when a library outgrows its index; run it to apply a new
    memory budget or recall target, or to shrink the index after many deletions.

    Example: `clipsearch optimize --memory-budget 1GB --target-recall 0.9`
    """
    from .index import parse_size

    budget = parse_size(memory_budget) if memory_budget else None
    with _open(library, create=False) as lib, _stderr().status("compacting, rebuilding and tuning the index"):
        report = lib.optimize(budget, target_recall)
    data = report.to_dict()
    _output(json_out, data, [f"{key:15} {value}" for key, value in data.items()])


@command
def errors(library: LibraryOpt = None, json_out: JsonOpt = False) -> None:
    """List the files that could not be indexed, with the reason.

    Example: `clipsearch errors --json`
    """
    with _open(library, create=False) as lib:
        failed = lib.errors()
    _output(json_out, [f.to_dict() for f in failed], [f"{f.path}\t{f.reason}" for f in failed], "no errors")


@command
def models(
    arch: Annotated[Optional[str], typer.Argument(help="Show the pretrained tags of this architecture.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """List the open_clip architectures and their pretrained tags.

    Example: `clipsearch models ViT-B-32`
    """
    from .encoder import available_models

    table = available_models(arch)
    _output(json_out, table, [f"{name}\t{' '.join(tags)}" for name, tags in table.items()])


def main() -> None:
    app(prog_name="clipsearch")


if __name__ == "__main__":
    main()
