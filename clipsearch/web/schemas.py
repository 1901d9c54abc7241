"""What the HTTP API accepts, declared once: the limits on a request, the value types
that enforce them, the JSON bodies of the POST endpoints as pydantic models (so that
``/openapi.json`` gives their schemas), and the error responses.

A JSON body is parsed by pydantic's own parser in strict mode: nesting deeper than 200
levels is refused while parsing (Python's ``json`` would recurse until it failed), and a
number must be a number (``true`` and ``1.5`` are not a result count). Query strings and
form fields are text by nature, so the same models read them in lax mode, where ``"5"``
is 5.
"""

from __future__ import annotations

import os
from datetime import date, datetime, time
from pathlib import Path
from typing import Annotated, Literal, TypeVar

from fastapi.exceptions import RequestValidationError
from pydantic import (
    AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, ValidationError, WithJsonSchema,
)

from ..errors import InputError, LabelError
from ..labels import available_label_sets, available_templates, resolve_templates
from ..albums import DEFAULT_LIMIT as DEFAULT_ALBUM_LIMIT
from ..defaults import DUPLICATE_THRESHOLD
from ..query import MAX_IMAGE_ID

# A query text is read by CLIP's 77-token context, which no text of more than a few
# hundred characters fits: the limit only stops a megabyte of text from being tokenised.
MAX_TEXT = 1000
MAX_PATH = 4096  # PATH_MAX on Linux
MAX_NAME = 200  # a tag, extension, label set or classifier name
MAX_TERMS = 32  # images, and/not terms of one search
MAX_FILTER_ITEMS = 100  # values of one filter (in, ext, tag, no_tag)
MAX_TEMPLATES = 64
MAX_PAGE = 500
MAX_OFFSET = 100_000
MAX_MATRIX_IMAGES = 64  # columns a similarity matrix can show legibly
MAX_FEW_SHOT = 64
MAX_ALBUM = 10_000  # members an album's search may give


def _unicode(value: str) -> str:
    # JSON can spell a lone surrogate (\ud800), which no UTF-8 text holds: it would fail
    # wherever the text is encoded (the tokenizer, SQLite, the response).
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("the text holds a lone surrogate, which is not Unicode text") from None
    return value


def _integral(value):
    # JSON Schema's integers include 2.0, which strict pydantic refuses; 2.5 stays refused,
    # and so do true and "2".
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _absolute(path: str) -> str:
    # A request's folder is the server's, named in full: relative to the server's working
    # folder, or to a user's home (``~name``, a look-up of that user), it means nothing.
    if not os.path.isabs(path):
        raise ValueError("give the folder's absolute path")
    return path


def _label_set(name: str) -> str:
    # A bundled set's name only: a request does not get to name files on the server.
    if name not in available_label_sets():
        raise ValueError(f"unknown label set {name!r} (the bundled sets: {', '.join(available_label_sets())})")
    return name


Text = Annotated[str, StringConstraints(max_length=MAX_TEXT), AfterValidator(_unicode)]
PathText = Annotated[str, StringConstraints(max_length=MAX_PATH), AfterValidator(_unicode)]
Folder = Annotated[PathText, AfterValidator(_absolute), Field(json_schema_extra={"pattern": "^/"})]
Name = Annotated[str, StringConstraints(max_length=MAX_NAME), AfterValidator(_unicode)]
QueryTerm = Annotated[str, StringConstraints(max_length=MAX_TEXT, pattern=r"\S"), AfterValidator(_unicode)]


def whole(low: int, high: int):
    """A whole number in ``[low, high]``."""
    return Annotated[int, Field(ge=low, le=high), BeforeValidator(_integral)]


ImageId = whole(0, MAX_IMAGE_ID)
LabelSetName = Annotated[str, AfterValidator(_label_set),
                         WithJsonSchema({"type": "string", "enum": list(available_label_sets())})]


