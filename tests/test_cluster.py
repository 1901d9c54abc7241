"""Indexing on Ray (``--engine ray``): a real local Ray cluster of two CPUs, the real demo
model, real image files. The result must be the library a local ``index`` makes."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest

from clipsearch import Library
from clipsearch.cluster import SHARD_FOLDER, RayOptions
from clipsearch.duplicates import SIGNATURES, SignatureStore
from clipsearch.errors import RayUnavailableError, WeightsUnavailableError

from conftest import run_cli

ray = pytest.importorskip("ray", reason="Ray is in the test extra: pip install -e '.[test]'")


@pytest.fixture(scope="module")
def cluster():
    """A Ray cluster on this machine, shared by the module's tests; yields its address."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def contents(root: Path) -> tuple[dict[str, int], dict[int, np.ndarray], int]:
    """``path -> id``, ``id -> vector`` and the vector file's row count of a library."""
    with Library.open(root, create=False) as lib:
        ids, vectors = lib.store.vectors()
        paths = {row.path: row.id for row in lib.store.images(ids.tolist()).values()}
        return paths, dict(zip(ids.tolist(), vectors)), len(lib.store.vector_file())


def assert_same_library(got: Path, want: Path, crashed: bool = False) -> None:
    got_paths, got_vectors, got_rows = contents(got)
    want_paths, want_vectors, _ = contents(want)
    assert got_paths.keys() == want_paths.keys()
    for path, image_id in want_paths.items():
        assert np.allclose(got_vectors[got_paths[path]], want_vectors[image_id], atol=2e-3), path
    if not crashed:
        assert got_paths == want_paths  # same ids: numbered in scan order, not in completion order
        assert got_rows == len(want_paths)  # no vector was written twice
    # After a crash, batches commit out of order, so the files of the missing batches are numbered
    # after the highest committed id by the next run, and a crash between a batch's vector write
    # and its commit leaves dead rows; the caller checks that committed ids were kept.


@pytest.mark.parametrize("shards", [False, True], ids=["vectors-by-object-store", "vectors-by-shard-files"])
def test_a_ray_index_is_the_local_index(cluster, tmp_path, demo_images, demo_library, shards):
    with Library.open(tmp_path / "lib", model="demo") as lib:
        report = lib.index([demo_images[0].parent], engine="ray", ray=RayOptions(batch_size=8, shards=shards))
        assert report.added == 48 and not report.errors and report.precision == "fp32"
        # Search works on what the driver committed, like on a local library.
        assert lib.search(text="a red circle", k=3)
        again = lib.index([demo_images[0].parent], engine="ray", ray=RayOptions(batch_size=8, shards=shards))
        assert again.unchanged == 48 and again.added == 0
    assert_same_library(tmp_path / "lib", demo_library)
    # And it kept duplicates' pixel signatures, the very ones of a local run.
    assert kept_signatures(tmp_path / "lib") == kept_signatures(demo_library) != {}
    assert not (tmp_path / "lib" / SHARD_FOLDER).exists() or not any((tmp_path / "lib" / SHARD_FOLDER).iterdir())


def kept_signatures(library: Path) -> dict[bytes, bytes]:
    digests, table, _ = SignatureStore(library / SIGNATURES)._load()
    return {d: table[n].tobytes() for d, n in digests.items()}


def _actor_pids() -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and b"_EmbedActor" in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            pass
    return pids


