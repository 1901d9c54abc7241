"""Libraries whose metadata is in PostgreSQL: the same results as on SQLite, the folder
paired with its database, the CLI's --db-url and $CLIPSEARCH_DB_URL, errors without
tracebacks, and searches in other processes while one indexes.

The server is conftest.py's throwaway one; each test gets a fresh database. The storage
suite itself (tests/test_store.py) runs on both backends.
"""

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipsearch import Library, demoworld
from clipsearch.errors import LibraryEmptyError, LibraryError
from conftest import FakeEncoder, run_cli


def _photos(folder: Path, n: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, rgb in enumerate([(230, 20, 20), (20, 200, 20), (20, 20, 230)][:n]):
        Image.new("RGB", (40, 30), rgb).save(folder / f"{i}.png")
    return folder


def _with_password(url: str, password: str) -> str:
    # The test server trusts loopback: any password is accepted, and none may reach the disk.
    return url.replace("postgres@", f"postgres:{password}@")


def test_a_library_on_postgresql_matches_one_on_sqlite(tmp_path, pg_url, demo_images, demo_library):
    with Library.open(tmp_path / "lib", model="demo", db_url=_with_password(pg_url, "s3cret")) as lib:
        report = lib.index([demo_images[0].parent])
        assert report.added == 48 and not report.errors
        hits = lib.search(text="a red circle", k=5)
        ids, vectors = lib.store.vectors()
        paths = lib.image_paths(ids.tolist())
        tagged = lib.tag("demo-colours", top_k=1, threshold=0.0)
        tags = {c.label: c.images for c in lib.tags()}
        exported = lib.image_tags()
        info = lib.info()
    with Library.open(demo_library, create=False) as reference:
        ref_hits = reference.search(text="a red circle", k=5)
        ref_ids, ref_vectors = reference.store.vectors()
        ref_paths = reference.image_paths(ref_ids.tolist())
        dry = reference.tag("demo-colours", top_k=1, threshold=0.0, dry_run=True)  # the reference stays as it is
    assert [(h.path, h.id) for h in hits] == [(h.path, h.id) for h in ref_hits]
    assert np.allclose([h.score for h in hits], [h.score for h in ref_hits], atol=1e-4)
    # The same ids for the same files, and the same vectors.
    assert {paths[i]: i for i in ids.tolist()} == {ref_paths[i]: i for i in ref_ids.tolist()}
    by_path = dict(zip((paths[i] for i in ids.tolist()), vectors))
    assert all(np.allclose(by_path[ref_paths[i]], v, atol=1e-3) for i, v in zip(ref_ids.tolist(), ref_vectors))
    assert (tagged.tags, tagged.counts) == (48, dry.counts) and tags == dry.counts
    assert len(exported) == 48 and all("+" not in t.created_at for t in exported)  # UTC, written as on SQLite
    # info names the database, without its password, as does the folder's link to it.
    assert info.database == pg_url and info.database_bytes > 0 and info.images == 48
    link = json.loads((tmp_path / "lib" / "database.json").read_text())
    assert link["url"] == pg_url and "s3cret" not in (tmp_path / "lib" / "database.json").read_text()
    assert not (tmp_path / "lib" / "library.db").exists()


def test_the_folder_remembers_its_database(tmp_path, pg_url):
    _photos(tmp_path / "photos")
    with Library.open(tmp_path / "lib", encoder=FakeEncoder(), db_url=pg_url) as lib:
        lib.index([tmp_path / "photos"])
    with Library.open(tmp_path / "lib", create=False, encoder=FakeEncoder()) as lib:  # no URL: database.json
        assert lib.info().database == pg_url and lib.info().images == 3
        assert lib.search(text="green", k=1)[0].path.endswith("1.png")


def test_a_read_only_role_can_search(tmp_path, pg_url):
    import psycopg

    _photos(tmp_path / "photos")
    with Library.open(tmp_path / "lib", encoder=FakeEncoder(), db_url=pg_url) as lib:
        lib.index([tmp_path / "photos"])
    role = "reader_" + pg_url.rsplit("/", 1)[1]  # roles are the server's, not the database's
    with psycopg.connect(pg_url.replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN")
        conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}")
    reader = pg_url.replace("postgres@", f"{role}@")
    with Library.open(tmp_path / "lib", encoder=FakeEncoder(), db_url=reader, create=False) as lib:
        # Its text embedding cannot be cached: the cache is only a cache.
        assert lib.search(text="green", k=1)[0].path.endswith("1.png")
        assert lib.info().database == reader


def test_a_folder_and_a_database_of_different_libraries_are_refused(tmp_path, postgres_server):
    one, two = postgres_server.new_database(), postgres_server.new_database()
    _photos(tmp_path / "photos")
    for name, url in (("a", one), ("b", two)):
        with Library.open(tmp_path / name, encoder=FakeEncoder(), db_url=url) as lib:
            lib.index([tmp_path / "photos"])
    with pytest.raises(LibraryError, match="belong to library") as err:
        Library.open(tmp_path / "a", db_url=two)
    assert "another database" in err.value.hint or "its own database" in err.value.hint
    # A new folder cannot take over a database that already holds a library.
    with pytest.raises(LibraryError, match="holds the metadata of another library folder"):
        Library.open(tmp_path / "c", encoder=FakeEncoder(), db_url=one)
    # Nor can a folder whose vectors were made with a database that is now empty.
    three = postgres_server.new_database()
    with pytest.raises(LibraryError, match="holds no library"):
        Library.open(tmp_path / "a", db_url=three)
    with Library.open(tmp_path / "a", create=False) as lib:  # its own still works
        assert lib.info().images == 3


def test_a_sqlite_library_is_not_opened_with_a_database_url(tmp_path, pg_url):
    _photos(tmp_path / "photos")
    with Library.open(tmp_path / "lib", encoder=FakeEncoder()) as lib:
        lib.index([tmp_path / "photos"])
    with pytest.raises(LibraryError, match="own library.db") as err:
        Library.open(tmp_path / "lib", db_url=pg_url)
    assert "CLIPSEARCH_DB_URL" in err.value.hint
    with pytest.raises(LibraryEmptyError):  # nothing created anywhere without create
        Library.open(tmp_path / "new", db_url=pg_url, create=False)
    assert not (tmp_path / "new").exists()


def test_a_creation_cut_short_is_completed(tmp_path, pg_url):
    # The folder names the library before the database commits it: a crash between the two
    # leaves a link the next open completes, as nothing was written yet.
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "database.json").write_text(json.dumps({"url": pg_url, "library_id": "abc"}))
    _photos(tmp_path / "photos")
    with Library.open(tmp_path / "lib", encoder=FakeEncoder()) as lib:
        assert lib.index([tmp_path / "photos"]).added == 3
        assert lib.store.get_meta("library_id") == "abc"