def _template(spec: str) -> str:
    # Checked at once, as ``labels.resolve_templates`` will: a background job must not be
    # started only to fail on it.
    try:
        resolve_templates([spec])
    except LabelError as exc:
        raise ValueError(exc.message) from None
    return spec


Template = Annotated[Text, AfterValidator(_template), WithJsonSchema({"anyOf": [
    {"type": "string", "enum": list(available_templates()), "description": "A bundled template set."},
    {"type": "string", "pattern": r"\{\}", "maxLength": MAX_TEXT, "description": "A prompt; {} stands for the label."},
]})]
# A day is midnight at its start (UTC unless an offset is given, as for EXIF times).
When = datetime | date


M = TypeVar("M", bound=BaseModel)


def label_file(name: str | None) -> Path | None:
    """The file of a bundled label set, named by a request: what the library is given, so
    that it never looks for a file of that name in the server's working folder."""
    return None if name is None else available_label_sets()[name]


def moment(value: When | None) -> datetime | None:
    return value if value is None or isinstance(value, datetime) else datetime.combine(value, time())


class Page(BaseModel):
    """Which page of results."""

    n: whole(1, MAX_PAGE) = Field(30, description="Results per page.")
    offset: whole(0, MAX_OFFSET) = Field(0, description="Results to skip.")


class SearchFilters(BaseModel):
    """What a search takes besides its terms and its page: filters, cutoff and order."""

    model_config = ConfigDict(populate_by_name=True)

    folders: list[Folder] = Field([], alias="in", max_length=MAX_FILTER_ITEMS,
                                  description="Only images inside this folder, an absolute path (repeatable).")
    ext: list[Name] = Field([], max_length=MAX_FILTER_ITEMS, description="Only files with this extension (repeatable).")
    after: When | None = Field(None, description="Taken on or after (ISO date or date-time).")
    before: When | None = Field(None, description="Taken before (ISO date or date-time).")
    tag: list[Name] = Field([], max_length=MAX_FILTER_ITEMS,
                            description="Only images with this tag (repeatable, all required).")
    no_tag: list[Name] = Field([], max_length=MAX_FILTER_ITEMS, description="Only images without this tag (repeatable).")
    min_score: float | None = Field(None, ge=-1, le=1, allow_inf_nan=False,
                                    description="Drop hits with a lower cosine score.")
    sort: Literal["score", "date", "path"] = "score"

    def library_filters(self) -> dict:
        """The keyword arguments of ``Library.search`` these stand for."""
        return dict(folders=self.folders, extensions=self.ext, after=moment(self.after), before=moment(self.before),
                    tags=self.tag, no_tags=self.no_tag, min_score=self.min_score, sort=self.sort)


class Filters(Page, SearchFilters):
    """What every search takes besides its terms: filters, order and page."""


_TERMS = "More terms: text or id:N, optionally weighted W:TERM."


class SearchParams(Filters):
    """``GET /api/search``'s query string."""

    q: Text | None = Field(None, description="What to look for, in words.")
    image: list[ImageId] = Field([], max_length=MAX_TERMS, description="Ids of indexed images to search with.")
    also: list[QueryTerm] = Field([], alias="and", max_length=MAX_TERMS, description=_TERMS)
    exclude: list[QueryTerm] = Field([], alias="not", max_length=MAX_TERMS, description="Terms to subtract.")


class Terms(BaseModel):
    """A query's terms, in a JSON body."""

    text: Text | None = Field(None, description="What to look for, in words.")
    images: list[ImageId] = Field([], max_length=MAX_TERMS, description="Ids of indexed images to search with.")
    also: list[QueryTerm] = Field([], alias="and", max_length=MAX_TERMS, description=_TERMS)
    exclude: list[QueryTerm] = Field([], alias="not", max_length=MAX_TERMS, description="Terms to subtract.")


class SearchBody(Filters, Terms):
    """``POST /api/search``'s JSON body (or, with an uploaded ``image``, its form fields,
    ``q`` standing for ``text``)."""

    model_config = ConfigDict(extra="forbid")


