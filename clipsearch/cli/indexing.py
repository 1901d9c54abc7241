"""``clipsearch index``: add a folder's images to the library."""

from __future__ import annotations

import functools

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..defaults import ENGINES, WATCH_DEBOUNCE_S, WATCH_RESCAN_S
from .common import (
    RESUMABLE, DeviceOpt, JsonOpt, LibraryOpt, ModelOpt, ProgressBar, WatchLine, command, open_library, run_served,
    show, stderr, warn,
)


Engine = Enum("Engine", [(e, e) for e in ENGINES], type=str)

# The options of what index reads, shared by index and watch.
ExcludeOpt = Annotated[Optional[list[str]], typer.Option(
    "--exclude", "-x", metavar="GLOB", help="Skip files and folders matching this glob (name or full path). Repeatable.",
    show_default=False)]
HiddenOpt = Annotated[bool, typer.Option("--include-hidden", help="Also index hidden files and folders.")]
SymlinksOpt = Annotated[bool, typer.Option(
    "--follow-symlinks", help="Follow symlinks to folders and files (off: links are skipped).")]
MegapixelsOpt = Annotated[float, typer.Option(
    "--max-megapixels", min=0.01, help="Skip images larger than this (decompression bombs).")]
TimeoutOpt = Annotated[float, typer.Option(
    "--decode-timeout", min=0.01, help="Seconds one file may take to read and decode before it is skipped.")]
WorkersOpt = Annotated[Optional[int], typer.Option(
    "--workers", min=1, help="Decode processes. Default: one per CPU core.", show_default=False)]


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
    exclude: ExcludeOpt = None,
    include_hidden: HiddenOpt = False,
    follow_symlinks: SymlinksOpt = False,
    max_megapixels: MegapixelsOpt = 200.0,
    decode_timeout: TimeoutOpt = 60.0,
    workers: WorkersOpt = None,
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
    from ..cluster import RayOptions
    from ..decodepool import DecodeLimits

    bar = ProgressBar(quiet or json_out)
    with open_library(library, model=model, device=device) as lib:
        spec = lib.model
        if spec is not None and spec.is_random:
            warn(f"{spec} has RANDOM weights; results are meaningless.")
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
        show(True, report.to_dict(), [])
        return
    stderr().print(
        f"added {report.added}, updated {report.updated}, moved {report.moved}, unchanged {report.unchanged}, "
        f"removed {report.removed}, errors {len(report.errors)} in {report.seconds:.1f}s"
        + (f", precision {report.precision}" if report.precision else ""), markup=False)


@command
def watch(
    paths: Annotated[list[Path], typer.Argument(metavar="PATH", help="Folders to index and then follow.",
                                                show_default=False)],
    library: LibraryOpt = None,
    model: ModelOpt = None,
    device: DeviceOpt = "auto",
    exclude: ExcludeOpt = None,
    include_hidden: HiddenOpt = False,
    follow_symlinks: SymlinksOpt = False,
    max_megapixels: MegapixelsOpt = 200.0,
    decode_timeout: TimeoutOpt = 60.0,
    workers: WorkersOpt = None,
    debounce: Annotated[float, typer.Option(
        "--debounce", min=0.05, metavar="SECONDS", help="Seconds of quiet after a change before it is indexed: a copy of many files "
                                     "is one batch.")] = WATCH_DEBOUNCE_S,
    rescan: Annotated[float, typer.Option(
        "--rescan", min=0.1, metavar="MINUTES", help="Minutes between full re-scans, which catch what events miss (network drives, "
                                  "dropped events).")] = WATCH_RESCAN_S / 60,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No status line.")] = False,
) -> None:
    """Keep the library current: index the folders, then follow their changes as they happen.

    A file added, changed, moved or deleted is searchable (or gone) about a second after it
    settles. Other processes search meanwhile; one that would write is told that the
    watcher holds the library. Stop with Ctrl-C (or SIGTERM).

    Example: `clipsearch watch ~/Photos --model demo`
    """
    import signal
    import threading

    from ..decodepool import DecodeLimits
    from ..service import QueryService
    from ..watcher import Watcher

    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())  # a service manager's stop
    line = WatchLine(quiet)
    try:
        with open_library(library, model=model, device=device) as lib:
            options = dict(exclude=exclude or (), include_hidden=include_hidden, follow_symlinks=follow_symlinks,
                           workers=workers, limits=DecodeLimits(timeout_s=decode_timeout,
                                                                max_megapixels=max_megapixels))
            watcher = Watcher(lib, paths, debounce=debounce, rescan=rescan * 60, options=options,
                              on_status=line.show)
            try:
                with QueryService(lib.root, functools.partial(run_served, lib)).running():
                    status = watcher.run(stop)
            except KeyboardInterrupt:  # how a watcher is stopped: what it indexed is kept
                status = watcher.status
    finally:
        line.stop()
        signal.signal(signal.SIGTERM, previous)
    stderr().print(f"stopped watching: indexed {status.indexed}, moved {status.moved}, removed {status.removed}, "
                   f"errors {status.errors}", markup=False)
