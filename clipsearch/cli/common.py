"""What every ``clipsearch`` command shares: the app, the common options, the way errors,
Ctrl-C, results and progress are shown.

Results go to stdout (plain lines or ``--json``) so they can be piped; progress,
warnings and errors go to stderr. A :class:`ClipSearchError` becomes a one-line message
and exit code 1; usage errors exit with 2.
"""

from __future__ import annotations

import copy
import functools
import inspect
import json
import logging
import sys
import threading
import warnings
from contextlib import nullcontext
from contextvars import ContextVar
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from typer.core import TyperCommand, TyperGroup

from ..defaults import ENV_DB_URL, ENV_LIBRARY, library_folder
from ..errors import ClipSearchError



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
                # typer up to 0.28 shows an argument's type as its type's metavar (the
                # type copied, as click shares one per kind), from 0.29 as display_type_rich.
                if hasattr(param, "type"):
                    param.type = copy.copy(param.type)
                    param.type.get_metavar = lambda *args, **kwargs: ""
                param.display_type_rich = lambda ctx: None
        return super().format_help(ctx, formatter)


class _Command(_ReadableHelp, TyperCommand):
    pass


class Group(_ReadableHelp, TyperGroup):
    pass


app = typer.Typer(
    cls=Group,
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


def stderr():
    from rich.console import Console

    # soft_wrap: a message is one line however wide the terminal, and whole in a log file
    # (rich would break it at 80 columns where stderr is not a terminal).
    return Console(stderr=True, highlight=False, soft_wrap=True)


def skipping(path: str, reason: str) -> None:
    """A file a command could not use, on stderr: the path as given, never read as markup."""
    stderr().print(f"skipping {path}: {reason}", markup=False, highlight=False)


def warn(message: str) -> None:
    from rich.markup import escape

    stderr().print(f"[bold yellow]warning:[/] {escape(str(message))}")


def wrote(path: Path) -> None:
    """A file a command made besides its output, on stderr: stdout stays the results."""
    stderr().print(f"wrote {path}", markup=False)


def fail(exc: ClipSearchError) -> None:
    from rich.markup import escape

    err = stderr()
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
            fail(exc)
        except KeyboardInterrupt:
            stderr().print(interrupted, markup=False)
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
    """``fn`` with a ``--db-url`` option, which :func:`open_library` reads: one option beside every
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


def open_library(library: Path | None, **kwargs):
    served = _served.get()
    if served is not None and library_folder(library) == served.root:
        return nullcontext(served)  # a query service's own, open library: not closed after
    # Imported here, not at the top: `clipsearch --help` must not pay for SQLAlchemy and FAISS.
    from ..library import Library

    return Library.open(library, db_url=_db_url.get(), **kwargs)


# The library that the query service running this command holds open (see run_served).
_served: ContextVar = ContextVar("served", default=None)
_serving = threading.Lock()


def run_served(lib, argv: list[str], cwd: str) -> tuple[str, str, int]:
    """``clipsearch ARGV`` run in ``cwd`` on ``lib``, already open, for the query service:
    its stdout, stderr and exit code, exactly as a process of its own would give them.
    One at a time, since it changes the working folder while it runs."""
    import os

    from typer.testing import CliRunner

    with _serving:
        before, token = os.getcwd(), _served.set(lib)
        try:
            os.chdir(cwd)
            result = CliRunner().invoke(app, argv, prog_name="clipsearch")
        finally:
            os.chdir(before)
            _served.reset(token)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception  # a bug: the service says so, and the client runs the query itself
    return result.stdout, result.stderr, result.exit_code


class SidecarStyle(str, Enum):
    default = "default"
    lightroom = "lightroom"


SidecarStyleOpt = Annotated[SidecarStyle, typer.Option(
    "--sidecar-style", help="XMP sidecar names: default photo.jpg.xmp (darktable, digiKam), lightroom photo.xmp.")]


def show_xmp_report(report, json_out: bool) -> None:
    """What writing XMP sidecars did (``XmpReport``), the sidecars left alone on stderr."""
    for e in report.errors:
        skipping(e.path, e.reason)
    verb = "would write" if report.dry_run else "wrote"
    show(json_out, report.to_dict(), [
        f"{verb} {report.keywords} keywords: {report.created} new sidecars, {report.updated} updated, "
        f"{report.unchanged} unchanged, {len(report.errors)} left alone"])


def show(json_out: bool, data, lines: list[str], empty: str | None = None) -> None:
    """Every command's result: ``data`` as JSON, or text lines; ``empty`` goes to stderr."""
    if json_out:
        sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    elif not lines and empty:
        stderr().print(empty)
    else:
        sys.stdout.writelines(line + "\n" for line in lines)


def _show_version(value: bool) -> None:
    if value:
        from .. import __version__

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
    warnings.showwarning = lambda message, *a, **k: warn(message)


def live(console, quiet: bool) -> bool:
    # Bars and spinners only on a terminal: in a log file rich leaves a blank line for each.
    return not quiet and console.is_terminal


class ProgressBar:
    """Draws an ``index`` run on stderr: a bar with images/s and time left."""

    def __init__(self, quiet: bool):
        self.quiet = quiet  # no skipped-file lines either
        self._console = stderr()
        self._live = live(self._console, quiet)
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
            skipping(path, reason)

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


class Stages:
    """A progress bar per stage of a longer job (embedding labels, tagging), on stderr."""

    def __init__(self, quiet: bool):
        self._console = stderr()
        self._live = live(self._console, quiet)
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


class WatchLine:
    """A ``watch`` status on stderr: one live line on a terminal; elsewhere (a log) a line
    each time the watcher settles after a run, and when it stops for an error."""

    def __init__(self, quiet: bool, live_line: bool = True):
        self._console = stderr()
        self._quiet = quiet
        self._live = None
        if live_line and live(self._console, quiet):
            from rich.live import Live

            self._live = Live("", console=self._console, refresh_per_second=4, transient=True)
            self._live.start()
        self._said = None

    def show(self, status) -> None:
        if self._quiet:
            return
        folders = status.folders[0] if len(status.folders) == 1 else f"{len(status.folders)} folders"
        text = (f"{status.state} {folders}: indexed {status.indexed}, moved {status.moved}, removed {status.removed}, "
                f"errors {status.errors}")
        if status.last_event:
            text += f"; last change {status.last_event}"
        if self._live is not None:
            from rich.text import Text

            self._live.update(Text(text))
        elif status.state == "watching" and (status.indexed, status.moved, status.removed,
                                             status.errors) != self._said:
            self._said = (status.indexed, status.moved, status.removed, status.errors)
            self._console.print(text, markup=False)
            if status.last_error:
                self._console.print(f"last error: {status.last_error}", markup=False)

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()
