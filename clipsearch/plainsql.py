"""Plain SQL on a library's database: the statements on every search's path.

A cold search is a fresh process, and importing SQLAlchemy was nearly half its time (0.4 s
of 0.86 s on the 2-core CI machine, with its ORM models). On the folder's own SQLite file
these statements run on sqlite3 connections of their own, so a search imports SQLAlchemy
only when it needs more: a filter, or the writes of an index run. On PostgreSQL the same
text runs through the SQLAlchemy engine. So each statement is written once, in SQL that
both databases read: ``:name`` parameters, lists through :func:`in_list`, and ``ON
CONFLICT`` for upserts.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

if TYPE_CHECKING:
    from sqlalchemy import Engine

# A statement and its parameters, run inside a transaction; its rows as tuples.
Run = Callable[[str, "dict[str, Any] | None"], Iterable[tuple]]


def in_list(name: str, values: Sequence[Any]) -> tuple[str, dict[str, Any]]:
    """``(:name0, :name1, ...)`` and its parameters, for ``x IN ...``: a list as both drivers
    take one. An empty list is ``(NULL)``, which no value is in."""
    params = {f"{name}{n}": value for n, value in enumerate(values)}
    return "(" + (", ".join(f":{key}" for key in params) or "NULL") + ")", params


class PlainSQL:
    """Runs plain SQL on a library's database: the SQLite file at ``sqlite`` through sqlite3,
    else (``sqlite`` None) the database of ``engine()``, which is only called when needed."""

    def __init__(self, sqlite: Path | None, engine: Callable[[], Engine]):
        self.path = sqlite  # the SQLite file, or None for the engine's database
        self._engine = engine
        self._idle: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._generation = 0  # of the pool: close() starts the next

    @property
    def errors(self) -> tuple[type[Exception], ...]:
        """What a statement the database refuses raises: read-only, locked, gone."""
        if self.path is not None:
            return (sqlite3.Error,)
        from sqlalchemy.exc import DBAPIError

        return (DBAPIError,)

    def rows(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple]:
        """Every row of one statement, run in a transaction of its own."""
        with self.transaction() as run:
            return list(run(sql, params))

    @contextmanager
    def transaction(self, write: bool = False) -> Iterator[Run]:
        """One transaction: committed when the block ends, rolled back if it raises. Every
        statement of a reading one sees the same snapshot. ``write`` takes SQLite's write
        lock at once, so that a writer never has to upgrade a read and be refused."""
        if self.path is None:
            from sqlalchemy import text

            with self._engine().begin() as conn:
                # The driver's own cursor: plain tuples, without a SQLAlchemy Row per row.
                yield lambda sql, params=None: _cursor(conn.execute(text(sql), params or {}))
            return
        with self._connection() as conn:
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield lambda sql, params=None: conn.execute(sql, params or {})
            except BaseException:
                conn.rollback()
                raise
            conn.commit()

    def close(self) -> None:
        """Close the idle connections. As with SQLAlchemy's ``Engine.dispose()``, a statement
        run later opens a new one, and one in use is closed once it is done."""
        with self._lock:
            idle, self._idle, self._generation = self._idle, [], self._generation + 1
        for conn in idle:
            conn.close()

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        # A small pool: one connection per statement running at once (the web server's
        # threads), each reused, none shared by two threads at a time.
        with self._lock:
            conn = self._idle.pop() if self._idle else None
            generation = self._generation
        if conn is None:
            conn = self._open()
        try:
            yield conn
        finally:
            with self._lock:
                keep = generation == self._generation  # not closed while it ran
                if keep:
                    self._idle.append(conn)
            if not keep:
                conn.close()

    def _open(self) -> sqlite3.Connection:
        from .database import sqlite_pragmas

        # mode=rw: the file exists (the store made it), and a file moved or deleted under a
        # running process is an error, never a new, empty library.db (database._sqlite_opener).
        # isolation_level None: no transaction but those transaction() begins.
        conn = sqlite3.connect(f"file:{quote(str(self.path))}?mode=rw", uri=True, isolation_level=None,
                               check_same_thread=False)
        try:
            sqlite_pragmas(conn)
        except BaseException:
            conn.close()
            raise
        return conn


def _cursor(result) -> Iterable[tuple]:
    return result.cursor if result.returns_rows else ()
