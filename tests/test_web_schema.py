"""The HTTP API against its own OpenAPI schema, with schemathesis.

Schemathesis reads ``/openapi.json`` and sends what it describes, and what breaks it:
boundary values and wrong types for every parameter and body field, other methods on
every path, generated requests, and chains of them. Every answer is checked: no 5xx, a
status, content type, headers and body that the schema lists, a request that breaks the
schema refused, a 405 naming the methods in ``Allow``.

One check is left out: ``positive_data_acceptance`` (a request the schema allows must get
a 2xx). The API has rules no schema states: a search needs a text, an image or a term;
an upload must decode as an image; an embedding needs the library's dimension; a folder
must exist inside the indexed ones. Those get a 400 or 404 with a message.

The run is bounded and repeatable: a fixed seed, a fixed number of generated examples per
operation (the boundary-value phase is fixed by the schema), no example database. It runs
in process through ASGI; ``benchmarks/bench_web_memory.py`` has the same requests go to a
live server.
"""

import pytest

schemathesis = pytest.importorskip("schemathesis")
from schemathesis.engine import Status, events, from_schema  # noqa: E402

from clipsearch import Library, demoworld  # noqa: E402
from clipsearch.web.app import create_app  # noqa: E402


def run_schemathesis(app, examples: int, token: str | None = None) -> tuple[int, list[str]]:
    """Every phase of a schemathesis run against ``app``: the cases sent, and a line for
    each failed check or request that raised."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    config = schemathesis.Config.from_dict({
        "seed": 1, "headers": headers, "cache": {"enabled": False},
        "generation": {"max-examples": examples, "deterministic": True, "database": "none"},
        "checks": {"positive_data_acceptance": {"enabled": False}}})
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=config, headers=headers)
    sent, problems = 0, []
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            sent += len(event.recorder.cases)
            if event.status in (Status.FAILURE, Status.ERROR):
                problems += [f"{event.label}: {check.name}: {check.failure_info.failure}"
                             for checks in event.recorder.checks.values() for check in checks
                             if check.failure_info is not None]
        elif isinstance(event, (events.NonFatalError, events.FatalError)):
            problems.append(f"{getattr(event, 'label', 'run')}: {event.info}")
    return sent, problems


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    root = tmp_path_factory.mktemp("schema")
    demoworld.write_images(root / "photos", 8, seed=3, size_range=(64, 128), fmt="jpg")
    with Library.open(root / "lib", model="demo") as lib:
        lib.index([root / "photos"])
        lib.tag("demo-colours", top_k=1, threshold=0.0)
        yield lib


def test_every_answer_fits_the_schema(library):
    sent, problems = run_schemathesis(create_app(library, max_upload_bytes=1_000_000), examples=5)
    assert sent > 1000  # every operation was reached, not skipped
    assert not problems, "\n\n".join(problems)


def test_with_a_token_every_operation_needs_it(library):
    # The schema declares the token; schemathesis sends it, and also leaves it out or
    # sends another, where a 401 must come.
    sent, problems = run_schemathesis(create_app(library, token="s3cret", max_upload_bytes=1_000_000), examples=1,
                                      token="s3cret")
    assert sent > 1000
    assert not problems, "\n\n".join(problems)
