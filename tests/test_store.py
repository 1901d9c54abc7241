"""The metadata store on SQLite and on PostgreSQL: migrations up and down, change detection
by path prefix, batch commits, versions, caches and tags.

``backend`` (conftest.py) runs each test on the library's own SQLite file (None) and on a
fresh database of a throwaway PostgreSQL server (its URL). The tests about SQLite files
themselves (WAL, a file that is not a database, libraries from before the vector file)
run on SQLite only.
"""

import sqlite3
import threading
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import create_engine, inspect, text, update

from clipsearch.errors import LibraryError, SchemaTooNewError
from clipsearch.plainsql import in_list
from clipsearch.results import ModelIdentity
from clipsearch.store import FailedImage, IndexedImage, MovedImage, Store
from clipsearch.tables import TextCacheRow

HEAD = "0008"


def item(path, vec=(1.0, 0.0), size=10, mtime=1):
    return IndexedImage(path, size, mtime, "h" + path, 4, 3, np.array(vec, np.float32))


def store(tmp_path, backend, dim=2) -> Store:
    s = Store(tmp_path, backend)
    s.set_model_identity(ModelIdentity("m", None, dim))
    return s


def test_migrations_create_the_schema_and_are_idempotent(tmp_path, backend):
    Store(tmp_path, backend).close()
    s = Store(tmp_path, backend)
    tables = set(inspect(s.engine).get_table_names())
    assert {"images", "text_cache", "image_cache", "meta", "tags", "classifiers", "alembic_version"} <= tables
    assert "embeddings" not in tables
    with s.engine.connect() as conn:
        assert conn.scalar(text("select version_num from alembic_version")) == HEAD
    s.close()


