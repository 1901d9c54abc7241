"""The ``clipsearch`` command: parses arguments, calls :class:`Library`, formats the result.

Results go to stdout (plain lines or ``--json``) so they can be piped; progress,
warnings and errors go to stderr. A :class:`ClipSearchError` becomes a one-line message
and exit code 1; usage errors exit with 2.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import sys
import warnings
from contextvars import ContextVar
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from typer.core import TyperCommand, TyperGroup

from .defaults import CROP_CANDIDATE, DUPLICATE_THRESHOLD, ENGINES, ENV_DB_URL, ENV_LIBRARY, SORT_ORDERS
from .errors import ClipSearchError



class _ReadableHelp:
    """``--help`` that shows what a user types: nothing beside a flag (not ``<bool>``), and
    an argument's metavar (``PATH``; the usage line adds ``...`` where it repeats) without
    its Python type (``<list[Path]>``). Options name their value with a metavar where
    typer's own would be a type or a strftime pattern."""

    def format_help(self, ctx, formatter):
        for param in self.get_params(ctx):  # the --help option included
            if getattr(param, "is_flag", False):
                param.metavar = ""
            elif param.param_type_name == "argument" and param.metavar:
                param.display_type_rich = lambda ctx: None
        return super().format_help(ctx, formatter)


class _Command(_ReadableHelp, TyperCommand):
    pass


class _Group(_ReadableHelp, TyperGroup):
    pass


