"""The index's life in a library: optimize, automatic rebuilds and compaction, deletions
under an approximate index, the text cache, and a long-lived Library seeing other writers."""

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

import clipsearch.index as index_module
import clipsearch.indexfiles as indexfiles_module
from clipsearch import Library
from clipsearch.errors import ArgumentError
from conftest import FakeEncoder, run_cli


def label(path: str) -> str:
    return "_".join(Path(path).stem.split("_")[:2])


def copy_images(images, folder: Path) -> Path:
    folder.mkdir(parents=True)
    for p in images:
        shutil.copy(p, folder / p.name)
    return folder


def test_optimize_and_deletions_under_an_approximate_index_with_the_demo_model(tmp_path, demo_images):
    photos = copy_images(demo_images, tmp_path / "photos")
    with Library.open(tmp_path / "lib", model="demo") as lib:
        lib.index([photos])
        info = lib.info()
        assert (info.index_type, info.index_recall_at_10, info.dead_vectors) == ("Flat", 1.0, 0)
        # A budget too small for exact search: the smallest graph index, tuned for the target.
        report = lib.optimize(memory_budget=10_000, target_recall=0.9)
        assert report.index_type == "HNSW32,SQfp16" and report.vectors == 48 and report.dropped == 0
        assert report.recall_at_10 >= 0.9 and report.search_param.startswith("efSearch=")
        assert [label(h.path) for h in lib.search(text="a red circle", k=1)] == ["red_circle"]
        # Delete every red image: the graph keeps their rows, the tombstone mask hides them.
        red = [p for p in photos.iterdir() if p.name.startswith("red_")]
        for p in red:
            p.unlink()
        assert lib.index([photos]).removed == len(red)
        info = lib.info()
        assert info.index_type == "HNSW32,SQfp16" and info.vectors == 48 - len(red)
        assert info.dead_vectors == len(red)
        everything = lib.search(text="a red circle", k=48)
        assert len(everything) == 48 - len(red) and not any(h.path.startswith(str(photos / "red_")) for h in everything)
    with Library.open(tmp_path / "lib") as lib:  # as a new process sees it
        assert len(lib.search(text="a red circle", k=48)) == 48 - len(red)
        report = lib.optimize()  # keeps the budget and target given before
        assert (report.dropped, report.memory_budget, report.target_recall) == (len(red), 10_000, 0.9)
        assert lib.info().dead_vectors == 0 and lib.info().vectors == 48 - len(red)
        assert sorted(p.name for p in (tmp_path / "lib").glob("*.f16")) == ["vectors.2.f16"]
        assert sorted(p.name for p in (tmp_path / "lib").glob("index.*")) == [
            "index.2.faiss", "index.2.ids", "index.2.json"]
        assert [label(h.path) for h in lib.search(text="a blue square", k=1)] == ["blue_square"]
        with pytest.raises(ArgumentError, match="recall target"):
            lib.optimize(target_recall=1.5)


def make_images(folder: Path, count: int, offset: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(offset, offset + count):
        paths.append(folder / f"img{i:03}.png")
        Image.new("RGB", (16, 16), ((i * 37) % 256, (i * 91) % 256, (i * 53) % 256)).save(paths[-1])
    return paths


class Recorder:
    """An IndexProgress that remembers what it was told about rebuilds."""

    def __init__(self):
        self.rebuilds: list[str] = []

    def scanned(self, count): pass

    def start(self, total): pass

    def advance(self, count): pass

    def skipped(self, path, reason): pass

    def rebuilding(self, what):
        self.rebuilds.append(what)


def test_index_moves_to_a_bigger_index_type_and_compacts_by_itself(tmp_path, monkeypatch):
    monkeypatch.setattr(index_module, "FLAT_MAX", 5)
    monkeypatch.setattr(indexfiles_module, "_COMPACT_MIN", 1)
    photos = tmp_path / "photos"
    make_images(photos, 4)
    with Library.open(tmp_path / "lib", encoder=FakeEncoder()) as lib:
        lib.index([photos])
        assert lib.info().index_type == "Flat"
        make_images(photos, 6, offset=4)
        told = Recorder()
        lib.index([photos], progress=told)  # 10 images: past the (patched) exact-search limit
        assert told.rebuilds == ["the library outgrew its index: building HNSW32 for 10 images"]
        info = lib.info()
        assert info.index_type == "HNSW32" and info.vectors == 10 and info.index_recall_at_10 is not None
        for p in sorted(photos.iterdir())[:4]:
            p.unlink()
        lib.index([photos], progress=told)  # 4 of 10 rows dead: at least a quarter, so compacted
        assert told.rebuilds[1] == "compacting 4 vectors of deleted or changed images"
        info = lib.info()
        assert (info.vectors, info.dead_vectors, info.index_type) == (6, 0, "HNSW32")
        assert (tmp_path / "lib" / "vectors.2.f16").exists() and not (tmp_path / "lib" / "vectors.1.f16").exists()
        hits = lib.search(text="red", k=10)
        assert len(hits) == 6 and all(Path(h.path).exists() for h in hits)


def test_a_repeated_text_is_not_encoded_again(tmp_path):
    photos = tmp_path / "photos"
    make_images(photos, 3)
    first = FakeEncoder()
    with Library.open(tmp_path / "lib", encoder=first) as lib:
        lib.index([photos])
        a = lib.search(text="red", k=3)
        assert lib.search(text="red", k=3) == a
    assert first.texts == ["red"]
    again = FakeEncoder()
    with Library.open(tmp_path / "lib", encoder=again) as lib:  # a later process: from the cache
        assert lib.search(text="red", k=3) == a
        lib.search(text="green", k=3)
    assert again.texts == ["green"]


def test_a_long_lived_library_sees_what_another_writer_indexed(tmp_path):
    photos = tmp_path / "photos"
    make_images(photos, 3)
    with Library.open(tmp_path / "lib", encoder=FakeEncoder()) as writer:
        writer.index([photos])
    reader = Library.open(tmp_path / "lib", encoder=FakeEncoder())
    try:
        assert len(reader.search(text="red", k=10)) == 3
        new = make_images(photos, 2, offset=3)
        (photos / "img000.png").unlink()
        with Library.open(tmp_path / "lib", encoder=FakeEncoder()) as writer:
            writer.index([photos])
        paths = {h.path for h in reader.search(text="red", k=10)}
        assert paths == {str(p) for p in sorted(photos.iterdir())} and {str(p) for p in new} <= paths
    finally:
        reader.close()


def test_optimize_from_the_command_line(demo_library, tmp_path):
    lib = tmp_path / "lib"
    shutil.copytree(demo_library, lib)
    result = run_cli("optimize", "--memory-budget", "10KB", "--target-recall", "0.9", "--json", "-L", str(lib))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["index_type"] == "HNSW32,SQfp16" and report["vectors"] == 48 and report["recall_at_10"] >= 0.9
    info = json.loads(run_cli("info", "--json", "-L", str(lib)).stdout)
    assert info["index_type"] == "HNSW32,SQfp16" and info["index_search_param"] == report["search_param"]
    bad = run_cli("optimize", "--memory-budget", "lots", "-L", str(lib))
    assert bad.returncode == 1 and "not a size" in bad.stderr and "Traceback" not in bad.stderr