def test_the_schema_head_is_alembics_and_an_up_to_date_library_opens_without_alembic(tmp_path):
    import subprocess
    import sys

    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from clipsearch.database import SCHEMA_HEAD
    from clipsearch.resources import migrations_dir

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    assert ScriptDirectory.from_config(cfg).get_current_head() == SCHEMA_HEAD
    Store.open(tmp_path / "lib").close()  # made, and migrated to the head
    code = ("import sys; from pathlib import Path; from clipsearch.store import Store; "
            f"Store.open(Path({str(tmp_path / 'lib')!r})).close(); print('alembic' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"


def test_sqlite_runs_in_wal_mode(tmp_path):
    Store(tmp_path).close()
    assert sqlite3.connect(tmp_path / "library.db").execute("pragma journal_mode").fetchone()[0] == "wal"


def test_connections_that_open_a_new_database_at_once_all_succeed(tmp_path):
    # SQLite refuses one of two connections that convert a new file to WAL at the same
    # moment, at once and whatever the busy timeout: two `index` runs started together on a
    # new library failed one of them with "database is locked" instead of the lock message.
    from clipsearch import database

    rounds, width, failures = 150, 4, []
    for r in range(rounds):
        path = tmp_path / f"{r}.db"
        start = threading.Barrier(width)

        def connect():
            conn = sqlite3.connect(path, check_same_thread=False)
            try:
                start.wait()
                database.sqlite_pragmas(conn)  # what each new connection of a library runs
                failures.append(conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal")
            except Exception as exc:  # noqa: BLE001 - what failed is the assertion's message
                failures.append(repr(exc))
            finally:
                conn.close()

        threads = [threading.Thread(target=connect) for _ in range(width)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert failures == [False] * rounds * width, [f for f in failures if f is not False]


def test_newer_schema_is_refused_with_a_clear_error(tmp_path, backend):
    s = Store(tmp_path, backend)
    with s.engine.begin() as conn:
        conn.execute(text("update alembic_version set version_num='9999_future'"))
    s.close()
    with pytest.raises(SchemaTooNewError, match="newer clipsearch"):
        Store(tmp_path, backend)


def test_a_file_that_is_not_a_database_is_a_library_error(tmp_path):
    (tmp_path / "library.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(LibraryError):
        Store(tmp_path)


def test_model_identity_round_trip(tmp_path, backend):
    s = Store(tmp_path, backend)
    assert s.model_identity() is None
    s.set_model_identity(ModelIdentity("ViT-B-32", "laion2b_s34b_b79k", 512))
    assert s.model_identity() == ModelIdentity("ViT-B-32", "laion2b_s34b_b79k", 512)
    s.close()


def test_plain_sql_commits_a_transaction_whole_or_not_at_all(tmp_path, backend):
    s = store(tmp_path, backend)
    with pytest.raises(RuntimeError):
        with s.sql.transaction(write=True) as run:
            run("INSERT INTO meta (key, value) VALUES (:key, :value)", {"key": "half", "value": "done"})
            raise RuntimeError("a crash before the commit")
    assert s.get_meta("half") is None
    s.set_meta("roots", "[]")
    s.set_meta("roots", '["/photos"]')  # an upsert: the second write replaces the first
    assert s.roots() == ["/photos"]
    listed, params = in_list("key", [])
    assert s.sql.rows(f"SELECT key FROM meta WHERE key IN {listed}", params) == []
    s.close()
    assert s.get_meta("roots") == '["/photos"]'  # closed, as an engine is disposed: it connects again
    s.close()


def test_threads_share_the_plain_sql_connections_one_at_a_time(tmp_path):
    s = store(tmp_path, None)
    start, failures = threading.Barrier(8), []

    def work(n):
        start.wait()
        try:
            for i in range(40):
                s.set_meta(f"thread {n}", str(i))
                with s.sql.transaction() as run:  # its own snapshot, never another thread's transaction
                    assert list(run("SELECT value FROM meta WHERE key = :key", {"key": f"thread {n}"})) == [(str(i),)]
        except Exception as exc:  # noqa: BLE001 - what failed is the assertion's message
            failures.append(repr(exc))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert 1 <= len(s.sql._idle) <= 8  # reused: one connection per thread at most, not one per statement
    s.close()


def test_known_files_matches_whole_folder_names_and_odd_characters(tmp_path, backend):
    # Byte order, whatever the server's collation: ICU's en-US on the test server puts
    # '/p/Photos/...' and '/p/photos/...' side by side, and would find one under the other.
    s = store(tmp_path, backend)
    inside = ["/p/photos/a.jpg", "/p/photos/sub/b.jpg", "/p/photos/é.jpg", "/p/photos/Z.JPG"]
    outside = ["/p/photos2/c.jpg", "/p/photos_x/d.jpg", "/p/Photos/f.jpg", "/p/photös/g.jpg", "/p/photos-x/h.jpg",
               "/p/photos0/i.jpg", "/p/PHOTOS/j.jpg"]
    odd = ["/p/100%/e.jpg", "/p/a_b/k.jpg", "/p/single.jpg", "/p/日本/l.jpg"]
    s.commit_batch([item(p) for p in inside + outside + odd])
    assert set(s.known_files([Path("/p/photos")])) == set(inside)
    assert set(s.known_files([Path("/p/photos/")])) == set(inside)
    assert set(s.known_files([Path("/p/100%")])) == {"/p/100%/e.jpg"}
    assert set(s.known_files([Path("/p/a_b")])) == {"/p/a_b/k.jpg"}
    assert set(s.known_files([Path("/p/日本")])) == {"/p/日本/l.jpg"}
    assert set(s.known_files([Path("/p/Photos")])) == {"/p/Photos/f.jpg"}
    assert set(s.known_files([Path("/p/single.jpg")])) == {"/p/single.jpg"}
    assert len(s.known_files([Path("/p")])) == len(inside + outside + odd)
    by_path = {r.path: r.id for r in s.known_files([Path("/p")]).values()}
    assert {by_path[p] for p in inside} == set(s.ids_matching(folders=["/p/photos"]).tolist())
    # Extensions match whatever their case, on both backends.
    jpg = s.ids_matching(folders=["/p/photos"], extensions=["jpg"])
    assert sorted(jpg.tolist()) == sorted(by_path[p] for p in inside)
    assert s.ids_matching(extensions=["JPG"]).size == len(inside + outside + odd)
    # Dates: EXIF time if known, else the file's; the upper bound is exclusive.
    s.commit_batch([item("/q/old.jpg", mtime=100), item("/q/new.jpg", mtime=300),
                    IndexedImage("/q/taken.jpg", 10, 900, "h", 4, 3, np.array((1.0, 0.0), np.float32), taken_ns=200)])
    by_path = {r.path: r.id for r in s.known_files([Path("/q")]).values()}
    assert sorted(s.ids_matching(folders=["/q"], after_ns=200, before_ns=300).tolist()) == [by_path["/q/taken.jpg"]]
    assert sorted(s.ids_matching(folders=["/q"], after_ns=101).tolist()) == sorted([by_path["/q/taken.jpg"],
                                                                                     by_path["/q/new.jpg"]])
    s.close()


def test_batches_bump_the_vector_version_and_append_vectors(tmp_path, backend):
    s = store(tmp_path, backend)
    assert s.vectors_version() == 0
    ids, rows = s.commit_batch([item("/a.jpg", (1, 0)), item("/b.jpg", (0, 1))])
    assert s.vectors_version() == 1 and rows.tolist() == [0, 1]
    got_ids, matrix = s.vectors()
    assert sorted(got_ids) == sorted(ids) and np.allclose(matrix[list(got_ids).index(ids[1])], [0, 1])
    # Re-indexing a path keeps its id and appends its new vector; removing it drops it.
    again, again_rows = s.commit_batch([item("/a.jpg", (0.6, 0.8), mtime=2)])
    assert again.tolist() == [ids[0]] and again_rows.tolist() == [2]
    s.commit_batch(removed=[ids[1]])
    got_ids, matrix = s.vectors()
    assert s.vectors_version() == 3 and got_ids.tolist() == [ids[0]]
    assert np.allclose(matrix[0], [0.6, 0.8], atol=1e-3)
    assert len(s.vector_file()) == 3  # append-only: dead rows stay until compaction
    s.commit_batch(moved=[MovedImage(int(ids[0]), "/c.jpg", 10, 3)])
    assert s.vector_state() == (4, 1) and s.locate([ids[0]]) == {ids[0]: ("/c.jpg", 2)}
    [(path, width, height, when)] = s.hits([ids[0]]).values()
    assert (path, width, height, when) == ("/c.jpg", 4, 3, 3)
    s.close()


def test_compaction_keeps_live_vectors_and_drops_dead_rows(tmp_path, backend):
    s = store(tmp_path, backend)
    ids, _ = s.commit_batch([item(f"/{n}.jpg", (np.cos(n), np.sin(n))) for n in range(10)])
    s.commit_batch(removed=ids[:4].tolist())
    s.commit_batch([item("/9.jpg", (1, 0), mtime=5)])
    before = dict(zip(*s.vectors()))
    old_path = s.vector_file().path
    new = s.compact()
    assert new.generation == 2 and len(new) == 6 and not old_path.exists()
    after = dict(zip(*s.vectors()))
    assert before.keys() == after.keys() and all(np.allclose(before[i], after[i]) for i in before)
    s.close()
    assert Store(tmp_path, backend).generation() == 2


def test_a_failed_file_is_recorded_with_its_reason_and_loses_its_vector(tmp_path, backend):
    s = store(tmp_path, backend)
    s.commit_batch([item("/a.jpg")])
    s.commit_batch(failed=[FailedImage("/a.jpg", 5, 9, "broken image: truncated")])
    assert [(e.path, e.reason) for e in s.errors()] == [("/a.jpg", "broken image: truncated")]
    assert s.counts() == {"indexed": 0, "error": 1}
    assert len(s.vectors()[0]) == 0
    with pytest.raises(KeyError):
        s.vector_of(1)
    s.close()


def test_the_text_cache_keeps_the_most_recently_used(tmp_path, backend):
    s = store(tmp_path, backend)
    s.cache_texts("m", {"a dog": np.array([1, 0], np.float32), "a cat": np.array([0, 1], np.float32)})
    two_hours = 2 * 3600 * 10**9  # uses are recorded to the hour: make both entries old
    with s.engine.begin() as conn:
        conn.execute(update(TextCacheRow).values(used_at=TextCacheRow.used_at - two_hours))
    assert s.cached_texts("m", ["a dog", "a bird"]).keys() == {"a dog"}  # and marks it used
    assert s.cached_texts("other model", ["a dog"]) == {}
    s.cache_texts("m", {"a bird": np.array([1, 1], np.float32)}, keep=2)
    assert s.cached_texts("m", ["a dog", "a cat", "a bird"]).keys() == {"a dog", "a bird"}
    s.cache_texts("m", {"a bird": np.array([1, 1], np.float32)})  # again: no harm
    s.cache_images("m", {"f" * 32: np.array([0.5, 0.5], np.float32)})
    assert np.allclose(s.cached_images("m", ["f" * 32, "0" * 32])["f" * 32], [0.5, 0.5])
    s.close()


def test_tags_are_replaced_per_label_set_and_manual_ones_win(tmp_path, backend):
    s = store(tmp_path, backend)
    ids, _ = s.commit_batch([item(f"/p/{n}.jpg") for n in range(3)])
    a, b, c = ids.tolist()
    before = datetime.utcnow() - timedelta(seconds=5)
    assert s.replace_tags("zero-shot", "colours", [(np.array([a, a, b]), ["red", "round", "blue"],
                                                     np.array([0.9, 0.4, 0.8], np.float32))]) == 3
    s.replace_tags("zero-shot", "shapes", [(np.array([c]), ["round"], np.array([0.7], np.float32))])
    s.set_manual_tag(b, "blue", removed=True)  # taken off by hand: hides the automatic tag
    s.set_manual_tag(c, "cat", removed=False)
    counts = {t.label: (t.images, t.sources) for t in s.tag_counts()}
    assert counts == {"red": (1, ["zero-shot"]), "round": (2, ["zero-shot"]), "cat": (1, ["manual"])}
    tags = s.tags_of()
    assert {i: [t.label for t in ts] for i, ts in tags.items()} == {a: ["red", "round"], c: ["cat", "round"]}
    created = tags[a][0].created_at
    assert created.tzinfo is None and before < created < datetime.utcnow() + timedelta(seconds=5)  # naive UTC
    assert sorted(s.ids_matching(tags=["round"]).tolist()) == [a, c]
    assert s.ids_matching(tags=["round"], no_tags=["cat"]).tolist() == [a]
    # A new run of one label set replaces that set's tags only, under the given folders.
    s.replace_tags("zero-shot", "colours", [(np.array([b]), ["green"], np.array([0.6], np.float32))])
    assert {t.label for t in s.tag_counts()} == {"green", "round", "cat"}
    s.close()


def _alembic(folder: Path):
    from alembic.config import Config

    from clipsearch.resources import migrations_dir

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.attributes["folder"] = str(folder)
    return cfg


def _engine(folder: Path, backend: str | None):
    return create_engine(backend or f"sqlite:///{folder / 'library.db'}")


def _migrate(folder: Path, backend: str | None, *steps: tuple[str, str]) -> None:
    """Run Alembic ``(upgrade|downgrade, revision)`` steps on a connection, as clipsearch does."""
    from alembic import command

    cfg = _alembic(folder)
    engine = _engine(folder, backend)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        for action, revision in steps:
            getattr(command, action)(cfg, revision)
    engine.dispose()


def _schema(folder: Path, backend: str | None) -> tuple[set[str], str | None, str | None]:
    """The tables, the revision, and on PostgreSQL the collation of images.path."""
    engine = _engine(folder, backend)
    with engine.connect() as conn:
        tables = set(inspect(conn).get_table_names())
        revision = conn.scalar(text("select version_num from alembic_version")) if "alembic_version" in tables else None
        collation = None
        if backend and "images" in tables:
            collation = conn.scalar(text("select collation_name from information_schema.columns "
                                         "where table_name = 'images' and column_name = 'path'"))
    engine.dispose()
    return tables - {"alembic_version"}, revision, collation


def _id_types(backend: str) -> dict[str, str]:
    """PostgreSQL's types of the id columns and of their sequences."""
    engine = _engine(Path(), backend)
    with engine.connect() as conn:
        types = dict(conn.execute(text(
            "select table_name || '.' || column_name, data_type from information_schema.columns where "
            "(table_name, column_name) in (('images', 'id'), ('tags', 'id'), ('tags', 'image_id'))")).all())
        types.update(conn.execute(text("select sequencename, data_type::text from pg_sequences")).all())
    engine.dispose()
    return types


def test_migrations_go_up_to_head_down_to_base_and_up_again(tmp_path, backend):
    _migrate(tmp_path, backend, ("upgrade", "head"))
    tables, revision, collation = _schema(tmp_path, backend)
    assert revision == HEAD and {"images", "meta", "tags", "classifiers", "text_cache", "image_cache", "albums",
                                "album_members"} == tables
    assert collation == ("C" if backend else None)
    if backend:
        assert set(_id_types(backend).values()) == {"bigint"}
        _migrate(tmp_path, backend, ("downgrade", "0006"))
        assert set(_id_types(backend).values()) == {"integer"}
    _migrate(tmp_path, backend, ("downgrade", "0005"))
    assert _schema(tmp_path, backend)[2] is None  # the database's default again
    _migrate(tmp_path, backend, ("downgrade", "base"))
    assert _schema(tmp_path, backend)[:2] == (set(), None)
    _migrate(tmp_path, backend, ("upgrade", "head"))
    assert _schema(tmp_path, backend) == (tables, HEAD, collation)
    s = store(tmp_path, backend)  # and the store takes it as it is
    s.commit_batch([item("/a.jpg")])
    assert s.counts()["indexed"] == 1
    s.close()


def test_ids_past_32_bits_work(tmp_path, backend):
    # A billion images with a few tags each pass 2**31 tag ids: 64-bit ids on both backends.
    s = store(tmp_path, backend)
    big = 2**31 + 5
    ids, _ = s.commit_batch([IndexedImage("/a.jpg", 1, 1, "ha", 4, 3, np.array([1.0, 0.0], np.float32),
                                          new_id=big)])
    assert ids.tolist() == [big]
    assert s.commit_batch([item("/b.jpg")])[0].tolist() == [big + 1]  # numbered by the database
    assert s.next_image_id() == big + 2
    with s.engine.begin() as conn:  # tag ids past 32 bits too
        if backend:
            conn.execute(text("select setval(pg_get_serial_sequence('tags', 'id'), 2147483658)"))
        else:
            conn.execute(text("insert into tags (id, image_id, label, source, label_set, score, removed, created_at) "
                              "values (2147483658, :i, 'x', 'manual', '', 1, 0, '2026-01-01 00:00:00')"), {"i": big})
    s.replace_tags("zero-shot", "colours", [(np.array([big, big + 1]), ["red", "blue"],
                                             np.array([0.9, 0.8], np.float32))])
    with s.engine.connect() as conn:
        assert conn.scalar(text("select min(id) from tags where source = 'zero-shot'")) > 2**31 + 10
    assert {i: [t.label for t in rows] for i, rows in s.tags_of([big, big + 1]).items()} == \
        {big: ["red", "x"] if not backend else ["red"], big + 1: ["blue"]}
    s.close()


def test_an_old_library_is_upgraded_on_open_and_keeps_its_rows(tmp_path, backend):
    _migrate(tmp_path, backend, ("upgrade", "0001"))
    engine = _engine(tmp_path, backend)
    with engine.begin() as conn:
        conn.execute(text("insert into images (path, size, mtime_ns, status, indexed_at) "
                          "values ('/old.jpg', 5, 7, 'indexed', '2026-01-01 00:00:00')"))
    engine.dispose()
    s = Store(tmp_path, backend)  # upgrades to head
    [row] = s.images([1]).values()
    assert (row.path, row.taken_ns, row.when_ns) == ("/old.jpg", None, 7)
    s.close()
    _migrate(tmp_path, backend, ("downgrade", "0001"))  # and the new migrations can be undone
    engine = _engine(tmp_path, backend)
    with engine.connect() as conn:
        cols = {c["name"] for c in inspect(conn).get_columns("images")}
        assert conn.scalar(text("select path from images")) == "/old.jpg"
    engine.dispose()
    assert "taken_ns" not in cols and "path" in cols


def test_vectors_in_sqlite_move_to_the_vector_file_on_upgrade(tmp_path):
    db = tmp_path / "library.db"
    _migrate(tmp_path, None, ("upgrade", "0002"))
    vectors = {1: np.array([0.6, 0.8], np.float32), 2: np.array([1.0, 0.0], np.float32)}
    engine = create_engine(f"sqlite:///{db}")
    with engine.begin() as conn:
        conn.exec_driver_sql("insert into meta (key, value) values ('model', 'm'), ('dim', '2')")
        for i, v in vectors.items():
            conn.exec_driver_sql("insert into images (id, path, size, mtime_ns, status, indexed_at) values "
                                 f"({i}, '/{i}.jpg', 5, 7, 'indexed', '2026-01-01 00:00:00')")
            conn.exec_driver_sql("insert into embeddings (image_id, vector) values (?, ?)", (i, v.tobytes()))
    engine.dispose()
    s = Store(tmp_path)
    ids, matrix = s.vectors()
    assert ids.tolist() == [1, 2] and np.allclose(matrix, [vectors[1], vectors[2]], atol=1e-3)
    assert (tmp_path / "vectors.1.f16").stat().st_size == 2 * 2 * 2
    s.close()
    _migrate(tmp_path, None, ("downgrade", "0002"))  # and back
    engine = create_engine(f"sqlite:///{db}")
    with engine.connect() as conn:
        blobs = dict(conn.exec_driver_sql("select image_id, vector from embeddings").fetchall())
    engine.dispose()
    assert np.allclose(np.frombuffer(blobs[1], np.float32), vectors[1], atol=1e-3)


def test_finding_content_by_hash_reads_the_hash_index_and_skips_failed_rows(tmp_path):
    # Indexing asks once per new file; through the status index that was a walk over every
    # indexed row each time (a 100k-image index ran 39 minutes instead of 5).
    s = store(tmp_path, None)
    s.commit_batch([item("/a.jpg"), IndexedImage("/b.jpg", 10, 1, "hshared", 4, 3, np.array((1.0, 0.0), np.float32))],
                   failed=[FailedImage("/0.jpg", 5, 9, "broken image")])
    s.commit_batch(failed=[FailedImage("/b.jpg", 5, 9, "broken image")])
    s.commit_batch([IndexedImage("/c.jpg", 10, 1, "hshared", 4, 3, np.array((0.0, 1.0), np.float32))])
    seen, run = [], s.sql.rows
    s.sql.rows = lambda sql, params=None: seen.append((sql, params)) or run(sql, params)
    assert s.find_by_hash("hshared") == (s.id_for_path("/c.jpg"), "/c.jpg")  # /b.jpg failed since
    assert s.find_by_hash("h/a.jpg") == (s.id_for_path("/a.jpg"), "/a.jpg")
    assert s.find_by_hash("nowhere") is None
    [(sql, params)] = [(q, p) for q, p in seen if "content_hash" in q][:1]
    plan = " ".join(str(r) for r in sqlite3.connect(tmp_path / "library.db").execute("EXPLAIN QUERY PLAN " + sql, params))
    assert "content_hash" in plan and "status" not in plan, plan
    s.close()
