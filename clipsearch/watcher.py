"""``Watcher``: a library that follows its folders by itself.

It holds the library's writer lock for as long as it runs (so another writer is told
who keeps the library current, and nothing else races it), catches up with a full
index run, then waits for file-system events (``watchdog``: inotify, FSEvents,
ReadDirectoryChangesW). Events are gathered until the folders have been quiet for
``debounce`` seconds (a copy of a thousand files is one batch, not a thousand), and at
the latest ``max_wait`` seconds after the first, then the paths they name go through
:meth:`Library.update`: the same indexer as ``index``, with its crash safety, moves and
copies by content, and recorded errors. A full run every ``rescan`` seconds catches what
events miss: network drives, events dropped when the kernel's queue overflowed.
Changes made while no watcher ran are caught up by the first run, after a crash too.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

from .defaults import WATCH_DEBOUNCE_S as DEBOUNCE_S, WATCH_RESCAN_S as RESCAN_S
from .errors import ClipSearchError
from .images import is_image_path
from .results import IndexReport

MAX_WAIT_S = 10.0  # a batch is indexed at the latest this long after its first event
WHO = "clipsearch watch"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WatchStatus:
    """What a watcher has done so far, for a live status line."""

    folders: tuple[str, ...]
    state: str = "starting"  # catching up, watching, indexing, rescanning, stopped
    indexed: int = 0  # files added or re-embedded since the start
    moved: int = 0
    removed: int = 0
    errors: int = 0  # files that could not be indexed, and failed batches
    batches: int = 0
    last_event: str | None = None  # the last path an event named
    last_error: str | None = None
    updated_at: float = field(default_factory=time.time)


class Watcher:
    """Keeps ``library`` current with ``folders`` (already indexed, or indexed on start).
    ``options`` go to every index run (``exclude``, ``include_hidden``, ``follow_symlinks``,
    ``limits``, ``workers``); ``on_status`` hears of every change of :class:`WatchStatus`;
    ``who`` is what other writers are told holds the library."""

    def __init__(self, library, folders: Iterable[str | Path], *, debounce: float = DEBOUNCE_S,
                 max_wait: float = MAX_WAIT_S, rescan: float = RESCAN_S, options: dict | None = None,
                 on_status: Callable[[WatchStatus], None] | None = None, who: str = WHO):
        self.library = library
        self.folders = [Path(f).expanduser().absolute() for f in folders]
        self.debounce, self.max_wait, self.rescan = debounce, max(max_wait, debounce), rescan
        self.options = dict(options or {})
        self.who = who  # named to other writers while it holds the library
        self._on_status = on_status or (lambda status: None)
        self.status = WatchStatus(tuple(map(str, self.folders)))
        self._pending: set[str] = set()
        self._first = self._last = 0.0  # monotonic times of the batch's first and last event
        self._woken = threading.Condition()

    def run(self, stop: threading.Event) -> WatchStatus:
        """Watch until ``stop`` is set (or Ctrl-C). Raises :class:`LibraryLockedError` at
        once if another process is writing to the library."""
        from watchdog.observers import Observer

        with self.library.writing(self.who):
            observer = Observer()
            handler = _Events(self._event)
            for folder in self.folders:
                observer.schedule(handler, str(folder), recursive=True)
            observer.start()  # before the catch-up: what changes during it is not missed
            try:
                self._full("catching up")
                next_rescan = time.monotonic() + self.rescan
                while not stop.is_set():
                    batch = self._next_batch(stop, next_rescan)
                    if batch:
                        self._batch(batch)
                    if time.monotonic() >= next_rescan:
                        self._full("rescanning")
                        next_rescan = time.monotonic() + self.rescan
            finally:
                observer.stop()
                observer.join(timeout=10)
                self._set(state="stopped")
        return self.status

    # -- events -------------------------------------------------------------------------

    def _event(self, paths: list[str]) -> None:
        """Called on watchdog's thread with the paths one event names."""
        with self._woken:
            now = time.monotonic()
            if not self._pending:
                self._first = now
            self._pending.update(paths)
            self._last = now
            self._woken.notify()
        self._set(last_event=paths[-1])

    def _next_batch(self, stop: threading.Event, deadline: float) -> list[str]:
        """The paths of a batch once it is due, or nothing when ``stop`` is set or the
        ``deadline`` (of the next rescan) comes first."""
        with self._woken:
            while not stop.is_set():
                now = time.monotonic()
                if self._pending and (now - self._last >= self.debounce or now - self._first >= self.max_wait):
                    batch, self._pending = sorted(self._pending), set()
                    return batch
                if now >= deadline:
                    return []
                due = (min(self._last + self.debounce, self._first + self.max_wait) if self._pending
                       else deadline)
                # Short waits: a stop is noticed soon even without an event to wake us.
                self._woken.wait(timeout=min(max(due - now, 0.01), 0.5))
        return []

    # -- index runs ---------------------------------------------------------------------

    def _batch(self, paths: list[str]) -> None:
        self._set(state="indexing")
        self._count(lambda: self.library.update(paths, **self.options))
        self._set(state="watching")

    def _full(self, state: str) -> None:
        self._set(state=state)
        self._count(lambda: self.library.index(self.folders, **self.options))
        self._set(state="watching")

    def _count(self, run: Callable[[], IndexReport]) -> None:
        """One index run; its figures added to the status. A run that fails is reported and
        watching goes on: the next event, or rescan, tries again."""
        try:
            report = run()
        except ClipSearchError as exc:
            log.warning("an index run failed: %s", exc.message)
            self._set(errors=self.status.errors + 1, last_error=exc.message, batches=self.status.batches + 1)
            return
        s = self.status
        self._set(indexed=s.indexed + report.added + report.updated, moved=s.moved + report.moved,
                  removed=s.removed + report.removed, errors=s.errors + len(report.errors),
                  last_error=report.errors[-1].reason if report.errors else s.last_error, batches=s.batches + 1)

    def _set(self, **changes) -> None:
        self.status = replace(self.status, **changes, updated_at=time.time())
        self._on_status(self.status)


class _Events:
    """A watchdog handler that hands on the paths of events that can change the library:
    images and folders created, changed, moved or deleted. (Opening a file, or reading it,
    changes nothing; a folder's own modification only says that its entries changed, and
    their events say which.)"""

    _KINDS = {"created", "modified", "moved", "deleted", "closed"}

    def __init__(self, sink: Callable[[list[str]], None]):
        self._sink = sink

    def dispatch(self, event) -> None:
        if event.event_type not in self._KINDS or (event.is_directory and event.event_type == "modified"):
            return
        paths = [p for p in (event.src_path, getattr(event, "dest_path", "")) if p]
        paths = [p if isinstance(p, str) else p.decode(errors="surrogateescape") for p in paths]
        kept = [p for p in paths if event.is_directory or is_image_path(Path(p))]
        if kept:
            self._sink(kept)
