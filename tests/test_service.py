"""The resident query service: a running ``serve`` answers ``clipsearch search`` exactly as
the cold path would, without torch in the CLI's process, and any doubt falls back."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clipsearch import Library, demoworld
from clipsearch.service import SOCKET, QueryService
from conftest import ctrl_c_as_on_a_terminal, run_cli

pytestmark = pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="the service listens on a unix socket")

# The CLI as a user runs it, reporting which heavy modules its process loaded.
CLIENT = ("import atexit, json, sys\n"
          "report = sys.argv.pop(1)\n"
          "heavy = ('torch', 'sqlalchemy', 'numpy', 'faiss', 'typer', 'onnxruntime')\n"
          "atexit.register(lambda: open(report, 'w').write(json.dumps([m for m in heavy if m in sys.modules])))\n"
          "from clipsearch.cli import main\n"
          "main()\n")


def client(tmp_path: Path, *args: str, cwd: Path | None = None) -> tuple[subprocess.CompletedProcess, list[str]]:
    report = tmp_path / "modules.json"
    done = subprocess.run([sys.executable, "-c", CLIENT, str(report), *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)
    return done, json.loads(report.read_text())


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A demo library of 24 pictures in two folders, and a ``serve`` of it."""
    root = tmp_path_factory.mktemp("service")
    photos = root / "photos"
    demoworld.write_images(photos / "a", 12, seed=21, size_range=(64, 96))
    demoworld.write_images(photos / "b", 12, seed=22, size_range=(64, 96), fmt="jpg")
    library = root / "lib"
    assert run_cli("index", str(photos), "-L", str(library), "--model", "demo", "-q").returncode == 0
    proc = subprocess.Popen([sys.executable, "-m", "clipsearch.cli", "serve", "--port", "0", "-L", str(library)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            preexec_fn=ctrl_c_as_on_a_terminal)
    line = proc.stdout.readline()
    assert line.startswith("clipsearch serving "), line
    yield library, photos
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)
    assert proc.returncode == 0
    assert not (library / SOCKET).exists()  # removed by the service that made it


QUERIES = [
    ["a red circle"],
    ["a red circle", "--json"],
    ["a red circle", "-f", "-n", "20"],
    ["a shape", "--and", "2:green", "--not", "0.5:a circle", "-n", "5"],
    ["--image", "a/red_triangle_0001.png", "-n", "4"],  # relative to the client's folder
    ["--image", "id:3", "--and", "blue", "--include-query"],
    ["a shape", "--in", "b", "--ext", "jpg", "--sort", "path", "-n", "30"],
    ["a shape", "--min-score", "0.4", "--sort", "date"],
    ["a shape", "-n", "3", "--offset", "2", "--json"],
    ["a shape", "--tag", "nothing-is-tagged-so"],  # no results: said on stderr
    ["--image", "id:99999"],  # an error: message, hint and exit code 1
    ["a shape", "--ext", "j.pg"],  # an argument error
]


@pytest.mark.parametrize("args", QUERIES, ids=[" ".join(q) for q in QUERIES])
def test_the_service_answers_as_the_cold_path_does_without_loading_anything_heavy(served, tmp_path, args):
    library, photos = served
    argv = ["search", *args, "-L", str(library)]
    warm, loaded = client(tmp_path, *argv, cwd=photos)
    cold = subprocess.run([sys.executable, "-m", "clipsearch.cli", *argv, "--no-service"], capture_output=True,
                          text=True, cwd=photos, timeout=300)
    assert (warm.stdout, warm.stderr, warm.returncode) == (cold.stdout, cold.stderr, cold.returncode)
    assert warm.stdout or warm.stderr
    assert loaded == []  # the service answered: no torch, NumPy, SQLAlchemy or even typer here


def test_the_socket_is_its_owners_alone(served):
    library, _ = served
    mode = (library / SOCKET).stat().st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600


def test_a_usage_error_is_worded_by_the_cli_itself(served, tmp_path):
    library, _ = served
    done, loaded = client(tmp_path, "search", "a shape", "-n", "0", "-L", str(library))
    assert done.returncode == 2 and "Invalid value" in done.stderr and "typer" in loaded


@pytest.fixture()
def library_copy(served, tmp_path):
    library, photos = served
    copy = tmp_path / "lib"
    shutil.copytree(library, copy, ignore=shutil.ignore_patterns(SOCKET))
    return copy


def _cold_fallback(tmp_path: Path, library: Path) -> None:
    done, loaded = client(tmp_path, "search", "a red circle", "-n", "2", "-L", str(library))
    assert done.returncode == 0 and len(done.stdout.splitlines()) == 2, done.stderr
    assert "faiss" in loaded  # it searched by itself


def test_a_stale_socket_falls_back_to_the_cold_path(library_copy, tmp_path):
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(library_copy / SOCKET))  # bound, never listening: as a service killed with -9 leaves it
    dead.close()
    _cold_fallback(tmp_path, library_copy)
    (library_copy / SOCKET).unlink()
    (library_copy / SOCKET).write_text("not a socket")
    _cold_fallback(tmp_path, library_copy)


def test_a_service_of_another_library_or_one_that_fails_is_not_believed(library_copy, served, tmp_path):
    library, _ = served
    os.symlink(library / SOCKET, library_copy / SOCKET)  # answers, but for the other library
    _cold_fallback(tmp_path, library_copy)
    (library_copy / SOCKET).unlink()

    def broken(argv, cwd):
        raise RuntimeError("a bug in the service")

    with QueryService(library_copy, broken).running():
        assert (library_copy / SOCKET).exists()
        _cold_fallback(tmp_path, library_copy)
    assert not (library_copy / SOCKET).exists()


def test_watch_serves_queries_too(library_copy, served, tmp_path):
    _, photos = served
    with Library.open(library_copy) as lib:  # its own folders: the served library's
        assert lib.info().images == 24
    proc = subprocess.Popen([sys.executable, "-m", "clipsearch.cli", "watch", str(photos), "-L", str(library_copy)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=ctrl_c_as_on_a_terminal)
    try:
        assert proc.stderr.readline().startswith("watching ")
        done, loaded = client(tmp_path, "search", "a red circle", "-n", "2", "-L", str(library_copy))
        assert done.returncode == 0 and len(done.stdout.splitlines()) == 2 and loaded == []
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0 and not (library_copy / SOCKET).exists()


def test_serve_stopped_with_sigterm_removes_its_socket(library_copy):
    # SIGTERM is how a service manager stops a server; uvicorn raises it again after its
    # shutdown, and with the default handler the process died before removing the socket.
    proc = subprocess.Popen([sys.executable, "-m", "clipsearch.cli", "serve", "--port", "0", "-L", str(library_copy)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().startswith("clipsearch serving ")
        deadline = time.monotonic() + 60
        while not (library_copy / SOCKET).exists() and time.monotonic() < deadline:
            time.sleep(0.05)  # it listens just after the line is printed
        assert stat.S_ISSOCK((library_copy / SOCKET).lstat().st_mode)
        proc.terminate()
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, proc.stderr.read()
    assert not (library_copy / SOCKET).exists()