class AlbumBody(SearchFilters, Terms):
    """``POST /api/albums``: a search to save as an album, as ``POST /api/search`` takes it,
    with the album's name and size."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: Name = Field(description="The album's name, without slashes.")
    limit: whole(1, MAX_ALBUM) = Field(DEFAULT_ALBUM_LIMIT, description="Members the search gives at most "
                                                                           "(pinned images besides).")
    include_query: bool = Field(False, description="Keep the query's own images among the members.")
    replace: bool = Field(False, description="Save over an album of this name (its pins and removals stay).")


class MembersBody(BaseModel):
    """``POST /api/albums/{name}/members``: what to do with some of an album's images."""

    model_config = ConfigDict(extra="forbid", strict=True)

    images: list[ImageId] = Field(min_length=1, max_length=MAX_PAGE, description="Ids of indexed images.")
    state: Literal["pinned", "removed", "search"] = Field(
        description="pinned: kept in whatever the search says; removed: out for good; search: the search decides.")


class MatrixBody(BaseModel):
    """``POST /api/matrix``: indexed images against a bundled label set."""

    model_config = ConfigDict(extra="forbid", strict=True)

    images: list[ImageId] = Field(min_length=1, max_length=MAX_MATRIX_IMAGES, description="Ids of indexed images.")
    labels: LabelSetName = Field(description="A bundled label set.")
    templates: list[Template] = Field([], max_length=MAX_TEMPLATES,
                                      description="Prompt templates ('a photo of a {}.') or bundled template sets.")


class EvalBody(BaseModel):
    """``POST /api/eval``: a labelled folder (one sub-folder per label) inside the indexed
    folders, named by a bundled label set, a trained classifier, or its sub-folders' names."""

    model_config = ConfigDict(extra="forbid", strict=True)

    folder: Folder = Field(description="A folder inside the indexed folders, an absolute path.")
    labels: LabelSetName | None = Field(None, description="A bundled label set.")
    classifier: Name | None = Field(None, description="A trained few-shot classifier's name.")
    templates: list[Template] = Field([], max_length=MAX_TEMPLATES)
    compare_templates: bool = False
    few_shot: whole(0, MAX_FEW_SHOT) | None = Field(None, description="Add K-shot probes against zero-shot.")


class DuplicatesBody(BaseModel):
    """`POST /api/duplicates`: the scan's threshold, and whether crops count."""

    model_config = ConfigDict(extra="forbid", strict=True)

    threshold: float = Field(DUPLICATE_THRESHOLD, gt=0, le=1, description="The cosine at or above which two "
                                                                          "images are duplicates.")
    crops: bool = Field(True, description="Below the threshold, pairs whose pixels show one picture up to a crop.")


class TagBody(BaseModel):
    """`POST /api/tag`: tag the library (or the images `in` some folders) with a bundled
    label set or a trained classifier."""

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)

    labels: LabelSetName | None = Field(None, description="A bundled label set.")
    classifier: Name | None = Field(None, description="A trained few-shot classifier's name.")
    templates: list[Template] = Field([], max_length=MAX_TEMPLATES)
    threshold: float = Field(0.1, ge=0, le=1, description="The least probability a tag needs.")
    top_k: whole(1, 100) = Field(5, description="Tags per image at most.")
    min_cosine: float | None = Field(None, ge=-1, le=1, description="The least cosine a tag needs.")
    folders: list[Folder] = Field([], alias="in", max_length=MAX_FILTER_ITEMS,
                                  description="Only the images inside these folders.")
    dry_run: bool = Field(False, description="Count what would be tagged, change nothing.")


def parse_json(model: type[M], raw: bytes) -> M:
    """``raw`` as a ``model``, parsed strictly (see the module docstring). Text that is not
    JSON, or nests too deep, is a 400; JSON of the wrong shape a 422, as FastAPI's own."""
    if not raw:
        raise InputError("the request has no body", hint="send a JSON object")
    try:
        return model.model_validate_json(raw, strict=True)
    except ValidationError as exc:
        invalid = [e for e in exc.errors() if e["type"] == "json_invalid"]
        if invalid:
            raise InputError(f"the body is not valid JSON: {invalid[0]['ctx']['error']}") from None
        raise RequestValidationError(exc.errors(include_url=False, include_input=False)) from None


