"""The HTTP API and the web page, as a FastAPI application over one :class:`Library`.

Every endpoint calls the facade, so the API means what the CLI means. The library and
its model are loaded once and stay warm, and requests run side by side: there is no
lock around them. That is safe because what they share is safe to share: the search
index (``VectorIndex``: concurrent searches, with the catch-up after another process
indexed holding them off only while it changes the index), the model (torch inference
and onnxruntime sessions may run from several threads; loading happens once, under a
lock in ``Library`` and ``Encoder``) and the database (a connection pool, a session per
call). Long work never runs in the server at all: duplicates, evaluations and tag runs
are background jobs in processes of their own (``jobs.py``), started by a request that
answers at once with the job, whose progress and result ``GET /api/jobs/{id}`` gives.

Security, by construction:

* files are served by image id only, from the path in the database, and only when that
  path, symlinks resolved, lies inside a folder given to ``index`` (``Library.file``);
* request bodies are bounded (``max_upload_bytes``) before they are parsed, uploaded
  images by the indexer's megapixel cap, and what is not an image gets 400;
* a request never names a file on the server: query terms that look like paths are text,
  label sets are bundled names only, and the one folder a request may name (``/api/eval``'s
  labelled examples) must lie inside a folder given to ``index`` (``Library.within_roots``);
* remote URLs are never fetched unless ``allow_remote_urls``;
* with a ``token``, every request must carry it (``Authorization: Bearer``, or the cookie
  that opening ``/?token=...`` sets);
* errors are JSON ``{"error", "hint"}`` with a 4xx status; a bug is a bare 500.
"""

from __future__ import annotations

import hmac
import logging
import re
import threading
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated

from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.middleware.cors import CORSMiddleware
from fastapi.concurrency import run_in_threadpool
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..errors import (
    ClipSearchError, InputError, JobNotFoundError, LibraryEmptyError, LibraryLockedError, ModelError,
    PathNotFoundError, TooManyJobsError,
)
from ..jobs import Job, Jobs
from ..library import DUPLICATE_THRESHOLD, Library
from ..query import Query as SearchQuery
from ..query import Term
from ..results import SearchHit
from .compat import add_routes as add_clip_retrieval_routes
from .params import iso_date, number, whole

DEFAULT_MAX_UPLOAD = 20 * 1024 * 1024
MAX_MATRIX_IMAGES = 64  # columns a similarity matrix can show legibly
TOKEN_COOKIE = "clipsearch_token"
STATIC = Path(__file__).resolve().parent / "static"
log = logging.getLogger("clipsearch.web")


class BodyTooLarge(Exception):
    pass


class _BodyLimit:
    """ASGI middleware: refuses request bodies over ``limit`` bytes, declared or streamed,
    before anything parses them."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await _error(413, f"the request body is over {self.limit / 2**20:.1f} MB")(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise BodyTooLarge()
            return message

        return await self.app(scope, counted, send)


class _SingleSlashes:
    """ASGI middleware: ``//knn-service`` is ``/knn-service``. clip-retrieval's front end
    joins a back-end URL ending in ``/`` with paths starting with one."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and "//" in scope["path"]:
            scope = {**scope, "path": re.sub("/{2,}", "/", scope["path"])}
        return await self.app(scope, receive, send)


class _Revalidated(StaticFiles):
    """The page's files, revalidated on every load: an upgrade never meets a stale script."""

    def file_response(self, *args, **kwargs):
        response = super().file_response(*args, **kwargs)
        response.headers["Cache-Control"] = "no-cache"
        return response


def _error(status: int, message: str, hint: str | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "hint": hint}, status_code=status)


def _status(exc: ClipSearchError) -> int:
    if isinstance(exc, (PathNotFoundError, LibraryEmptyError, JobNotFoundError)):
        return 404
    if isinstance(exc, TooManyJobsError):
        return 429
    if isinstance(exc, LibraryLockedError):
        return 409
    if isinstance(exc, ModelError):
        return 503
    return 400


