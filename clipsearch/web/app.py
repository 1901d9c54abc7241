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
* request bodies are bounded (``max_upload_bytes``) before they are parsed, JSON bodies
  in depth while they are parsed, every value a request sends in length and range
  (``schemas.py``), uploaded images by the indexer's megapixel cap, and what is not an
  image gets 400;
* a request never names a file on the server: query terms that look like paths are text,
  label sets are bundled names only, and the one folder a request may name (``/api/eval``'s
  labelled examples) must lie inside a folder given to ``index`` (``Library.within_roots``),
  as must every file read from it, symlinks resolved;
* remote URLs are never fetched unless ``allow_remote_urls``;
* with a ``token`` (never an empty one), every request must carry it (``Authorization:
  Bearer``, or the cookie that opening ``/?token=...`` sets);
* errors are JSON ``{"error", "hint"}`` with a 4xx status; a bug is a bare 500.
"""

from __future__ import annotations

import hmac
import logging
import mimetypes
import re
import threading
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated

from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from .. import __version__
from ..defaults import CROP_CANDIDATE, DUPLICATE_THRESHOLD
from ..errors import (
    AlbumError, AlbumNotFoundError, ClipSearchError, InputError, JobNotFoundError, LibraryEmptyError, LibraryLockedError, ModelError,
    PathNotFoundError, TooManyJobsError,
)
from ..jobs import Job, Jobs
from ..library import Library
from ..query import MAX_IMAGE_ID, Term
from ..query import Query as SearchQuery
from ..results import Album, SearchHit
from .compat import add_routes as add_clip_retrieval_routes
from .schemas import (
    FILE_RESPONSES, INPUT_ERRORS, JOB_ERRORS, MAX_NAME, MODEL_ERRORS, SEARCH_REQUEST_BODY, THUMBNAIL_RESPONSES,
    UPLOAD_ERRORS, AlbumBody, DuplicatesBody, EvalBody, Filters, LabelSetName, MatrixBody, MembersBody, Name, Page, SearchBody, SearchParams,
    TagBody, errors, label_file, parse_fields, parse_json,
)

DEFAULT_MAX_UPLOAD = 20 * 1024 * 1024
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


def _error(status: int, message: str, hint: str | None = None, headers: dict | None = None) -> JSONResponse:
    # A message may quote what a request sent, lone surrogates included: those cannot be
    # encoded, and must not turn the error into a 500.
    message, hint = (None if t is None else t.encode("utf-8", "replace").decode("utf-8") for t in (message, hint))
    return JSONResponse({"error": message, "hint": hint}, status_code=status, headers=headers)


def _status(exc: ClipSearchError) -> int:
    if isinstance(exc, (PathNotFoundError, LibraryEmptyError, JobNotFoundError, AlbumNotFoundError)):
        return 404
    if isinstance(exc, AlbumError):
        return 409
    if isinstance(exc, TooManyJobsError):
        return 429
    if isinstance(exc, LibraryLockedError):
        return 409
    if isinstance(exc, ModelError):
        return 503
    return 400


ImageIdParam = Annotated[int, PathParam(ge=0, le=MAX_IMAGE_ID, description="An indexed image's id.")]
AlbumNameParam = Annotated[str, PathParam(max_length=MAX_NAME, description="The album's name.")]
JobIdParam = Annotated[str, PathParam(max_length=MAX_NAME, description="A job's id, as its start gave it.")]


def create_app(library: Library, *, token: str | None = None, max_upload_bytes: int = DEFAULT_MAX_UPLOAD,
               allow_remote_urls: bool = False, cors_origins: tuple[str, ...] = (), warm: bool = False,
               max_jobs: int = 1) -> FastAPI:
    """The application serving ``library`` (which it does not close). With ``warm``, the
    index and the model load in the background as soon as the server starts, so that the
    first query does not pay for them. ``max_jobs`` background jobs run at a time (one
    leaves the other cores to searches); more wait their turn (``jobs.py``). An empty
    ``token`` is refused, not taken for none."""
    if token is not None and not (token and token.isascii() and token.isprintable() and " " not in token):
        raise InputError("the token must be a non-empty word of printable ASCII" if token else "the token is empty",
                         hint="leave --token out to serve without one, or give one such as the output of "
                              "`python -c 'import secrets; print(secrets.token_urlsafe())'`")
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
                  version=__version__, lifespan=lifespan, responses=errors(401) if token else None)

    # -- errors and the token gate ------------------------------------------------------

    @app.exception_handler(ClipSearchError)
    async def _clipsearch_error(_request, exc: ClipSearchError):
        return _error(_status(exc), *exc.worded("web"))  # options named as request parameters

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return _error(422, f"invalid request: {where + ': ' if where else ''}{first.get('msg', 'malformed')}")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        headers = exc.headers
        if exc.status_code == 405:
            # Starlette's Allow names the methods of the first route on the path only.
            headers = {**(headers or {}), "Allow": ", ".join(_methods(app, request.scope))}
        return _error(exc.status_code, str(exc.detail), headers=headers)

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
                if not _same(request.query_params["token"], token):
                    return _error(401, "wrong token")
                response = RedirectResponse("/", status_code=303)
                response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
                return response
            if not _same(given, token):
                return _error(401, "this server needs a token",
                              hint="send 'Authorization: Bearer TOKEN', or open /?token=TOKEN once")
            return await call_next(request)

        default_openapi = app.openapi

        def openapi() -> dict:
            """The schema, saying that every operation needs the token, either way."""
            if app.openapi_schema is None:
                schema = default_openapi()
                schema.setdefault("components", {})["securitySchemes"] = {
                    "bearer": {"type": "http", "scheme": "bearer"},
                    "cookie": {"type": "apiKey", "in": "cookie", "name": TOKEN_COOKIE}}
                schema["security"] = [{"bearer": []}, {"cookie": []}]
            return app.openapi_schema

        app.openapi = openapi

    # -- helpers -------------------------------------------------------------------------

    def links(image_id: int, path: str) -> dict:
        return {"name": Path(path).name, "thumbnail": f"/api/images/{image_id}/thumbnail",
                "file": f"/api/images/{image_id}/file"}

    def hit(h: SearchHit) -> dict:
        return {**h.to_dict(), **links(h.id, h.path)}

    def page_of(hits: list[SearchHit], n: int, offset: int) -> dict:
        return {"results": [hit(h) for h in hits], "n": n, "offset": offset, "has_more": len(hits) == n}

    def search(query: SearchQuery, n: int, offset: int, filters: dict) -> dict:
        return page_of(library.search(query=query, k=n, offset=offset, **filters), n, offset)

    async def upload_bytes(upload: UploadFile) -> bytes:
        data = await upload.read()
        if not data:
            raise InputError("the uploaded file is empty")
        return data

    # -- the API ------------------------------------------------------------------------

    @app.get("/api/search", summary="Search by text, by indexed images, or both", responses=MODEL_ERRORS)
    def get_search(params: Annotated[SearchParams, Query()]):
        return body_search(params.q, params.image, params.also, params.exclude, params, None)

    @app.post("/api/search", summary="Search by an uploaded image (multipart) or a JSON query",
              responses=UPLOAD_ERRORS, openapi_extra={"requestBody": SEARCH_REQUEST_BODY})
    async def post_search(request: Request):
        upload = None
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            form = await request.form()
            field = form.get("image")
            if field is None or isinstance(field, str):
                raise InputError("send the query image as the multipart field 'image'")
            upload = Term("data", await upload_bytes(field))
            # The form's other fields mean what the JSON body's do.
            lists = ("images", "in", "ext", "tag", "no_tag", "and", "not")
            body = parse_fields(SearchBody, {"text": form.get("q"), **{k: form.getlist(k) for k in lists}, **{
                k: form.get(k) for k in ("n", "offset", "after", "before", "min_score", "sort")}})
        else:
            body = parse_json(SearchBody, await request.body())
        # Off the event loop: a search may wait for the model, and must not stall the server.
        return await run_in_threadpool(body_search, body.text, body.images, body.also, body.exclude, body, upload)

    def body_search(text: str | None, images: list[int], also: list[str], exclude: list[str], filters: Filters,
                    upload: Term | None) -> dict:
        query = _query(text, images, also, exclude, upload)
        return search(query, filters.n, filters.offset, filters.library_filters())

    @app.get("/api/similar/{image_id}", summary="Images like an indexed one (no model needed)",
             responses=INPUT_ERRORS)
    def similar(image_id: ImageIdParam, page: Annotated[Page, Query()]):
        hits = library.search(query=SearchQuery((Term("id", image_id),)), k=page.n, offset=page.offset)
        return page_of(hits, page.n, page.offset)

    @app.get("/api/images/{image_id}", summary="An image's facts and tags", responses=INPUT_ERRORS)
    def image(image_id: ImageIdParam):
        info = library.image(image_id).to_dict()
        return {**info, **links(image_id, info["path"])}

    @app.get("/api/images/{image_id}/thumbnail", summary="A WebP (or JPEG) thumbnail, cached",
             response_class=Response, responses={**THUMBNAIL_RESPONSES, **INPUT_ERRORS})
    def thumbnail(request: Request, image_id: ImageIdParam, size: int = Query(256, ge=16, le=1024),
                  fmt: str = Query("webp", alias="format", pattern="^(webp|jpeg)$")):
        thumb = library.thumbnail(image_id, size, fmt)
        etag = f'"{thumb.etag}"'
        headers = {"ETag": etag, "Cache-Control": "private, max-age=86400"}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        return FileResponse(thumb.path, media_type=thumb.media_type, headers=headers)

    @app.get("/api/images/{image_id}/file", summary="The original file", response_class=Response,
             responses={**FILE_RESPONSES, **INPUT_ERRORS})
    def original(image_id: ImageIdParam):
        path = library.file(image_id)
        return FileResponse(path, media_type=_media_type(path), headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/api/tags", summary="Every tag with its image count")
    def tags():
        return [t.to_dict() for t in library.tags()]

    @app.post("/api/classify", summary="Labels of an uploaded image, from a label set or classifier",
              responses=UPLOAD_ERRORS)
    async def classify(image: Annotated[UploadFile, File()],
                       labels: Annotated[LabelSetName | None, Form()] = None,
                       classifier: Annotated[Name | None, Form()] = None,
                       top_k: Annotated[int, Form(ge=1, le=100)] = 5):
        data = await upload_bytes(image)
        [result] = await run_in_threadpool(library.classify, [Term("data", data)], label_file(labels or None),
                                           classifier=classifier or None, top_k=top_k)
        if result.error:
            raise InputError(f"the upload is not a usable image: {result.error}")
        return {**result.to_dict(), "path": image.filename or ""}

    @app.post("/api/matrix", summary="Cosine similarity of indexed images to a bundled label set's labels",
              responses=UPLOAD_ERRORS)
    def matrix(body: MatrixBody):
        found = library.similarity_matrix(body.images, label_file(body.labels), templates=body.templates)
        return {**found.to_dict(), "images": [{"id": i, "name": Path(p).name, "thumbnail": f"/api/images/{i}/thumbnail"}
                                              for i, p in zip(body.images, found.paths)]}

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

    @app.post("/api/duplicates", status_code=202, responses=JOB_ERRORS,
              summary="Start looking for groups of near-identical images (a background job)")
    def duplicates(body: DuplicatesBody | None = None):
        body = body or DuplicatesBody()
        return started(*jobs.submit("duplicates", {"threshold": body.threshold, "crops": body.crops}))

    def job_labels(name: str | None) -> str | None:
        # The bundled set's file, not its name: a job's process would take a file of that
        # name in its working folder first.
        found = label_file(name)
        return None if found is None else str(found)

    @app.post("/api/eval", status_code=202, responses=JOB_ERRORS,
              summary="Start evaluating a bundled label set or a classifier on a labelled folder inside the "
                      "indexed folders (a background job)")
    def evaluate(body: EvalBody):
        folder = library.within_roots(body.folder)
        return started(*jobs.submit("eval", {
            "folder": str(folder), "labels": job_labels(body.labels), "classifier": body.classifier or None,
            "templates": body.templates, "compare_templates": body.compare_templates,
            "few_shot": body.few_shot or None, "roots_only": True}))

    @app.post("/api/tag", status_code=202, responses=JOB_ERRORS,
              summary="Start tagging the library with a bundled label set or a classifier (a background job)")
    def tag(body: TagBody):
        if (body.labels is None) == (body.classifier is None):
            raise InputError("give either 'labels' (a bundled label set) or 'classifier'")
        return started(*jobs.submit("tag", {
            "labels": job_labels(body.labels), "classifier": body.classifier, "templates": body.templates,
            "threshold": body.threshold, "top_k": body.top_k, "min_cosine": body.min_cosine,
            "folders": body.folders, "dry_run": body.dry_run}))

    # -- albums -------------------------------------------------------------------------

    def album_summary(album: Album) -> dict:
        return {**album.to_dict(), "members": len(album.members)}

    @app.get("/api/albums", summary="The albums (saved searches), each with how many images it holds now")
    def list_albums():
        return [album_summary(a) for a in library.albums.all()]

    @app.post("/api/albums", status_code=201, summary="Save a search as an album", responses=errors(400, 404, 409,
                                                                                                      413, 422, 503))
    async def create_album(request: Request):
        body = parse_json(AlbumBody, await request.body())
        query = _query(body.text, body.images, body.also, body.exclude, None)
        return album_summary(await run_in_threadpool(
            library.albums.create, body.name, query, limit=body.limit, include_query_images=body.include_query,
            replace=body.replace, **body.library_filters()))

    @app.get("/api/albums/{name}", summary="An album's images as the library stands now, a page at a time",
             responses=INPUT_ERRORS)
    def get_album(name: AlbumNameParam, page: Annotated[Page, Query()]):
        album = library.albums.get(name)
        members = album.members[page.offset:page.offset + page.n]
        return {**album.to_dict(), "members": len(album.members), "results": [hit(m) for m in members],
                "n": page.n, "offset": page.offset, "has_more": page.offset + page.n < len(album.members)}

    @app.delete("/api/albums/{name}", summary="Delete an album (its images stay)", responses=INPUT_ERRORS)
    def delete_album(name: AlbumNameParam):
        library.albums.delete(name)
        return {"deleted": name}

    @app.post("/api/albums/{name}/members", summary="Pin images into an album, remove them for good, or leave "
                                                    "them to its search again", responses=errors(400, 404, 413, 422))
    async def decide_members(name: AlbumNameParam, request: Request):
        body = parse_json(MembersBody, await request.body())
        decide = {"pinned": library.albums.pin, "removed": library.albums.remove,
                  "search": library.albums.reset}[body.state]
        return album_summary(await run_in_threadpool(decide, name, body.images))

    @app.get("/api/jobs", summary="The background jobs, running, waiting and recently finished (no results)")
    def list_jobs():
        return [job.to_dict(result=False) for job in jobs.list()]

    @app.get("/api/jobs/{job_id}", summary="A background job: its state, progress and, once done, its result",
             responses=errors(404, 422))
    def get_job(job_id: JobIdParam):
        return shown(jobs.get(job_id))

    @app.delete("/api/jobs/{job_id}", summary="Cancel a background job (once every request that joined it has)",
                responses=errors(404, 422))
    def cancel_job(job_id: JobIdParam):
        return jobs.cancel(job_id).to_dict(result=False)

    @app.get("/api/info", summary="What the library holds, this server's upload limit, and the duplicate "
                                  "search's defaults")
    def info():
        return {**library.info().to_dict(), "max_upload_bytes": max_upload_bytes,
                "duplicate_threshold": DUPLICATE_THRESHOLD, "crop_candidate": CROP_CANDIDATE}

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


def _query(text: str | None, images: list[int], also: list[str], exclude: list[str],
           upload: Term | None) -> SearchQuery:
    """The query of a request's terms."""
    terms = [upload] if upload else []
    terms += [Term("id", i) for i in images]
    terms += [_term(t) for t in also] + [_term(t, -1.0) for t in exclude]
    query = SearchQuery((SearchQuery.build(text).terms if text and text.strip() else ()) + tuple(terms))
    if not any(t.weight > 0 for t in query.terms):
        raise InputError("give a text, an image or an 'and' term to search for",
                         hint="for example /api/search?q=a+dog+on+the+beach")
    return query


def _term(raw: str, sign: float = 1.0) -> Term:
    """A query term from a request: text or ``id:N``, optionally ``W:``. Never a file: a
    request does not get to name paths on the server, so what looks like one is text."""
    return Term.parse(raw, sign=sign, files=False)


def _methods(app: FastAPI, scope) -> list[str]:
    """Every method some route answers at ``scope``'s path."""
    return sorted({m for route in app.router.routes if route.matches(scope)[0] != Match.NONE
                   for m in getattr(route, "methods", None) or ()})


def _same(given: str, token: str) -> bool:
    """Whether ``given`` is the token, in constant time. As bytes: ``compare_digest`` refuses
    text that is not ASCII, and a request may send any."""
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), token.encode("ascii"))


def _media_type(path: Path) -> str:
    """An image file's media type; a kind the system does not know (some RAW formats) is
    sent as bytes."""
    guessed = mimetypes.guess_type(path.name)[0]
    return guessed if guessed and guessed.startswith("image/") else "application/octet-stream"
