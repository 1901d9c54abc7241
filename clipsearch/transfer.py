"""Moving a library's metadata to another database: from its SQLite file to PostgreSQL when
a library outgrows one machine, or back. The vectors and indexes stay in the folder, and
every row keeps its id, so they still match: nothing is embedded again.

A move copies every row in one transaction, then switches the folder over: it writes (or
sets aside) ``database.json`` and sets the old SQLite file aside. ``moving.json`` stands in
the folder from before the first write until the switch is done, and every open refuses
the library meanwhile, because which database holds the truth is not settled. A move that
stops, for any reason, is finished by running it again: the source is left whole until the
end, and copying replaces whatever an earlier attempt left in the target.

What was moved away from is kept, not deleted: the SQLite file as ``library.db.moved-TIME``,
a PostgreSQL database's rows where they are (with ``database.json.moved-TIME`` naming it).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import URL, select

from . import database
from .database import DB_FILE, LINK_FILE, SQLITE, Move
from .errors import LibraryError
from .results import MetadataMove
from .store import Store
from .tables import ImageRow


def move(folder: Path, to: str | None, progress: Callable[[str, int, int], None] | None = None) -> MetadataMove:
    """Move the metadata of the library in ``folder`` to ``to``: a PostgreSQL URL, or None
    (or ``"sqlite"``) for the folder's own SQLite file. The caller holds the writer lock."""
    started = time.perf_counter()
    target_url = database.url_of(folder, SQLITE if to in (None, "", SQLITE) else to)
    pending = database.read_move(folder)
    if pending is None:
        source_url = database.locate(folder, None, create=False) or database.sqlite_url(folder)
        plan = Move(database.name_of(source_url), database.name_of(target_url))
        if plan.source == plan.target:
            raise LibraryError(f"the metadata of the library at {folder} is in {plan.target} already")
    else:
        plan = pending
        if database.name_of(target_url) != plan.target:  # that one first
            raise database.interrupted(folder, plan)
        source_url = database.url_of(folder, plan.source)

    rows: dict[str, int] = {}
    library_id = None
    if not _copied(folder, plan):
        library_id, rows = _copy(folder, plan, source_url, target_url, begun=pending is not None, progress=progress)
    left = _switch(folder, plan, target_url, library_id)
    return MetadataMove(source=plan.source, target=plan.target, rows=rows, left_behind=left,
                        seconds=time.perf_counter() - started)


def _copied(folder: Path, plan: Move) -> bool:
    """Whether an interrupted move had copied everything and begun the switch: the source is
    then no longer where the folder pointed (its SQLite file or its link set aside)."""
    if plan.source == SQLITE:
        return not (folder / DB_FILE).exists()
    return plan.target == SQLITE and not (folder / LINK_FILE).exists()


def _copy(folder: Path, plan: Move, source_url: URL, target_url: URL, begun: bool,
          progress) -> tuple[str, dict[str, int]]:
    source = Store(folder, source_url)
    try:
        if not database.is_sqlite(source_url):
            source.pair(create=False)
        library_id = source.get_meta("library_id")
        if library_id is None:  # a SQLite library: named now, so that its target knows it
            library_id = uuid.uuid4().hex
            source.set_meta("library_id", library_id)
        # A database is checked (and refused) before anything is written; the folder's own
        # file is made only once moving.json says whose it is.
        target = None if database.is_sqlite(target_url) else _open_target(folder, target_url, library_id)
        try:
            if not begun:
                database.begin_move(folder, plan)
            if target is None:
                database.drop_journals(folder, DB_FILE)  # a set-aside file's: never replayed into the new one
                target = _open_target(folder, target_url, library_id)
            rows = source.copy_to(target, progress)
        finally:
            if target is not None:
                target.close()
        source.checkpoint()
    finally:
        source.close()
    return library_id, rows


def _open_target(folder: Path, url: URL, library_id: str) -> Store:
    """The target's store, its schema brought up to date; refused if it holds another library."""
    target = Store(folder, url)
    try:
        theirs = target.get_meta("library_id")
        if theirs is None:
            with target.engine.connect() as conn:
                holds_rows = conn.scalar(select(ImageRow.id).limit(1)) is not None
        if theirs not in (None, library_id) or (theirs is None and holds_rows):
            raise LibraryError(f"{target.where} holds the metadata of another library",
                               hint="move into an empty database: createdb NAME, then "
                                    "clipsearch move-db postgresql://USER@HOST/NAME")
    except BaseException:
        target.close()
        raise
    return target


def _switch(folder: Path, plan: Move, target_url: URL, library_id: str | None) -> str:
    """Point the folder at the target; each step may be repeated. What was left behind."""
    suffix = database.stamp()
    if plan.target == SQLITE:
        aside = database.set_aside(folder, LINK_FILE, suffix)
    else:
        if library_id is not None:  # else the interrupted run wrote it, before setting the file aside
            database.write_link(folder, target_url, library_id)
        aside = database.set_aside(folder, DB_FILE, suffix) if plan.source == SQLITE else None
    if plan.source == SQLITE:
        left = str(aside) if aside else f"{DB_FILE}.moved-*, set aside by the interrupted run"
    else:
        left = f"the rows in {plan.source}" + (f" (named by {aside.name})" if aside else "")
    database.end_move(folder)
    return left
