"""``watch``: a library that follows its folders, on real files and real processes.

The bound stated for "reflected in search": a change is searchable within 60 s here (the
watcher's debounce is 0.2 s in these tests; on an idle machine it takes 1-3 s, most of
it starting the decode workers). ``benchmarks/bench_watch.py`` measures the latency.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from clipsearch import Library, LibraryLockedError, demoworld
from clipsearch.watcher import Watcher
from conftest import FakeEncoder, ctrl_c_as_on_a_terminal, run_cli

BOUND_S = 60


def _until(check, what: str, timeout: float = BOUND_S):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout} s: {what}")


def _paths(library: Path) -> dict[str, int]:
    """path -> id of every indexed image, as a fresh reader sees it."""
    with Library.open(library, create=False) as lib:
        return {t.path: t.id for t in lib.search("a shape", k=1000)}


class _Running:
    """A watcher on its own thread, stopped on exit."""

    def __init__(self, watcher: Watcher):
        self.watcher, self.stop = watcher, threading.Event()
        self.failed: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        try:
            self.watcher.run(self.stop)
        except BaseException as exc:
            self.failed.append(exc)

    def __enter__(self):
        self.thread.start()
        _until(lambda: self.watcher.status.state == "watching" or self.failed, "the watcher catches up")
        assert not self.failed, self.failed
        return self.watcher

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=60)
        assert not self.thread.is_alive() and not self.failed, self.failed


def test_a_renamed_folder_of_100_images_re_encodes_nothing_and_a_burst_is_indexed_in_batches(tmp_path, monkeypatch):
    from clipsearch.store import Store

    photos = tmp_path / "photos"
    demoworld.write_images(photos / "trip", 100, seed=4, size_range=(32, 48))
    encoder = FakeEncoder()
    commits = []
    original = Store.commit_batch
    monkeypatch.setattr(Store, "commit_batch", lambda self, *a, **k: commits.append(1) or original(self, *a, **k))
    with Library.open(tmp_path / "lib", encoder=encoder) as lib:
        with _Running(Watcher(lib, [photos], debounce=0.2, options={"workers": 1})) as watcher:
            assert watcher.status.indexed == 100
            encoded = len(encoder.encoded)
            (photos / "trip").rename(photos / "trip 2019")
            _until(lambda: watcher.status.moved == 100, "the renamed folder's files are moved")
            assert len(encoder.encoded) == encoded  # nothing encoded again
            with Library.open(tmp_path / "lib", create=False) as reader:
                paths = reader.image_paths(range(1, 1000)).values()
                assert len(paths) == 100 and all("/trip 2019/" in p for p in paths)

            # 1,000 new files, as a copy writes them: one batch or a few, not a commit per file.
            commits.clear()
            burst = tmp_path / "burst"
            demoworld.write_images(burst, 1000, seed=5, size_range=(16, 24))
            batches = watcher.status.batches
            shutil.copytree(burst, photos / "burst")
            _until(lambda: watcher.status.indexed == 1100, "the burst is indexed", timeout=300)
        assert watcher.status.batches - batches <= 5 and len(commits) <= 1000 / 32 + 10, (watcher.status, len(commits))


def test_the_watcher_refuses_a_held_library_and_holds_it_against_others(tmp_path):
    from clipsearch.files import writer_lock

    photos = tmp_path / "photos"
    demoworld.write_images(photos, 3, seed=6, size_range=(32, 48))
    with Library.open(tmp_path / "lib", encoder=FakeEncoder()) as lib:
        with writer_lock(tmp_path / "lib"):
            with pytest.raises(LibraryLockedError, match="another clipsearch process is writing"):
                Watcher(lib, [photos]).run(threading.Event())
        with _Running(Watcher(lib, [photos], debounce=0.2)):
            # An index started meanwhile is told who holds the library, and how to stop it.
            result = run_cli("index", str(photos), "-L", str(tmp_path / "lib"))
            assert result.returncode == 1
            assert f"clipsearch watch (process {os.getpid()}) is writing to" in result.stderr
            assert f"kill {os.getpid()}" in result.stderr
        assert not (tmp_path / "lib" / "writer.json").exists()
        assert lib.index([photos]).unchanged == 3  # free again once it stopped


def _start_watch(photos: Path, library: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "clipsearch.cli", "watch", str(photos), "-L", str(library),
                             "--model", "demo", "--debounce", "0.2", "--workers", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=ctrl_c_as_on_a_terminal)


def _wait_watching(proc: subprocess.Popen) -> str:
    line = proc.stderr.readline()
    assert line.startswith("watching "), (line, proc.poll())
    # Keep reading, or the pipe fills and the watcher blocks on its status lines.
    threading.Thread(target=proc.stderr.read, daemon=True).start()
    return line


def test_watch_follows_every_kind_of_change_with_the_demo_model_and_stops_on_ctrl_c(tmp_path):
    photos, library, spare = tmp_path / "photos", tmp_path / "lib", tmp_path / "spare"
    demoworld.write_images(photos, 8, seed=7, size_range=(64, 96))
    demoworld.write_images(spare, 4, seed=8, size_range=(64, 96))
    proc = _start_watch(photos, library)
    try:
        _wait_watching(proc)
        first = _paths(library)
        assert len(first) == 8
        a, b, c, d = sorted(first)[:4]
        new_file = photos / "new.png"
        shutil.copy(next(spare.iterdir()), new_file)  # created
        os.rename(a, photos / "moved.png")  # moved: same id, nothing re-encoded
        shutil.copy(b, photos / "copy.png")  # copied
        os.remove(c)  # deleted
        expected = {str(new_file), str(photos / "moved.png"), str(photos / "copy.png")}

        def changed():
            now = _paths(library)
            return now if expected <= now.keys() and a not in now and c not in now else None

        seen = _until(changed, "created, moved, copied and deleted files")
        assert seen[str(photos / "moved.png")] == first[a]
        # Modified: another picture written over a file; its vector follows the new content.
        with Library.open(library, create=False) as lib:
            before = lib.stored_vectors([first[d]])[0]
        replacement = sorted(spare.iterdir())[1]
        shutil.copy(replacement, d)
        with Library.open(library, create=False) as lib:
            _until(lambda: (lib.stored_vectors([lib.image_id(d)])[0] != before).any(), "the modified file")
            assert lib.image_id(d) is not None
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert not (library / "writer.json").exists()


def test_a_watcher_killed_with_sigkill_catches_up_when_restarted_and_sigterm_stops_it(tmp_path):
    photos, library = tmp_path / "photos", tmp_path / "lib"
    demoworld.write_images(photos, 5, seed=9, size_range=(64, 96))
    proc = _start_watch(photos, library)
    try:
        _wait_watching(proc)
        proc.kill()  # SIGKILL: no clean-up at all
        proc.wait(timeout=60)
        demoworld.write_images(photos / "while down", 3, seed=10, size_range=(64, 96))
        os.remove(sorted(photos.glob("*.png"))[0])
        proc = _start_watch(photos, library)  # the kernel freed the lock with the process
        _wait_watching(proc)
        found = _paths(library)
        assert len(found) == 7 and sum("/while down/" in p for p in found) == 3
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_watch_indexes_a_new_file_while_serving_and_stops_on_ctrl_c(tmp_path):
    import json
    import urllib.parse
    import urllib.request

    photos, library = tmp_path / "photos", tmp_path / "lib"
    demoworld.write_images(photos, 6, seed=11, size_range=(64, 96))
    assert run_cli("index", str(photos), "-L", str(library), "--model", "demo", "-q").returncode == 0
    proc = subprocess.Popen([sys.executable, "-m", "clipsearch.cli", "serve", "--watch", "--port", "0",
                             "-L", str(library)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=ctrl_c_as_on_a_terminal)
    try:
        line = proc.stdout.readline()
        assert line.startswith("clipsearch serving "), (line, proc.poll())
        url = line.rsplit(" at ", 1)[1].strip()
        threading.Thread(target=proc.stderr.read, daemon=True).start()
        # Another writer is told that the server keeps the library current.
        refused = run_cli("index", str(photos), "-L", str(library))
        assert refused.returncode == 1 and "clipsearch serve --watch (process" in refused.stderr
        added = photos / "added.png"
        demoworld.write_images(tmp_path / "spare", 1, seed=12, size_range=(64, 96))
        shutil.copy(next((tmp_path / "spare").iterdir()), added)

        def served_paths():
            query = urllib.parse.urlencode({"q": "a shape", "n": 50})
            with urllib.request.urlopen(f"{url}api/search?{query}", timeout=60) as response:
                return {hit["path"] for hit in json.load(response)["results"]}

        _until(lambda: str(added) in served_paths(), "the new file is found through the server")
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert not (library / "writer.json").exists()
