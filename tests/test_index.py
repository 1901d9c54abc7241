"""The FAISS wrapper: add, replace, remove, search, and an atomic save/load round trip."""

import numpy as np
import pytest

from clipsearch.index import VectorIndex


def unit(rng, n, d=16):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_search_matches_exact_inner_product():
    rng = np.random.default_rng(0)
    xb, xq = unit(rng, 200), unit(rng, 5)
    ids = np.arange(1000, 1200)
    vi = VectorIndex.build(ids, xb, 16)
    D, I = vi.search(xq, 10)
    expected = np.argsort(-(xq @ xb.T), axis=1)[:, :10] + 1000
    assert (I == expected).all()
    assert np.allclose(D, np.sort(xq @ xb.T, axis=1)[:, ::-1][:, :10], atol=1e-5)


def test_add_replaces_existing_ids_instead_of_duplicating():
    rng = np.random.default_rng(1)
    vi = VectorIndex(16)
    vi.add([1, 2, 3], unit(rng, 3))
    new = unit(rng, 1)
    vi.add([2], new)
    assert vi.ntotal == 3
    D, I = vi.search(new, 1)
    assert I[0, 0] == 2 and D[0, 0] == pytest.approx(1.0, abs=1e-5)


def test_remove_makes_ids_unfindable():
    rng = np.random.default_rng(2)
    x = unit(rng, 50)
    vi = VectorIndex.build(np.arange(50), x, 16)
    assert vi.remove([3, 7, 999]) == 2
    assert vi.ntotal == 48
    _, I = vi.search(x, 48)
    assert 3 not in I and 7 not in I
    assert set(vi.ids()) == set(range(50)) - {3, 7}


def test_empty_index_and_short_results_pad_with_minus_one():
    vi = VectorIndex(8)
    D, I = vi.search(np.ones(8, np.float32), 3)
    assert (I == -1).all()
    vi.add([5], np.ones((1, 8), np.float32) / np.sqrt(8))
    _, I = vi.search(np.ones(8, np.float32), 3)
    assert I[0].tolist() == [5, -1, -1]


def test_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    x = unit(rng, 30)
    vi = VectorIndex.build(np.arange(100, 130), x, 16)
    vi.remove([105])
    path = tmp_path / "v.faiss"
    vi.save(path)
    loaded = VectorIndex.load(path)
    assert loaded.dim == 16 and loaded.ntotal == 29
    assert np.array_equal(loaded.search(x, 5)[1], vi.search(x, 5)[1])
    assert [p.name for p in tmp_path.iterdir()] == ["v.faiss"]  # no temp file left behind


@pytest.mark.parametrize("bad", [np.ones((2, 7)), np.ones((2, 3, 16))])
def test_wrong_shapes_are_value_errors(bad):
    vi = VectorIndex(16)
    with pytest.raises(ValueError):
        vi.add([1, 2], bad)


def test_precondition_errors():
    vi = VectorIndex(4)
    with pytest.raises(ValueError):
        vi.add([1, 1], np.ones((2, 4)))
    with pytest.raises(ValueError):
        vi.add([1], np.ones((2, 4)))
    with pytest.raises(ValueError):
        vi.search(np.ones(4), 0)
    with pytest.raises(ValueError):
        VectorIndex(0)
