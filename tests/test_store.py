"""The SQLite store: migrations, change detection by path prefix, batch commits, versions."""

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from clipsearch.errors import LibraryError, SchemaTooNewError
from clipsearch.results import ModelIdentity
from clipsearch.store import FailedImage, IndexedImage, Store


def item(path, vec=(1.0, 0.0), size=10, mtime=1):
    return IndexedImage(path, size, mtime, "h" + path, 4, 3, np.array(vec, np.float32))


def test_migrations_create_the_schema_and_are_idempotent(tmp_path):
    db = tmp_path / "library.db"
    Store(db).close()
    Store(db).close()
    con = sqlite3.connect(db)
    tables = {r[0] for r in con.execute("select name from sqlite_master where type='table'")}
    assert {"images", "text_cache", "meta", "tags", "classifiers", "alembic_version"} <= tables
    assert "embeddings" not in tables
    assert con.execute("select version_num from alembic_version").fetchone()[0] == "0005"
    assert con.execute("pragma journal_mode").fetchone()[0] == "wal"


def test_newer_schema_is_refused_with_a_clear_error(tmp_path):
    db = tmp_path / "library.db"
    Store(db).close()
    con = sqlite3.connect(db)
    con.execute("update alembic_version set version_num='9999_future'")
    con.commit()
    con.close()
    with pytest.raises(SchemaTooNewError, match="newer clipsearch"):
        Store(db)


def test_a_file_that_is_not_a_database_is_a_library_error(tmp_path):
    db = tmp_path / "library.db"
    db.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(LibraryError):
        Store(db)


def test_model_identity_round_trip(tmp_path):
    s = Store(tmp_path / "library.db")
    assert s.model_identity() is None
    s.set_model_identity(ModelIdentity("ViT-B-32", "laion2b_s34b_b79k", 512))
    assert s.model_identity() == ModelIdentity("ViT-B-32", "laion2b_s34b_b79k", 512)


def store(tmp_path, dim=2) -> Store:
    s = Store(tmp_path / "library.db")
    s.set_model_identity(ModelIdentity("m", None, dim))
    return s


def test_known_files_matches_whole_folder_names_and_odd_characters(tmp_path):
    s = store(tmp_path)
    paths = ["/p/photos/a.jpg", "/p/photos/sub/b.jpg", "/p/photos2/c.jpg", "/p/photos_x/d.jpg",
             "/p/100%/e.jpg", "/p/single.jpg"]
    s.commit_batch([item(p) for p in paths])
    assert set(s.known_files([Path("/p/photos")])) == {"/p/photos/a.jpg", "/p/photos/sub/b.jpg"}
    assert set(s.known_files([Path("/p/100%")])) == {"/p/100%/e.jpg"}
    assert set(s.known_files([Path("/p/single.jpg")])) == {"/p/single.jpg"}
    assert len(s.known_files([Path("/p")])) == 6


def test_batches_bump_the_vector_version_and_append_vectors(tmp_path):
    s = store(tmp_path)
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


def test_compaction_keeps_live_vectors_and_drops_dead_rows(tmp_path):
    s = store(tmp_path)
    ids, _ = s.commit_batch([item(f"/{n}.jpg", (np.cos(n), np.sin(n))) for n in range(10)])
    s.commit_batch(removed=ids[:4].tolist())
    s.commit_batch([item("/9.jpg", (1, 0), mtime=5)])
    before = dict(zip(*s.vectors()))
    old_path = s.vector_file().path
    new = s.compact()
    assert new.generation == 2 and len(new) == 6 and not old_path.exists()
    after = dict(zip(*s.vectors()))
    assert before.keys() == after.keys() and all(np.allclose(before[i], after[i]) for i in before)
    assert Store(tmp_path / "library.db").generation() == 2


