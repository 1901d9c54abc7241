"""The Library facade with a fake encoder: incremental indexing, removal, errors, recovery."""

import os
from pathlib import Path

import pytest
from PIL import Image

from clipsearch import Library
from clipsearch.errors import (
    ArgumentError, LibraryEmptyError, LibraryLockedError, ModelMismatchError, NoImagesError, PathNotFoundError, QueryError,
)
from conftest import FakeEncoder

COLOURS = {"red": (230, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 230)}


def make_images(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, rgb in COLOURS.items():
        paths[name] = folder / f"{name}.png"
        Image.new("RGB", (40, 30), rgb).save(paths[name])
    return paths


def test_index_then_search_by_text_and_image(tmp_path, fake_encoder):
    paths = make_images(tmp_path / "photos")
    with Library.open(tmp_path / "lib", encoder=fake_encoder) as lib:
        report = lib.index([tmp_path / "photos"])
        assert (report.added, report.updated, report.unchanged, report.removed) == (3, 0, 0, 0)
        hits = lib.search(text="green", k=2)
        assert hits[0].path == str(paths["green"]) and hits[0].score > hits[1].score
        assert (hits[0].width, hits[0].height) == (40, 30)
        assert lib.search(image=paths["blue"], k=1, include_query_images=True)[0].path == str(paths["blue"])
        info = lib.info()
        assert (info.images, info.vectors, info.errors, info.model, info.dim) == (3, 3, 0, "fake", 4)


def test_reindex_is_a_no_op_and_changes_are_picked_up(tmp_path, fake_encoder):
    paths = make_images(tmp_path / "photos")
    with Library.open(tmp_path / "lib", encoder=fake_encoder) as lib:
        lib.index([tmp_path / "photos"])
        encoded_before = sum(fake_encoder.encoded)
        report = lib.index([tmp_path / "photos"])
        assert (report.added, report.updated, report.unchanged) == (0, 0, 3)
        assert sum(fake_encoder.encoded) == encoded_before

        # Change red into a blue of its own: same path, new content and mtime.
        Image.new("RGB", (40, 30), (25, 25, 225)).save(paths["red"])
        os.utime(paths["red"], ns=(1, 1))
        paths["green"].unlink()
        report = lib.index([tmp_path / "photos"])
        assert (report.added, report.updated, report.unchanged, report.removed) == (0, 1, 1, 1)
        assert sum(fake_encoder.encoded) == encoded_before + 1
        found = [h.path for h in lib.search(text="blue", k=10)]
        assert str(paths["green"]) not in found and len(found) == 2
        now_blue = lib.search(image=paths["blue"], k=2, include_query_images=True)
        assert [h.path for h in now_blue] == [str(paths["blue"]), str(paths["red"])]
        assert now_blue[1].score == pytest.approx(1.0, abs=1e-3)


def test_broken_files_are_recorded_and_not_retried_until_they_change(tmp_path, fake_encoder):
    make_images(tmp_path / "photos")
    broken = tmp_path / "photos" / "broken.jpg"
    broken.write_bytes(b"not a jpeg at all")
    with Library.open(tmp_path / "lib", encoder=fake_encoder) as lib:
        report = lib.index([tmp_path / "photos"])
        assert report.added == 3 and [e.path for e in report.errors] == [str(broken)]
        assert lib.errors()[0].reason.startswith("not an image")
        report = lib.index([tmp_path / "photos"])
        assert report.unchanged == 4 and not report.errors
        Image.new("RGB", (10, 10), "white").save(broken, "JPEG")
        report = lib.index([tmp_path / "photos"])
        assert report.updated == 1 and lib.errors() == [] and lib.info().images == 4


def test_only_the_scanned_roots_lose_their_missing_files(tmp_path, fake_encoder):
    make_images(tmp_path / "a")
    make_images(tmp_path / "b")
    with Library.open(tmp_path / "lib", encoder=fake_encoder) as lib:
        lib.index([tmp_path / "a", tmp_path / "b"])
        report = lib.index([tmp_path / "a"])
        assert report.removed == 0 and lib.info().images == 6


def test_a_stale_or_missing_faiss_file_is_rebuilt_from_the_database(tmp_path, fake_encoder):
    paths = make_images(tmp_path / "photos")
    with Library.open(tmp_path / "lib", encoder=fake_encoder) as lib:
        lib.index([tmp_path / "photos"])
    for f in (tmp_path / "lib").glob("index.v*.faiss"):
        f.rename(f.with_name("index.v0.faiss"))  # as if a crash came between commit and save
    with Library.open(tmp_path / "lib", encoder=FakeEncoder()) as lib:
        assert lib.vectors.ntotal == 3
        assert lib.search(text="red", k=1)[0].path == str(paths["red"])


def test_bad_requests_raise_clear_errors(tmp_path, fake_encoder):
    (tmp_path / "empty").mkdir()
    make_images(tmp_path / "photos")
    with pytest.raises(LibraryEmptyError, match="no library"):
        Library.open(tmp_path / "nothing", create=False)
    with Library.open(tmp_path / "lib", encoder=fake_encoder) as lib:
        with pytest.raises(NoImagesError):
            lib.index([tmp_path / "empty"])
        with pytest.raises(PathNotFoundError):
            lib.index([tmp_path / "missing"])
        with pytest.raises(LibraryEmptyError):
            lib.search(text="red")
        lib.index([tmp_path / "photos"])
        for kwargs in ({}, {"text": "  "}):
            with pytest.raises(QueryError):
                lib.search(**kwargs)
        with pytest.raises(ArgumentError):
            lib.search(text="red", k=0)
        not_image = tmp_path / "notes.png"
        not_image.write_text("hello")
        with pytest.raises(QueryError, match="cannot use"):
            lib.search(image=not_image)
        with pytest.raises(PathNotFoundError):
            lib.search(image=tmp_path / "nope.png")
    with pytest.raises(ModelMismatchError, match="built with fake"):
        Library.open(tmp_path / "lib", model="ViT-B-32/random")


def test_a_second_writer_is_refused(tmp_path, fake_encoder):
    from clipsearch.files import writer_lock

    make_images(tmp_path / "photos")
    with Library.open(tmp_path / "lib", encoder=fake_encoder) as lib:
        with writer_lock(tmp_path / "lib"):
            with pytest.raises(LibraryLockedError, match="another clipsearch process"):
                lib.index([tmp_path / "photos"])
        assert lib.index([tmp_path / "photos"]).added == 3


def test_moves_renames_and_copies_reuse_vectors_without_encoding(tmp_path, fake_encoder):
    paths = make_images(tmp_path / "photos")
    with Library.open(tmp_path / "lib", encoder=fake_encoder) as lib:
        lib.index([tmp_path / "photos"])
        ids = {h.path: h.id for h in lib.search(text="red", k=3)}
        calls = list(fake_encoder.encoded)

        (tmp_path / "photos" / "sub").mkdir()
        moved = tmp_path / "photos" / "sub" / "renamed-red.png"
        paths["red"].rename(moved)
        copy = tmp_path / "photos" / "copy-of-green.png"
        copy.write_bytes(paths["green"].read_bytes())
        report = lib.index([tmp_path / "photos"])
        assert (report.added, report.moved, report.unchanged, report.removed) == (1, 1, 2, 0)
        assert fake_encoder.encoded == calls  # nothing was encoded
        hits = {h.path: h for h in lib.search(text="red", k=4)}
        assert hits[str(moved)].id == ids[str(paths["red"])]  # same row, same vector
        assert str(paths["red"]) not in hits
        green = lib.search(image=paths["green"], k=2, include_query_images=True)
        assert {h.path for h in green} == {str(paths["green"]), str(copy)}
        assert green[1].score == pytest.approx(1.0, abs=1e-5)
        assert lib.info().images == 4 and lib.vectors.ntotal == 4


def test_identical_new_files_are_encoded_once(tmp_path, fake_encoder):
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.new("RGB", (20, 20), (200, 100, 0)).save(folder / "a.png")
    for name in ("b.png", "c.png"):
        (folder / name).write_bytes((folder / "a.png").read_bytes())
    with Library.open(tmp_path / "lib", encoder=fake_encoder) as lib:
        report = lib.index([folder])
        assert report.added == 3 and sum(fake_encoder.encoded) == 1
        assert len(lib.search(image=folder / "a.png", k=5, include_query_images=True)) == 3


def test_a_file_that_vanishes_mid_run_is_recorded_and_the_run_goes_on(tmp_path, fake_encoder):
    paths = make_images(tmp_path / "photos")

    class DeleteAfterScan:
        def scanned(self, count): pass
        def start(self, total): paths["green"].unlink()  # after the walk, before the workers read
        def advance(self, count): pass
        def skipped(self, path, reason): pass
        def rebuilding(self, what): pass

    with Library.open(tmp_path / "lib", encoder=fake_encoder) as lib:
        report = lib.index([tmp_path / "photos"], progress=DeleteAfterScan())
        assert [(Path(e.path).name, e.reason) for e in report.errors] == [
            ("green.png", "file vanished before it could be read")]
        assert report.added == 2 and lib.info().images == 2


def test_a_new_process_takes_the_saved_row_map_until_the_database_has_changed(tmp_path, fake_encoder, monkeypatch):
    from clipsearch.store import Store

    paths = make_images(tmp_path / "photos")
    with Library.open(tmp_path / "lib", encoder=fake_encoder) as lib:
        lib.index([tmp_path / "photos"])
    [ids] = (tmp_path / "lib").glob("index.*.ids")
    as_saved = ids.read_bytes()
    reads = []
    real = Store.live
    monkeypatch.setattr(Store, "live", lambda self, *a, **k: reads.append(1) or real(self, *a, **k))
    with Library.open(tmp_path / "lib", encoder=FakeEncoder()) as lib:
        assert lib.search(image=paths["blue"], k=1, include_query_images=True)[0].path == str(paths["blue"])
    assert reads == []  # which image each row holds came with the index
    # A run that committed a change and was stopped before it saved the index (as here,
    # where the map it saved is put back): the map's stamp is old, so the database is read.
    paths["red"].unlink()
    with Library.open(tmp_path / "lib", encoder=fake_encoder) as lib:
        assert lib.index([tmp_path / "photos"]).removed == 1
    ids.write_bytes(as_saved)
    reads.clear()
    with Library.open(tmp_path / "lib", encoder=FakeEncoder()) as lib:
        found = [Path(h.path).name for h in lib.search(text="red", k=10)]
    assert reads and "red.png" not in found and len(found) == len(COLOURS) - 1


def test_a_damaged_faiss_file_is_rebuilt_not_fatal(tmp_path, fake_encoder):
    paths = make_images(tmp_path / "photos")
    with Library.open(tmp_path / "lib", encoder=fake_encoder) as lib:
        lib.index([tmp_path / "photos"])
    [saved] = (tmp_path / "lib").glob("index.*.faiss")
    saved.write_bytes(b"garbage")
    with Library.open(tmp_path / "lib", encoder=FakeEncoder()) as lib:
        assert lib.search(image=paths["blue"], k=1, include_query_images=True)[0].path == str(paths["blue"])
    # A vector file cut short by a crash mid-write loses only the torn row, never a committed one.
    with open(tmp_path / "lib" / "vectors.1.f16", "ab") as f:
        f.write(b"\x01\x02\x03")
    with Library.open(tmp_path / "lib", encoder=FakeEncoder()) as lib:
        assert len(lib.search(text="red", k=10)) == 3