app = typer.Typer(
    cls=_Group,
    help="Search a folder of images by meaning, with CLIP.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)

# Options shared by several commands, defined once.
LibraryOpt = Annotated[Optional[Path], typer.Option(
    "--library", "-L", envvar=ENV_LIBRARY, show_envvar=True, metavar="DIR",
    help="Library folder. Default: $CLIPSEARCH_LIBRARY, else a per-user data folder.")]
# Added by `command` to every command that takes --library (see _with_db_url).
DbUrlOpt = Annotated[Optional[str], typer.Option(
    "--db-url", envvar=ENV_DB_URL, show_envvar=True, show_default=False, metavar="URL",
    help="Keep the library's metadata in this PostgreSQL database, postgresql://USER@HOST:PORT/DBNAME "
         "(the password from PGPASSWORD or ~/.pgpass), not in the folder's own SQLite file. Needed once: "
         "the folder remembers it.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
FolderOpt = Annotated[Optional[list[Path]], typer.Option(
    "--in", metavar="DIR", help="Only images inside this folder. Repeatable.", show_default=False)]
LimitOpt = Annotated[int, typer.Option("--limit", "-n", min=1, help="How many results.")]
DeviceOpt = Annotated[str, typer.Option("--device", metavar="DEVICE",
                                        help="auto, cpu, cuda or mps. auto picks CUDA, then MPS, then CPU.")]
ModelOpt = Annotated[Optional[str], typer.Option(
    "--model", "-m", metavar="MODEL",
    help="CLIP model, recorded in the library on first index: ARCH/TAG (default "
         "ViT-B-32/laion2b_s34b_b79k), ARCH/path/to/checkpoint, hf-hub:ORG/NAME, a model folder, "
         "`demo` (bundled, offline) or ARCH/random (benchmarks only).")]


def _stderr():
    from rich.console import Console

    # soft_wrap: a message is one line however wide the terminal, and whole in a log file
    # (rich would break it at 80 columns where stderr is not a terminal).
    return Console(stderr=True, highlight=False, soft_wrap=True)


def _skipping(path: str, reason: str) -> None:
    """A file a command could not use, on stderr: the path as given, never read as markup."""
    _stderr().print(f"skipping {path}: {reason}", markup=False, highlight=False)


def _warn(message: str) -> None:
    from rich.markup import escape

    _stderr().print(f"[bold yellow]warning:[/] {escape(str(message))}")


def _wrote(path: Path) -> None:
    """A file a command made besides its output, on stderr: stdout stays the results."""
    _stderr().print(f"wrote {path}", markup=False)


def _fail(exc: ClipSearchError) -> None:
    from rich.markup import escape

    err = _stderr()
    message, hint = exc.worded("cli")  # options named as flags
    # Escaped: messages quote user input and hints name extras like clipsearch[web].
    err.print(f"[bold red]error:[/] {escape(message)}", markup=True)
    if hint:
        err.print(f"[dim]hint:[/] {escape(hint)}")
    raise typer.Exit(1)


# What Ctrl-C says: by default only that, and where it is worth saying, what it left.
INTERRUPTED = "interrupted"
# index commits every finished batch, so the next run resumes from there.
RESUMABLE = "interrupted: what was finished is saved; run the command again to continue"


def _guarded(fn, interrupted: str = INTERRUPTED):
    """``fn`` with its ClipSearchErrors turned into a message and exit code 1, and Ctrl-C
    into ``interrupted`` and exit code 130."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ClipSearchError as exc:
            _fail(exc)
        except KeyboardInterrupt:
            _stderr().print(interrupted, markup=False)
            raise typer.Exit(130) from None

    return wrapper


def command(fn=None, *, group: typer.Typer = app, name: str | None = None, db_url: bool = True,
            callback: bool = False, interrupted: str = INTERRUPTED):
    """Register a command (on ``group``, default the top level), or with ``callback`` the
    group's own callback; see :func:`_guarded`. A command that takes ``--library`` gets
    ``--db-url`` too (:func:`_with_db_url`), unless it names its database itself."""
    if fn is None:
        return lambda f: command(f, group=group, name=name, db_url=db_url, callback=callback,
                                 interrupted=interrupted)
    if db_url and "library" in inspect.signature(fn).parameters:
        fn = _with_db_url(fn)
    register = group.callback(invoke_without_command=True) if callback else group.command(name, cls=_Command)
    return register(_guarded(fn, interrupted))


_db_url: ContextVar[str | None] = ContextVar("db_url", default=None)


def _with_db_url(fn):
    """``fn`` with a ``--db-url`` option, which :func:`_open` reads: one option beside every
    ``--library``, without a parameter for it in every command."""

    @functools.wraps(fn)
    def wrapper(*args, db_url: str | None = None, **kwargs):
        token = _db_url.set(db_url)
        try:
            return fn(*args, **kwargs)
        finally:
            _db_url.reset(token)

    sig = inspect.signature(fn, eval_str=True)
    option = inspect.Parameter("db_url", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=DbUrlOpt)
    wrapper.__signature__ = sig.replace(parameters=[*sig.parameters.values(), option])
    wrapper.__annotations__ = {**fn.__annotations__, "db_url": DbUrlOpt}
    return wrapper


def _open(library: Path | None, **kwargs):
    # Imported here, not at the top: `clipsearch --help` must not pay for SQLAlchemy and FAISS.
    from .library import Library

    return Library.open(library, db_url=_db_url.get(), **kwargs)


def _output(json_out: bool, data, lines: list[str], empty: str | None = None) -> None:
    """Every command's result: ``data`` as JSON, or text lines; ``empty`` goes to stderr."""
    if json_out:
        sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    elif not lines and empty:
        _stderr().print(empty)
    else:
        sys.stdout.writelines(line + "\n" for line in lines)


def _show_version(value: bool) -> None:
    if value:
        from . import __version__

        print(f"clipsearch {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show library log messages.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_show_version, is_eager=True, expose_value=False,
                                          help="Show clipsearch's version and exit.")] = False,
):
    # Failures reach the user as our own one-line errors; the libraries' log lines
    # (huggingface_hub's download retries, open_clip's notes) only with -v.
    logging.basicConfig(level=logging.INFO if verbose else logging.CRITICAL, format="%(levelname)s: %(message)s")
    if not verbose:
        logging.getLogger("huggingface_hub").setLevel(logging.CRITICAL)
    # Our own warnings (random weights, ...) as one clean line; other libraries' only with -v.
    warnings.simplefilter("default" if verbose else "ignore")
    warnings.filterwarnings("default", module=r"clipsearch(\.|$)")
    warnings.showwarning = lambda message, *a, **k: _warn(message)


def _live(console, quiet: bool) -> bool:
    # Bars and spinners only on a terminal: in a log file rich leaves a blank line for each.
    return not quiet and console.is_terminal


class _ProgressBar:
    """Draws an ``index`` run on stderr: a bar with images/s and time left."""

    def __init__(self, quiet: bool):
        self.quiet = quiet  # no skipped-file lines either
        self._console = _stderr()
        self._live = _live(self._console, quiet)
        self._progress = None
        self._task = None
        self._status = None

    def scanned(self, count: int) -> None:
        # A slow walk (network disks, huge trees) still shows signs of life.
        if self._live:
            if self._status is None:
                self._status = self._console.status("")
                self._status.start()
            self._status.update(f"scanning: {count} image files found")

    def start(self, total: int) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None
        if not self._live or not total:
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
            _skipping(path, reason)

    def rebuilding(self, what: str) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        if self._live:
            self._status = self._console.status(what)
            self._status.start()

    def stop(self) -> None:
        if self._status is not None:
            self._status.stop()
        if self._progress is not None:
            self._progress.stop()


Engine = Enum("Engine", [(e, e) for e in ENGINES], type=str)


@command(interrupted=RESUMABLE)
def index(
    paths: Annotated[list[Path], typer.Argument(metavar="PATH", help="Image files or folders, searched "
                                                "recursively.", show_default=False)],
    library: LibraryOpt = None,
    model: ModelOpt = None,
    batch_size: Annotated[Optional[int], typer.Option(
        "--batch-size", min=1, help="Images per model call. Default: 32 on CPU; on CUDA, sized from free GPU memory "
                                  "(32 to 1024).")] = None,
    device: DeviceOpt = "auto",
    exclude: Annotated[Optional[list[str]], typer.Option(
        "--exclude", "-x", metavar="GLOB",
        help="Skip files and folders matching this glob (name or full path). Repeatable.",
        show_default=False)] = None,
    include_hidden: Annotated[bool, typer.Option("--include-hidden", help="Also index hidden files and folders.")] = False,
    follow_symlinks: Annotated[bool, typer.Option("--follow-symlinks", help="Follow symlinks to folders and files (off: links are skipped).")] = False,
    max_megapixels: Annotated[float, typer.Option(
        "--max-megapixels", min=0.01, help="Skip images larger than this (decompression bombs).")] = 200.0,
    decode_timeout: Annotated[float, typer.Option(
        "--decode-timeout", min=0.01, help="Seconds one file may take to read and decode before it is skipped.")
    ] = 60.0,
    workers: Annotated[Optional[int], typer.Option(
        "--workers", min=1, help="Decode processes. Default: one per CPU core.", show_default=False)] = None,
    precision: Annotated[Optional[str], typer.Option(
        "--precision", metavar="PRECISION",
        help="How images are computed: auto, fp32, fp16 (CUDA), bf16 or int8 (CPU, via "
                            "onnxruntime). auto: fp16 on CUDA; on a CPU, int8 when it is faithful and faster "
                            "here, else fp32. The first run's choice is recorded and kept. "
                            "Default: $CLIPSEARCH_PRECISION, else auto.", show_default=False)] = None,
    retry_errors: Annotated[bool, typer.Option(
        "--retry-errors", help="Try files that failed before again, even if they did not change.")] = False,
    engine: Annotated[Engine, typer.Option(
        "--engine", help="Where images are decoded and embedded: here, or on a Ray cluster's actor pool "
                         "(needs clipsearch[ray]); this process still scans and commits.")] = Engine.local,
    ray_address: Annotated[Optional[str], typer.Option(
        "--ray-address", metavar="ADDRESS", help="With --engine ray: `auto` (the cluster this machine belongs to) or "
                              "ray://HOST:PORT. Default: a Ray started on this machine for the run.",
        show_default=False)] = None,
    gpus_per_worker: Annotated[float, typer.Option(
        "--gpus-per-worker", min=0, help="With --engine ray: GPUs per model actor; 0 runs them on CPUs.")] = 0,
    ray_workers: Annotated[Optional[int], typer.Option(
        "--ray-workers", min=1, help="With --engine ray: model actors. Default: as many as the cluster's "
                                     "GPUs allow (one per 4 CPUs without GPUs).", show_default=False)] = None,
    ray_shards: Annotated[Optional[bool], typer.Option(
        "--ray-shards/--no-ray-shards", help="With --engine ray: actors write vectors to shard files in the "
                                             "library folder (shared storage) instead of sending them back. "
                                             "Default: from 1M files to embed.", show_default=False)] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or skipped-file lines.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Index images: embed new and changed files, follow moved ones, forget deleted ones.

    Hidden files and folders are skipped. Re-running on an unchanged folder encodes nothing;
    a moved, renamed or copied file keeps its vector (matched by content hash).

    Example: `clipsearch index ~/Photos --model demo`
    """
    from .cluster import RayOptions
    from .decodepool import DecodeLimits

    bar = _ProgressBar(quiet or json_out)
    with _open(library, model=model, device=device) as lib:
        spec = lib.model
        if spec is not None and spec.is_random:
            _warn(f"{spec} has RANDOM weights; results are meaningless.")
        try:
            report = lib.index(paths, batch_size=batch_size, progress=bar, retry_errors=retry_errors,
                               exclude=exclude or (), include_hidden=include_hidden,
                               follow_symlinks=follow_symlinks, workers=workers, precision=precision,
                               limits=DecodeLimits(timeout_s=decode_timeout, max_megapixels=max_megapixels),
                               engine=engine.value,
                               ray=RayOptions(ray_address, gpus_per_worker, ray_workers,
                                              **({"batch_size": batch_size} if batch_size else {}),
                                              shards=ray_shards))
        finally:
            bar.stop()
    if json_out:
        _output(True, report.to_dict(), [])
        return
    _stderr().print(
        f"added {report.added}, updated {report.updated}, moved {report.moved}, unchanged {report.unchanged}, "
        f"removed {report.removed}, errors {len(report.errors)} in {report.seconds:.1f}s"
        + (f", precision {report.precision}" if report.precision else ""), markup=False)


_DATE_FORMATS = ["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"]


SortOrder = Enum("SortOrder", [(s, s) for s in SORT_ORDERS], type=str)


PathsOnlyOpt = Annotated[bool, typer.Option("--paths-only", "-f", help="Print only paths, one per line (for pipes).")]


def _print_hits(hits, json_out: bool, paths_only: bool) -> None:
    lines = [h.path for h in hits] if paths_only else [f"{h.score:.4f}\t{h.path}" for h in hits]
    _output(json_out, [h.to_dict() for h in hits], lines, "no results")


@command
def search(
    text: Annotated[Optional[str], typer.Argument(metavar="TEXT", help="What to look for, in words.",
                                                  show_default=False)] = None,
    image: Annotated[Optional[Path], typer.Option("--image", "-i", metavar="IMAGE",
                                                  help="Search by this image file, or an indexed one as id:N.",
                                                  show_default=False)] = None,
    also: Annotated[Optional[list[str]], typer.Option(
        "--and", "-a", metavar="TERM",
        help="Add a term: text, an image path or id:N, optionally weighted as W:TERM. Repeatable.",
        show_default=False)] = None,
    exclude: Annotated[Optional[list[str]], typer.Option(
        "--not", metavar="TERM", help="Subtract a term, same forms as --and. Repeatable.", show_default=False)] = None,
    folder: FolderOpt = None,
    ext: Annotated[Optional[list[str]], typer.Option(
        "--ext", metavar="EXT",
        help="Only files with this extension, e.g. jpg. Repeatable.", show_default=False)] = None,
    after: Annotated[Optional[datetime], typer.Option(
        "--after", formats=_DATE_FORMATS, metavar="DATE",
        help="Only photos taken on or after this date, YYYY-MM-DD (EXIF, else the file's time).",
        show_default=False)] = None,
    before: Annotated[Optional[datetime], typer.Option(
        "--before", formats=_DATE_FORMATS, metavar="DATE", help="Only photos taken before this date, YYYY-MM-DD.",
        show_default=False)] = None,
    tag: Annotated[Optional[list[str]], typer.Option(
        "--tag", metavar="LABEL",
        help="Only images with this tag. Repeatable: all must be present.", show_default=False)] = None,
    no_tag: Annotated[Optional[list[str]], typer.Option(
        "--no-tag", metavar="LABEL", help="Only images without this tag. Repeatable.", show_default=False)] = None,
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
    if text is not None and not text.strip():
        raise typer.BadParameter("the query text is empty", param_hint="TEXT")
    query = Query.build(text, image, also or (), exclude or ())
    with _open(library, device=device, create=False) as lib:
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
    with _open(library, create=False) as lib:
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

    stages = _Stages(quiet or json_out)
    try:
        with _open(library, create=False) as lib:
            groups = lib.duplicates(DUPLICATE_THRESHOLD if threshold is None else threshold, crops=crops,
                                    progress=stages)
    finally:
        stages.stop()
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
    _output(json_out, data, _record_lines(data))


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
    from .index import parse_size

    budget = parse_size(memory_budget) if memory_budget else None
    with _open(library, create=False) as lib, _stderr().status("compacting, rebuilding and tuning the index"):
        report = lib.optimize(budget, target_recall, on_disk=on_disk)
    data = report.to_dict()
    _output(json_out, data, _record_lines(data))


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
    from .library import Library

    stages = _Stages(quiet or json_out)
    try:
        report = Library.move_metadata(library, None if target == "sqlite" else target, progress=stages)
    finally:
        stages.stop()
    data = report.to_dict()
    lines = [f"moved the metadata from {report.source} to {report.target} in {report.seconds:.1f}s",
             *(f"  {table:12} {rows:,} rows" for table, rows in report.rows.items()),
             f"left behind: {report.left_behind}"]
    _output(json_out, data, lines)


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
    arch: Annotated[Optional[str], typer.Argument(metavar="ARCH", help="Show the pretrained tags of this "
                                                                     "architecture.", show_default=False)] = None,
    json_out: JsonOpt = False,
) -> None:
    """List the open_clip architectures and their pretrained tags.

    Example: `clipsearch models ViT-B-32`
    """
    from .encoder import available_models

    table = available_models(arch)
    _output(json_out, table, [f"{name}\t{' '.join(tags)}" for name, tags in table.items()])


# -- labels, classification and tags -----------------------------------------------------

LabelsOpt = Annotated[Optional[str], typer.Option(
    "--labels", "-l", metavar="SET_OR_FILE",
    help="A bundled label set (see `clipsearch labels`) or a label file: .txt, .yaml or .toml.",
    show_default=False)]
ClassifierOpt = Annotated[Optional[str], typer.Option(
    "--classifier", "-c", metavar="NAME",
    help="A few-shot classifier trained with `clipsearch classifier train`, instead of "
                               "--labels.", show_default=False)]
TemplateOpt = Annotated[Optional[list[str]], typer.Option(
    "--template", "-t", metavar="TEMPLATE",
    help="A prompt template with {} for the label, or a bundled template set: imagenet, photo, "
                             "simple. Repeatable; the prompts are averaged. Default: the label set's own, else "
                             "photo.", show_default=False)]


class _Stages:
    """A progress bar per stage of a longer job (embedding labels, tagging), on stderr."""

    def __init__(self, quiet: bool):
        self._console = _stderr()
        self._live = _live(self._console, quiet)
        self._progress = None
        self._tasks: dict[str, int] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self._live:
            return
        if self._progress is None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TimeRemainingColumn(), console=self._console, transient=True)
            self._progress.start()
        if stage not in self._tasks:
            self._tasks[stage] = self._progress.add_task(stage, total=total)
        self._progress.update(self._tasks[stage], completed=done, total=total)

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()


@command
def labels(
    name: Annotated[Optional[str], typer.Argument(metavar="SET_OR_FILE", help="Show the labels of this set or "
                                                                             "label file.", show_default=False)] = None,
    json_out: JsonOpt = False,
) -> None:
    """List the bundled label sets and prompt templates, or the labels of one set.

    Label files are plain text (one label per line) or YAML/TOML with per-label synonyms,
    prompts, thresholds and parents; see the README.

    Example: `clipsearch labels demo-colours`
    """
    from .labels import LabelSet, available_label_sets, available_templates, resolve_templates

    if name is None:
        sets = {n: LabelSet.load(n) for n in available_label_sets()}
        templates = {n: len(resolve_templates([n])) for n in available_templates()}
        data = {"label_sets": {n: len(ls.labels) for n, ls in sets.items()}, "templates": templates}
        lines = [f"{n}\t{len(ls.labels)} labels" for n, ls in sets.items()]
        lines += [f"template set {n}\t{k} templates" for n, k in templates.items()]
        _output(json_out, data, lines)
        return
    label_set = LabelSet.load(name)
    data = {"name": label_set.name, "templates": list(label_set.templates),
            "labels": [{"name": lb.name, "parent": lb.parent, "synonyms": list(lb.synonyms),
                        "prompts": list(lb.prompts), "threshold": lb.threshold} for lb in label_set.labels]}
    lines = [lb.name + (f"\t< {' < '.join(label_set.ancestors(lb.name))}" if lb.parent else "")
             for lb in label_set.labels]
    _output(json_out, data, lines)


@command
def classify(
    images: Annotated[list[str], typer.Argument(metavar="IMAGE", help="Image files (in the library or not), "
                                                "or id:N.", show_default=False)],
    labels: LabelsOpt = None,
    classifier: ClassifierOpt = None,
    template: TemplateOpt = None,
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="Labels per image.")] = 5,
    library: LibraryOpt = None,
    model: ModelOpt = None,
    device: DeviceOpt = "auto",
    json_out: JsonOpt = False,
) -> None:
    """Name what is in images with a label set (zero-shot) or a trained classifier.

    Prints each image's path, then its best labels: probability (softmax over the whole
    label set, at the model's logit scale), cosine similarity, label. Images already in
    the library use their stored vectors.

    Example: `clipsearch classify photo.jpg --labels imagenet --top-k 3`
    """
    _labels_or_classifier(labels, classifier)
    with _open(library, model=model, device=device, create=model is not None) as lib:
        results = lib.classify(images, labels, templates=template or (), classifier=classifier, top_k=top_k)
    lines = []
    for r in results:
        if r.error:
            _skipping(r.path, r.error)
            continue
        lines.append(r.path)
        lines += [f"  {p.probability:11.4f}  {p.cosine:6.4f}  {p.label}" for p in r.labels]
    if lines:
        lines.insert(0, f"  {'probability':>11}  {'cosine':>6}  label")
    _output(json_out, [r.to_dict() for r in results], lines)
    if any(r.error for r in results):
        raise typer.Exit(1)


PlotOpt = Annotated[Optional[Path], typer.Option(
    "--plot", metavar="FILE", help="Also draw it into this picture (.png, .svg or .pdf); needs the plot extra.",
    show_default=False)]


@command
def eval(  # noqa: A001 - the command's name
    examples: Annotated[Path, typer.Option(
        "--examples", "-e", metavar="DIR", help="A folder with one sub-folder of images per true label.",
        show_default=False)],
    labels: Annotated[Optional[str], typer.Option(
        "--labels", "-l", metavar="SET_OR_FILE",
        help="Take the labels' prompts, synonyms and parents from this set or file. "
                               "Default: the sub-folders' names.", show_default=False)] = None,
    classifier: ClassifierOpt = None,
    template: TemplateOpt = None,
    compare_templates: Annotated[bool, typer.Option(
        "--compare-templates", help="Also score each template alone, and their ensemble.")] = False,
    few_shot: Annotated[Optional[int], typer.Option(
        "--few-shot", min=1, metavar="K", help="Also train K-shot probes (1, 2, 4, ... K per label, 3 draws) and score "
                                  "them against zero-shot on the held-out rest.", show_default=False)] = None,
    plot: PlotOpt = None,
    library: LibraryOpt = None,
    model: ModelOpt = None,
    device: DeviceOpt = "auto",
    json_out: JsonOpt = False,
) -> None:
    """Measure a label set or a trained classifier on your own labelled images.

    Prints top-1 and top-5 accuracy, each label's precision, recall and support, the most
    confused pairs and the misclassified files; `--compare-templates` and `--few-shot`
    add the prompt-engineering and few-shot views. Images already in the library use
    their stored vectors.

    Example: `clipsearch eval --examples ./labelled --labels photos --compare-templates --plot confusion.png`
    """
    with _open(library, model=model, device=device, create=model is not None) as lib:
        result = lib.evaluate(examples, labels, templates=template or (), classifier=classifier,
                              compare_templates=compare_templates, few_shot=few_shot)
    if plot is not None:
        from .plots import confusion_figure

        confusion_figure(result, plot)
        _wrote(plot)
    for e in result.unreadable:
        _skipping(e.path, e.reason)
    width = max(len(c.label) for c in result.classes)
    lines = [f"{result.classifier} ({result.source}) on {result.images} images: "
             f"top-1 {result.top1:.3f}, top-5 {result.top5:.3f}", "",
             f"{'label':{width}}  precision  recall  support"]
    lines += [f"{c.label:{width}}  {'-' if c.precision is None else f'{c.precision:.3f}':>9}  {c.recall:6.3f}  "
              f"{c.support:7d}" for c in result.classes]
    if result.most_confused:
        lines += ["", "most confused (true -> predicted: images)"]
        lines += [f"  {c.true} -> {c.predicted}: {c.count}" for c in result.most_confused]
    if result.misses:
        lines += ["", "misclassified (probability of the wrong answer, true -> predicted, file)"]
        lines += [f"  {m.probability:.3f}  {m.true} -> {m.predicted}  {m.path}" for m in result.misses]
    if result.templates:
        lines += ["", "templates (zero-shot, alone and together)", f"  {'top-1':>6} {'top-5':>6}  template"]
        lines += [f"  {t.top1:6.3f} {t.top5:6.3f}  {t.template}" for t in result.templates]
    if result.few_shot:
        lines += ["", "few-shot probes against zero-shot on the same held-out images",
                  f"  {'shots':>5} {'zero-shot':>9} {'few-shot':>9}  (mean of draws; held-out images)"]
        lines += [f"  {s.shots:5d} {s.zero_shot:9.3f} {s.few_shot:9.3f}  ({s.draws}; {s.tested})" for s in result.few_shot]
        beat = result.shots_to_beat_zero_shot
        lines.append(f"  the probe beats zero-shot from {beat} shot{'s' * (beat != 1)} per label" if beat
                     else "  no probe beat zero-shot: the labels' words already carry what the examples teach")
    _output(json_out, result.to_dict(), lines)


@command
def matrix(
    images: Annotated[list[str], typer.Argument(metavar="IMAGE", help="Image files (in the library or not), "
                                                "or id:N.", show_default=False)],
    labels: Annotated[str, typer.Option("--labels", "-l", metavar="SET_OR_FILE",
                                        help="A bundled label set's name, or a label file.", show_default=False)],
    template: TemplateOpt = None,
    plot: PlotOpt = None,
    library: LibraryOpt = None,
    model: ModelOpt = None,
    device: DeviceOpt = "auto",
    json_out: JsonOpt = False,
) -> None:
    """The cosine similarity of each image to each label, as in the CLIP tutorial.

    Prints one row per image; `--plot` draws the matrix with the images' thumbnails along
    one axis and the labels along the other.

    Example: `clipsearch matrix a.jpg b.jpg c.jpg --labels demo-colours --plot matrix.png`
    """
    with _open(library, model=model, device=device, create=model is not None) as lib:
        result = lib.similarity_matrix(images, labels, templates=template or ())
    if plot is not None:
        from .plots import similarity_figure

        similarity_figure(result, plot)
        _wrote(plot)
    for e in result.unreadable:
        _skipping(e.path, e.reason)
    lines = ["\t".join(["image", *result.labels])]
    lines += ["\t".join([path, *(f"{c:.4f}" for c in row)]) for path, row in zip(result.paths, result.cosine)]
    _output(json_out, result.to_dict(), lines)
    if result.unreadable:
        raise typer.Exit(1)


tag_app = typer.Typer(cls=_Group, no_args_is_help=False)
app.add_typer(tag_app, name="tag")


def _labels_or_classifier(labels: str | None, classifier: str | None) -> None:
    """A usage error (exit code 2) unless exactly one of them is given."""
    if labels is None and classifier is None:
        raise typer.BadParameter("give --labels SET_OR_FILE or --classifier NAME", param_hint="--labels")
    if labels is not None and classifier is not None:
        raise typer.BadParameter("give --labels or --classifier, not both", param_hint="--classifier")


@command(group=tag_app, callback=True, interrupted="interrupted: the tags are as they were before this run")
def tag(
    ctx: typer.Context,
    labels: LabelsOpt = None,
    classifier: ClassifierOpt = None,
    template: TemplateOpt = None,
    threshold: Annotated[float, typer.Option(
        "--threshold", min=0.0, max=1.0,
        help="Least probability (softmax over the label set) a tag needs; a label file's own per-label "
             "thresholds win. 0: only --top-k counts.")] = 0.1,
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="Most tags per image (before parents).")] = 5,
    min_cosine: Annotated[Optional[float], typer.Option(
        "--min-cosine", min=-1.0, max=1.0, help="Also require this cosine similarity to the label.",
        show_default=False)] = None,
    folder: FolderOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would be tagged; write nothing.")] = False,
    library: LibraryOpt = None,
    device: DeviceOpt = "auto",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Tag every image with labels from a label set or a trained classifier.

    Uses the stored vectors: nothing is decoded or encoded again. Re-running replaces the
    tags of the same label set (or classifier) only; manual tags always win. A confident
    label also tags its parents (from a YAML/TOML label file).
    Subcommands: `add`, `remove` (manual tags) and `export` (CSV, JSON, XMP sidecars).

    Example: `clipsearch tag --labels demo-colours --threshold 0.5`
    """
    if ctx.invoked_subcommand is not None:
        return
    _labels_or_classifier(labels, classifier)
    stages = _Stages(quiet or json_out)
    try:
        with _open(library, device=device, create=False) as lib:
            report = lib.tag(labels, templates=template or (), classifier=classifier, threshold=threshold,
                             top_k=top_k, min_cosine=min_cosine, folders=folder or (), dry_run=dry_run,
                             progress=stages)
    finally:
        stages.stop()
    verb = "would tag" if report.dry_run else "tagged"
    lines = [f"{n}\t{label}" for label, n in report.counts.items()]
    if not json_out:
        _stderr().print(f"{verb} {report.tagged} of {report.images} images with {report.tags} tags from "
                        f"{report.label_set} ({report.source}) in {report.seconds:.1f}s", markup=False)
    _output(json_out, report.to_dict(), lines)


ImageArg = Annotated[str, typer.Argument(metavar="IMAGE", help="An indexed image: its path, or id:N.",
                                         show_default=False)]
LabelsArg = Annotated[list[str], typer.Argument(metavar="LABEL", help="One or more labels.", show_default=False)]


@command(group=tag_app, name="add")
def tag_add(image: ImageArg, label: LabelsArg, library: LibraryOpt = None) -> None:
    """Tag an image by hand. Manual tags win over automatic ones and survive re-tagging.

    Example: `clipsearch tag add ~/Photos/rex.jpg dog "my dog"`
    """
    _tag_by_hand(library, image, label, removed=False)


@command(group=tag_app, name="remove")
def tag_remove(image: ImageArg, label: LabelsArg, library: LibraryOpt = None) -> None:
    """Take a label off an image by hand, automatic tags included; re-tagging will not put it back.

    Example: `clipsearch tag remove ~/Photos/rex.jpg cat`
    """
    _tag_by_hand(library, image, label, removed=True)


def _tag_by_hand(library: Path | None, image: str, labels: list[str], removed: bool) -> None:
    with _open(library, create=False) as lib:
        change = lib.remove_tag if removed else lib.add_tag
        for one in labels:
            image_id = change(image, one)
        path = lib.image_paths([image_id])[image_id]
    listed = ", ".join(map(repr, labels))
    _stderr().print(f"{'removed' if removed else 'added'} {listed} {'from' if removed else 'to'} {path} "
                    f"(id:{image_id})", markup=False)


class ExportFormat(str, Enum):
    csv = "csv"
    json = "json"
    xmp = "xmp"


class SidecarStyle(str, Enum):
    default = "default"
    lightroom = "lightroom"


@command(group=tag_app, name="export")
def tag_export(
    fmt: Annotated[ExportFormat, typer.Argument(
        help="csv or json: every tag to stdout (or --output); xmp: keywords into each image's XMP sidecar.")],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", metavar="FILE",
                                                   help="Write CSV/JSON to this file.", show_default=False)] = None,
    folder: FolderOpt = None,
    sidecar_style: Annotated[SidecarStyle, typer.Option(
        "--sidecar-style", help="XMP sidecar names: default photo.jpg.xmp (darktable, digiKam), lightroom "
                                "photo.xmp.")] = SidecarStyle.default,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="XMP: report what would change; write nothing.")] = False,
    library: LibraryOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Export tags: CSV or JSON of every tag, or XMP sidecars that photo tools read.

    XMP keywords go into `dc:subject`; an existing sidecar is merged, never clobbered, and
    keywords are only ever added.

    Example: `clipsearch tag export xmp --sidecar-style lightroom --dry-run`
    """
    from .tagging import to_csv, to_json

    with _open(library, create=False) as lib:
        if fmt is ExportFormat.xmp:
            report = lib.write_xmp(folder or (), sidecar_style.value, dry_run)
        else:
            tags = lib.image_tags(folder or ())
    if fmt is not ExportFormat.xmp:
        text = to_csv(tags) if fmt is ExportFormat.csv else to_json(tags) + "\n"
        if output is None:
            sys.stdout.write(text)
        else:
            output.write_text(text, encoding="utf-8")
            _wrote(output)
        return
    for e in report.errors:
        _skipping(e.path, e.reason)
    verb = "would write" if dry_run else "wrote"
    _output(json_out, report.to_dict(), [
        f"{verb} {report.keywords} keywords: {report.created} new sidecars, {report.updated} updated, "
        f"{report.unchanged} unchanged, {len(report.errors)} left alone"])


@command
def tags(library: LibraryOpt = None, json_out: JsonOpt = False) -> None:
    """Count the images carrying each tag, most common first.

    Example: `clipsearch tags --json`
    """
    with _open(library, create=False) as lib:
        counts = lib.tags()
    _output(json_out, [c.to_dict() for c in counts],
            [f"{c.images}\t{c.label}\t{','.join(c.sources)}" for c in counts], "no tags yet")


classifier_app = typer.Typer(cls=_Group, no_args_is_help=True)
app.add_typer(classifier_app, name="classifier")


@classifier_app.callback()
def _classifier() -> None:
    """Few-shot classifiers: a linear probe on the library's vectors, started from the
    zero-shot classifier of the same labels.

    Example: `clipsearch classifier train pets --examples ./examples`
    """


@command(group=classifier_app, name="train")
def classifier_train(
    name: Annotated[str, typer.Argument(metavar="NAME", help="Name to save the classifier under.",
                                        show_default=False)],
    examples: Annotated[Path, typer.Option(
        "--examples", "-e", metavar="DIR", help="A folder with one sub-folder of example images per label.",
        show_default=False)],
    labels: Annotated[Optional[str], typer.Option(
        "--labels", "-l", metavar="SET_OR_FILE",
        help="Take the labels' prompts, synonyms and parents from this set or file.",
        show_default=False)] = None,
    template: TemplateOpt = None,
    library: LibraryOpt = None,
    device: DeviceOpt = "auto",
    json_out: JsonOpt = False,
) -> None:
    """Train a few-shot classifier from example images, one sub-folder per label.

    A logistic regression on the frozen CLIP vectors, started from and pulled toward the
    zero-shot text weights. It is only used when cross-validation shows it beats zero-shot
    beyond chance, so a handful of examples does not do worse than zero-shot. Prints its
    cross-validated accuracy next to zero-shot's on the same examples.

    Example: `clipsearch classifier train pets --examples ./examples`
    """
    with _open(library, device=device, create=False) as lib:
        report = lib.train_classifier(name, examples, labels, templates=template or ())
    _output(json_out, report.to_dict(), [
        f"{report.name}: {len(report.labels)} labels, {report.examples} examples",
        f"cross-validated accuracy {report.cv_accuracy:.3f} ({report.folds} folds), "
        f"zero-shot {report.zero_shot_accuracy:.3f}",
        "the zero-shot weights won: the classifier keeps them" if report.regularisation is None
        else f"regularisation toward zero-shot: {report.regularisation}"])


@command(group=classifier_app, name="list")
def classifier_list(library: LibraryOpt = None, json_out: JsonOpt = False) -> None:
    """List the trained classifiers.

    Example: `clipsearch classifier list`
    """
    with _open(library, create=False) as lib:
        trained = lib.classifiers()
    _output(json_out, [c.to_dict() for c in trained],
            [f"{c.name}\t{len(c.labels)} labels\tcv {c.cv_accuracy:.3f}\tzero-shot {c.zero_shot_accuracy:.3f}"
             for c in trained], "no classifiers yet")


@command(group=classifier_app, name="remove")
def classifier_remove(name: Annotated[str, typer.Argument(metavar="NAME", help="The classifier's name.",
                                                         show_default=False)],
                      library: LibraryOpt = None) -> None:
    """Delete a trained classifier (its tags stay until re-tagged or removed).

    Example: `clipsearch classifier remove pets`
    """
    with _open(library, create=False) as lib:
        lib.remove_classifier(name)
    _stderr().print(f"removed the classifier {name}", markup=False)


@command
def serve(
    host: Annotated[str, typer.Option(
        "--host", metavar="HOST",
        help="Address to listen on. Other than loopback, anyone who can reach it sees your library.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", min=0, max=65535, help="Port; 0 picks a free one.")] = 8765,
    token: Annotated[Optional[str], typer.Option(
        "--token", envvar="CLIPSEARCH_TOKEN", metavar="TOKEN",
        help="Require this token on every request (Bearer header, or open "
                                                   "/?token=... once in the browser).", show_default=False)] = None,
    max_upload_mb: Annotated[float, typer.Option("--max-upload-mb", min=0.1, help="Largest request body.")] = 20.0,
    allow_remote_urls: Annotated[bool, typer.Option(
        "--allow-remote-urls", help="Let /knn-service fetch image_url from the network.")] = False,
    cors_origin: Annotated[Optional[list[str]], typer.Option(
        "--cors-origin", metavar="ORIGIN", help="Let pages from this origin call the API from a browser (e.g. a hosted "
                              "clip-retrieval front end). Repeatable.", show_default=False)] = None,
    library: LibraryOpt = None,
    device: DeviceOpt = "auto",
) -> None:
    """Serve the library in a browser and over HTTP: a search page, a JSON API (docs at
    /docs) and a clip-retrieval compatible /knn-service.

    Needs the web extra: `pip install 'clipsearch[web]'`.

    Example: `clipsearch serve --port 8765`
    """
    import socket

    try:
        import uvicorn

        from .web.app import create_app
    except ImportError as exc:
        raise ClipSearchError(f"clipsearch serve needs the web extra ({exc.name} is missing)",
                              hint="pip install 'clipsearch[web]'") from None
    if host not in ("127.0.0.1", "localhost", "::1"):
        _warn(f"listening on {host}: anyone who can reach this machine can browse your library"
              + ("" if token else "; consider --token"))
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        raise ClipSearchError(f"cannot listen on {host}:{port}: {exc.strerror}",
                              hint="pick another --port, or 0 for any free one") from None
    sock.listen(2048)  # connections wait in the backlog until the app is up
    bound = sock.getsockname()[1]
    with _open(library, device=device, create=False) as lib:
        app = create_app(lib, token=token, max_upload_bytes=int(max_upload_mb * 1024 * 1024),
                         allow_remote_urls=allow_remote_urls, cors_origins=tuple(cors_origin or ()), warm=True)
        shown = f"[{host}]" if ":" in host else host
        # The one line a script waits for: the URL, with the port actually bound.
        print(f"clipsearch serving {lib.root} at http://{shown}:{bound}/", flush=True)
        # A GET's query string may hold what the schema allows (100 folders of 4096
        # characters, percent-encoded: ~1.2 MB), not just h11's 16 KB request line.
        config = uvicorn.Config(app, log_level="warning", access_log=False, h11_max_incomplete_event_size=4 * 2**20)
        try:
            uvicorn.Server(config).run(sockets=[sock])
        except KeyboardInterrupt:
            # Ctrl-C is how a server is stopped: uvicorn has shut down (and raises the
            # signal again once it has), and there is nothing to resume.
            pass


def main() -> None:
    app(prog_name="clipsearch")


if __name__ == "__main__":
    main()
