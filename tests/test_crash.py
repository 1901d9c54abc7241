"""Crash safety and concurrency, with real indexing processes and the demo model.

A ``kill -9`` at any moment must leave a library that opens cleanly, where SQLite rows and
FAISS vectors agree, and the next run must not re-encode what was already committed.
Searches must work while an index runs; a second index run must be refused.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clipsearch import Library, demoworld
from clipsearch.encoder import Encoder


def start_index(photos: Path, lib: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "clipsearch.cli", "index", str(photos), "-L", str(lib), "--model", "demo", "-q",
         "--batch-size", "4", "--workers", "1", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def indexed_rows(lib: Path) -> int:
    db = lib / "library.db"
    if not db.exists():
        return 0
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return con.execute("select count(*) from images where status='indexed'").fetchone()[0]
        finally:
            con.close()
    except sqlite3.OperationalError:  # the schema is still being created
        return 0


def wait_for_rows(lib: Path, proc: subprocess.Popen, at_least: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while indexed_rows(lib) < at_least:
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "indexing made no progress"
        time.sleep(0.05)


def assert_consistent(lib_dir: Path) -> int:
    """Open the library as a user would and check that every layer agrees; returns the image count."""
    with Library.open(lib_dir, create=False) as lib:
        con = sqlite3.connect(lib_dir / "library.db")
        row_of = dict(con.execute("select id, row from images where status='indexed'").fetchall())
        con.close()
        rows = set(row_of)
        # Every indexed image points at its own, whole row of the vector file...
        assert None not in row_of.values() and len(set(row_of.values())) == len(row_of)
        assert all(r < len(lib.store.vector_file()) for r in row_of.values())
        # ...which the index searches under the image's id.
        assert set(lib.vectors.ids().tolist()) == rows
        assert lib.info().images == len(rows) == lib.vectors.ntotal
        for image_id in list(rows)[:20]:
            D, I = lib.vectors.search(lib.store.vector_of(image_id), 1)
            assert D[0, 0] > 0.999
        if rows:
            hits = lib.search(text="a red circle", k=3)
            assert hits and all(Path(h.path).is_file() for h in hits)
        return len(rows)


def demo_folder(factory, name: str, count: int, seed: int, size_range: tuple[int, int]) -> Path:
    folder = factory.mktemp(name)
    demoworld.write_images(folder, count, seed=seed, size_range=size_range)
    return folder


@pytest.fixture(scope="module")
def many_images(tmp_path_factory) -> Path:
    return demo_folder(tmp_path_factory, "many", 480, 11, (64, 160))


def test_kill_9_at_random_moments_then_resume(many_images, tmp_path):
    lib = tmp_path / "lib"
    rng = random.Random(1234)
    counts = []
    for _ in range(4):
        proc = start_index(many_images, lib)
        wait_for_rows(lib, proc, indexed_rows(lib) + 1)
        time.sleep(rng.uniform(0.0, 0.3))
        os.killpg(proc.pid, signal.SIGKILL)  # the indexer and its decode workers, without warning
        proc.wait()
        counts.append(assert_consistent(lib))
    mid_run = [c for c in counts if 0 < c < 480]
    assert len(mid_run) >= 2, f"the kills did not land mid-run ({counts}); the test proved nothing"

    committed = assert_consistent(lib)
    with Library.open(lib) as library:
        report = library.index([many_images])
    # Everything committed before the kills is kept, nothing is encoded twice.
    assert report.unchanged == committed and report.added == 480 - committed and not report.errors
    assert assert_consistent(lib) == 480


@pytest.fixture(scope="module")
def large_images(tmp_path_factory) -> Path:
    """Big enough to decode slowly, so that an index run lasts long enough to overlap with others."""
    return demo_folder(tmp_path_factory, "large", 120, 12, (1200, 1600))


def test_search_while_indexing_and_a_second_writer_is_refused(large_images, tmp_path):
    lib = tmp_path / "lib"
    encoder = Encoder("demo").load()  # load the model once; each open below reads a fresh snapshot
    # Two writers at once: whichever takes the lock first indexes, the other must be refused.
    writers = [start_index(large_images, lib), start_index(large_images, lib)]
    try:
        while indexed_rows(lib) < 1:
            assert any(w.poll() is None for w in writers), [w.stderr.read() for w in writers]
            time.sleep(0.05)
        searches = 0
        while any(w.poll() is None for w in writers):
            with Library.open(lib, create=False, encoder=encoder) as reader:
                hits = reader.search(text="a blue square", k=5)
            assert hits and all(Path(h.path).is_file() for h in hits)
            searches += 1
        errors = [w.stderr.read() for w in writers]
    finally:
        for w in writers:
            if w.poll() is None:
                os.killpg(w.pid, signal.SIGKILL)
    assert searches >= 2
    assert sorted(w.returncode for w in writers) == [0, 1], errors
    assert any("another clipsearch process is writing" in e for e in errors), errors
    assert assert_consistent(lib) == 120