def parse_fields(model: type[M], fields: dict) -> M:
    """Form or query fields as a ``model``, in lax mode (they are all text); an empty field
    is an absent one."""
    try:
        return model.model_validate({k: v for k, v in fields.items() if v not in ("", None, [])})
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False, include_input=False)) from None


# -- errors ---------------------------------------------------------------------------

class ErrorBody(BaseModel):
    """Every error the API answers on purpose."""

    error: str = Field(description="What went wrong, in one line.")
    hint: str | None = Field(None, description="What to do about it, when there is something to do.")


_WHY = {
    400: "The request cannot be carried out as given.",
    401: "This server needs a token (`serve --token`).",
    404: "No such image or album, the file is missing or outside the indexed folders, or nothing is indexed yet.",
    409: "An album of that name exists already.",
    413: "The request body is over the server's limit (`serve --max-upload-mb`).",
    422: "A parameter or body field is missing, of the wrong type or out of range.",
    429: "Too many background jobs are waiting already.",
    503: "The model could not be loaded.",
}


def errors(*codes: int) -> dict[int | str, dict]:
    """OpenAPI ``responses`` for these error statuses, each an :class:`ErrorBody`."""
    return {code: {"model": ErrorBody, "description": _WHY[code]} for code in codes}


# What a route's input can go wrong with, by what the route does.
INPUT_ERRORS = errors(400, 404, 422)  # reads parameters, names images
MODEL_ERRORS = errors(400, 404, 422, 503)  # ... and may need the model
UPLOAD_ERRORS = errors(400, 404, 413, 422, 503)  # ... and takes a body
JOB_ERRORS = errors(400, 404, 413, 422, 429)  # starts a background job


# -- what is not JSON -----------------------------------------------------------------

_BYTES = {"schema": {"type": "string", "format": "binary"}}

THUMBNAIL_RESPONSES = {
    200: {"description": "The thumbnail.", "content": {"image/webp": _BYTES, "image/jpeg": _BYTES}},
    304: {"description": "Not modified: the ETag sent in If-None-Match is still the thumbnail's."},
}
FILE_RESPONSES = {
    200: {"description": "The original file: its image type, or bytes for a kind the system does not name "
                         "(some RAW formats).", "content": {"image/*": _BYTES, "application/octet-stream": _BYTES}},
}


def _search_form() -> dict:
    """The multipart form of ``POST /api/search``: an image file and the JSON body's fields,
    ``q`` for ``text``."""
    fields = {("q" if name == "text" else name): _form_field(field)
              for name, field in SearchBody.model_json_schema()["properties"].items()}
    return {"type": "object", "required": ["image"],
            "properties": {"image": {"type": "string", "format": "binary", "description": "The query image."},
                           **fields}}


def _form_field(field: dict) -> dict:
    """A JSON field's schema as a form field's: there or not, but never null; a list is the
    field repeated, so one value is a list of one."""
    if field.get("type") == "array":
        array = {k: field[k] for k in ("type", "items", "maxItems") if k in field}
        rest = {k: v for k, v in field.items() if k not in array and k != "default"}
        return {**rest, "anyOf": [array, field["items"]]}
    if "anyOf" not in field:
        return field
    kept = [a for a in field["anyOf"] if a != {"type": "null"}]
    rest = {k: v for k, v in field.items() if k not in ("anyOf", "default")}
    return {**rest, **(kept[0] if len(kept) == 1 else {"anyOf": kept})}


SEARCH_REQUEST_BODY = {"required": True, "content": {
    "application/json": {"schema": SearchBody.model_json_schema()},
    "multipart/form-data": {"schema": _search_form()},
}}