@pytest.mark.parametrize("url, message, hint", [
    ("not a url", "cannot be read", "postgresql+psycopg://"),
    ("mysql://u@localhost/db", "cannot keep a library's metadata in mysql://u@localhost/db", "PostgreSQL URL"),
    ("postgresql+psycopg://postgres:pw@127.0.0.1:1/nothing", "cannot use the PostgreSQL database "
     "postgresql+psycopg://postgres@127.0.0.1:1/nothing", "PGPASSWORD"),
])
def test_bad_urls_are_library_errors_with_a_hint(tmp_path, url, message, hint):
    with pytest.raises(LibraryError, match=message.replace("+", r"\+")) as err:
        Library.open(tmp_path / "lib", db_url=url)
    assert hint in err.value.hint and "pw" not in str(err.value)
    assert not (tmp_path / "lib").exists()  # no empty library folder left behind


def test_a_failed_open_keeps_a_folder_that_was_there(tmp_path):
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "notes.txt").write_text("mine")
    with pytest.raises(LibraryError):
        Library.open(tmp_path / "lib", db_url="postgresql+psycopg://postgres@127.0.0.1:1/nothing")
    assert (tmp_path / "lib" / "notes.txt").read_text() == "mine"


def test_without_psycopg_the_hint_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)  # import psycopg now fails
    with pytest.raises(LibraryError, match="psycopg") as err:
        Library.open(tmp_path / "lib", db_url="postgresql://u@localhost/db")
    assert err.value.hint == "pip install 'clipsearch[postgres]'"


