"""Where a library's metadata lives: the folder's own SQLite file, or a PostgreSQL database.

A library folder always holds the vectors and the indexes (``vectorstore.py``,
``index.py``). The metadata (``store.py``) is ``library.db`` in that folder by default.
Given a URL (``--db-url`` or ``$CLIPSEARCH_DB_URL``) it lives in PostgreSQL instead, and
the folder remembers which database in ``database.json``: the URL without its password
(psycopg takes that from ``PGPASSWORD`` or ``~/.pgpass``; none is ever written to disk)
and the library's id, which the database keeps too, in ``meta``. A folder is never paired
with another library's database: its vector rows mean nothing there.

Both backends use the same models and run the same Alembic migrations (``migrations/``)
when a library is opened.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import LibraryEmptyError, LibraryError, SchemaTooNewError
from .files import exclusive_lock, write_atomic

if TYPE_CHECKING:  # imported where used: a search on a SQLite library does without SQLAlchemy
    from sqlalchemy import URL, Engine

DB_FILE = "library.db"
LINK_FILE = "database.json"
MOVE_FILE = "moving.json"  # a move of the metadata to another database is under way (Library.move_metadata)
SQLITE = "sqlite"  # a move's source or target: the folder's own library.db
JOURNALS = ("-wal", "-shm")  # the files SQLite keeps beside a database in WAL mode
_LOCK_KEY = 0x636C6970_73656172  # "clipsear": the advisory lock clipsearch takes to create a schema or a library
_POSTGRES_HINT = ("check that the server runs, the database exists (createdb DBNAME) and the URL is right, "
                  "postgresql://USER@HOST:PORT/DBNAME; a password comes from PGPASSWORD or ~/.pgpass")


@dataclass(frozen=True)
class Link:
    """``database.json``: the database a library folder's metadata is in."""

    url: str  # without a password
    library_id: str


def sqlite_url(folder: Path) -> URL:
    from sqlalchemy import URL

    return URL.create("sqlite", database=str(folder / DB_FILE))


def parse_url(url: str) -> URL:
    """A PostgreSQL URL, for the psycopg (3) driver: ``postgresql://`` and ``postgres://`` mean it too."""
    from sqlalchemy import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        # Not echoed: it may hold a password.
        raise LibraryError("the database URL cannot be read",
                           hint="write it as postgresql+psycopg://USER@HOST:PORT/DBNAME") from None
    backend, _, driver = parsed.drivername.partition("+")
    if backend in ("postgresql", "postgres") and driver in ("", "psycopg"):
        return parsed.set(drivername="postgresql+psycopg")
    raise LibraryError(f"clipsearch cannot keep a library's metadata in {display(parsed)}",
                       hint="give a PostgreSQL URL, postgresql+psycopg://USER@HOST:PORT/DBNAME, or none for "
                            "the library folder's own SQLite file")


def display(url: URL) -> str:
    """``url`` without its password: safe to show and to write down."""
    return url._replace(password=None).render_as_string(hide_password=False)  # set() cannot unset it


def is_sqlite(url: URL) -> bool:
    return url.get_backend_name() == "sqlite"


def engine(url: URL) -> Engine:
    from sqlalchemy import create_engine, event

    if is_sqlite(url):
        eng = create_engine(url, creator=_sqlite_opener(Path(url.database)))
        event.listen(eng, "connect", sqlite_pragmas)
        return eng
    # A dead server fails in seconds, not after the system's TCP timeout; the URL may say otherwise.
    args = {k: v for k, v in (("connect_timeout", 10), ("application_name", "clipsearch")) if k not in url.query}
    try:
        # Repeatable read: every transaction reads one snapshot, as SQLite's WAL gives, so a
        # reader's version check and the rows it then reads agree while an index run commits.
        return create_engine(url, isolation_level="REPEATABLE READ", pool_pre_ping=True, connect_args=args)
    except ImportError as exc:
        raise LibraryError("a PostgreSQL database needs the psycopg driver, which is not installed",
                           hint="pip install 'clipsearch[postgres]'") from exc


def _sqlite_opener(path: Path):
    """Connections to the SQLite file at ``path`` that create it only the first time. Once
    it exists, a process that still has the library open (a ``serve`` while ``move-db`` sets
    the file aside, or while the folder is deleted) gets an error on its next connection
    instead of quietly making an empty ``library.db`` that hides the library's vectors."""
    import sqlite3
    from urllib.parse import quote

    made = path.exists()

    def connect():
        nonlocal made
        conn = sqlite3.connect(f"file:{quote(str(path))}?mode={'rw' if made else 'rwc'}", uri=True,
                               check_same_thread=False)  # the pool hands connections across threads
        made = True
        return conn

    return connect


