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

The bodies are read by hand, whatever their content type, then checked by the models
below, which also give their schemas to ``/openapi.json``.
"""

from __future__ import annotations

import base64
import binascii
import urllib.request
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from ..errors import InputError
from ..library import Library
from ..query import Query, Term
from .schemas import UPLOAD_ERRORS, ImageId, PathText, Text, errors, parse_json, whole

INDEX_NAME = "clipsearch"
DEDUPLICATE_AT = 0.94  # clip-retrieval's connected-components threshold
MAX_RESULTS = 10_000
MAX_DIM = 8192  # numbers in an embedding; CLIP's widest is 1280
URL_TIMEOUT_S = 10
_IGNORED = "Accepted and ignored: a library has no such model."


class KnnQuery(BaseModel):
    """`POST /knn-service`: the first of `text`, `image`, `image_url` and `embedding_input`
    given is the query. Other fields clip-retrieval's clients send are accepted and ignored."""

    model_config = ConfigDict(extra="allow")

    text: Text | None = None
    image: str | None = Field(None, description="The base64 of an image file.")
    image_url: PathText | None = Field(None, description="Fetched only by `serve --allow-remote-urls`.")
    embedding_input: list[float] | None = Field(None, max_length=MAX_DIM, description="A query embedding.")
    num_images: whole(1, MAX_RESULTS) | None = Field(None, description="Results with url and caption (40).")
    num_result_ids: whole(1, MAX_RESULTS) | None = Field(None, description="Results in all.")
    deduplicate: bool | None = Field(None, description=f"Drop results within {DEDUPLICATE_AT} cosine of a better one.")
    modality: str | None = Field(None, description="Ignored: there is no caption index, only images.")
    indice_name: str | None = Field(None, description=f"Ignored: every name means this library ({INDEX_NAME}).")
    use_mclip: Any = Field(None, description=_IGNORED)
    use_safety_model: Any = Field(None, description=_IGNORED)
    use_violence_detector: Any = Field(None, description=_IGNORED)
    aesthetic_score: Any = Field(None, description=_IGNORED)
    aesthetic_weight: Any = Field(None, description=_IGNORED)


class MetadataQuery(BaseModel):
    """`POST /metadata`: the images to describe."""

    model_config = ConfigDict(extra="allow")

    ids: list[ImageId] = Field([], max_length=MAX_RESULTS)


def _body_of(model: type[BaseModel]) -> dict:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


def add_routes(app: FastAPI, library: Library, *, allow_remote_urls: bool, max_bytes: int) -> None:
    """Register the clip-retrieval endpoints on ``app``."""

    def url(request: Request, image_id: int) -> str:
        return f"{str(request.base_url).rstrip('/')}/api/images/{image_id}/file"

    @app.get("/indices-list", summary="clip-retrieval: the index names (one: this library)")
    def indices_list():
        return [INDEX_NAME]

    @app.post("/knn-service", summary="clip-retrieval: nearest images to a text, image or embedding",
              responses=UPLOAD_ERRORS, openapi_extra=_body_of(KnnQuery))
    async def knn_service(request: Request):
        # Read by hand: clip-retrieval's client sends JSON without saying so.
        query = parse_json(KnnQuery, await request.body())
        term = await run_in_threadpool(_term, query, allow_remote_urls, max_bytes)  # may fetch a URL
        shown = query.num_images or 40
        wanted = max(shown, query.num_result_ids or shown)
        dedupe = bool(query.deduplicate)
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

    @app.post("/metadata", summary="clip-retrieval: url and caption of images by id",
              responses=errors(400, 413, 422), openapi_extra=_body_of(MetadataQuery))
    async def metadata(request: Request):
        ids = parse_json(MetadataQuery, await request.body()).ids
        found = library.image_paths(ids)
        return [{"id": i, "metadata": {"url": url(request, i), "caption": found[i].rsplit("/", 1)[-1]}}
                for i in ids if i in found]


def _term(query: KnnQuery, allow_remote_urls: bool, max_bytes: int) -> Term:
    if query.text and query.text.strip():
        return Term("text", query.text.strip())
    if query.image:
        try:
            return Term("data", base64.b64decode(query.image, validate=True))
        except (binascii.Error, ValueError):
            raise InputError("'image' must be the base64 of an image file") from None
    if query.image_url:
        return Term("data", _download(query.image_url, allow_remote_urls, max_bytes))
    if query.embedding_input is not None:
        return Term("vector", tuple(query.embedding_input))
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
