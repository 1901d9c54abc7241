"""Reading, hashing and decoding files in worker processes that can be killed.

A photo library holds files that make decoders misbehave: truncated or crafted files
that hang a decoder or eat all memory, decompression bombs, files on a flaky disk.
Each file is therefore handled by a worker process under a memory limit, and a worker
that takes longer than the per-file time limit, or dies, is killed and replaced; its
file is recorded with the reason and the run goes on. Workers never import torch:
they return the model's input as a small uint8 array (see ``pixels.py``).

A worker first reads and hashes its file and asks the dispatcher whether that content
is already in the library (a moved, renamed or copied file); only unknown content is
decoded. The dispatcher is a thread of the indexing process that owns the workers, so
the main thread can spend all its time running the model.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

from .errors import ClipSearchError
from .pixels import PixelSpec


# Decode workers run at a lower priority than the model. On a 2-core CPU, ViT-B-32 on
# 12-megapixel JPEGs indexed at 11.8 images/s with equal priorities and 15.2 with this:
# torch's matrix threads wait for their slowest member, so every preemption of one of
# them by a decoder stalls both, while a niced decoder only fills the gaps.
DECODE_NICENESS = 10


@dataclass(frozen=True)
class DecodeLimits:
    """Bounds for one file: wall time, pixels and the worker's address space."""

    timeout_s: float = 60.0
    max_megapixels: float = 200.0
    memory_mb: int | None = 4096


def default_workers() -> int:
    """One decode process per CPU core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


@dataclass
class Decoded:
    """What became of one file: an error, known content (``same_content``), pixels, or
    (from a cluster) its vector."""

    key: Any
    content_hash: str | None = None
    error: str | None = None
    same_content: bool = False
    width: int = 0
    height: int = 0
    taken_ns: int | None = None
    pixels: Any = None  # uint8 (size, size, 3)
    signature: Any = None  # uint8 (pixelcheck.SIGNATURE_BYTES,), from a pool asked for them
    vector: Any = None  # float32 (dim,), where the file was embedded elsewhere (cluster.py)


# One thread each for the math libraries of a worker. They must be in the worker's
# environment from its first instruction: unpickling its arguments imports this module,
# which imports numpy, and OpenBLAS starts one thread per core right then (16 threads and
# 600 MB more address space on a 16-core machine, enough to trip the memory limit).
_ONE_THREAD = {var: "1" for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}


@contextmanager
def _environment(values: dict[str, str]):
    """``os.environ`` with ``values`` for the duration: what a spawned child inherits."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _worker_main(conn: Connection, limits: DecodeLimits, niceness: int = 0, signatures: bool = False) -> None:
    # Ctrl-C is the indexing process's to handle (it stops the workers); where SIGINT could
    # not be blocked from the start (see _sigint_blocked), it is ignored from here. (Only a
    # process's main thread may set a handler; tests run this loop in a thread.)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Keep each worker within its memory budget (its threads were set at spawn).
    if niceness and hasattr(os, "nice"):
        os.nice(niceness)
    if limits.memory_mb:
        try:
            import resource

            cap = limits.memory_mb * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        except (ImportError, ValueError, OSError):
            pass  # not on this platform: the time limit still bounds runaway decodes
    from PIL import Image

    from .errors import ImageError
    from .images import decode_image, hash_bytes, read_file
    from .pixelcheck import PIXEL_SPEC, signature
    from .pixels import model_pixels

    # Our megapixel cap is the one that applies, not Pillow's built-in default.
    Image.MAX_IMAGE_PIXELS = int(limits.max_megapixels * 1e6)
    conn.send(("ready", None))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, KeyboardInterrupt):
            return
        if msg is None:
            return
        key, path = msg
        try:
            data = read_file(path)
            digest = hash_bytes(data)
            conn.send(("hash", key, digest))
            spec = conn.recv()
            if spec is None:
                continue  # the library already has this content
            picture = decode_image(data, spec.size, limits.max_megapixels, os.path.splitext(path)[1])
            del data
            pixels = model_pixels(picture.image, spec)
            # duplicates' signature of the picture, while it is decoded anyway (duplicates
            # would decode every file again for it); never worth failing a file for.
            sig = None
            if signatures:
                try:
                    sig = signature(model_pixels(picture.image, PIXEL_SPEC), picture.width, picture.height)
                except Exception:
                    pass
            conn.send(("done", key, picture.width, picture.height, picture.taken_ns, pixels, sig))
        except ImageError as exc:
            conn.send(("error", key, exc.message))
        except MemoryError:
            conn.send(("error", key, f"decoding needed more than the {limits.memory_mb} MB memory limit"))
        except Exception as exc:  # a decoder bug must cost one file, not the run
            conn.send(("error", key, f"decoder failed: {type(exc).__name__}: {exc}"))


