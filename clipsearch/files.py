"""The library folder's files: replaced whole or not at all, and locked between processes.

Every file clipsearch writes where a reader may look at the same time (indexes, label
embeddings, signatures, thumbnails, sidecars, small JSON records) goes through
:func:`write_atomic`. Locks: ``filelock`` takes them with ``flock`` on POSIX and
``msvcrt.locking`` on Windows, so a library on Windows has a real writer lock too. Each
call opens its own lock, so two in one process exclude each other as two processes do
(filelock's re-entrancy is per lock object, and none is shared here).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from filelock import FileLock, Timeout

from .errors import LibraryLockedError

WRITER_LOCK = "lock"  # in the library folder: held by whoever changes the library
WRITER = "writer.json"  # beside it, while held: who holds it, for the message another writer gets


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: a reader sees the old file or the new one, never half
    of one, and two writers racing each write a whole file (the last rename wins). The
    data reach the disk before the rename, so a power cut leaves the old file rather than
    an empty one. The file keeps the permissions of the one it replaces (new ones get the
    umask's)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        with suppress(FileNotFoundError):
            os.chmod(tmp, path.stat().st_mode & 0o7777)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def writer_lock(folder: Path, who: str | None = None) -> Iterator[None]:
    """The library in ``folder`` for one writer: refused at once, not waited for, while
    another holds it, since an index run may take hours. ``who`` (say ``clipsearch
    watch``) is named to whoever is refused meanwhile."""
    lock = FileLock(folder / WRITER_LOCK, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise _locked(folder) from None
    record = folder / WRITER
    try:
        if who is not None:
            write_atomic(record, json.dumps({"who": who, "pid": os.getpid()}).encode())
        yield
    finally:
        if who is not None:
            record.unlink(missing_ok=True)
        lock.release()


def _locked(folder: Path) -> LibraryLockedError:
    try:
        holder = json.loads((folder / WRITER).read_text())
        who, pid = str(holder["who"]), int(holder["pid"])
    except (OSError, ValueError, KeyError, TypeError):  # an ordinary writer, or one that just ended
        return LibraryLockedError(f"another clipsearch process is writing to {folder}",
                                  hint="wait for it to finish, then run this again")
    return LibraryLockedError(f"{who} (process {pid}) is writing to {folder}, and keeps it up to date",
                              hint=f"stop {who} (Ctrl-C, or kill {pid}) to write to the library yourself")


@contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path``, waited for: for short critical sections such as a
    schema migration."""
    with FileLock(path):
        yield