class _KillAnActor:
    """Progress that kills a model actor's process once the first batch is committed."""

    def __init__(self):
        self.killed: list[int] = []

    def advance(self, count: int) -> None:
        if not self.killed:
            for pid in _actor_pids():
                os.kill(pid, signal.SIGKILL)
                self.killed.append(pid)

    def scanned(self, count: int) -> None: ...

    def start(self, total: int) -> None: ...

    def skipped(self, path: str, reason: str) -> None: ...

    def rebuilding(self, what: str) -> None: ...


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the actor's process in /proc")
def test_a_killed_worker_is_retried_without_duplicates(cluster, tmp_path, demo_images, demo_library):
    progress = _KillAnActor()
    with Library.open(tmp_path / "lib", model="demo") as lib:
        report = lib.index([demo_images[0].parent], engine="ray", progress=progress, ray=RayOptions(batch_size=4))
    assert progress.killed, "no actor process was found to kill"
    assert report.added == 48 and report.updated == 0 and not report.errors
    assert_same_library(tmp_path / "lib", demo_library)


def test_broken_files_are_recorded_as_in_a_local_run(cluster, tmp_path, demo_images):
    folder = tmp_path / "photos"
    folder.mkdir()
    for p in demo_images[:5]:
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with Library.open(tmp_path / "lib", model="demo") as lib:
        report = lib.index([folder], engine="ray", ray=RayOptions(batch_size=4))
        assert report.added == 5
        assert [e.path for e in report.errors] == [str(folder / "broken.jpg")]
        assert [e.path for e in lib.errors()] == [str(folder / "broken.jpg")]


def test_the_cli_indexes_on_a_running_cluster_with_clean_json(cluster, tmp_path, demo_images, demo_library):
    result = run_cli("index", str(demo_images[0].parent), "-L", str(tmp_path / "lib"), "--model", "demo",
                     "--engine", "ray", "--ray-address", cluster, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)  # nothing of Ray's on stdout
    assert report["added"] == 48 and report["error_count"] == 0
    assert_same_library(tmp_path / "lib", demo_library)
    # Ray's own notes reach stderr only with -v.
    assert "Progress bars disabled" not in result.stderr and "execution finished" not in result.stderr


