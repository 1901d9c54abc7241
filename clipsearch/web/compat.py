"""clip-retrieval's back-end API, so that its ``ClipClient`` and web front end can use a
clipsearch server unchanged.

The shapes follow clip-retrieval 2.45.0 (``clip_back.py`` and ``clip_client.py``):

* ``POST /knn-service``: a JSON body (sent without a JSON content type by the client)
  with ``text``, ``image`` (base64 of a file), ``image_url``, ``embedding_input``,
  ``modality``, ``num_images``, ``num_result_ids``, ``indice_name`` and ``deduplicate``;
  the first of text, image, image_url and embedding that is given is the query. The
  answer is a list, best first, of ``{"id", "similarity"}``, with ``url`` and ``caption``
  (the file name) on the first ``num_images``. ``deduplicate`` drops results whose
  vectors are within 0.94 cosine of a better one, as clip-retrieval does.
* ``POST /metadata``: ``{"ids": [...]}`` -> ``[{"id", "metadata": {"url", "caption"}}]``.
* ``GET /indices-list``: ``["clipsearch"]``; every index name means this library.

Ignored, as a library has no such models: the safety and violence filters, the aesthetic
embeddings and multilingual CLIP. There is no caption index, so ``modality`` "text" is
answered from the images as well. ``image_url`` is fetched only with
``allow_remote_urls`` (``serve --allow-remote-urls``).
"""

from __future__ import annotations

import base64
import binascii
import json
import urllib.request
import numpy as np
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool

from ..errors import InputError
from ..library import Library
from ..query import Query, Term
from .params import whole

INDEX_NAME = "clipsearch"
DEDUPLICATE_AT = 0.94  # clip-retrieval's connected-components threshold
MAX_RESULTS = 10_000
URL_TIMEOUT_S = 10


def add_routes(app: FastAPI, library: Library, *, allow_remote_urls: bool, max_bytes: int) -> None:
    """Register the clip-retrieval endpoints on ``app``."""

    async def body(request: Request) -> dict:
        try:
            data = json.loads(await request.body() or b"null")
        except ValueError:
            raise InputError("the body is not valid JSON") from None
        if not isinstance(data, dict):
            raise InputError("the JSON body must be an object")
        return data

    def url(request: Request, image_id: int) -> str:
        return f"{str(request.base_url).rstrip('/')}/api/images/{image_id}/file"

    @app.get("/indices-list", summary="clip-retrieval: the index names (one: this library)")
    def indices_list():
        return [INDEX_NAME]

    @app.post("/knn-service", summary="clip-retrieval: nearest images to a text, image or embedding")
    async def knn_service(request: Request):
        query = await body(request)
        term = await run_in_threadpool(_term, query, allow_remote_urls, max_bytes)  # may fetch a URL
        shown = whole(query.get("num_images"), 40, 1, MAX_RESULTS)
        wanted = max(shown, whole(query.get("num_result_ids"), shown, 1, MAX_RESULTS))
        dedupe = bool(query.get("deduplicate"))
        fetch = min(MAX_RESULTS, wanted * 2 if dedupe else wanted)
        hits = await run_in_threadpool(library.search, query=Query((term,)), k=fetch,
                                       include_query_images=True)
        if dedupe and hits:
            hits = [hits[i] for i in _distinct(library.stored_vectors([h.id for h in hits]))]
        out = []
        for n, h in enumerate(hits[:wanted]):
            item = {"url": url(request, h.id), "caption": h.path.rsplit("/", 1)[-1]} if n < shown else {}
            out.append({**item, "id": h.id, "similarity": h.score})
        return out

    @app.post("/metadata", summary="clip-retrieval: url and caption of images by id")
    async def metadata(request: Request):
        ids = (await body(request)).get("ids") or []
        if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
            raise InputError("'ids' must be a list of image ids")
        found = library.image_paths(ids)
        return [{"id": i, "metadata": {"url": url(request, i), "caption": found[i].rsplit("/", 1)[-1]}}
                for i in ids if i in found]


def _term(query: dict, allow_remote_urls: bool, max_bytes: int) -> Term:
    text, image, image_url, embedding = (query.get(k) for k in ("text", "image", "image_url", "embedding_input"))
    if isinstance(text, str) and text.strip():
        return Term("text", text.strip())
    if image:
        try:
            return Term("data", base64.b64decode(str(image), validate=True))
        except (binascii.Error, ValueError):
            raise InputError("'image' must be the base64 of an image file") from None
    if image_url:
        return Term("data", _download(str(image_url), allow_remote_urls, max_bytes))
    if embedding is not None:
        if not isinstance(embedding, list):
            raise InputError("'embedding_input' must be a list of numbers")
        return Term("vector", tuple(embedding))
    raise InputError("give text, image, image_url or embedding_input")


def _download(address: str, allowed: bool, max_bytes: int) -> bytes:
    if not allowed:
        raise InputError("this server does not fetch image_url", hint="start it with --allow-remote-urls")
    if not address.startswith(("http://", "https://")):
        raise InputError("image_url must be an http or https URL")
    try:
        with urllib.request.urlopen(address, timeout=URL_TIMEOUT_S) as response:  # noqa: S310 (scheme checked)
            data = response.read(max_bytes + 1)
    except OSError as exc:
        raise InputError(f"could not fetch image_url: {exc}") from None
    if len(data) > max_bytes:
        raise InputError(f"the image at image_url is over {max_bytes / 2**20:.1f} MB")
    return data


def _distinct(vectors: np.ndarray) -> list[int]:
    """Indices of the vectors kept when each one within ``DEDUPLICATE_AT`` of a better-ranked
    kept one is dropped (best first, so a group keeps its best member)."""
    kept: list[int] = []
    for i, v in enumerate(vectors):
        if not kept or float((vectors[kept] @ v).max()) < DEDUPLICATE_AT:
            kept.append(i)
    return kept
