"""Shared fixtures: demo-world images, a library built with the real demo model, a fake encoder,
and a throwaway PostgreSQL server with a fresh database per test."""

from __future__ import annotations

import contextlib
import itertools
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest

from clipsearch import Library, demoworld
from clipsearch.results import ModelIdentity

# Never reach for a model hub from the tests: missing weights must fail fast and offline.
os.environ["HF_HUB_OFFLINE"] = "1"
# Exporting the text tower to ONNX takes seconds per library; tests/test_textonnx.py turns
# it back on where it is the subject.
os.environ["CLIPSEARCH_TEXT_ONNX"] = "0"
# The same for the int8 image tower that `--precision auto` makes on a CPU: tests/test_precision.py
# asks for it by name.
os.environ["CLIPSEARCH_PRECISION"] = "fp32"


@pytest.fixture(scope="session")
def demo_images(tmp_path_factory) -> list[Path]:
    """One image per colour and shape (48), small enough to index in seconds."""
    folder = tmp_path_factory.mktemp("demo_images")
    return [p for p, _ in demoworld.write_images(folder, 48, seed=7, size_range=(64, 320))]


@pytest.fixture(scope="session")
def demo_library(tmp_path_factory, demo_images) -> Path:
    """A library of ``demo_images`` indexed with the real demo model. Treat it as read-only."""
    root = tmp_path_factory.mktemp("demo_library")
    with Library.open(root, model="demo") as lib:
        report = lib.index([demo_images[0].parent])
    assert report.added == 48 and not report.errors
    return root