@contextmanager
def _sigint_blocked():
    # A terminal's Ctrl-C goes to the whole process group, workers included; a worker that
    # took it mid-file printed a KeyboardInterrupt traceback each. A child inherits the
    # signal mask of the thread that starts it and keeps it through exec, so a worker
    # started with SIGINT blocked never sees one, not even while it is still importing.
    # The mask is per thread, so only the caller's thread is touched, and only briefly.
    if not hasattr(signal, "pthread_sigmask"):  # Windows: _worker_main ignores it instead
        yield
        return
    # A process's first spawned child also starts multiprocessing's resource tracker, and
    # that start unblocks SIGINT in this thread when it is done (resource_tracker.py), so
    # the child itself would start with it open. Started first, the tracker leaves it be.
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()
    saved = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, saved)


@contextmanager
def _main_file_hidden():
    # A spawned child re-imports the parent's __main__ from its __file__. Workers need
    # nothing from __main__, and re-running it costs: inside a Ray actor it is Ray's worker
    # script, which imports all of Ray in every decoder, and a script fed on stdin
    # ("<stdin>") cannot be re-imported at all. So the child is told there is no main file.
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if path is None:
        yield
        return
    del main.__file__
    try:
        yield
    finally:
        main.__file__ = path


_STARTING = threading.Lock()


def start_child(process, environment: dict[str, str] | None = None) -> None:
    """Start a spawned ``process`` as every clipsearch child starts: one start at a time
    (the environment and ``__main__`` are the whole process's, and a cluster actor starts
    workers from two threads at once, see cluster.py), without re-running ``__main__``,
    deaf to the terminal's Ctrl-C (its parent stops it), and with ``environment`` added
    to what it inherits."""
    with _STARTING, _main_file_hidden(), _environment(environment or {}), _sigint_blocked():
        process.start()

# Workers that may fail to start in one run before it gives up: a start can fail once
# (a busy machine, a transient error), while a broken environment fails every time.
_START_FAILURES = 3


class _Worker:
    def __init__(self, ctx, limits: DecodeLimits, niceness: int = 0, signatures: bool = False):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, limits, niceness, signatures), daemon=True)
        start_child(self.proc, _ONE_THREAD)
        child.close()
        self.key: Any = None
        self.started = 0.0
        self.content_hash: str | None = None
        self.ready = False  # set once its imports are done: the time limit starts then

    @property
    def busy(self) -> bool:
        return self.key is not None

    @property
    def idle(self) -> bool:
        return self.ready and self.key is None

    def assign(self, key: Any, path: str) -> None:
        self.key, self.started, self.content_hash = key, time.monotonic(), None
        self.conn.send((key, path))

    def kill(self) -> None:
        self.proc.kill()
        self.proc.join(5)
        self.conn.close()

    def stop(self) -> None:
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.proc.join(2)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(2)
        self.conn.close()


