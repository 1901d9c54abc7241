"""``clipsearch serve``: the web app and API."""

from __future__ import annotations

import functools
import logging
import signal
import threading
import time
from contextlib import contextmanager
from typing import Annotated, Optional

import typer

from ..errors import ClipSearchError
from .common import DeviceOpt, LibraryOpt, WatchLine, command, open_library, run_served, warn


log = logging.getLogger(__name__)


@command
def serve(
    host: Annotated[str, typer.Option(
        "--host", metavar="HOST",
        help="Address to listen on. Other than loopback, anyone who can reach it sees your library.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", min=0, max=65535, help="Port; 0 picks a free one.")] = 8765,
    token: Annotated[Optional[str], typer.Option(
        "--token", envvar="CLIPSEARCH_TOKEN", metavar="TOKEN",
        help="Require this token on every request (Bearer header, or open "
                                                   "/?token=... once in the browser).", show_default=False)] = None,
    max_upload_mb: Annotated[float, typer.Option("--max-upload-mb", min=0.1, help="Largest request body.")] = 20.0,
    allow_remote_urls: Annotated[bool, typer.Option(
        "--allow-remote-urls", help="Let /knn-service fetch image_url from the network.")] = False,
    cors_origin: Annotated[Optional[list[str]], typer.Option(
        "--cors-origin", metavar="ORIGIN", help="Let pages from this origin call the API from a browser (e.g. a hosted "
                              "clip-retrieval front end). Repeatable.", show_default=False)] = None,
    watch: Annotated[bool, typer.Option(
        "--watch", help="Also keep the library current with its folders, as `clipsearch watch` does. The server "
                        "then holds the library's writer lock: tag jobs and other writers are refused.")] = False,
    library: LibraryOpt = None,
    device: DeviceOpt = "auto",
) -> None:
    """Serve the library in a browser and over HTTP: a search page, a JSON API (docs at
    /docs) and a clip-retrieval compatible /knn-service.

    Needs the web extra: `pip install 'clipsearch[web]'`.

    Example: `clipsearch serve --port 8765`
    """
    import socket

    try:
        import uvicorn

        from ..web.app import create_app
    except ImportError as exc:
        raise ClipSearchError(f"clipsearch serve needs the web extra ({exc.name} is missing)",
                              hint="pip install 'clipsearch[web]'") from None
    if host not in ("127.0.0.1", "localhost", "::1"):
        warn(f"listening on {host}: anyone who can reach this machine can browse your library"
              + ("" if token else "; consider --token"))
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        raise ClipSearchError(f"cannot listen on {host}:{port}: {exc.strerror}",
                              hint="pick another --port, or 0 for any free one") from None
    sock.listen(2048)  # connections wait in the backlog until the app is up
    bound = sock.getsockname()[1]
    with open_library(library, device=device, create=False) as lib:
        app = create_app(lib, token=token, max_upload_bytes=int(max_upload_mb * 1024 * 1024),
                         allow_remote_urls=allow_remote_urls, cors_origins=tuple(cors_origin or ()), warm=True)
        shown = f"[{host}]" if ":" in host else host
        # The one line a script waits for: the URL, with the port actually bound.
        print(f"clipsearch serving {lib.root} at http://{shown}:{bound}/", flush=True)
        # A GET's query string may hold what the schema allows (100 folders of 4096
        # characters, percent-encoded: ~1.2 MB), not just h11's 16 KB request line.
        config = uvicorn.Config(app, log_level="warning", access_log=False, h11_max_incomplete_event_size=4 * 2**20)
        from ..service import QueryService

        with _watching(lib, watch), QueryService(lib.root, functools.partial(run_served, lib)).running():
            # uvicorn shuts down on SIGTERM (a service manager's stop) as on Ctrl-C, then
            # raises the signal again; as an interrupt, not the default handler's instant
            # exit, it lets the query socket be removed and the watcher stop on the way out.
            previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
            try:
                uvicorn.Server(config).run(sockets=[sock])
            except KeyboardInterrupt:
                # Ctrl-C is how a server is stopped: uvicorn has shut down (and raises the
                # signal again once it has), and there is nothing to resume.
                pass
            finally:
                signal.signal(signal.SIGTERM, previous)


@contextmanager
def _watching(lib, watch: bool):
    """With ``watch``, a watcher on its own thread for as long as the server runs; one
    that cannot start (another writer holds the library) stops the server from starting."""
    if not watch:
        yield
        return
    from ..watcher import Watcher

    line = WatchLine(quiet=False, live_line=False)  # a line per change: the server's log
    watcher = Watcher(lib, lib.store.roots(), on_status=line.show, who="clipsearch serve --watch")
    stop, failed = threading.Event(), []

    def run() -> None:
        try:
            watcher.run(stop)
        except Exception as exc:  # reported where the server logs; the server goes on
            failed.append(exc)
            if not isinstance(exc, ClipSearchError):
                log.exception("the watcher stopped")

    thread = threading.Thread(target=run, name="clipsearch-watch", daemon=True)
    thread.start()
    while watcher.status.state == "starting" and thread.is_alive():
        time.sleep(0.05)  # until it holds the writer lock, or could not take it
    if failed and isinstance(failed[0], ClipSearchError):
        raise failed[0]
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=60)