def create_app(library: Library, *, token: str | None = None, max_upload_bytes: int = DEFAULT_MAX_UPLOAD,
               allow_remote_urls: bool = False, cors_origins: tuple[str, ...] = (), warm: bool = False,
               max_jobs: int = 1) -> FastAPI:
    """The application serving ``library`` (which it does not close). With ``warm``, the
    index and the model load in the background as soon as the server starts, so that the
    first query does not pay for them. ``max_jobs`` background jobs run at a time (one
    leaves the other cores to searches); more wait their turn (``jobs.py``)."""
    jobs = Jobs(library.root, device=library.device, max_running=max_jobs)

    @asynccontextmanager
    async def lifespan(_app):
        def load() -> None:
            try:
                library.vectors
                library.encoder.load()
            except ClipSearchError as exc:  # reported again, to whoever asks, on first use
                log.warning("could not preload the library: %s", exc.message)

        if warm:
            threading.Thread(target=load, daemon=True, name="clipsearch-warm").start()
        try:
            yield
        finally:
            jobs.close()  # a job outliving its server would be work nobody can collect

    app = FastAPI(title="clipsearch", summary="Search an image library by meaning, with CLIP.",
                  version=__version__, lifespan=lifespan)

    # -- errors and the token gate ------------------------------------------------------

    @app.exception_handler(ClipSearchError)
    async def _clipsearch_error(_request, exc: ClipSearchError):
        return _error(_status(exc), exc.message, exc.hint)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return _error(422, f"invalid request: {where + ': ' if where else ''}{first.get('msg', 'malformed')}")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request, exc: StarletteHTTPException):
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(BodyTooLarge)
    async def _too_large(_request, _exc):
        return _error(413, f"the request body is over {max_upload_bytes / 2**20:.1f} MB")

    @app.exception_handler(Exception)
    async def _bug(_request, exc: Exception):
        log.exception("internal error", exc_info=exc)
        return _error(500, "internal error")

    if token:
        @app.middleware("http")
        async def _gate(request: Request, call_next):
            given = request.headers.get("authorization", "")
            given = given[7:] if given.lower().startswith("bearer ") else request.cookies.get(TOKEN_COOKIE, "")
            if request.url.path == "/" and request.query_params.get("token"):
                if not hmac.compare_digest(request.query_params["token"], token):
                    return _error(401, "wrong token")
                response = RedirectResponse("/", status_code=303)
                response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
                return response
            if not hmac.compare_digest(given, token):
                return _error(401, "this server needs a token",
                              hint="send 'Authorization: Bearer TOKEN', or open /?token=TOKEN once")
            return await call_next(request)

    # -- helpers -------------------------------------------------------------------------

    def links(image_id: int, path: str) -> dict:
        return {"name": Path(path).name, "thumbnail": f"/api/images/{image_id}/thumbnail",
                "file": f"/api/images/{image_id}/file"}

    def hit(h: SearchHit) -> dict:
        return {**h.to_dict(), **links(h.id, h.path)}

    def page(hits: list[SearchHit], n: int, offset: int) -> dict:
        return {"results": [hit(h) for h in hits], "n": n, "offset": offset, "has_more": len(hits) == n}

    def search(query: SearchQuery, n: int, offset: int, filters: dict) -> dict:
        return page(library.search(query=query, k=n, offset=offset, **filters), n, offset)

    async def upload_bytes(upload: UploadFile) -> bytes:
        data = await upload.read()
        if not data:
            raise InputError("the uploaded file is empty")
        return data

    # -- the API ------------------------------------------------------------------------

    class F:  # the filter parameters every search takes, declared once
        folder = Query([], alias="in", description="Only images inside this folder (repeatable).")
        ext = Query([], description="Only files with this extension (repeatable).")
        after = Query(None, description="Taken on or after (ISO date).")
        before = Query(None, description="Taken before (ISO date).")
        tag = Query([], description="Only images with this tag (repeatable, all required).")
        no_tag = Query([], description="Only images without this tag (repeatable).")
        min_score = Query(None, description="Drop hits with a lower cosine score.")
        sort = Query("score", pattern="^(score|date|path)$")
        n = Query(30, ge=1, le=500, description="Results per page.")
        offset = Query(0, ge=0, le=100_000)

    @app.get("/api/search", summary="Search by text, by indexed images, or both")
    def get_search(q: str | None = Query(None, description="What to look for, in words."),
                   image: list[int] = Query([], description="Ids of indexed images to search with."),
                   also: list[str] = Query([], alias="and", description="More terms: text or id:N, W:TERM."),
                   exclude: list[str] = Query([], alias="not", description="Terms to subtract."),
                   folder: list[str] = F.folder, ext: list[str] = F.ext, after: datetime | None = F.after,
                   before: datetime | None = F.before, tag: list[str] = F.tag, no_tag: list[str] = F.no_tag,
                   min_score: float | None = F.min_score, sort: str = F.sort, n: int = F.n, offset: int = F.offset):
        # The same search as a JSON body's: FastAPI has checked the parameters' types already.
        return body_search({"text": q, "images": image, "and": also, "not": exclude, "in": folder, "ext": ext,
                            "after": after, "before": before, "tag": tag, "no_tag": no_tag, "min_score": min_score,
                            "sort": sort, "n": n, "offset": offset}, None)

    @app.post("/api/search", summary="Search by an uploaded image (multipart) or a JSON query")
    async def post_search(request: Request):
        upload = None
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            form = await request.form()
            field = form.get("image")
            if field is None or isinstance(field, str):
                raise InputError("send the query image as the multipart field 'image'")
            upload = Term("data", await upload_bytes(field))
            # The form's other fields mean what the JSON body's do.
            body = {"text": form.get("q"), **{k: form.getlist(k) for k in ("in", "ext", "tag", "no_tag", "and", "not")},
                    **{k: form.get(k) for k in ("n", "offset", "after", "before", "min_score", "sort")}}
        else:
            try:
                body = await request.json()
            except ValueError:
                raise InputError("the body is not valid JSON") from None
            if not isinstance(body, dict):
                raise InputError("the JSON body must be an object")
        # Off the event loop: a search may wait for the model, and must not stall the server.
        return await run_in_threadpool(body_search, body, upload)

    def body_search(body: dict, upload: Term | None) -> dict:
        text = body.get("text")
        terms = [upload] if upload else []
        terms += [Term("id", whole(i, 0, 0, 2**62)) for i in _list(body, "images")]
        terms += [_term(str(t)) for t in _list(body, "and")] + [_term(str(t), -1.0) for t in _list(body, "not")]
        query = SearchQuery(SearchQuery.build(text).terms if isinstance(text, str) and text.strip() else ())
        query = SearchQuery(query.terms + tuple(terms))
        if not any(t.weight > 0 for t in query.terms):
            raise InputError("give a text, an image or an 'and' term to search for",
                             hint="for example /api/search?q=a+dog+on+the+beach")
        n, offset = whole(body.get("n"), 30, 1, 500), whole(body.get("offset"), 0, 0, 100_000)
        return search(query, n, offset, dict(
            folders=_list(body, "in"), extensions=_list(body, "ext"), after=iso_date(body.get("after")),
            before=iso_date(body.get("before")), tags=_list(body, "tag"), no_tags=_list(body, "no_tag"),
            min_score=number(body.get("min_score")), sort=str(body.get("sort") or "score")))

    @app.get("/api/similar/{image_id}", summary="Images like an indexed one (no model needed)")
    def similar(image_id: int, n: int = F.n, offset: int = F.offset):
        hits = library.search(query=SearchQuery((Term("id", image_id),)), k=n, offset=offset)
        return page(hits, n, offset)

    @app.get("/api/images/{image_id}", summary="An image's facts and tags")
    def image(image_id: int):
        info = library.image(image_id).to_dict()
        return {**info, **links(image_id, info["path"])}

    @app.get("/api/images/{image_id}/thumbnail", summary="A WebP (or JPEG) thumbnail, cached")
    def thumbnail(request: Request, image_id: int, size: int = Query(256, ge=16, le=1024),
                  fmt: str = Query("webp", alias="format", pattern="^(webp|jpeg)$")):
        thumb = library.thumbnail(image_id, size, fmt)
        etag = f'"{thumb.etag}"'
        headers = {"ETag": etag, "Cache-Control": "private, max-age=86400"}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        return FileResponse(thumb.path, media_type=thumb.media_type, headers=headers)

    @app.get("/api/images/{image_id}/file", summary="The original file")
    def original(image_id: int):
        return FileResponse(library.file(image_id), headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/api/tags", summary="Every tag with its image count")
    def tags():
        return [t.to_dict() for t in library.tags()]

    @app.post("/api/classify", summary="Labels of an uploaded image, from a label set or classifier")
    async def classify(image: Annotated[UploadFile, File()], labels: Annotated[str | None, Form()] = None,
                       classifier: Annotated[str | None, Form()] = None,
                       top_k: Annotated[int, Form(ge=1, le=100)] = 5):
        data = await upload_bytes(image)
        [result] = await run_in_threadpool(library.classify, [Term("data", data)],
                                           _label_set(labels) if labels else None, classifier=classifier, top_k=top_k)
        if result.error:
            raise InputError(f"the upload is not a usable image: {result.error}")
        return {**result.to_dict(), "path": image.filename or ""}

    @app.post("/api/matrix", summary="Cosine similarity of indexed images to a bundled label set's labels")
    def matrix(body: dict):
        ids = [whole(i, 0, 0, 2**62) for i in _list(body, "images")]
        if not 1 <= len(ids) <= MAX_MATRIX_IMAGES:
            raise InputError(f"give 1 to {MAX_MATRIX_IMAGES} image ids in 'images'")
        found = library.similarity_matrix(ids, _label_set(body.get("labels")),
                     templates=[str(t) for t in _list(body, "templates")])
        return {**found.to_dict(), "images": [
            {"id": i, "name": Path(p).name, "thumbnail": f"/api/images/{i}/thumbnail"} for i, p in zip(ids, found.paths)]}

    # -- background jobs ----------------------------------------------------------------

    def started(job: Job, joined: bool) -> JSONResponse:
        # 202: accepted, under way; where to follow it is in Location and the body.
        return JSONResponse({**job.to_dict(result=False), "joined": joined}, status_code=202,
                            headers={"Location": f"/api/jobs/{job.id}"})

    def shown(job: Job) -> dict:
        """A job as the API shows it: its result with the links the page needs."""
        out = job.to_dict()
        if job.result is not None and job.kind == "duplicates":
            out["result"] = [{**g, "images": [{**h, **links(h["id"], h["path"])} for h in g["images"]]}
                             for g in job.result]
        elif job.result is not None and job.kind == "eval":
            for miss in out["result"]["misses"]:  # thumbnails for the misses the library holds
                image_id = library.image_id(miss["path"])
                miss.update(id=image_id, thumbnail=f"/api/images/{image_id}/thumbnail" if image_id else None)
        return out

    @app.post("/api/duplicates", status_code=202,
              summary="Start looking for groups of near-identical images (a background job)")
    def duplicates(body: dict | None = None):
        body = body or {}
        threshold = number(body.get("threshold"))
        threshold = DUPLICATE_THRESHOLD if threshold is None else threshold
        if not 0 < threshold <= 1:
            raise InputError(f"the threshold is a cosine similarity in (0, 1], not {threshold}")
        crops = body.get("crops", True)
        if not isinstance(crops, bool):
            raise InputError("'crops' must be true or false")
        return started(*jobs.submit("duplicates", {"threshold": threshold, "crops": crops}))

    @app.post("/api/eval", status_code=202,
              summary="Start evaluating a bundled label set or a classifier on a labelled folder inside the "
                      "indexed folders (a background job)")
    def evaluate(body: dict):
        folder = library.within_roots(str(body.get("folder") or ""))
        classifier = body.get("classifier") or None
        labels = _label_set(body["labels"]) if body.get("labels") else None
        few_shot = whole(body.get("few_shot"), 0, 0, 64) or None
        return started(*jobs.submit("eval", {
            "folder": str(folder), "labels": labels, "classifier": classifier,
            "templates": [str(t) for t in _list(body, "templates")],
            "compare_templates": bool(body.get("compare_templates")), "few_shot": few_shot}))

    @app.post("/api/tag", status_code=202,
              summary="Start tagging the library with a bundled label set or a classifier (a background job)")
    def tag(body: dict):
        classifier = body.get("classifier") or None
        labels = _label_set(body["labels"]) if body.get("labels") else None
        if (labels is None) == (classifier is None):
            raise InputError("give either 'labels' (a bundled label set) or 'classifier'")
        threshold = number(body.get("threshold"))
        min_cosine = number(body.get("min_cosine"))
        params = {"labels": labels, "classifier": classifier,
                  "templates": [str(t) for t in _list(body, "templates")],
                  "threshold": 0.1 if threshold is None else threshold, "top_k": whole(body.get("top_k"), 5, 1, 100),
                  "min_cosine": min_cosine, "folders": [str(f) for f in _list(body, "in")],
                  "dry_run": bool(body.get("dry_run"))}
        if not 0 <= params["threshold"] <= 1:
            raise InputError(f"the threshold is a probability in [0, 1], not {params['threshold']}")
        if min_cosine is not None and not -1 <= min_cosine <= 1:
            raise InputError(f"min_cosine is a cosine similarity in [-1, 1], not {min_cosine}")
        return started(*jobs.submit("tag", params))

    @app.get("/api/jobs", summary="The background jobs, running, waiting and recently finished (no results)")
    def list_jobs():
        return [job.to_dict(result=False) for job in jobs.list()]

    @app.get("/api/jobs/{job_id}", summary="A background job: its state, progress and, once done, its result")
    def get_job(job_id: str):
        return shown(jobs.get(job_id))

    @app.delete("/api/jobs/{job_id}", summary="Cancel a background job (once every request that joined it has)")
    def cancel_job(job_id: str):
        return jobs.cancel(job_id).to_dict(result=False)

    @app.get("/api/info", summary="What the library holds, and this server's upload limit")
    def info():
        return {**library.info().to_dict(), "max_upload_bytes": max_upload_bytes}

    # -- the page -----------------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    def index_page():
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    add_clip_retrieval_routes(app, library, allow_remote_urls=allow_remote_urls, max_bytes=max_upload_bytes)
    app.mount("/static", _Revalidated(directory=STATIC), name="static")
    app.add_middleware(_BodyLimit, limit=max_upload_bytes)
    if cors_origins:
        # Off by default: with it, pages from those origins (clip-retrieval's hosted front
        # end, say) can query the library from the user's browser.
        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["*"], allow_credentials=bool(token))
    app.add_middleware(_SingleSlashes)
    app.state.library = library
    app.state.jobs = jobs
    return app


def _term(raw: str, sign: float = 1.0) -> Term:
    """A query term from a request: text or ``id:N``, optionally ``W:``. Never a file: a
    request does not get to name paths on the server, so what looks like one is text."""
    return Term.parse(raw, sign=sign, files=False)


def _label_set(name) -> str:
    """A bundled label set's name from a request. Never a file: a request does not get to
    name paths on the server."""
    from ..labels import available_label_sets

    known = available_label_sets()
    if not isinstance(name, str) or name not in known:
        raise InputError(f"unknown label set {name!r}", hint=f"the bundled sets: {', '.join(sorted(known))}")
    return name


def _list(body: dict, key: str) -> list:
    value = body.get(key) or []
    if not isinstance(value, list):
        raise InputError(f"'{key}' must be a list")
    return value