class DecodePool:
    """Decode ``(key, path)`` jobs in ``workers`` processes; results come back as they finish.

    ``pixel_spec`` is called (once) when the first file needs decoding, so a run that only
    finds moved files never loads a model. ``is_known(content_hash)`` says whether the
    library already holds that content. With ``signatures``, each decoded file also
    comes with its pixel signature for ``duplicates`` (``pixelcheck.signature``).
    """

    def __init__(self, workers: int, pixel_spec: Callable[[], PixelSpec], is_known: Callable[[str], bool],
                 limits: DecodeLimits = DecodeLimits(), ahead: int = 64, niceness: int = DECODE_NICENESS,
                 keep_workers: bool = False, signatures: bool = False):
        if workers < 1:
            raise ValueError(f"need at least one decode worker, got {workers}")
        self.workers = workers
        self.limits = limits
        self.ahead = ahead
        self.niceness = niceness
        self.signatures = signatures
        self._pixel_spec = pixel_spec
        self._spec: PixelSpec | None = None
        self._is_known = is_known
        # With ``keep_workers``, idle workers outlive a run for the next one (a cluster
        # actor runs one per batch, and starting a worker, a fresh interpreter that imports
        # Pillow and numpy, costs ~0.5 s on the 2-core CPU machine); being daemons,
        # they end with the process that owns the pool.
        self._keep = keep_workers
        self._kept: list[_Worker] = []
        self._start_failures = 0  # in the current run

    def run(self, jobs: Iterable[tuple[Any, str]]) -> Iterator[Decoded]:
        """Yield one :class:`Decoded` per job, in completion order."""
        out: queue.Queue = queue.Queue()
        stop = threading.Event()
        thread = threading.Thread(target=self._dispatch, args=(deque(jobs), out, stop),
                                  name="decode-dispatcher", daemon=True)
        thread.start()
        try:
            while True:
                item = out.get()
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            thread.join()

    def _dispatch(self, todo: deque, out: queue.Queue, stop: threading.Event) -> None:
        ctx = mp.get_context("spawn")  # never fork a process that holds torch's threads
        workers, self._kept = self._kept, []
        self._start_failures = 0
        try:
            for w in [w for w in workers if not w.proc.is_alive()]:  # died while kept idle
                workers.remove(w)
                w.kill()
            workers += [self._worker(ctx)
                        for _ in range(min(self.workers, max(len(todo), 1)) - len(workers))]
            while not stop.is_set():
                for i, w in enumerate(workers):
                    if w.idle and todo and out.qsize() < self.ahead:
                        job = todo.popleft()
                        try:
                            w.assign(*job)
                        except OSError:  # it died while idle, so the file never reached it
                            todo.appendleft(job)
                            w.kill()
                            workers[i] = self._worker(ctx)
                if not todo and not any(w.busy for w in workers):
                    break
                listening = [w for w in workers if w.busy or not w.ready]
                if not listening:
                    time.sleep(0.01)  # the consumer is behind: let it catch up
                    continue
                for conn in wait([w.conn for w in listening], timeout=0.2):
                    w = next(x for x in listening if x.conn is conn)
                    workers[workers.index(w)] = self._handle(w, ctx, out)
                now = time.monotonic()
                for i, w in enumerate(workers):
                    if w.busy and now - w.started > self.limits.timeout_s:
                        out.put(Decoded(w.key, w.content_hash,
                                        error=f"decoding took longer than {self.limits.timeout_s:g}s; abandoned"))
                        w.kill()
                        workers[i] = self._worker(ctx)
        except BaseException as exc:  # hand it to the consumer rather than hang it
            out.put(exc)
        finally:
            for w in workers:
                if self._keep and not w.busy:  # one stopped mid-file is not reused
                    self._kept.append(w)
                else:
                    w.stop()
            out.put(None)

    def _worker(self, ctx) -> _Worker:
        return _Worker(ctx, self.limits, self.niceness, self.signatures)

    def _lost(self, w: _Worker, ctx, out: queue.Queue) -> _Worker:
        """A worker's process ended: its file failed (if it had one); a new worker replaces it."""
        w.proc.join(1)
        if not w.ready:
            self._start_failures += 1
            if self._start_failures >= _START_FAILURES:
                raise ClipSearchError(f"decode worker processes failed to start (exit code {w.proc.exitcode})",
                                      hint="run again with -v to see why") from None
        else:  # only a ready worker is given a file
            out.put(Decoded(w.key, w.content_hash,
                            error=f"the decoder crashed on this file (exit code {w.proc.exitcode})"))
        w.kill()
        return self._worker(ctx)

    def _handle(self, w: _Worker, ctx, out: queue.Queue) -> _Worker:
        try:
            msg = w.conn.recv()
        except (EOFError, OSError):
            return self._lost(w, ctx, out)
        kind, key = msg[0], msg[1]
        if kind == "ready":
            w.ready = True
            return w
        if kind == "hash":
            w.content_hash = msg[2]
            known = self._is_known(w.content_hash)
            if not known and self._spec is None:
                self._spec = self._pixel_spec()
            try:
                w.conn.send(None if known else self._spec)
            except OSError:  # it crashed right after hashing
                return self._lost(w, ctx, out)
            if known:
                out.put(Decoded(key, w.content_hash, same_content=True))
                w.key = None
            return w
        if kind == "done":
            out.put(Decoded(key, w.content_hash, width=msg[2], height=msg[3], taken_ns=msg[4], pixels=msg[5],
                            signature=msg[6]))
        else:
            out.put(Decoded(key, w.content_hash, error=msg[2]))
        w.key = None
        return w
