"""A resident query service: a running ``serve`` or ``watch`` answers ``clipsearch search``.

A cold ``clipsearch search`` pays for Python, SQLAlchemy, FAISS and a text tower before
it searches (about a second). A process that already holds the library open listens on
a unix socket in the library folder (``query.sock``, mode 0600: only its owner may
connect), and the CLI hands it the command line and prints what comes back: the very
command, run in the service on its open library, so the output is the cold path's for
every option (relative paths are read from the client's folder).

The client side, :func:`ask`, imports nothing but the standard library: a query the
service answers never loads torch, NumPy or the library in the CLI's process. Any doubt
(no socket, a stale one, a service of another library or clipsearch version, no answer
within :data:`ANSWER_S`) returns None, and the CLI runs the query itself. On systems
without unix sockets there is no service, and every query takes the cold path.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from . import __version__

SOCKET = "query.sock"
PROTOCOL = 1
CONNECT_S = 0.25  # a service that does not take the call this soon is not there
ANSWER_S = 30.0  # nor one that takes longer than this to answer
MAX_REQUEST = 1 << 20  # a command line, in bytes
COMMANDS = ("search",)  # what the service runs: reads only
log = logging.getLogger(__name__)

Runner = Callable[[list[str], str], tuple[str, str, int]]  # (argv, cwd) -> (stdout, stderr, exit code)


def available() -> bool:
    return hasattr(socket, "AF_UNIX")


def ask(folder: Path, argv: list[str], cwd: str) -> tuple[str, str, int] | None:
    """What the service of the library in ``folder`` prints for ``argv`` (run in ``cwd``),
    and its exit code; None when no such service answers."""
    path = folder / SOCKET
    if not available() or not path.exists():
        return None
    request = {"protocol": PROTOCOL, "version": __version__, "folder": str(folder), "argv": argv, "cwd": cwd}
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(CONNECT_S)
            conn.connect(str(path))
            conn.settimeout(ANSWER_S)
            conn.sendall(json.dumps(request).encode() + b"\n")
            conn.shutdown(socket.SHUT_WR)
            answer = json.loads(_read(conn))
        if answer["folder"] != str(folder) or answer["version"] != __version__:
            return None
        return str(answer["stdout"]), str(answer["stderr"]), int(answer["code"])
    except (OSError, ValueError, KeyError, TypeError):  # stale, busy, another library's, or garbled
        return None


class QueryService:
    """Answers the CLI's queries for the library in ``folder`` with ``run``, on a thread of
    its own, one query at a time (``run`` may change the working folder while it runs)."""

    def __init__(self, folder: Path, run: Runner):
        self.folder = folder
        self._run = run
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._inode: int | None = None  # of our socket file: only ours is removed on close
        self._closing = threading.Event()

    @contextlib.contextmanager
    def running(self) -> Iterator["QueryService"]:
        """Listening while the block runs, if this system has unix sockets; the socket is
        removed after."""
        if not available():
            yield self
            return
        self._listen()
        try:
            yield self
        finally:
            self.close()

    def _listen(self) -> None:
        path = self.folder / SOCKET
        # Bound under a name of its own, made private, then moved into place: no client ever
        # finds a socket that others may use, nor half of one. A socket left by a service
        # that died is replaced.
        temporary = self.folder / f".{SOCKET}.{os.getpid()}"
        temporary.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(temporary))
        os.chmod(temporary, 0o600)
        sock.listen(16)
        os.replace(temporary, path)
        self._inode = path.stat().st_ino
        self._sock = sock
        self._thread = threading.Thread(target=self._serve, name="clipsearch-query-service", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._closing.set()
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()
            # Only our own socket: a newer service may have taken the name since.
            with contextlib.suppress(OSError):
                if (self.folder / SOCKET).stat().st_ino == self._inode:
                    (self.folder / SOCKET).unlink()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _serve(self) -> None:
        while not self._closing.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # closed
            with conn:
                try:
                    conn.settimeout(ANSWER_S)
                    conn.sendall(json.dumps(self._answer(json.loads(_read(conn, MAX_REQUEST)))).encode())
                except (OSError, ValueError) as exc:  # a client that went away, or sent nonsense
                    log.info("a query client failed: %s", exc)

    def _answer(self, request: dict) -> dict:
        answer = {"folder": str(self.folder), "version": __version__}
        argv, cwd = request.get("argv"), request.get("cwd")
        if (request.get("protocol") != PROTOCOL or not isinstance(argv, list) or not argv
                or argv[0] not in COMMANDS or not all(isinstance(a, str) for a in argv) or not isinstance(cwd, str)):
            return {**answer, "version": None}  # the client runs it itself
        try:
            stdout, stderr, code = self._run(argv, cwd)
        except Exception as exc:  # a bug here must not cost the client its answer: it asks again, cold
            log.exception("the query service failed")
            return {**answer, "version": None, "error": str(exc)}
        return {**answer, "stdout": stdout, "stderr": stderr, "code": code}


def _read(conn: socket.socket, limit: int | None = None) -> bytes:
    chunks, size = [], 0
    while chunk := conn.recv(1 << 16):
        chunks.append(chunk)
        size += len(chunk)
        if limit is not None and size > limit:
            raise ValueError("the request is too long")
    return b"".join(chunks)
