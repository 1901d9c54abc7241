"""The library folder's files: written whole or not at all, and locked between processes."""

import os
import subprocess
import sys
import threading

import pytest

from clipsearch.errors import LibraryLockedError
from clipsearch.files import write_atomic, writer_lock


def test_racing_writers_each_write_a_whole_file_and_leave_nothing_behind(tmp_path):
    # As two processes embedding one label set do: with one fixed temporary name, one
    # writer's rename could move the other's half-written file into place.
    path = tmp_path / "labels.faiss"
    sizes = [1 << 20, 3 << 20]
    seen, failed, stop = set(), [], threading.Event()

    def write(n: int) -> None:
        try:
            for _ in range(20):
                write_atomic(path, bytes([n]) * sizes[n])
        except Exception as exc:
            failed.append(exc)

    def read() -> None:
        while not stop.is_set():
            if path.exists():
                data = path.read_bytes()
                seen.add((len(data), len(set(data))))

    reader = threading.Thread(target=read)
    reader.start()
    writers = [threading.Thread(target=write, args=(n,)) for n in (0, 1)]
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    reader.join()
    assert failed == []
    assert seen and seen <= {(sizes[0], 1), (sizes[1], 1)}  # never a mixture, never a part
    assert os.listdir(tmp_path) == ["labels.faiss"]


def test_a_replaced_file_keeps_its_permissions_and_a_failed_write_changes_nothing(tmp_path):
    path = tmp_path / "photo.xmp"
    write_atomic(path, b"old")
    path.chmod(0o640)
    write_atomic(path, b"new")
    assert path.read_bytes() == b"new" and path.stat().st_mode & 0o777 == 0o640
    with pytest.raises(TypeError):
        write_atomic(path, "not bytes")
    assert path.read_bytes() == b"new" and os.listdir(tmp_path) == ["photo.xmp"]


def test_the_writer_lock_refuses_a_second_writer_in_another_process_and_frees_on_exit(tmp_path):
    held = subprocess.Popen([sys.executable, "-c", "import sys, pathlib\n"
                             "from clipsearch.files import writer_lock\n"
                             f"with writer_lock(pathlib.Path({str(tmp_path)!r})):\n"
                             "    print('held', flush=True); sys.stdin.readline()"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert held.stdout.readline() == "held\n"
        with pytest.raises(LibraryLockedError, match="another clipsearch process is writing"):
            with writer_lock(tmp_path):
                pass
    finally:
        held.communicate("\n", timeout=60)
    with writer_lock(tmp_path):  # released when its holder was done
        pass