def test_a_failed_file_is_recorded_with_its_reason_and_loses_its_vector(tmp_path):
    s = store(tmp_path)
    s.commit_batch([item("/a.jpg")])
    s.commit_batch(failed=[FailedImage("/a.jpg", 5, 9, "broken image: truncated")])
    assert [(e.path, e.reason) for e in s.errors()] == [("/a.jpg", "broken image: truncated")]
    assert s.counts() == {"indexed": 0, "error": 1}
    assert len(s.vectors()[0]) == 0
    with pytest.raises(KeyError):
        s.vector_of(1)


def test_the_text_cache_keeps_the_most_recently_used(tmp_path):
    s = store(tmp_path)
    s.cache_texts("m", {"a dog": np.array([1, 0], np.float32), "a cat": np.array([0, 1], np.float32)})
    two_hours = 2 * 3600 * 10**9  # uses are recorded to the hour: make both entries old
    with sqlite3.connect(tmp_path / "library.db") as con:
        con.execute("update text_cache set used_at = used_at - ?", (two_hours,))
    assert s.cached_texts("m", ["a dog", "a bird"]).keys() == {"a dog"}  # and marks it used
    assert s.cached_texts("other model", ["a dog"]) == {}
    s.cache_texts("m", {"a bird": np.array([1, 1], np.float32)}, keep=2)
    assert s.cached_texts("m", ["a dog", "a cat", "a bird"]).keys() == {"a dog", "a bird"}


def _alembic(db: Path):
    from alembic.config import Config

    from clipsearch.resources import migrations_dir

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.attributes["connection"] = None
    return cfg


def test_an_old_library_is_upgraded_on_open_and_keeps_its_rows(tmp_path):
    from alembic import command
    from sqlalchemy import create_engine

    db = tmp_path / "library.db"
    cfg = _alembic(db)
    engine = create_engine(f"sqlite:///{db}")
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
        conn.exec_driver_sql("insert into images (path, size, mtime_ns, status, indexed_at) "
                             "values ('/old.jpg', 5, 7, 'indexed', '2026-01-01 00:00:00')")
    engine.dispose()
    store = Store(db)  # upgrades to head
    [row] = store.images([1]).values()
    assert (row.path, row.taken_ns, row.when_ns) == ("/old.jpg", None, 7)
    store.close()
    engine = create_engine(f"sqlite:///{db}")
    with engine.begin() as conn:  # and the new migration can be undone
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0001")
        cols = [r[1] for r in conn.exec_driver_sql("pragma table_info(images)")]
    assert "taken_ns" not in cols and "path" in cols


def test_vectors_in_sqlite_move_to_the_vector_file_on_upgrade(tmp_path):
    from alembic import command
    from sqlalchemy import create_engine

    db = tmp_path / "library.db"
    cfg = _alembic(db)
    engine = create_engine(f"sqlite:///{db}")
    vectors = {1: np.array([0.6, 0.8], np.float32), 2: np.array([1.0, 0.0], np.float32)}
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0002")
        conn.exec_driver_sql("insert into meta (key, value) values ('model', 'm'), ('dim', '2')")
        for i, v in vectors.items():
            conn.exec_driver_sql("insert into images (id, path, size, mtime_ns, status, indexed_at) values "
                                 f"({i}, '/{i}.jpg', 5, 7, 'indexed', '2026-01-01 00:00:00')")
            conn.exec_driver_sql("insert into embeddings (image_id, vector) values (?, ?)", (i, v.tobytes()))
    engine.dispose()
    s = Store(db)
    ids, matrix = s.vectors()
    assert ids.tolist() == [1, 2] and np.allclose(matrix, [vectors[1], vectors[2]], atol=1e-3)
    assert (tmp_path / "vectors.1.f16").stat().st_size == 2 * 2 * 2
    s.close()
    engine = create_engine(f"sqlite:///{db}")
    with engine.begin() as conn:  # and back
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0002")
        blobs = dict(conn.exec_driver_sql("select image_id, vector from embeddings").fetchall())
    assert np.allclose(np.frombuffer(blobs[1], np.float32), vectors[1], atol=1e-3)
