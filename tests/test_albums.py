"""Albums (saved searches): they follow the library, and what users decide stays decided.

On real files and the real demo model, on SQLite and PostgreSQL, through the Python API,
the CLI in fresh processes and the HTTP API.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from clipsearch import AlbumError, AlbumNotFoundError, ArgumentError, Library, PathNotFoundError, Query, demoworld
from clipsearch.albums import SavedSearch
from conftest import run_cli


def _draw(path: Path, colour: str, shape: str, seed: int) -> Path:
    scene = demoworld.random_scene(random.Random(seed), colour, shape, (96, 200))
    demoworld.render(scene).save(path)
    return path


@pytest.fixture
def photos(tmp_path, demo_images) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    for path in demo_images:
        shutil.copy(path, folder / path.name)
    return folder


def _names(album) -> list[str]:
    return [Path(m.path).name for m in album.members]


def test_an_album_follows_the_library_and_pins_and_removals_survive(tmp_path, photos, backend):
    with Library.open(tmp_path / "lib", model="demo", db_url=backend) as lib:
        lib.index([photos])
        album = lib.albums.create("red", Query.build("a red circle"), min_score=0.3)
        assert album.members, "the demo model finds red circles"
        first = _names(album)
        assert all("red" in n or "circle" in n for n in first[:2]), first
        assert album.members == lib.albums.get("red").members  # the same answer when read again
        # The same images as the search it saved, scores and order included.
        hits = lib.search("a red circle", k=100, min_score=0.3)
        assert [(m.id, m.score) for m in album.members] == [(h.id, h.score) for h in hits]

        removed = album.members[0]
        outsider = next(h for h in lib.search("a blue square", k=5) if h.id not in {m.id for m in album.members})
        lib.albums.remove("red", [removed.id])
        lib.albums.pin("red", [outsider.path])  # by path, as the CLI passes it

        # New red circles join; a deleted member leaves; the decisions hold throughout.
        new = [_draw(photos / f"new_red_circle_{n}.png", "red", "circle", seed=n) for n in range(3)]
        gone = album.members[1]
        os.remove(gone.path)
        report = lib.index([photos])
        assert report.added == 3 and report.removed == 1
        album = lib.albums.get("red")
        names = _names(album)
        assert {p.name for p in new} <= set(names), names
        assert Path(gone.path).name not in names
        assert removed.id not in {m.id for m in album.members} and album.removed == [removed.id]
        pinned = [m for m in album.members if m.pinned]
        assert [m.id for m in pinned] == [outsider.id] and album.pinned == [outsider.id]
        # A pinned image is scored against the album's query like the rest, and sits in order.
        assert pinned[0].score < 0.3
        assert [m.score for m in album.members] == sorted((m.score for m in album.members), reverse=True)

        # A removed image changed on disk keeps its id, and stays out.
        _draw(Path(removed.path), "red", "circle", seed=99)
        lib.index([photos])
        assert removed.id not in {m.id for m in lib.albums.get("red").members}

        # reset: the search decides again.
        album = lib.albums.reset("red", [f"id:{removed.id}", outsider.id])
        assert album.pinned == album.removed == []
        assert outsider.id not in {m.id for m in album.members}
        assert removed.id in {m.id for m in album.members}

        # A pinned image that is deleted leaves the album, and its decision with it.
        lib.albums.pin("red", [outsider.id])
        os.remove(outsider.path)
        lib.index([photos])
        assert lib.albums.get("red").pinned == []


def test_an_album_keeps_its_filters_terms_and_order(tmp_path, photos):
    with Library.open(tmp_path / "lib", model="demo") as lib:
        lib.index([photos])
        seed = lib.image_id(photos / "red_circle_0000.png") or lib.search("a red circle", k=1)[0].id
        query = Query.build("a circle", also=[f"id:{seed}"], exclude=["2:a blue thing"])
        album = lib.albums.create("circles", query, limit=7, extensions=["png"], after=datetime(2000, 1, 1),
                                  sort="path", folders=[photos])
        hits = lib.search(query=query, k=7, extensions=["png"], after=datetime(2000, 1, 1), sort="path",
                          folders=[photos])
        assert [m.id for m in album.members] == [h.id for h in hits]
        assert seed not in {m.id for m in album.members}  # the query's own image, as search leaves it out
        assert album.query == (f"'a circle' --and id:{seed} --not '2:a blue thing' --in {photos} --ext png "
                               "--after 2000-01-01T00:00:00 --sort path -n 7")
        # The saved vector is the search's: the query image may go, and the album still answers.
        lib.albums.remove("circles", [album.members[0].id])
        os.remove(lib.image(seed).path)
        lib.index([photos])
        again = lib.albums.get("circles")
        assert len(again.members) == 7 and album.members[0].id not in {m.id for m in again.members}
        with pytest.raises(PathNotFoundError):  # a new album of it cannot be made, though
            lib.albums.create("again", query)


def test_album_errors_are_clear(tmp_path, photos):
    with Library.open(tmp_path / "lib", model="demo") as lib:
        lib.index([photos])
        lib.albums.create("red", Query.build("red"))
        with pytest.raises(AlbumError, match="already") as exc:
            lib.albums.create("red", Query.build("blue"))
        assert exc.value.worded("cli")[1] == "give another name, or --replace to save this search over it"
        replaced = lib.albums.create("red", Query.build("blue"), replace=True)
        assert replaced.query.startswith("blue")
        with pytest.raises(AlbumNotFoundError, match="no album is called 'nope'"):
            lib.albums.get("nope")
        with pytest.raises(AlbumNotFoundError):
            lib.albums.delete("nope")
        for bad in ("", "  ", "a/b", "tab\there", "x" * 201):
            with pytest.raises(ArgumentError):
                lib.albums.create(bad, Query.build("red"))
        with pytest.raises(ArgumentError, match="sort"):
            lib.albums.create("s", Query.build("red"), sort="colour")
        with pytest.raises(PathNotFoundError):
            lib.albums.pin("red", [tmp_path / "not-indexed.jpg"])
        for write in (lambda: lib.albums.write_xmp("red", "bogus"), lambda: lib.write_xmp(style="bogus")):
            with pytest.raises(ArgumentError, match="unknown sidecar style 'bogus'"):
                write()
        assert not list(photos.glob("*.xmp"))  # refused before any sidecar was written
        lib.albums.delete("red")
        assert lib.albums.all() == []


def test_a_saved_search_reads_back_as_written():
    search = SavedSearch((("text", "a dog", 1.0), ("id", "id:5", -2.0)), 20, 0.25, ("/p",), ("jpg",),
                         "2024-01-01T00:00:00", None, ("pet",), ("cat",), "date", (5,))
    assert SavedSearch.from_json(search.to_json()) == search
    assert search.described() == ("'a dog' --not 2:id:5 --in /p --ext jpg --after 2024-01-01T00:00:00 "
                                  "--min-score 0.25 --tag pet --no-tag cat --sort date -n 20")


def test_album_commands_in_fresh_processes(tmp_path, photos):
    lib = ["-L", str(tmp_path / "lib")]
    assert run_cli("index", str(photos), "--model", "demo", "-q", *lib).returncode == 0
    made = run_cli("album", "create", "red", "a red circle", "--min-score", "0.3", "--json", *lib)
    assert made.returncode == 0, made.stderr
    album = json.loads(made.stdout)
    assert album["name"] == "red" and album["members"]
    shown = run_cli("album", "show", "red", "-f", *lib)
    assert shown.stdout.splitlines() == [m["path"] for m in album["members"]]
    taken = album["members"][0]
    assert run_cli("album", "remove", "red", f"id:{taken['id']}", *lib).returncode == 0
    blue = next(p for p in sorted(photos.iterdir()) if p.name.startswith("blue_square"))
    pinned = run_cli("album", "pin", "red", str(blue), *lib)
    assert pinned.returncode == 0 and "pinned 1 image" in pinned.stderr
    lines = run_cli("album", "show", "red", *lib).stdout.splitlines()
    assert taken["path"] not in "\n".join(lines)
    assert [line.split("\t")[1] for line in lines if line.endswith("\tpinned")] == [str(blue)]
    listed = run_cli("album", "list", *lib).stdout
    assert listed.startswith(f"red\t{len(lines)} images\t'a red circle' --min-score 0.3 -n 100")

    # export: a folder of links, brought up to date by exporting again; the user's files stay.
    out = tmp_path / "red-album"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    first = run_cli("album", "export", "red", "--to", str(out), "--json", *lib)
    assert json.loads(first.stdout)["linked"] == len(lines)
    assert sorted(os.path.realpath(p) for p in out.iterdir() if p.is_symlink()) == sorted(
        line.split("\t")[1] for line in lines)
    run_cli("album", "pin", "red", f"id:{taken['id']}", *lib)  # (a pin undoes the removal)
    run_cli("album", "reset", "red", str(blue), *lib)
    again = json.loads(run_cli("album", "export", "red", "--to", str(out), "--json", *lib).stdout)
    assert (again["linked"], again["unlinked"]) == (1, 1)
    assert (out / "notes.txt").read_text() == "mine"
    assert str(blue) not in {os.path.realpath(p) for p in out.iterdir() if p.is_symlink()}

    xmp = run_cli("album", "export", "red", "--xmp", *lib)
    assert xmp.returncode == 0 and "keywords" in xmp.stdout
    assert "<rdf:li>red</rdf:li>" in Path(taken["path"] + ".xmp").read_text()

    assert run_cli("album", "export", "red", *lib).returncode == 2  # neither --to nor --xmp
    missing = run_cli("album", "show", "nope", *lib)
    assert missing.returncode == 1 and "no album is called 'nope'" in missing.stderr
    assert "Traceback" not in missing.stderr
    assert run_cli("album", "delete", "red", *lib).returncode == 0
    assert "no albums yet" in run_cli("album", "list", *lib).stderr


def test_album_http_api(tmp_path, photos):
    from clipsearch.web.app import create_app

    with Library.open(tmp_path / "lib", model="demo") as lib:
        lib.index([photos])
        client = TestClient(create_app(lib))
        made = client.post("/api/albums", json={"name": "blue", "text": "a blue square", "min_score": 0.2,
                                                "ext": ["png"]})
        assert made.status_code == 201, made.text
        assert made.json()["members"] == len(lib.albums.get("blue").members) > 0
        assert client.post("/api/albums", json={"name": "blue", "text": "x"}).status_code == 409
        assert client.post("/api/albums", json={"name": "a/b", "text": "x"}).status_code == 400
        assert client.post("/api/albums", json={"name": "n", "text": "x", "limit": 0}).status_code == 422
        assert client.post("/api/albums", json={"name": "n", "text": "x", "bogus": 1}).status_code == 422

        page = client.get("/api/albums/blue", params={"n": 2}).json()
        assert len(page["results"]) == 2 and page["has_more"] == (page["members"] > 2)
        first = page["results"][0]
        assert first["thumbnail"] == f"/api/images/{first['id']}/thumbnail" and first["pinned"] is False
        answer = client.post("/api/albums/blue/members", json={"images": [first["id"]], "state": "removed"})
        assert answer.json()["removed"] == [first["id"]]
        assert first["id"] not in {m["id"] for m in client.get("/api/albums/blue?n=500").json()["results"]}
        assert client.post("/api/albums/blue/members", json={"images": [first["id"]], "state": "x"}).status_code == 422
        assert client.post("/api/albums/blue/members", json={"images": [10**9], "state": "pinned"}).status_code == 404

        assert [a["name"] for a in client.get("/api/albums").json()] == ["blue"]
        assert client.get("/api/albums/nope").status_code == 404
        assert client.delete("/api/albums/blue").json() == {"deleted": "blue"}
        assert client.get("/api/albums").json() == []


def test_albums_move_with_the_metadata(tmp_path, photos, pg_url):
    with Library.open(tmp_path / "lib", model="demo") as lib:
        lib.index([photos])
        album = lib.albums.create("red", Query.build("a red circle"), limit=5)
        lib.albums.remove("red", [album.members[0].id])
        lib.albums.pin("red", [lib.search("a green star", k=1)[0].id])
        before = lib.albums.get("red")
    Library.move_metadata(tmp_path / "lib", pg_url)
    with Library.open(tmp_path / "lib") as lib:
        after = lib.albums.get("red")
        assert after == before
        # New rows get ids of their own after the copy (the sequences moved past the copied ids).
        assert lib.albums.create("blue", Query.build("a blue square")).members
    assert np.isfinite([m.score for m in after.members]).all()
