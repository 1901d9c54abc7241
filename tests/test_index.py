"""The vector file and the index over it: choosing a type, recall against exact search,
deletions and replacements under every type, exact filters, catching up after a crash."""

import numpy as np
import pytest

import clipsearch.index as index_module
from clipsearch.errors import ArgumentError, ConfigurationError
from clipsearch.index import IndexPlan, VectorIndex, choose_index, exact_search, parse_size, recall_at
from clipsearch.vectorstore import VectorFile

GB = 1024 ** 3
# One of each type, small enough to build in a second or two (PQ needs 10k training vectors).
PLANS = [IndexPlan("Flat", 0, "test"), IndexPlan("HNSW32", 0, "test"), IndexPlan("HNSW32,SQfp16", 0, "test"),
         IndexPlan("OPQ8_32,IVF64_HNSW32,PQ8x8np", 0, "test")]


def clustered(rng, n, d=32, clusters=60, spread=0.5):
    """Unit vectors around random centres: neighbours are close, as with CLIP embeddings."""
    centres = rng.standard_normal((clusters, d)).astype(np.float32)
    x = centres[rng.integers(0, clusters, n)] / np.sqrt(d) + rng.standard_normal((n, d)).astype(np.float32) * (
        spread / np.sqrt(d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def build(tmp_path, plan, x, first_id=1000):
    vf = VectorFile(tmp_path, 1, x.shape[1])
    rows = vf.append(x)
    return VectorIndex.build(plan, vf, rows + first_id, rows)


@pytest.fixture(scope="module")
def data():
    x = clustered(np.random.default_rng(0), 12_100)
    return x[:12_000], x[12_000:]  # queries from the same distribution, not in the index


def test_choose_index_follows_size_and_budget():
    assert choose_index(10_000, 512).factory == "Flat"
    # autofaiss picks HNSW32 for 1M 512-d vectors under 4 GB, and OPQ256_768,IVF16384_HNSW32,PQ256x8
    # under 1 GB; fewer lists here (4 sqrt(n), rounded down) keep the build to minutes on a laptop.
    assert choose_index(1_000_000, 512, 4 * GB).factory == "HNSW32"
    small = choose_index(1_000_000, 512, 1 * GB)
    assert small.factory == "OPQ256_512,IVF2048_HNSW32,PQ256x8np" and small.memory_bytes <= GB
    assert choose_index(1_000_000, 512, 2 * GB).factory == "HNSW32,SQfp16"
    ten_million = choose_index(10_000_000, 512, 2 * GB)
    assert ten_million.tier == 3 and ten_million.memory_bytes <= 2 * GB and ten_million.nlist == 8192
    # A bigger library never gets a lower tier.
    tiers = [choose_index(n, 512).tier for n in (1e3, 1e5, 1e6, 3e6, 5e6, 1e7, 1e8)]
    assert tiers == sorted(tiers)
    with pytest.raises(ConfigurationError, match="larger `memory_budget`"):
        choose_index(100_000_000, 512, 100 * 1024 ** 2)


def test_parse_size():
    assert parse_size("2GB") == 2 * GB and parse_size("512mb") == 512 * 1024 ** 2
    assert parse_size("1.5G") == int(1.5 * GB) and parse_size("1000") == 1000 and parse_size("2GiB") == 2 * GB
    for bad in ("lots", "-1GB", "0", "2XB"):
        with pytest.raises(ArgumentError):
            parse_size(bad)


@pytest.mark.parametrize("plan", PLANS, ids=lambda p: p.factory)
def test_each_type_reaches_its_recall_target_and_returns_exact_scores(tmp_path, data, plan):
    x, queries = data
    vi = build(tmp_path, plan, x)
    assert vi.factory == plan.factory and vi.ntotal == len(x)
    tuned = vi.tune(0.9)
    assert tuned >= 0.9 and vi.facts.recall_at_10 == pytest.approx(tuned, abs=1e-4)
    assert (vi.facts.search_param == "") == (plan.factory == "Flat")
    # On queries the tuning never saw.
    truth_d, truth = exact_search(vi.file, vi.live_mask(), queries, 10)
    D, I = vi.search(queries, 10)
    assert recall_at(truth + 1000, I) >= 0.85
    # Scores are true cosine similarities (fp16 storage aside), whatever the index compresses.
    exact = np.einsum("qd,qkd->qk", queries, x[I - 1000])
    assert np.allclose(D, exact, atol=2e-3)


@pytest.mark.parametrize("plan", PLANS, ids=lambda p: p.factory)
def test_deleted_and_replaced_images_are_never_returned(tmp_path, data, plan):
    x, _ = data
    vi = build(tmp_path, plan, x)
    vi.tune(0.9)
    gone = np.arange(1000, 1100)
    vi.remove(gone)
    _, I = vi.search(x[:100], 10)
    assert not np.isin(I, gone).any() and vi.ntotal == len(x) - 100 and vi.dead == 100
    # Image 1200 changes: its new vector is a new row, its old row dies.
    new = clustered(np.random.default_rng(5), 1, clusters=1)
    vi.assign([1200], vi.file.append(new))
    D, I = vi.search(new, 1)
    assert I[0, 0] == 1200 and D[0, 0] > 0.999
    D, I = vi.search(x[200], 10)
    assert D[0, 0] < 0.999  # the old vector is no longer found under any id
    assert set(vi.ids().tolist()) == set(range(1000, 1000 + len(x))) - set(gone.tolist())


def test_a_saved_index_catches_up_with_rows_written_after_it(tmp_path, data):
    """What a crash between an index run's commits and its save leaves behind."""
    x, _ = data
    vi = build(tmp_path, PLANS[1], x[:5000])
    vi.save(tmp_path / "index.1.faiss")
    rows = vi.file.append(x[5000:6000])  # committed later, never saved in the index
    all_rows = np.arange(6000)
    loaded = VectorIndex.load(tmp_path / "index.1.faiss", VectorFile(tmp_path, 1, 32), all_rows + 1000, all_rows)
    assert loaded.ntotal == 6000 and loaded.factory == "HNSW32"
    _, I = loaded.search(x[5500], 1)
    assert I[0, 0] == 1000 + rows[500]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.1.faiss", "index.1.json", "vectors.1.f16"]


@pytest.mark.parametrize("plan", PLANS, ids=lambda p: p.factory)
def test_a_loaded_index_takes_new_rows(tmp_path, data, plan):
    """A loaded index maps its file's vectors (FAISS cannot add to those): a process that
    loaded it and then writes, or takes in another's rows, still adds them, and the file
    it was loaded from stays as it was."""
    x, _ = data
    vi = build(tmp_path, plan, x[:3000])
    vi.save(tmp_path / "index.1.faiss")
    saved = (tmp_path / "index.1.faiss").read_bytes()
    rows = np.arange(3000)
    loaded = VectorIndex.load(tmp_path / "index.1.faiss", VectorFile(tmp_path, 1, 32), rows + 1000, rows)
    new = loaded.file.append(x[3000:3100])
    loaded.assign(new + 1000, new)
    assert loaded.ntotal == 3100
    _, I = loaded.search(x[3050], 1)
    assert I[0, 0] == 1000 + new[50]
    assert (tmp_path / "index.1.faiss").read_bytes() == saved


@pytest.mark.parametrize("plan", [PLANS[0], PLANS[1]], ids=lambda p: p.factory)
@pytest.mark.parametrize("exact_limit", [50_000, 10])  # exact over the subset, or through a selector
def test_a_selective_filter_returns_the_true_top_hits(tmp_path, data, plan, exact_limit, monkeypatch):
    monkeypatch.setattr(index_module, "EXACT_SUBSET_MAX", exact_limit)
    x, queries = data
    vi = build(tmp_path, plan, x)
    vi.tune(0.95)
    allowed = np.random.default_rng(3).choice(len(x), 300, replace=False)
    D, I = vi.search(queries, 10, subset=allowed + 1000)
    assert np.isin(I, allowed + 1000).all()
    truth_d, truth = exact_search(vi.file, vi.live_mask(), queries, 10, np.sort(allowed))
    if plan.factory == "Flat" or exact_limit > 300:
        assert (I == truth + 1000).all() and np.allclose(D, truth_d, atol=1e-5)
    else:  # a graph walk that must skip most nodes: approximate, but still good
        assert recall_at(truth + 1000, I) >= 0.9


def test_range_finds_every_image_above_the_cutoff(tmp_path, data):
    x, queries = data
    vi = build(tmp_path, PLANS[0], x)
    D, I = vi.range(queries[0], 0.5)
    expected = np.flatnonzero(x @ queries[0] >= 0.5)
    assert sorted(I.tolist()) == sorted((expected + 1000).tolist()) and (np.diff(D) <= 0).all()


def test_empty_and_short_results_pad_with_minus_one(tmp_path):
    vf = VectorFile(tmp_path, 1, 8)
    vi = VectorIndex.build(IndexPlan("Flat", 0, ""), vf, np.empty(0, np.int64), np.empty(0, np.int64))
    _, I = vi.search(np.ones(8, np.float32), 3)
    assert (I == -1).all()
    vi.assign([5], vf.append(np.ones((1, 8)) / np.sqrt(8)))
    _, I = vi.search(np.ones(8, np.float32), 3)
    assert I[0].tolist() == [5, -1, -1]
    with pytest.raises(ValueError):
        vi.search(np.ones(7), 1)
    with pytest.raises(ValueError):
        vi.search(np.ones(8), 0)


def test_the_vector_file_survives_a_torn_write(tmp_path):
    vf = VectorFile(tmp_path, 1, 4)
    assert vf.append(np.eye(4)[:2]).tolist() == [0, 1]
    with open(vf.path, "ab") as f:
        f.write(b"\x00\x01\x02")  # a crash in the middle of the next row
    assert len(vf) == 2
    assert vf.append(np.eye(4)[2:]).tolist() == [2, 3]
    assert np.allclose(VectorFile(tmp_path, 1, 4).rows([0, 3]), np.eye(4)[[0, 3]])
    assert vf.nbytes == 4 * 4 * 2


def test_an_index_whose_facts_file_is_lost_still_knows_its_type(tmp_path, data):
    x, _ = data
    vi = build(tmp_path, PLANS[3], x)
    vi.save(tmp_path / "index.1.faiss")
    (tmp_path / "index.1.json").unlink()
    rows = np.arange(len(x))
    loaded = VectorIndex.load(tmp_path / "index.1.faiss", vi.file, rows + 1000, rows)
    plan = IndexPlan(loaded.factory, 0, "")
    assert (plan.tier, plan.nlist) == (3, 64) and loaded.ntotal == len(x)


def test_the_shared_lock_lets_readers_share_and_writers_wait():
    import threading

    from clipsearch.index import SharedLock

    lock, events = SharedLock(), []
    inside = threading.Barrier(3)

    def reader(n):
        with lock.reading():
            with lock.reading():  # re-entrant, even while a writer waits
                inside.wait(timeout=10)  # both readers are in at once
                events.append(f"read {n}")

    def writer():
        with lock.writing(), lock.writing(), lock.reading():  # a writer may nest both
            events.append("write")

    readers = [threading.Thread(target=reader, args=(n,)) for n in range(2)]
    for t in readers:
        t.start()
    inside.wait(timeout=10)
    w = threading.Thread(target=writer)
    w.start()
    for t in readers + [w]:
        t.join(10)
    assert sorted(events[:2]) == ["read 0", "read 1"] and events[2] == "write"
    with lock.reading(), pytest.raises(RuntimeError, match="cannot become a writer"):
        with lock.writing():
            pass


@pytest.mark.parametrize("plan", PLANS[:2], ids=lambda p: p.factory)
def test_searches_from_many_threads_while_rows_come_and_go(tmp_path, plan):
    """What a server does: searches in several threads while another process's new rows
    are taken in (catch-up and assign) and its deletions forgotten. Every search answers
    with ids that were live at some moment; none fails or sees a half-made change."""
    import threading

    rng = np.random.default_rng(4)
    x = clustered(rng, 4000)
    vf = VectorFile(tmp_path, 1, x.shape[1])
    rows = vf.append(x[:2000])
    vi = VectorIndex.build(plan, vf, rows, rows)  # image id = row
    stop, failures, answered = threading.Event(), [], [0]

    def search():
        q = np.random.default_rng(threading.get_ident() % 1000)
        while not stop.is_set():
            try:
                D, I = vi.search(x[q.integers(0, 4000, 4)], 10)
                # Ids are rows here: a hit must point at its own vector, scored exactly.
                hits = I[I >= 0]
                assert len(hits) and (hits < 4000).all()
                answered[0] += 1
            except Exception as exc:  # noqa: BLE001 - reported below, with the thread's context
                failures.append(exc)
                return

    threads = [threading.Thread(target=search) for _ in range(4)]
    for t in threads:
        t.start()
    for start in range(2000, 4000, 250):
        new = vf.append(x[start:start + 250])
        with vi.lock.writing():  # as Library._refresh does: one step as searches see it
            vi.remove(np.arange(start - 2000, start - 1750))
            vi.assign(new, new)
    stop.set()
    for t in threads:
        t.join(30)
    assert not failures, failures[0]
    assert answered[0] > 0 and vi.ntotal == 2000
    D, I = vi.search(x[3999], 1)
    assert I[0, 0] == 3999
