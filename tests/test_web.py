"""The HTTP API on a library built with the demo model, and its security suite."""

import io
import json
import os
import time
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from clipsearch import Library, demoworld  # noqa: E402
from clipsearch.defaults import CROP_CANDIDATE, DUPLICATE_THRESHOLD  # noqa: E402
from clipsearch.web.app import STATIC, create_app  # noqa: E402


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A library of 24 demo images (plus a file outside it), served by a TestClient."""
    root = tmp_path_factory.mktemp("web")
    photos = root / "photos"
    demoworld.write_images(photos, 24, seed=5, size_range=(64, 320), fmt="jpg")
    outside = root / "secret.jpg"
    Image.new("RGB", (40, 30), (1, 2, 3)).save(outside)
    lib = Library.open(root / "lib", model="demo")
    lib.index([photos])
    lib.tag("demo-colours", top_k=1, threshold=0.0)
    client = TestClient(create_app(lib, max_upload_bytes=1_000_000), raise_server_exceptions=False)
    yield client, lib, photos, outside
    lib.close()


def finished(client, response, timeout_s: float = 300) -> dict:
    """The job a request started (202), followed to its end."""
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/api/jobs/{job['id']}"
    deadline = time.monotonic() + timeout_s
    while job["state"] in ("queued", "running"):
        assert time.monotonic() < deadline, f"job {job} did not finish"
        time.sleep(0.05)
        job = client.get(f"/api/jobs/{job['id']}").json()
    return job


def _ids(response) -> list[int]:
    assert response.status_code == 200, response.text
    return [h["id"] for h in response.json()["results"]]


def _by_name(lib, name) -> int:
    return next(h.id for h in lib.search("x", k=100) if Path(h.path).name == name)


def test_text_search_pages_and_filters(served):
    client, lib, photos, _ = served
    first = client.get("/api/search", params={"q": "a blue circle", "n": 5}).json()
    assert first["n"] == 5 and first["has_more"] and len(first["results"]) == 5
    top = first["results"][0]
    assert top["name"].startswith("blue_circle") and top["thumbnail"] == f"/api/images/{top['id']}/thumbnail"
    assert top["score"] == pytest.approx(lib.search("a blue circle", k=1)[0].score, abs=1e-6)  # same as the facade
    second = client.get("/api/search", params={"q": "a blue circle", "n": 5, "offset": 5}).json()
    assert not {h["id"] for h in first["results"]} & {h["id"] for h in second["results"]}
    red = client.get("/api/search", params={"q": "a shape", "tag": "green", "n": 50}).json()["results"]
    assert red and all(h["name"].startswith("green") for h in red)
    inside = client.get("/api/search", params={"q": "a shape", "in": str(photos), "n": 2}).json()["results"]
    assert len(inside) == 2
    by_date = client.get("/api/search", params={"q": "a shape", "sort": "date", "n": 3})
    assert by_date.status_code == 200


def test_search_with_an_indexed_image_and_similar(served):
    client, lib, _, _ = served
    some = _by_name(lib, "blue_square_0008.jpg")
    with_image = _ids(client.get("/api/search", params={"image": some, "n": 3}))
    similar = _ids(client.get(f"/api/similar/{some}", params={"n": 3}))
    assert with_image == similar and some not in similar


def test_search_by_uploaded_image_and_json_body(served):
    client, lib, photos, _ = served
    data = (photos / "green_star_0004.jpg").read_bytes()
    results = client.post("/api/search", files={"image": ("q.jpg", data, "image/jpeg")}, data={"n": "3"}).json()
    assert results["results"][0]["name"] == "green_star_0004.jpg" and results["results"][0]["score"] > 0.99
    body = {"text": "a yellow triangle", "not": ["2:blue"], "n": 2, "tag": ["yellow"]}
    hits = client.post("/api/search", json=body).json()["results"]
    assert len(hits) == 2 and all(h["name"].startswith("yellow") for h in hits)


def test_image_metadata_thumbnail_and_file(served):
    client, lib, photos, _ = served
    some = _by_name(lib, "purple_star_0022.jpg")
    info = client.get(f"/api/images/{some}").json()
    assert info["path"] == str(photos / "purple_star_0022.jpg")
    assert [t["label"] for t in info["tags"]] == ["purple"]
    thumb = client.get(f"/api/images/{some}/thumbnail", params={"size": 100})
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/webp"
    assert "max-age" in thumb.headers["cache-control"]
    im = Image.open(io.BytesIO(thumb.content))
    assert max(im.size) <= 128 and im.format == "WEBP"
    again = client.get(f"/api/images/{some}/thumbnail", params={"size": 100},
                       headers={"If-None-Match": thumb.headers["etag"]})
    assert again.status_code == 304
    jpeg = client.get(f"/api/images/{some}/thumbnail", params={"size": 100, "format": "jpeg"})
    assert jpeg.headers["content-type"] == "image/jpeg" and jpeg.headers["etag"] != thumb.headers["etag"]
    assert Image.open(io.BytesIO(jpeg.content)).format == "JPEG"
    original = client.get(f"/api/images/{some}/file")
    assert original.status_code == 200 and original.content == (photos / "purple_star_0022.jpg").read_bytes()


def test_tags_classify_duplicates_info(served):
    client, _, photos, _ = served
    tags = client.get("/api/tags").json()
    assert sum(t["images"] for t in tags) == 24 and {t["label"] for t in tags} <= set(demoworld.COLOURS)
    data = (photos / "yellow_cross_0017.jpg").read_bytes()
    result = client.post("/api/classify", files={"image": ("o.jpg", data, "image/jpeg")},
                         data={"labels": "demo-colours", "top_k": "2"}).json()
    assert result["labels"][0]["label"] == "yellow" and len(result["labels"]) == 2
    job = finished(client, client.post("/api/duplicates", json={}))
    assert job["state"] == "done" and job["result"] == [] and job["params"] == {"threshold": 0.995, "crops": True}
    info = client.get("/api/info").json()
    assert info["images"] == 24
    assert (info["duplicate_threshold"], info["crop_candidate"]) == (DUPLICATE_THRESHOLD, CROP_CANDIDATE)
    assert "/api/search" in client.get("/openapi.json").json()["paths"]


def test_the_page_takes_the_duplicate_defaults_from_the_server():
    static = Path(STATIC)
    for name in ("app.js", "index.html"):
        text = (static / name).read_text()
        assert str(DUPLICATE_THRESHOLD) not in text and f"{CROP_CANDIDATE} with" not in text, name


def test_the_page_and_its_static_files_are_served(served):
    client, *_ = served
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")


# -- security -------------------------------------------------------------------------------

@pytest.mark.parametrize("url", [
    "/api/images/../../../etc/passwd/file",
    "/api/images/%2e%2e%2f%2e%2e%2fetc%2fpasswd/file",
    "/api/images/..%2F..%2Fetc%2Fpasswd/thumbnail",
    "/api/images//etc/passwd/file",
    "/api/images/1%2F..%2F..%2Flibrary.db/file",
    "/static/../library.db",
    "/static/%2e%2e/%2e%2e/cli.py",
    "/static/..%2f..%2fcli.py",
    "/api/images/-1/file",
    "/api/images/99999/file",
    "/api/images/1.5/file",
])
def test_path_traversal_finds_nothing(served, url):
    client, *_ = served
    response = client.get(url)
    assert response.status_code in (404, 422), (url, response.status_code)
    assert "error" in response.json() and b"root:" not in response.content


def test_query_terms_never_read_server_files(served):
    client, _, photos, outside = served
    # An existing path in a query is text, not an image to read.
    for term in (str(outside), str(photos / "red_ring_0000.jpg")):
        assert client.get("/api/search", params={"and": term, "n": 1}).status_code == 200
        assert client.post("/api/search", json={"text": term, "n": 1}).status_code == 200


def test_a_file_replaced_by_a_symlink_leading_out_is_not_served(tmp_path):
    photos = tmp_path / "photos"
    demoworld.write_images(photos, 3, seed=1, size_range=(64, 128), fmt="jpg")
    outside = tmp_path / "outside.jpg"
    Image.new("RGB", (50, 50), (9, 9, 9)).save(outside)
    linked_at_index = photos / "link.jpg"
    os.symlink(outside, linked_at_index)
    with Library.open(tmp_path / "lib", model="demo") as lib:
        lib.index([photos])
        client = TestClient(create_app(lib))
        ids = {Path(h.path).name: h.id for h in lib.search("x", k=10)}
        assert "link.jpg" not in ids  # a link to a file is not followed without --follow-symlinks
        victim = sorted(ids)[0]
        assert client.get(f"/api/images/{ids[victim]}/file").status_code == 200
        (photos / victim).unlink()
        os.symlink(outside, photos / victim)  # swapped for a link to a file outside the library
        for suffix in ("file", "thumbnail"):
            assert client.get(f"/api/images/{ids[victim]}/{suffix}").status_code == 404, suffix


def test_uploads_are_bounded_and_must_be_images(served):
    client, *_ = served
    big = client.post("/api/search", files={"image": ("big.jpg", b"\xff" * 1_200_000, "image/jpeg")})
    assert big.status_code == 413 and "over" in big.json()["error"]
    text = client.post("/api/search", files={"image": ("notes.jpg", b"just text", "image/jpeg")})
    assert text.status_code == 400 and "image" in text.json()["error"]
    empty = client.post("/api/classify", files={"image": ("e.jpg", b"", "image/jpeg")}, data={"labels": "coco"})
    assert empty.status_code == 400
    bomb = io.BytesIO()
    Image.new("1", (20000, 20000)).save(bomb, "PNG")  # 400 MP, a few kB compressed
    response = client.post("/api/search", files={"image": ("bomb.png", bomb.getvalue(), "image/png")})
    assert response.status_code == 400 and "too large" in response.json()["error"]


@pytest.mark.parametrize("body,status", [
    (b"{not json", 400), (b"[1, 2]", 422), (b'{"text": 5}', 422), (b'{"images": "1"}', 422),
    (b'{"text": "x", "n": "many"}', 422), (b'{"text": "x", "n": 100000}', 422), (b'{"txt": "x"}', 422),
])
def test_malformed_json_gets_a_4xx_with_a_message(served, body, status):
    client, *_ = served
    response = client.post("/api/search", content=body, headers={"content-type": "application/json"})
    assert response.status_code == status and response.json()["error"]


@pytest.mark.parametrize("url,status", [
    ("/api/search", 400), ("/api/search?q=x&n=0", 422), ("/api/search?q=x&sort=size", 422),
    ("/api/search?q=x&after=yesterday", 422), ("/api/similar/424242", 404), ("/api/search?image=424242", 404),
    ("/api/images/424242", 404),
    ("/api/images/424242/thumbnail", 404), ("/api/nothing-here", 404),
])
def test_bad_requests_and_unknown_ids(served, url, status):
    client, *_ = served
    response = client.get(url)
    assert response.status_code == status and response.json()["error"] and "Traceback" not in response.text


def test_the_token_gate(served):
    _, lib, *_ = served
    client = TestClient(create_app(lib, token="s3cret"))
    assert client.get("/api/info").status_code == 401
    assert client.get("/api/info", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/api/info", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert client.get("/").status_code == 401
    assert client.get("/?token=wrong", follow_redirects=False).status_code == 401
    entry = client.get("/?token=s3cret", follow_redirects=False)
    assert entry.status_code == 303 and "httponly" in entry.headers["set-cookie"].lower()
    assert client.get("/api/info").status_code == 200  # the cookie now rides along


def test_serve_without_the_web_extra_says_what_to_install(monkeypatch, tmp_path):
    import builtins

    from typer.testing import CliRunner

    from clipsearch.cli import app

    real_import = builtins.__import__

    def no_uvicorn(name, *args, **kwargs):
        if name == "uvicorn":
            raise ImportError("No module named 'uvicorn'", name="uvicorn")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_uvicorn)
    result = CliRunner().invoke(app, ["serve", "-L", str(tmp_path)])
    assert result.exit_code == 1 and "pip install 'clipsearch[web]'" in result.stderr


# -- clip-retrieval's own client against a live server ----------------------------------------

def _clip_client():
    """clip-retrieval's ``ClipClient``, installed with --no-deps: its package __init__ imports
    the whole inference stack (torch, flask, ...), the client module only ``requests``."""
    import importlib.util
    import sys
    import types

    spec = importlib.util.find_spec("clip_retrieval")
    if spec is None:
        pytest.skip("clip-retrieval is not installed (scripts/test.sh installs it with --no-deps)")
    if "clip_retrieval" not in sys.modules:
        package = types.ModuleType("clip_retrieval")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["clip_retrieval"] = package
    from clip_retrieval.clip_client import ClipClient, Modality

    return ClipClient, Modality


def test_clip_retrievals_client_queries_a_live_server(demo_library, demo_images, tmp_path):
    from conftest import serving

    ClipClient, Modality = _clip_client()
    with serving(demo_library) as base:
        client = ClipClient(url=f"{base}/knn-service", indice_name="anything", num_images=5,
                            modality=Modality.IMAGE, deduplicate=False)
        by_text = client.query(text="a green triangle")
        assert len(by_text) == 5 and by_text[0]["caption"].startswith("green_triangle")
        assert by_text[0]["similarity"] >= by_text[1]["similarity"]
        assert set(by_text[0]) == {"id", "similarity", "url", "caption"}
        original = requests_get(by_text[0]["url"])
        assert original == Path(next(p for p in demo_images if p.name == by_text[0]["caption"])).read_bytes()
        query = next(p for p in demo_images if p.name.startswith("blue_star"))
        by_image = client.query(image=str(query))
        assert by_image[0]["caption"] == query.name and by_image[0]["similarity"] > 0.99
        import numpy as np

        vector = np.random.default_rng(0).standard_normal(64).tolist()
        assert len(client.query(embedding_input=vector)) == 5
        refused = client.query(image="http://127.0.0.1:9/none.jpg")  # remote URLs are off by default
        assert "error" in refused and "image_url" in refused["error"]


def requests_get(url: str) -> bytes:
    import urllib.request

    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read()


def test_an_upload_takes_the_same_filters_as_a_json_search(served):
    client, _, photos, _ = served
    data = (photos / "blue_star_0010.jpg").read_bytes()
    fields = {"q": "", "n": "5", "tag": "yellow", "min_score": "0.1", "sort": "path"}
    hits = client.post("/api/search", files={"image": ("q.jpg", data, "image/jpeg")}, data=fields).json()["results"]
    assert hits and all(h["name"].startswith("yellow") for h in hits)
    assert [h["path"] for h in hits] == sorted(h["path"] for h in hits)
    bad = client.post("/api/search", files={"image": ("q.jpg", data, "image/jpeg")}, data={"min_score": "high"})
    assert bad.status_code == 422 and "min_score" in bad.json()["error"]


def test_info_names_the_roots_and_the_upload_limit(served):
    client, _, photos, _ = served
    info = client.get("/api/info").json()
    assert info["roots"] == [str(photos)] and info["max_upload_bytes"] == 1_000_000


def test_the_matrix_and_eval_views(served, tmp_path):
    client, lib, photos, outside = served
    files = sorted(photos.iterdir())[:3]
    ids = [lib.image_id(f) for f in files]
    got = client.post("/api/matrix", json={"images": ids, "labels": "demo-colours"})
    assert got.status_code == 200, got.text
    data = got.json()
    assert data["cosine"] == lib.similarity_matrix(ids, "demo-colours").cosine
    assert [i["id"] for i in data["images"]] == ids and data["images"][0]["thumbnail"] == f"/api/images/{ids[0]}/thumbnail"
    # Label sets by bundled name only: a request does not name files on the server.
    named = client.post("/api/matrix", json={"images": ids, "labels": str(outside)})
    assert named.status_code == 422 and "unknown label set" in named.json()["error"]
    assert client.post("/api/matrix", json={"images": [], "labels": "demo-colours"}).status_code == 422

    # A labelled folder inside the indexed folders: one sub-folder per colour.
    labelled = photos / "labelled"
    for f in sorted(photos.glob("*.jpg")):
        (labelled / f.name.split("_")[0]).mkdir(parents=True, exist_ok=True)
        (labelled / f.name.split("_")[0] / f.name).write_bytes(f.read_bytes())
    try:
        job = finished(client, client.post("/api/eval", json={"folder": str(labelled), "labels": "demo-colours",
                                                              "compare_templates": True}))
        assert job["state"] == "done", job["error"]
        body = job["result"]
        assert body["images"] == 24 and body["top1"] == lib.evaluate(labelled, "demo-colours").top1
        assert body["templates"] and body["confusion"]
        assert all(m["id"] is None for m in body["misses"])  # copies, not indexed themselves
        away = client.post("/api/eval", json={"folder": str(tmp_path), "labels": "demo-colours"})
        assert away.status_code == 404 and "outside the indexed folders" in away.json()["error"]
        dotdot = client.post("/api/eval", json={"folder": f"{labelled}/../../", "labels": "demo-colours"})
        assert dotdot.status_code == 404
    finally:
        import shutil

        shutil.rmtree(labelled)


# -- what a request may send: every answer a 4xx, nothing read on request text --------------

PAST_64_BITS = 2**63  # one past the largest row id


def _deep(levels: int) -> str:
    return "[" * levels + "]" * levels


@pytest.mark.parametrize("method,url,body", [
    ("get", f"/api/images/{PAST_64_BITS}", None), ("get", f"/api/images/{PAST_64_BITS}/file", None),
    ("get", f"/api/images/{PAST_64_BITS}/thumbnail", None), ("get", f"/api/similar/{PAST_64_BITS}", None),
    ("get", f"/api/search?image={PAST_64_BITS}", None), ("post", "/api/search", {"images": [PAST_64_BITS]}),
    ("post", "/metadata", {"ids": [PAST_64_BITS]}), ("post", "/api/matrix", {"images": [PAST_64_BITS],
                                                                            "labels": "demo-colours"}),
])
def test_ids_past_64_bits_are_refused(served, method, url, body):
    client, *_ = served
    response = client.get(url) if method == "get" else client.post(url, json=body)
    assert response.status_code == 422 and "less than or equal" in response.json()["error"]


def test_an_id_term_past_64_bits_is_no_image(served):
    client, *_ = served
    for params in ({"and": f"id:{PAST_64_BITS}"}, {"q": "x", "not": f"2:id:{PAST_64_BITS}"}):
        response = client.get("/api/search", params=params)
        assert response.status_code == 404 and "no indexed image" in response.json()["error"]


@pytest.mark.parametrize("url", ["/api/search", "/knn-service", "/metadata", "/api/matrix", "/api/eval"])
def test_deeply_nested_json_is_refused(served, url):
    client, *_ = served
    body = '{"text": %s, "ids": %s, "images": %s}' % ((_deep(5000),) * 3)
    response = client.post(url, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400 and response.json()["error"]


def test_dates_past_what_nanoseconds_hold_filter_as_they_say(served):
    client, *_ = served
    every = len(_ids(client.get("/api/search", params={"q": "a shape", "n": 100})))
    assert _ids(client.get("/api/search", params={"q": "a shape", "after": "9999-12-31T23:59:59"})) == []
    assert _ids(client.get("/api/search", params={"q": "a shape", "before": "0001-01-01T00:00:00"})) == []
    everything = client.post("/api/search", json={"text": "a shape", "n": 100, "after": "0001-01-01",
                                                  "before": "9999-12-31T23:59:59+14:00"})
    assert len(_ids(everything)) == every == 24


@pytest.mark.parametrize("field", ["ext", "in", "tag", "no_tag", "and", "not", "images"])
@pytest.mark.parametrize("item", [1, None, {}, [1], True])
def test_filter_and_term_lists_take_only_their_kind_of_item(served, field, item):
    client, *_ = served
    if field == "images" and item == 1:
        item = "1"  # an image id is the one number
    response = client.post("/api/search", json={"text": "x", field: [item]})
    assert response.status_code == 422 and field in response.json()["error"]


@pytest.mark.parametrize("field,item", [("ext", "jpg"), ("in", "/photos"), ("tag", "red"), ("no_tag", "red"),
                                        ("and", "red"), ("not", "red"), ("images", 1)])
def test_request_lists_are_bounded(served, field, item):
    from clipsearch.web.schemas import MAX_FILTER_ITEMS, MAX_TERMS

    client, *_ = served
    most = MAX_TERMS if field in ("and", "not", "images") else MAX_FILTER_ITEMS
    assert client.post("/api/search", json={"text": "x", field: [item] * most}).status_code in (200, 404)
    for too_many in (most + 1, 10_000):
        response = client.post("/api/search", json={"text": "x", field: [item] * too_many})
        assert response.status_code == 422 and f"at most {most} items" in response.json()["error"]
    query = client.get("/api/search", params={"q": "x", field if field != "images" else "image": [item] * (most + 1)})
    assert query.status_code == 422


def test_text_is_bounded_and_numbers_are_numbers(served):
    from clipsearch.web.schemas import MAX_TEXT

    client, *_ = served
    assert client.post("/api/search", json={"text": "a " * (MAX_TEXT // 2)}).status_code == 200
    for body in ({"text": "a" * (MAX_TEXT + 1)}, {"text": "a" * 19_000_000}, {"and": ["a" * (MAX_TEXT + 1)]},
                 {"text": "x", "n": True}, {"text": "x", "n": 1.5}, {"text": "x", "n": "5"}, {"text": "x", "n": 501},
                 {"text": "x", "offset": -1}, {"text": "x", "min_score": "0.5"}, {"text": "x", "min_score": 2}):
        response = client.post("/api/search", content=json.dumps(body), headers={"content-type": "application/json"})
        assert response.status_code in (413, 422), (str(body)[:80], response.status_code)
    assert client.post("/api/search", json={"text": "x", "n": 2.0}).json()["n"] == 2  # JSON Schema's integer
    assert client.get("/api/search", params={"q": "x", "n": "1.5"}).status_code == 422
    assert client.get("/api/search", params={"q": "a" * (MAX_TEXT + 1)}).status_code == 422
    assert client.post("/knn-service", content=json.dumps({"text": "x", "num_images": True})).status_code == 422


@pytest.mark.parametrize("url,body", [
    ("/api/search", '{"text": "\\ud800"}'), ("/api/search", '{"text": "x", "and": ["\\udfff"]}'),
    ("/knn-service", '{"text": "\\ud800"}'),
    ("/api/matrix", '{"images": [1], "labels": "demo-colours", "templates": ["\\ud800 {}"]}'),
    ("/api/eval", '{"folder": "/\\ud800", "labels": "demo-colours"}'),
])
def test_a_lone_surrogate_is_refused(served, url, body):
    client, *_ = served
    response = client.post(url, content=body, headers={"content-type": "application/json"})
    assert response.status_code in (400, 422) and response.json()["error"]


def test_an_error_quoting_a_lone_surrogate_still_renders():
    from clipsearch.web.app import _error

    response = _error(400, "no such thing: \ud800", hint="try \udfff")
    assert json.loads(response.body) == {"error": "no such thing: ?", "hint": "try ?"}


def test_a_nul_byte_in_the_eval_folder_is_not_found(served):
    client, _, photos, _ = served
    response = client.post("/api/eval", json={"folder": f"{photos}\x00/x", "labels": "demo-colours"})
    assert response.status_code == 404 and "outside the indexed folders" in response.json()["error"]


def test_folders_a_request_names_are_absolute(served):
    client, *_ = served
    for body in ({"text": "x", "in": ["~root/photos"]}, {"text": "x", "in": ["photos"]}):
        response = client.post("/api/search", json=body)
        assert response.status_code == 422 and "absolute" in response.json()["error"]
    assert client.post("/api/eval", json={"folder": "~/photos"}).status_code == 422


def test_a_token_that_is_not_ascii_is_refused_not_a_crash(served):
    _, lib, *_ = served
    client = TestClient(create_app(lib, token="s3cret"), raise_server_exceptions=False)
    assert client.get("/api/info", headers={"Authorization": "Bearer s3crét".encode()}).status_code == 401
    assert client.get("/api/info", headers={"Cookie": "clipsearch_token=s3crét".encode()}).status_code == 401
    assert client.get("/?token=s3cr%C3%A9t", follow_redirects=False).status_code == 401
    assert client.get("/?token=%ED%A0%80", follow_redirects=False).status_code == 401
    assert client.get("/api/info", headers={"Authorization": "Bearer s3cret"}).status_code == 200


@pytest.mark.parametrize("token", ["", "two words", "s3crét", "tab\there"])
def test_serving_refuses_an_empty_or_unsendable_token(served, token):
    from clipsearch.errors import InputError

    _, lib, *_ = served
    with pytest.raises(InputError, match="token"):
        create_app(lib, token=token)


def test_serve_with_an_empty_token_says_so(served):
    from typer.testing import CliRunner

    from clipsearch.cli import app

    _, lib, *_ = served
    result = CliRunner().invoke(app, ["serve", "--port", "0", "--token", "", "-L", str(lib.root)])
    assert result.exit_code == 1 and "the token is empty" in result.stderr


def test_whether_a_path_exists_never_changes_a_ranking(served, tmp_path):
    """Query terms are text on the web: a term naming a server path ranks the same whether
    or not the path exists (else the ranking says which paths exist)."""
    client, _, photos, _ = served
    probe = tmp_path / "probe.jpg"  # will hold a picture the library holds, so reading it would show
    requests = [("get", {"params": {"and": f"2:{probe}", "n": 10}}),
                ("get", {"params": {"q": "a blue star", "and": str(probe), "not": f"0.5:{probe}", "n": 10}}),
                ("post", {"json": {"text": "a shape", "and": [f"2:{probe}"], "not": [str(probe)], "n": 10}})]

    def answers():
        return [getattr(client, method)("/api/search", **kw).json() for method, kw in requests]

    missing = answers()
    probe.write_bytes((photos / "blue_star_0010.jpg").read_bytes())
    assert answers() == missing and all(a["results"] for a in missing)


def test_no_request_text_reaches_the_file_system(served, monkeypatch):
    """Every text field of every endpoint but /api/eval's folder (checked against the
    indexed folders on purpose) carries a marker; no stat, listing, open or user look-up on
    the server may see it."""
    import builtins
    import pwd

    client, _, photos, _ = served
    upload = (photos / "blue_star_0010.jpg").read_bytes()
    marker = "zqmarker"
    seen = []

    def spy(real):
        def wrapper(path, *args, **kwargs):
            if marker in str(path):
                seen.append((real.__name__, str(path)))
            return real(path, *args, **kwargs)
        return wrapper

    for module, name in [(os, "stat"), (os, "lstat"), (os, "scandir"), (os, "listdir"), (builtins, "open"),
                         (pwd, "getpwnam")]:
        monkeypatch.setattr(module, name, spy(getattr(module, name)))
    os.path.exists(f"/{marker}")  # the spy sees what Path.exists and os.path do
    assert seen == [("stat", f"/{marker}")]
    seen.clear()

    m, path = marker, f"/{marker}/x.jpg"
    texts = {"q": m, "and": [path, f"2:{path}", f"~{m}/x.jpg"], "not": [f"0.5:{path}"], "in": [f"/{m}"],
             "ext": [m], "tag": [m], "no_tag": [m]}
    client.get("/api/search", params=texts)
    client.post("/api/search", json={"text": path, **{k: v for k, v in texts.items() if k != "q"}})
    client.post("/api/search", files={"image": ("q.jpg", upload, "image/jpeg")},
                data={"q": path, "and": path, "in": f"/{m}"})
    client.post("/api/classify", files={"image": (path, upload, "image/jpeg")}, data={"classifier": m})
    client.post("/api/matrix", json={"images": [1], "labels": "demo-colours", "templates": [f"{path} {{}}"]})
    client.post("/knn-service", content=json.dumps({"text": path}))
    client.post("/knn-service", content=json.dumps({"image_url": f"file://{path}"}))
    client.post("/knn-service", content=json.dumps({"image": m}))
    client.get(f"/api/images/{m}")
    assert seen == []


def test_eval_reads_no_file_through_a_symlink_leading_out(served, tmp_path):
    client, lib, photos, outside = served
    labelled = photos / "labelled-links"
    elsewhere = tmp_path / "elsewhere"  # outside the indexed folders
    elsewhere.mkdir()
    for f in sorted(photos.glob("*.jpg"))[:12]:
        (labelled / f.name.split("_")[0]).mkdir(parents=True, exist_ok=True)
        (labelled / f.name.split("_")[0] / f.name).symlink_to(f)  # links inside the roots are fine
        (elsewhere / f.name).write_bytes(f.read_bytes())
    (labelled / "red" / "secret.jpg").parent.mkdir(exist_ok=True)
    (labelled / "red" / "secret.jpg").symlink_to(outside)
    (labelled / "stolen").symlink_to(elsewhere)  # a whole label leading out
    try:
        inside = len(list(labelled.glob("*/*.jpg"))) - 1 - len(list(elsewhere.iterdir()))
        job = finished(client, client.post("/api/eval", json={"folder": str(labelled)}))
        assert job["state"] == "done", job["error"]
        body = job["result"]
        assert body["images"] == inside == 12
        assert "stolen" not in body["labels"] and not any("secret" in m["path"] for m in body["misses"])
        # The CLI (the library's default) reads the folder as the user made it.
        assert lib.evaluate(labelled).images == 12 + 1 + len(list(elsewhere.iterdir()))
    finally:
        import shutil

        shutil.rmtree(labelled)


def test_the_schema_lists_what_each_endpoint_answers(served):
    client, lib, *_ = served
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    error = {"$ref": "#/components/schemas/ErrorBody"}
    for path in ("/api/images/{image_id}", "/api/images/{image_id}/file", "/api/images/{image_id}/thumbnail",
                 "/api/similar/{image_id}"):
        responses = paths[path]["get"]["responses"]
        assert {"400", "404", "422"} <= set(responses), path
        assert responses["404"]["content"]["application/json"]["schema"] == error
    assert set(paths["/api/images/{image_id}/file"]["get"]["responses"]["200"]["content"]) == {
        "image/*", "application/octet-stream"}
    thumbnail = paths["/api/images/{image_id}/thumbnail"]["get"]["responses"]
    assert set(thumbnail["200"]["content"]) == {"image/webp", "image/jpeg"} and "304" in thumbnail
    for path, kinds in [("/api/search", {"application/json", "multipart/form-data"}),
                        ("/api/classify", {"multipart/form-data"}), ("/api/matrix", {"application/json"}),
                        ("/api/eval", {"application/json"}), ("/knn-service", {"application/json"}),
                        ("/metadata", {"application/json"})]:
        body = paths[path]["post"]["requestBody"]
        assert set(body["content"]) == kinds, path
        assert all(c["schema"] for c in body["content"].values())
        assert {"413", "422"} <= set(paths[path]["post"]["responses"]), path
    search = paths["/api/search"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert search["properties"]["n"]["maximum"] == 500 and search["properties"]["in"]["maxItems"] == 100
    # Every status a route may answer with is an {"error", "hint"}, FastAPI's own 422 shape nowhere.
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    assert "securitySchemes" not in spec.get("components", {})
    gated = TestClient(create_app(lib, token="s3cret")).get("/openapi.json", headers={
        "Authorization": "Bearer s3cret"}).json()
    assert gated["security"] == [{"bearer": []}, {"cookie": []}]
    assert all("401" in op["responses"] for ops in gated["paths"].values() for op in ops.values())


def test_a_405_names_every_method_of_the_path(served):
    client, *_ = served
    for method, url, allow in [("put", "/api/search", "GET, POST"), ("delete", "/api/images/1", "GET"),
                               ("get", "/api/matrix", "POST"), ("patch", "/knn-service", "POST")]:
        response = client.request(method.upper(), url)
        assert response.status_code == 405 and response.headers["allow"] == allow, (method, url)
        assert response.json()["error"]


def test_a_json_endpoint_needs_a_body(served):
    client, *_ = served
    for url in ("/api/search", "/knn-service", "/metadata"):
        response = client.post(url)
        assert response.status_code == 400 and "no body" in response.json()["error"], url


def test_a_live_server_takes_the_longest_query_string_its_schema_allows(demo_library):
    """100 folders of 4096 characters are a valid search; uvicorn's default 16 KB request
    line would reset the connection before the app saw it."""
    import urllib.parse
    import urllib.request

    from conftest import serving

    folders = [("in", "/" + "d" * 4095)] * 100
    with serving(demo_library) as base:
        url = f"{base}/api/search?" + urllib.parse.urlencode([("q", "a red circle"), *folders])
        assert len(url) > 400_000
        with urllib.request.urlopen(url, timeout=120) as response:
            assert response.status == 200 and json.load(response)["results"] == []
