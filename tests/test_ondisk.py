"""On-disk IVF indexes: built from shards and merged into memory-mapped lists, searched
with the rows added since held in memory, never written after they are built."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from clipsearch import Library
from clipsearch.errors import ConfigurationError
from clipsearch.index import VectorIndex, exact_search, ivf_plan, recall_at
from clipsearch.vectorstore import VectorFile

from conftest import FakeEncoder, run_cli

DIM = 64


def clustered(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((200, DIM)).astype(np.float32)
    x = centres[rng.integers(0, 200, n)] + 0.5 * rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_an_on_disk_index_is_built_from_shards_and_serves_from_its_mapped_lists(tmp_path, capfd):
    vectors = VectorFile(tmp_path, 1, DIM)
    every = clustered(20_550, 0)
    vectors.append(every[:20_000])
    rows = np.arange(20_000)
    plan = ivf_plan(20_000, DIM, on_disk=True)
    assert plan.factory == "OPQ8_32,IVF512_HNSW32,PQ8x8np"  # a byte per 8 dimensions
    assert "on disk" in plan.reason
    with pytest.raises(ConfigurationError, match="at least 10,000 vectors"):
        ivf_plan(9_999, DIM, on_disk=True)
    built = VectorIndex.build_on_disk(plan, vectors, rows + 1, rows, tmp_path / "index.1.7", shard_rows=6_000)
    built.tune(0.9)
    built.save(tmp_path / "index.1.faiss")
    lists = tmp_path / "index.1.7.ivfdata"
    assert lists.stat().st_size > 20_000 * 8 and not list(tmp_path.glob(".shards.*"))  # 4 shards, merged, gone
    # The index file holds the quantizer and the lists' offsets, not the codes.
    assert (tmp_path / "index.1.faiss").stat().st_size < lists.stat().st_size

    queries = every[20_500:]  # held out
    truth = exact_search(vectors, None, queries, 10)[1] + 1
    loaded = VectorIndex.load(tmp_path / "index.1.faiss", vectors, rows + 1, rows)  # as another process would
    assert capfd.readouterr().out == ""  # FAISS's own progress lines never reach our stdout
    assert loaded.on_disk and loaded.facts.search_param == built.facts.search_param
    assert recall_at(truth, loaded.search(queries, 10)[1]) >= 0.85

    # New rows go to the in-memory delta and are found at once; the lists stay as built.
    before = digest(lists)
    new = every[20_000:20_500]
    new_rows = vectors.append(new)
    loaded.assign(new_rows + 1, new_rows)
    assert loaded.delta_rows == 500 and loaded.ntotal == 20_500
    D, I = loaded.search(new[:20], 1)
    assert (I[:, 0] == new_rows[:20] + 1).all() and np.allclose(D[:, 0], 1.0, atol=2e-3)
    loaded.remove(new_rows[:10] + 1)  # deleted images: masked in the delta too
    assert not set(loaded.search(new[:10], 5)[1].ravel()) & set((new_rows[:10] + 1).tolist())
    assert digest(lists) == before


def test_a_library_goes_on_disk_and_back(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(10_100):
        Image.fromarray(rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)).save(photos / f"{i:05}.png")
    with Library.open(tmp_path / "lib", encoder=WideEncoder()) as lib:
        lib.index([photos])
        report = lib.optimize(on_disk=True, target_recall=0.9)
        assert report.on_disk and report.index_type.startswith("OPQ") and report.recall_at_10 >= 0.9
        assert lib.info().index_on_disk
        files = sorted(p.suffix for p in (tmp_path / "lib").glob("index.*"))
        assert files == [".faiss", ".ids", ".ivfdata", ".json", ".trained"]
        probe = sorted(photos.iterdir())[123]
        assert lib.search(image=probe, k=1, include_query_images=True)[0].path == str(probe)
    for i in range(10_100, 10_150):  # a later run: rows go to the delta
        Image.fromarray(rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)).save(photos / f"{i:05}.png")
    with Library.open(tmp_path / "lib", encoder=WideEncoder()) as lib:
        assert lib.index([photos]).added == 50
        assert lib.vectors.delta_rows == 50
        newest = photos / "10149.png"
        assert lib.search(image=newest, k=1, include_query_images=True)[0].path == str(newest)
    out = run_cli("info", "-L", str(tmp_path / "lib"), "--json")  # a cold reader maps the lists
    assert out.returncode == 0 and json.loads(out.stdout)["index_on_disk"] is True
    with Library.open(tmp_path / "lib", encoder=WideEncoder()) as lib:
        assert not lib.optimize(on_disk=False).on_disk
        assert not list((tmp_path / "lib").glob("index.*.ivfdata")) and not lib.info().index_on_disk


class WideEncoder(FakeEncoder):
    """A fake encoder with 64 dimensions, enough for product quantisation: a fixed random
    projection of the image's pixels."""

    _projection = np.random.default_rng(7).standard_normal((8 * 8 * 3, DIM)).astype(np.float32)

    @property
    def identity(self):
        from clipsearch.results import ModelIdentity

        return ModelIdentity(self.spec.name, None, DIM)

    @property
    def dim(self) -> int:
        return DIM

    def encode_crops(self, crops: np.ndarray) -> np.ndarray:
        self.encoded.append(len(crops))
        x = (crops.reshape(len(crops), -1).astype(np.float32) / 255 - 0.5) @ self._projection
        return x / np.linalg.norm(x, axis=1, keepdims=True)