_BUSY_MS = 10_000  # how long a connection waits for another's write before it gives up


def sqlite_pragmas(dbapi_conn, _record=None) -> None:
    """What every connection to a library's SQLite file sets first (``_record``: SQLAlchemy's)."""
    cur = dbapi_conn.cursor()
    cur.execute(f"PRAGMA busy_timeout={_BUSY_MS}")
    _into_wal(cur)
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    # Up to 64 MB of page cache (the default is 2 MB): writing a million tags, or looking up
    # a large library's rows, stays in memory instead of re-reading B-tree pages.
    cur.execute("PRAGMA cache_size=-65536")
    cur.close()


def _into_wal(cur) -> None:
    """WAL mode, which lets searches read a consistent snapshot while an index run writes.
    Two processes that open a new library at once both convert its new file, and SQLite
    refuses one of them at once ("database is locked") rather than wait, whatever the busy
    timeout, since each holds a lock the other needs. Tried again, the file is WAL already
    and the statement only reads."""
    import sqlite3
    import time

    deadline = time.monotonic() + _BUSY_MS / 1000
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def unusable(url: URL, exc: Exception) -> LibraryError:
    """The error for a database that cannot be opened or reached."""
    if is_sqlite(url):
        return LibraryError(f"cannot open the database {url.database}: {exc}",
                            hint="is this a clipsearch library folder?")
    reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
    return LibraryError(f"cannot use the PostgreSQL database {display(url)}: {reason}", hint=_POSTGRES_HINT)


# -- the folder's link ------------------------------------------------------------------


def locate(folder: Path, url: str | None, create: bool) -> URL | None:
    """The database of the library in ``folder``: at ``url``, else the one the folder names,
    else (None) the folder's own SQLite file. Only the checks that need no connection; the
    folder is made when ``create`` and missing."""
    check_folder(folder)
    move = read_move(folder)
    if move is not None:  # which database holds the truth is not settled until it ends
        raise interrupted(folder, move)
    link = read_link(folder)
    if url is None and link is None:
        if not (folder / DB_FILE).exists():
            _new_folder(folder, create)
        return None
    parsed = parse_url(url if url is not None else link.url)
    if (folder / DB_FILE).exists():
        # Not a fresh, empty database beside it: the folder's vectors belong to its SQLite file.
        raise LibraryError(f"the library at {folder} keeps its metadata in its own {DB_FILE}, "
                           f"not in {display(parsed)}",
                           hint="leave out [[db_url]] and unset $CLIPSEARCH_DB_URL to open it, "
                                "or pick another [[library]] folder for this database")
    if link is None:
        _new_folder(folder, create)
    return parsed


def check_folder(folder: Path) -> None:
    """A library path that names a file says so, before anything reads a file inside it."""
    if folder.exists() and not folder.is_dir():
        raise LibraryError(f"the library path {folder} is a file, not a folder",
                           hint="give [[library]] (or $CLIPSEARCH_LIBRARY) a folder: a library's own, or a new one")


def _new_folder(folder: Path, create: bool) -> None:
    if not create:
        raise LibraryEmptyError.at(folder, None)
    folder.mkdir(parents=True, exist_ok=True)


def read_link(folder: Path) -> Link | None:
    found = _read_json(folder / LINK_FILE, ("url", "library_id"), "it names the database of this library")
    return Link(*found) if found else None


def _read_json(path: Path, fields: tuple[str, ...], what: str) -> list[str] | None:
    """The string ``fields`` of one of the folder's JSON files, or None if it is missing."""
    try:
        data = json.loads(path.read_text())
        return [str(data[field]) for field in fields]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        shape = "{" + ", ".join(f'"{field}": ...' for field in fields) + "}"
        raise LibraryError(f"cannot read {path}: {exc}", hint=f"{what}: {shape}") from exc


def write_link(folder: Path, url: URL, library_id: str) -> None:
    _write_json(folder / LINK_FILE, {"url": display(url), "library_id": library_id})


def _write_json(path: Path, data: dict) -> None:
    write_atomic(path, (json.dumps(data, indent=2) + "\n").encode())


