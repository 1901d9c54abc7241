"""Locks between processes, on files in the library folder.

``filelock`` takes them with ``flock`` on POSIX and ``msvcrt.locking`` on Windows, so a
library on Windows has a real writer lock too. Each call opens its own lock, so two in
one process exclude each other as two processes do (filelock's re-entrancy is per lock
object, and none is shared here).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from .errors import LibraryLockedError

WRITER_LOCK = "lock"  # in the library folder: held by whoever changes the library


@contextmanager
def writer(folder: Path) -> Iterator[None]:
    """The library in ``folder`` for one writer: refused at once, not waited for, while
    another holds it, since an index run may take hours."""
    lock = FileLock(folder / WRITER_LOCK, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise LibraryLockedError(f"another clipsearch process is writing to {folder}",
                                 hint="wait for it to finish, then run this again") from None
    try:
        yield
    finally:
        lock.release()


@contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path``, waited for: for short critical sections such as a
    schema migration."""
    with FileLock(path):
        yield