def ctrl_c_as_on_a_terminal() -> None:
    """A ``preexec_fn`` for a child that a test sends Ctrl-C: SIGINT at its default and not
    blocked, as in a terminal's job. A test run started in the background of a shell
    without job control (as CI may be) ignores SIGINT, and every child inherits that:
    Python then leaves it ignored, and the Ctrl-C never arrives."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def run_cli(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the installed CLI as a user would, in a fresh process."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "clipsearch.cli", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=300)


@contextlib.contextmanager
def serving(library: Path, *args: str):
    """A real ``clipsearch serve`` process on a free loopback port; yields its base URL."""
    proc = subprocess.Popen([sys.executable, "-m", "clipsearch.cli", "serve", "--port", "0", "-L", str(library),
                             *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: lines.put(proc.stdout.readline()), daemon=True).start()
    try:
        try:
            line = lines.get(timeout=60)  # printed once the socket listens
        except queue.Empty:
            line = ""
        if not line.startswith("clipsearch serving"):
            proc.kill()
            raise RuntimeError(f"serve did not start: {line!r} {proc.stderr.read()[-2000:]}")
        yield line.rsplit(" at ", 1)[1].strip().rstrip("/")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            # A killed server cannot remove its query socket, and a socket left in a shared
            # library (demo_library) makes every later copy of it fail.
            proc.wait()
            (Path(library) / "query.sock").unlink(missing_ok=True)


class FakeEncoder:
    """A stand-in for ``Encoder`` in fast unit tests: the vector is the image's mean colour.

    It counts what it encodes, so tests can prove that unchanged files are never re-encoded.
    """

    def __init__(self, name: str = "fake"):
        from clipsearch.encoder import ModelSpec

        self.spec = ModelSpec(name)
        self.device = self.requested_device = "cpu"
        self.image_size = 8
        self.logit_scale = 100.0
        self.loaded = True
        self.precision = "fp32"
        self.encoded: list[int] = []
        self.texts: list[str] = []

    @property
    def identity(self) -> ModelIdentity:
        return ModelIdentity(self.spec.name, None, 4)

    @property
    def dim(self) -> int:
        return 4

    def load(self, notice=None):
        return self

    def batch_size(self) -> int:
        return 32

    def use_precision(self, precision: str, recorded: list[str]) -> None:
        self.precision = "fp32" if precision == "auto" else precision

    @property
    def pixel_spec(self):
        from clipsearch.pixels import PixelSpec

        return PixelSpec(8, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))

    def encode_crops(self, crops: np.ndarray) -> np.ndarray:
        self.encoded.append(len(crops))
        rgb = crops.astype(np.float32).mean(axis=(1, 2)) / 255.0
        x = np.concatenate([rgb, np.full((len(crops), 1), 0.5, np.float32)], axis=1)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        self.texts += texts
        colours = {"red": [1, 0, 0, 0.5], "green": [0, 1, 0, 0.5], "blue": [0, 0, 1, 0.5]}
        x = np.array([colours.get(t, [1, 1, 1, 0.5]) for t in texts], np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    def encode_images(self, images) -> np.ndarray:
        from clipsearch.pixels import model_pixels

        return self.encode_crops(np.stack([model_pixels(im, self.pixel_spec) for im in images]))


@pytest.fixture
def fake_encoder() -> FakeEncoder:
    return FakeEncoder()


class PostgresServer:
    """A PostgreSQL cluster of its own in a temporary folder, on loopback and a free port.

    PostgreSQL refuses to run as root, so as root (CI) its programs run as the ``postgres``
    user. Its default collation is ICU's en-US, not C, as on most real servers: ordering
    and range queries on paths must not depend on byte order by luck.
    """

    def __init__(self):
        self.bin = _postgres_bin()
        self.as_owner: list[str] = []
        if os.geteuid() == 0:
            runuser = shutil.which("runuser")
            if not runuser:
                raise RuntimeError("running as root and runuser is missing: PostgreSQL will not run as root")
            self.as_owner = [runuser, "-u", "postgres", "--"]
        self.home = Path(tempfile.mkdtemp(prefix="clipsearch-pg-"))
        self.data = self.home / "data"
        self.port = 0
        if self.as_owner:
            shutil.chown(self.home, "postgres", "postgres")
        self._names = itertools.count(1)

    def _run(self, program: str, *args: str) -> str:
        out = subprocess.run([*self.as_owner, str(self.bin / program), *args], capture_output=True, text=True,
                             timeout=120)
        if out.returncode:
            log = self.home / "log"
            tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
            raise RuntimeError(f"{program} failed: {(out.stderr or out.stdout).strip()[-1500:]} {tail}".strip())
        return out.stdout

    def start(self) -> "PostgresServer":
        version = int(re.search(r"(\d+)", self._run("initdb", "--version")).group(1))
        icu = ["--locale-provider=icu", "--icu-locale=en-US"] if version >= 15 else []  # before 15: libc's
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--encoding=UTF8",
                  "--locale=C.UTF-8", *icu, "--no-sync")
        with socket.socket() as s:  # a free port; another process taking it first fails the start
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        # Durability settings off: a test server that loses its data on a crash loses nothing.
        options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={self.home} "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.home / "log"), "-w", "-t", "60", "-o", options,
                  "start")
        return self

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(Exception):
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "stop")
        shutil.rmtree(self.home, ignore_errors=True)

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database; its URL."""
        import psycopg

        name = f"test_{os.getpid()}_{next(self._names)}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def _postgres_bin() -> Path:
    """The newest PostgreSQL's programs: Debian keeps each version in /usr/lib/postgresql/N/bin."""
    versions = [p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/pg_ctl")]
    if versions:
        return max(versions, key=lambda b: int(re.sub(r"\D", "", b.parent.name) or 0))
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    raise RuntimeError("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/pg_ctl, no pg_ctl on PATH); "
                       "on Debian: apt-get install postgresql")


@pytest.fixture(scope="session")
def postgres_server():
    """One PostgreSQL server for the session; the tests that need it are skipped, with the
    reason, where it cannot start."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg is not installed: pip install 'clipsearch[postgres]'")
    try:
        server = PostgresServer()
    except RuntimeError as exc:
        pytest.skip(f"no PostgreSQL server: {exc}")
    try:
        server.start()
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        server.stop()
        pytest.skip(f"PostgreSQL could not start: {exc}")
    yield server
    server.stop()


@pytest.fixture
def pg_url(postgres_server) -> str:
    """The URL of a fresh PostgreSQL database for this test."""
    return postgres_server.new_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request) -> str:
    """Each backend in turn: None for a library's own SQLite file, or a fresh PostgreSQL URL."""
    return request.getfixturevalue("pg_url") if request.param == "postgresql" else None