def stamp() -> str:
    """A suffix for what a move leaves behind: when, so that a second move keeps the first's."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


# -- moving the metadata to another database --------------------------------------------


@dataclass(frozen=True)
class Move:
    """``moving.json``: a move of a library's metadata that has begun and not yet ended.
    ``source`` and ``target`` are URLs without a password, or :data:`SQLITE`."""

    source: str
    target: str


def read_move(folder: Path) -> Move | None:
    found = _read_json(folder / MOVE_FILE, ("source", "target"), "it records a move of this library's metadata")
    return Move(*found) if found else None


def interrupted(folder: Path, move: Move) -> LibraryError:
    """The error for a library whose move has begun and not ended: run it again to finish."""
    return LibraryError(f"moving the metadata of the library at {folder} to {move.target} was interrupted",
                        hint=f"finish it: `clipsearch move-db {move.target} --library {folder}`")


def begin_move(folder: Path, move: Move) -> None:
    _write_json(folder / MOVE_FILE, {"source": move.source, "target": move.target})


def end_move(folder: Path) -> None:
    (folder / MOVE_FILE).unlink(missing_ok=True)


def name_of(url: URL) -> str:
    """How a move names a database: :data:`SQLITE` for the folder's own file, else the URL."""
    return SQLITE if is_sqlite(url) else display(url)


def url_of(folder: Path, name: str) -> URL:
    return sqlite_url(folder) if name == SQLITE else parse_url(name)


def set_aside(folder: Path, name: str, suffix: str) -> Path | None:
    """Rename ``folder/name`` (and SQLite's journals beside it) to ``name.moved-SUFFIX``:
    out of the way of :func:`locate`, kept for the user. Returns the new path, if any."""
    target = folder / f"{name}.moved-{suffix}"
    if not (folder / name).exists():
        return None
    os.replace(folder / name, target)
    drop_journals(folder, name, target.name)
    return target


def drop_journals(folder: Path, name: str, to: str | None = None) -> None:
    """SQLite's journals of ``folder/name``, left by a reader that still has the file open or
    by a crash: renamed to follow the file to ``to``, else deleted. A journal beside a new
    file of the same name would be replayed into it. (The mover checkpointed them first.)"""
    for journal in JOURNALS:
        path = folder / (name + journal)
        if path.exists():
            if to is None:
                path.unlink()
            else:
                os.replace(path, folder / (to + journal))


# -- schema and creation ----------------------------------------------------------------


@contextmanager
def serialized(eng: Engine, folder: Path):
    """A transaction that no other clipsearch process runs at the same time on this
    database: two processes opening a new library at once create its schema, and pair it
    with its folder, once. PostgreSQL takes an advisory lock in the database rather than
    a file lock, as the folder may sit on shared storage where flock is unreliable."""
    from sqlalchemy import text

    if is_sqlite(eng.url):
        with exclusive_lock(folder / (DB_FILE + ".migrate.lock")), eng.begin() as conn:
            yield conn
        return
    with eng.connect() as conn:
        # Read committed: once the lock is ours, see what its last holder committed.
        conn = conn.execution_options(isolation_level="READ COMMITTED")
        with conn.begin():
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
            yield conn


# The newest revision in migrations/versions. A library already there opens with one
# query and without importing Alembic, a quarter of a second of a cold search
# (tests/test_store.py holds this to Alembic's own head).
SCHEMA_HEAD = "0008"


def migrate(eng: Engine, folder: Path) -> None:
    """Bring the schema up to the newest revision, under the lock that keeps two processes
    from doing it at once. A store checks first whether it is there already (one query,
    ``Store._schema_is_current``), and calls this only when it is not."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from .resources import migrations_dir

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.attributes["folder"] = str(folder)  # where the vector files are: 0003 writes one
    script = ScriptDirectory.from_config(cfg)
    head = script.get_current_head()
    try:
        with serialized(eng, folder) as conn:
            _upgrade(conn, cfg, script, head, folder)
    except LibraryError:
        raise
    except Exception as exc:  # not a usable database, or not reachable
        raise unusable(eng.url, exc) from exc


def _upgrade(conn, cfg, script, head: str, folder: Path) -> None:
    from alembic import command
    from alembic.runtime.migration import MigrationContext

    current = MigrationContext.configure(conn).get_current_revision()
    if current == head:
        return  # another process got here first
    known = {rev.revision for rev in script.walk_revisions()}
    if current is not None and current not in known:
        raise SchemaTooNewError(f"the library at {folder} was written by a newer clipsearch (schema {current})",
                                hint="upgrade clipsearch: pip install -U clipsearch")
    cfg.attributes["connection"] = conn
    command.upgrade(cfg, "head")