def test_without_ray_the_engine_says_what_to_install(tmp_path, demo_images, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails
    with Library.open(tmp_path / "lib", model="demo") as lib:
        with pytest.raises(RayUnavailableError, match="not installed") as info:
            lib.index([demo_images[0].parent], engine="ray")
    assert "clipsearch[ray]" in info.value.hint


def test_more_gpus_than_the_cluster_has_is_a_clear_error(cluster, tmp_path, demo_images):
    with Library.open(tmp_path / "lib", model="demo") as lib:
        with pytest.raises(RayUnavailableError, match="more GPUs than the cluster has"):
            lib.index([demo_images[0].parent], engine="ray", ray=RayOptions(gpus_per_worker=1))
        assert lib.store.counts() == {"indexed": 0, "error": 0}


def test_an_actor_that_cannot_load_the_model_reports_our_error(cluster, tmp_path, demo_images):
    # The model's weights are missing on the workers (HF_HUB_OFFLINE is set for the tests):
    # the user gets clipsearch's message and hint, not Ray's traceback, and nothing is written.
    with Library.open(tmp_path / "lib", model="ViT-B-32/laion2b_s34b_b79k") as lib:
        with pytest.raises(WeightsUnavailableError, match="not on this machine") as info:
            lib.index([demo_images[0].parent], engine="ray", ray=RayOptions(batch_size=8))
        assert "--model demo" in info.value.worded("cli")[1]  # it crossed processes whole
        assert lib.store.counts() == {"indexed": 0, "error": 0}


def test_a_killed_driver_leaves_a_library_that_the_next_run_completes(cluster, tmp_path, demo_images,
                                                                      demo_library):
    import sqlite3
    import subprocess
    import time

    library = tmp_path / "lib"
    driver = subprocess.Popen([sys.executable, "-m", "clipsearch.cli", "index", str(demo_images[0].parent),
                               "-L", str(library), "--model", "demo", "--engine", "ray", "--ray-address", cluster,
                               "--batch-size", "4", "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    committed, deadline = 0, time.monotonic() + 240
    try:
        while committed < 8 and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
            try:
                with sqlite3.connect(library / "library.db") as db:
                    committed = db.execute("select count(*) from images where status = 'indexed'").fetchone()[0]
            except sqlite3.Error:
                pass  # not created yet
    finally:
        driver.kill()
        driver.wait()
    assert 8 <= committed < 48, (committed, driver.stderr.read()[-2000:])
    kept, _, _ = contents(library)
    with Library.open(library) as lib:
        report = lib.index([demo_images[0].parent], engine="ray", ray=RayOptions(batch_size=8))
    # Every batch committed before the kill is kept; the rest is embedded now.
    assert report.unchanged >= committed and report.added + report.unchanged == 48
    assert_same_library(library, demo_library, crashed=True)
    now, _, _ = contents(library)
    assert {path: now[path] for path in kept} == kept  # committed files keep their ids


def test_a_ray_run_saves_the_text_tower_for_cold_queries(cluster, tmp_path, demo_images, monkeypatch):
    # The driver never loaded the model to embed; it loads it once afterwards, as a local
    # run would have, so that text queries in fresh processes need no torch.
    monkeypatch.setenv("CLIPSEARCH_TEXT_ONNX", "1")
    with Library.open(tmp_path / "lib", model="demo") as lib:
        lib.index([demo_images[0].parent], engine="ray", ray=RayOptions(batch_size=16))
    assert json.loads((tmp_path / "lib" / "text-onnx" / "meta.json").read_text())["model"] == "demo"


def test_a_block_that_joins_several_batches_reads_each_rows_own_shard(tmp_path):
    # Ray may hand back several actor results as one block: rows from two shards and a
    # batch whose files all failed (no shard).
    from clipsearch.cluster import _vectors_of

    first, second = np.arange(6, dtype=np.float16).reshape(2, 3), -np.arange(9, dtype=np.float16).reshape(3, 3)
    first.tofile(tmp_path / "a.f16")
    second.tofile(tmp_path / "b.f16")
    shard = np.asarray([str(tmp_path / "a.f16")] * 2 + [""] + [str(tmp_path / "b.f16")] * 3, dtype=object)
    vectors = _vectors_of({"key": np.arange(6), "shard": shard})
    assert np.array_equal(vectors, np.concatenate([first, np.zeros((1, 3)), second]).astype(np.float32))
    assert not list(tmp_path.glob("*.f16"))  # read once, then deleted
    assert _vectors_of({"key": np.arange(2), "shard": np.asarray(["", ""], dtype=object)}) is None


@pytest.mark.parametrize("nodes, gpus, workers, want", [
    ([{"CPU": 2}], 0, None, (1, 2)),                                  # this machine
    ([{"CPU": 16, "GPU": 1}], 1, None, (1, 16)),                      # one GPU node: all its cores decode
    ([{"CPU": 12}, {"CPU": 6}], 0, None, (4, 4)),                     # 3 + 1 actors of 4 CPUs
    # Uneven GPU nodes: the few-core node sets the size, so all 16 GPUs get an actor (the
    # cluster's average, 80 / 16 = 5 CPUs, would fit only 3 actors on the 16-core node).
    ([{"CPU": 64, "GPU": 8}, {"CPU": 16, "GPU": 8}], 1, None, (16, 2)),
    ([{"CPU": 64, "GPU": 8}, {"CPU": 32}], 0.5, None, (16, 4)),       # fractional GPUs; CPU-only node unused
    ([{"CPU": 8}, {"CPU": 8}], 0, 8, (8, 2)),                         # --ray-workers 8
])
def test_actors_are_sized_to_fit_every_node(nodes, gpus, workers, want):
    from clipsearch.cluster import plan_actors

    assert plan_actors(nodes, gpus, workers) == want


def test_a_gpu_count_no_node_has_is_refused():
    from clipsearch.cluster import plan_actors

    with pytest.raises(RayUnavailableError, match="more GPUs than the cluster has"):
        plan_actors([{"CPU": 8, "GPU": 1}, {"CPU": 8, "GPU": 1}], 2)