def test_the_cli_takes_db_url_and_the_environment(tmp_path, pg_url):
    photos = tmp_path / "photos"
    demoworld.write_images(photos, 6, seed=3, size_range=(64, 128))
    lib = str(tmp_path / "lib")
    out = run_cli("index", str(photos), "-L", lib, "--model", "demo", "--db-url", pg_url, "--json", "-q")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["added"] == 6
    out = run_cli("info", "--json", "-L", lib, env={"CLIPSEARCH_DB_URL": pg_url})
    assert out.returncode == 0, out.stderr
    assert (json.loads(out.stdout)["database"], json.loads(out.stdout)["images"]) == (pg_url, 6)
    out = run_cli("search", "a red circle", "-n", "2", "-L", lib)  # the folder knows its database
    assert out.returncode == 0 and len(out.stdout.splitlines()) == 2, out.stderr
    # A DB-only command on PostgreSQL still needs no torch.
    code = ("import sys\nsys.argv = ['clipsearch', 'tags', '-L', %r]\nfrom clipsearch.cli import main\n"
            "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')" % lib)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().endswith("NO-TORCH"), out.stderr
    # Errors are one line and a hint, not a traceback.
    sqlite_lib = tmp_path / "sqlite-lib"
    assert run_cli("index", str(photos), "-L", str(sqlite_lib), "--model", "demo", "-q").returncode == 0
    out = run_cli("info", "-L", str(sqlite_lib), env={"CLIPSEARCH_DB_URL": pg_url})
    assert out.returncode == 1 and "error: the library at" in out.stderr and "Traceback" not in out.stderr
    out = run_cli("info", "-L", lib, "--db-url", "postgresql://postgres@127.0.0.1:1/x")
    assert out.returncode == 1 and "hint:" in out.stderr and "Traceback" not in out.stderr


_READER = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from clipsearch import Library

    root, stop, universe = Path(sys.argv[1]), Path(sys.argv[2]), set(json.loads(sys.argv[3]))
    seen, errors = [], []
    with Library.open(root, create=False) as lib:
        lib.search(text="a red circle", k=1)  # the model loaded before the writer starts
        print("ready", flush=True)
        while True:
            last = stop.exists()  # one more search after the writer is done
            try:
                hits = lib.search(text="a red circle", k=1000)
                paths = [h.path for h in hits]
                assert len(set(paths)) == len(paths), "a path twice"
                assert set(paths) <= universe, "an unknown path"
                assert all(h.score == h.score for h in hits), "a NaN score"
                seen.append(len(paths))
            except Exception as exc:
                errors.append(repr(exc))
            if last:
                break
    print(json.dumps({"seen": seen, "errors": errors}), flush=True)
""")


def test_readers_search_while_a_writer_indexes(tmp_path, pg_url, demo_images):
    first, second = tmp_path / "photos" / "first", tmp_path / "photos" / "second"
    for folder, images in ((first, demo_images[:16]), (second, demo_images[16:])):
        folder.mkdir(parents=True)
        for image in images:
            shutil.copy(image, folder / image.name)
    universe = [str(p) for p in sorted((tmp_path / "photos").rglob("*.*"))]
    root, stop = tmp_path / "lib", tmp_path / "stop"
    with Library.open(root, model="demo", db_url=pg_url) as lib:
        assert lib.index([first]).added == 16
    readers = [subprocess.Popen([sys.executable, "-c", _READER, str(root), str(stop), json.dumps(universe)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        for reader in readers:
            assert reader.stdout.readline().strip() == "ready", reader.stderr.read()
        with Library.open(root) as lib:  # a small batch: many commits for the readers to see
            report = lib.index([second], batch_size=4)
        stop.touch()
        results = [json.loads(reader.communicate(timeout=120)[0].splitlines()[-1]) for reader in readers]
    finally:
        for reader in readers:
            if reader.poll() is None:
                reader.kill()
    assert report.added == 32 and not report.errors
    for result in results:
        seen = result["seen"]
        assert result["errors"] == [] and len(seen) >= 3
        # Every search saw a committed state: a count that only grows, from the first
        # folder's images to all of them.
        assert seen == sorted(seen) and seen[0] >= 16 and seen[-1] == 48
    assert any(16 < n < 48 for result in results for n in result["seen"])  # they searched while it wrote
    with Library.open(root, create=False) as lib:
        assert lib.info().images == 48 and len(lib.search(text="a red circle", k=1000)) == 48
