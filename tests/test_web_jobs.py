"""The server answers while long work runs: background jobs over HTTP, and another
process indexing the same library."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from clipsearch import Library, demoworld  # noqa: E402
from clipsearch.web.app import create_app  # noqa: E402
from test_jobs import running  # noqa: E402
from test_web import finished  # noqa: E402


IMAGES = 17  # 16 pictures and a copy of one


@pytest.fixture
def served(tmp_path):
    photos = tmp_path / "photos"
    first = demoworld.write_images(photos, 16, seed=3, size_range=(64, 200), fmt="jpg")[0][0]
    shutil.copy(first, photos / "copy.jpg")
    lib = Library.open(tmp_path / "library", model="demo")
    lib.index([photos])
    with TestClient(create_app(lib), raise_server_exceptions=False) as client:  # with: lifespan, jobs.close
        yield client, lib, photos
    lib.close()


def everyday_requests(client, some_id: int) -> None:
    """A search by text, by image, a thumbnail, an image's facts and the library's summary."""
    for response in (client.get("/api/search", params={"q": "a red circle", "n": 5}),
                     client.get(f"/api/similar/{some_id}"), client.get(f"/api/images/{some_id}"),
                     client.get(f"/api/images/{some_id}/thumbnail"), client.get("/api/info")):
        assert response.status_code == 200, response.text


def test_requests_are_answered_while_a_job_runs_and_the_job_then_finishes(served):
    client, lib, _ = served
    some_id = lib.search("a shape", k=1)[0].id
    started = client.post("/api/duplicates", json={"threshold": 0.99, "crops": True})
    jobs = client.app.state.jobs
    job = running(jobs, started.json()["id"])  # frozen mid-run: it holds whatever it holds
    try:
        everyday_requests(client, some_id)
        assert client.get(f"/api/jobs/{job.id}").json()["state"] == "running"
        listed = client.get("/api/jobs").json()
        assert [j["id"] for j in listed] == [job.id] and "result" not in listed[0]
    finally:
        os.kill(job.pid, signal.SIGCONT)
    done = finished(client, started)
    assert done["state"] == "done" and done["error"] is None
    groups = [[h["id"] for h in g["images"]] for g in done["result"]]
    assert groups and groups == [[h.id for h in g.images] for g in lib.duplicates(0.99, crops=True)]
    assert all(h["thumbnail"] == f"/api/images/{h['id']}/thumbnail" for g in done["result"] for h in g["images"])


def test_jobs_over_http_join_cancel_and_refuse(served):
    client, _, photos = served
    first = client.post("/api/duplicates", json={"threshold": 0.98})
    job = running(client.app.state.jobs, first.json()["id"])
    joined = client.post("/api/duplicates", json={"threshold": 0.98, "crops": True})
    assert joined.status_code == 202 and joined.json()["joined"] and joined.json()["id"] == job.id
    # Two watchers: the first cancel leaves it running, the second stops it.
    assert client.delete(f"/api/jobs/{job.id}").json()["state"] == "running"
    assert client.delete(f"/api/jobs/{job.id}").json()["state"] == "cancelled"
    assert client.get(f"/api/jobs/{job.id}").json()["state"] == "cancelled"
    missing = client.get("/api/jobs/nope")
    assert missing.status_code == 404 and "no job" in missing.json()["error"]
    # Refused before any job starts: bad values, and folders outside the indexed ones.
    assert client.post("/api/duplicates", json={"threshold": 2}).status_code == 422
    assert client.post("/api/duplicates", json={"crops": "yes"}).status_code == 422
    assert client.post("/api/eval", json={"folder": "/", "labels": "demo-colours"}).status_code == 404
    assert client.post("/api/tag", json={}).status_code == 400
    assert client.post("/api/tag", json={"labels": str(photos)}).status_code == 422  # bundled sets only
    assert client.post("/api/tag", json={"labels": "demo-colours", "in": ["photos"]}).status_code == 422
    assert client.get("/api/jobs").json()[-1]["id"] == job.id  # nothing else was started


def test_the_queue_is_bounded_over_http(served):
    client, _, _ = served
    jobs = client.app.state.jobs
    first = running(jobs, client.post("/api/duplicates", json={"threshold": 0.97}).json()["id"])
    try:
        for n in range(jobs.max_queued):
            assert client.post("/api/duplicates", json={"threshold": 0.9 - n / 100}).json()["state"] == "queued"
        full = client.post("/api/duplicates", json={"threshold": 0.5})
        assert full.status_code == 429 and full.json()["hint"]
    finally:
        jobs.close()


def test_a_tag_job_over_http_tags_the_library(served):
    client, lib, _ = served
    done = finished(client, client.post("/api/tag", json={"labels": "demo-colours", "threshold": 0, "top_k": 1}))
    assert done["state"] == "done", done["error"]
    assert done["result"]["tagged"] == IMAGES
    assert sum(t["images"] for t in client.get("/api/tags").json()) == IMAGES


def test_searches_are_answered_while_another_process_indexes(served, tmp_path):
    """An index run in another process, stopped mid-run while it holds the writer lock:
    the server still searches, and sees each batch once it is committed."""
    client, lib, photos = served
    more = tmp_path / "more"
    demoworld.write_images(more, 160, seed=4, size_range=(64, 200), fmt="jpg")
    indexer = subprocess.Popen([sys.executable, "-m", "clipsearch.cli", "index", str(more), "-L", str(lib.root),
                                "--batch-size", "4", "--workers", "1", "-q"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        with Library.open(lib.root) as watcher:  # another reader, to see the first commit
            while watcher.info().images == IMAGES and indexer.poll() is None:
                assert time.monotonic() < deadline, "the index run committed nothing"
                time.sleep(0.02)
        os.kill(indexer.pid, signal.SIGSTOP)
        if indexer.poll() is not None:
            pytest.fail(f"the index run ended too soon to be caught mid-run: {indexer.stderr.read()}")
        some_id = lib.search("a shape", k=1)[0].id
        everyday_requests(client, some_id)
        seen = client.get("/api/info").json()["images"]
        assert IMAGES < seen < IMAGES + 160  # part of the run, committed, is visible
        hits = client.get("/api/search", params={"q": "a shape", "n": 500}).json()["results"]
        assert len(hits) == seen
        os.kill(indexer.pid, signal.SIGCONT)
        assert indexer.wait(timeout=300) == 0, indexer.stderr.read()
    finally:
        if indexer.poll() is None:
            os.kill(indexer.pid, signal.SIGCONT)
            indexer.kill()
    assert client.get("/api/info").json()["images"] == IMAGES + 160


def test_a_jobs_label_set_is_the_bundled_one_whatever_lies_in_the_servers_folder(served, tmp_path, monkeypatch):
    client, _, _ = served
    (tmp_path / "cwd").mkdir()
    (tmp_path / "cwd" / "demo-colours").write_text("zorp\nquib\n")  # a file named like a bundled set
    monkeypatch.chdir(tmp_path / "cwd")
    done = finished(client, client.post("/api/tag", json={"labels": "demo-colours", "threshold": 0, "top_k": 1,
                                                          "dry_run": True}))
    assert done["state"] == "done", done["error"]
    assert set(done["result"]["counts"]) <= set(demoworld.COLOURS) and "zorp" not in done["result"]["counts"]
