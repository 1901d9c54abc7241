"""Moving a library's metadata between its SQLite file and PostgreSQL (``clipsearch move-db``):
every row and id kept, so the folder's vectors still match; a move cut short at any step is
finished by running it again; a database holding another library is refused.

Real demo-model libraries, a real SQLite file and conftest.py's throwaway PostgreSQL server.
"""

import json
import shutil
from pathlib import Path

import pytest

from clipsearch import Library, database
from clipsearch.errors import LibraryError
from conftest import run_cli

# The server's session time zone is not UTC here: times read back naive from SQLite must
# still mean UTC once they are in PostgreSQL.
_NEW_YORK = "?options=-c+TimeZone%3DAmerica%2FNew_York"  # as SQLAlchemy writes it


def snapshot(root: Path) -> dict:
    """What a user sees of a library: hits, ids, tags with their times, errors, counts."""
    with Library.open(root, create=False) as lib:
        hits = lib.search(text="a red circle", k=10)
        ids, vectors = lib.store.vectors()
        return {
            "hits": [(h.id, h.path, round(h.score, 4)) for h in hits],
            "paths": lib.image_paths(ids.tolist()),
            "vectors": dict(zip(ids.tolist(), vectors.round(3).tolist())),
            "tags": sorted((t.path, t.label, t.source, t.created_at) for t in lib.image_tags()),
            "classifiers": [c.name for c in lib.classifiers()],
            "counts": (lib.info().images, lib.info().vectors, lib.info().errors),
            "indexed_at": sorted(str(r.indexed_at) for r in lib.store.images(ids.tolist()).values()),
        }


@pytest.fixture
def library(tmp_path, demo_library, demo_images) -> Path:
    """A copy of the demo library with tags of every kind and a classifier."""
    root = tmp_path / "lib"
    shutil.copytree(demo_library, root)
    examples = tmp_path / "examples"
    for colour in ("red", "blue"):
        (examples / colour).mkdir(parents=True)
        for path in demo_images[0].parent.glob(f"{colour}_*.png"):
            shutil.copy(path, examples / colour / path.name)
    with Library.open(root) as lib:
        lib.tag("demo-colours", top_k=1, threshold=0.0)
        lib.add_tag(lib.search(text="a blue square", k=1)[0].id, "favourite")
        lib.train_classifier("colours", examples)
    return root


def test_a_library_moves_to_postgresql_and_back_unchanged(library, pg_url, demo_images):
    before = snapshot(library)
    report = Library.move_metadata(library, pg_url + _NEW_YORK)
    assert (report.source, report.target) == ("sqlite", pg_url + _NEW_YORK)
    assert report.rows["images"] == 48 and report.rows["tags"] == len(before["tags"]) and report.rows["meta"] > 0
    assert json.loads((library / "database.json").read_text())["url"] == pg_url + _NEW_YORK
    assert not (library / "library.db").exists() and not (library / "moving.json").exists()
    [aside] = library.glob("library.db.moved-*")
    assert report.left_behind == str(aside)
    with Library.open(library, create=False) as lib:
        assert lib.info().database == pg_url + _NEW_YORK
    assert snapshot(library) == before  # the same ids, so the folder's vectors still match

    # The vectors still match their rows: nothing to embed again, and a new file takes the
    # next id (PostgreSQL's sequence was moved past the copied ones).
    new = library.parent / "more"
    new.mkdir()
    shutil.copy(demo_images[0], new / "copy.png")
    with Library.open(library) as lib:
        report = lib.index([demo_images[0].parent])
        assert (report.unchanged, report.added, report.encoded) == (48, 0, 0)
        assert lib.index([new]).added == 1
        added = lib.store.known_files([new])
        assert [row.id for row in added.values()] == [max(before["paths"]) + 1]

    back = Library.move_metadata(library, None)
    assert (back.source, back.target) == (pg_url + _NEW_YORK, "sqlite") and back.rows["images"] == 49
    assert (library / "library.db").exists() and not (library / "database.json").exists()
    assert "named by database.json.moved-" in back.left_behind
    after = snapshot(library)
    assert after["paths"] == {**before["paths"], max(before["paths"]) + 1: str(new / "copy.png")}
    assert after["tags"] == before["tags"] and after["indexed_at"][:48] == before["indexed_at"][:48]


def test_a_move_cut_short_mid_copy_is_refused_until_finished(library, pg_url):
    before = snapshot(library)

    def stop(table, done, total):
        if table == "tags":
            raise KeyboardInterrupt  # Ctrl-C halfway through the copy

    with pytest.raises(KeyboardInterrupt):
        Library.move_metadata(library, pg_url, progress=stop)
    assert (library / "moving.json").exists() and (library / "library.db").exists()
    with pytest.raises(LibraryError, match="was interrupted") as err:
        Library.open(library, create=False)
    assert f"clipsearch move-db {pg_url}" in err.value.hint
    with pytest.raises(LibraryError, match="was interrupted"):  # not somewhere else meanwhile
        Library.move_metadata(library, None)
    Library.move_metadata(library, pg_url)
    assert snapshot(library) == before


@pytest.mark.parametrize("step", ["write_link", "set_aside"])
def test_a_move_cut_short_in_the_switch_is_finished_by_running_it_again(library, pg_url, monkeypatch, step):
    before = snapshot(library)
    real = getattr(database, step)

    def crash(*args, **kwargs):
        if step == "set_aside":
            real(*args, **kwargs)  # the file is set aside, then the process dies
        raise SystemExit("killed")

    monkeypatch.setattr(database, step, crash)
    with pytest.raises(SystemExit):
        Library.move_metadata(library, pg_url)
    monkeypatch.setattr(database, step, real)
    with pytest.raises(LibraryError, match="was interrupted"):
        Library.open(library, create=False)
    report = Library.move_metadata(library, pg_url)
    assert report.rows == {} if step == "set_aside" else report.rows["images"] == 48
    assert not (library / "moving.json").exists() and len(list(library.glob("library.db.moved-*"))) == 1
    assert snapshot(library) == before


def test_a_database_that_holds_another_library_is_refused(library, tmp_path, pg_url, demo_images):
    with Library.open(tmp_path / "other", model="demo", db_url=pg_url) as other:
        other.index([demo_images[0]])
    before = snapshot(library)
    with pytest.raises(LibraryError, match="holds the metadata of another library") as err:
        Library.move_metadata(library, pg_url)
    assert "createdb" in err.value.hint
    assert not (library / "moving.json").exists() and not (library / "database.json").exists()
    assert snapshot(library) == before  # still on its own SQLite file
    with pytest.raises(LibraryError, match="in sqlite already"):
        Library.move_metadata(library, "sqlite")


def test_the_cli_moves_a_library_and_reports_in_json(library, pg_url):
    out = run_cli("move-db", pg_url, "-L", str(library), "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert (data["source"], data["target"], data["rows"]["images"]) == ("sqlite", pg_url, 48)
    out = run_cli("info", "--json", "-L", str(library))
    assert json.loads(out.stdout)["database"] == pg_url
    out = run_cli("move-db", "sqlite", "-L", str(library))
    assert out.returncode == 0 and "moved the metadata from" in out.stdout and "images" in out.stdout, out.stderr
    out = run_cli("move-db", "mysql://u@h/db", "-L", str(library))
    assert out.returncode == 1 and "hint:" in out.stderr and "Traceback" not in out.stderr
    assert not (library / "moving.json").exists()


def test_a_library_moves_from_one_postgresql_database_to_another(library, postgres_server):
    before = snapshot(library)
    first, second = postgres_server.new_database(), postgres_server.new_database()
    Library.move_metadata(library, first)
    report = Library.move_metadata(library, second)
    assert (report.source, report.target, report.rows["images"]) == (first, second, 48)
    assert report.left_behind == f"the rows in {first}"
    assert json.loads((library / "database.json").read_text())["url"] == second
    assert snapshot(library) == before


def test_a_reader_left_open_does_not_recreate_the_moved_sqlite_file(library, pg_url):
    with Library.open(library, create=False) as reader:  # a `serve` someone forgot to stop
        assert reader.search(text="a red circle", k=1)
        Library.move_metadata(library, pg_url)
        reader.store.sql.close()  # its next query needs a new connection
        reader.store.engine.dispose()
        with pytest.raises(Exception, match="unable to open database file"):
            reader.info()
    assert not (library / "library.db").exists()
    with Library.open(library, create=False) as lib:  # the library is whole, on PostgreSQL
        assert lib.info().images == 48
