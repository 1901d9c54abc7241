"""Warm query latency through HTTP: ``clipsearch serve`` answering ``GET /api/search``.

    python benchmarks/bench_serve.py [--images 100k] [--queries 200] [--model ViT-B-32/random]
    python benchmarks/bench_serve.py --under-load [--images 10k] [--queries 200] [--rounds 3]

It writes a library of N synthetic 512-d vectors (``bench_search.Mixture``) recorded as
made by the model (random weights: compute does not depend on weight values, and no
download is needed), starts a real ``clipsearch serve`` process on loopback, waits until
the index and the model are loaded, and then times, one request at a time:

1. ``new text``: 200 queries never seen before, so each one runs the text encoder;
2. ``cached text``: the same 200 again, answered from the library's text-embedding cache;
3. baseline: the same cached queries through ``Library.search`` in this process (no HTTP).

It prints p50/p99 of each, the text encoder's share of a new query (1 - cached/new, at
the median) and the HTTP layer's cost over the in-process call (2/3).

``--under-load`` asks whether long work makes searches wait. It draws N real pictures
(``demoworld``, with a copy, a re-encode and a crop of every 50th, so the duplicates scan
has real work, pixel checks included), indexes them with the demo model, starts a real
``clipsearch serve``, and then, in alternating rounds, times the same cached-text
searches with the server idle and while a duplicates job (``POST /api/duplicates``,
crop checks on) runs; a job that ends is started again, and a search counts only if a
job was running when it was sent and when it came back. It prints p50/p99 of both and
their ratio (target: p99 under load <= 2x idle p99).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_search import Mixture, metadata_db, parse_count, percentiles, write_vectors  # noqa: E402
from clipsearch.encoder import ModelSpec  # noqa: E402
from clipsearch.results import ModelIdentity  # noqa: E402


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=300) as response:
        return json.loads(response.read())


def search_url(base: str, text: str) -> str:
    return f"{base}/api/search?" + urllib.parse.urlencode({"q": text, "n": 10})


def timed_queries(urls: list[str]) -> list[float]:
    """Seconds each search took, one request at a time."""
    out = []
    for url in urls:
        started = time.perf_counter()
        found = get(url)
        out.append(time.perf_counter() - started)
        assert len(found["results"]) == 10
    return out


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as response:
        return json.loads(response.read())


def start_server(library: Path) -> tuple[subprocess.Popen, str]:
    server = subprocess.Popen([sys.executable, "-m", "clipsearch.cli", "serve", "--port", "0", "-L", str(library)],
                              stdout=subprocess.PIPE, text=True)
    return server, server.stdout.readline().rsplit(" at ", 1)[1].strip().rstrip("/")


def demo_library(work: Path, n: int) -> Path:
    """N demo-world pictures, every 50th also copied, re-encoded and cropped by 8%, indexed."""
    from PIL import Image

    from clipsearch import Library, demoworld

    photos = work / "photos"
    made = demoworld.write_images(photos, n - 3 * (n // 50), seed=1, size_range=(64, 200), fmt="jpg")
    for i, (path, _) in enumerate(made[::50][: n // 50]):
        with Image.open(path) as im:
            im.save(photos / f"reencoded_{i}.jpg", quality=70)
            w, h = im.size
            im.crop((w * 0.04, h * 0.04, w * 0.96, h * 0.96)).save(photos / f"cropped_{i}.jpg", quality=90)
        shutil.copy(path, photos / f"copy_{i}.jpg")
    started = time.perf_counter()
    with Library.open(work / "library", model="demo") as lib:
        report = lib.index([photos])
    print(f"indexed {report.added} pictures with the demo model in {time.perf_counter() - started:.0f}s",
          file=sys.stderr)
    return work / "library"


def under_load(args, work: Path) -> None:
    n = parse_count(args.images)
    library = demo_library(work, n)
    server, base = start_server(library)
    try:
        texts = [f"a {c} {s}" for c in ("red", "green", "blue", "yellow", "purple") for s in
                 ("circle", "square", "triangle", "star")]
        timed_queries([search_url(base, t) for t in texts])  # cached from here on: what is timed is the search
        urls = [search_url(base, texts[i % len(texts)]) for i in range(args.queries)]
        job = {"id": None}
        jobs_run, job_seconds = 0, []

        def job_running() -> bool:
            """Whether a duplicates job runs now; starts another when the last one ended."""
            nonlocal jobs_run
            if job["id"] is not None:
                state = get(f"{base}/api/jobs/{job['id']}")
                if state["state"] == "running":
                    return True
                job_seconds.append(state["seconds"])
            # A fresh threshold each time: a job with the same parameters is joined, not re-run.
            job.update(post(f"{base}/api/duplicates", {"threshold": 0.995 - 1e-6 * jobs_run, "crops": True}))
            jobs_run += 1
            return job["state"] == "running"

        idle, loaded = [], []
        for _ in range(args.rounds):
            idle += timed_queries(urls)
            while job["id"] is not None and get(f"{base}/api/jobs/{job['id']}")["state"] == "running":
                time.sleep(0.05)  # the idle round above ran with no job; now start one
            for url in urls:
                if not job_running():
                    continue
                t = time.perf_counter()
                get(url)
                elapsed = time.perf_counter() - t
                if job_running():
                    loaded.append(elapsed)
            if job["id"] is not None:
                get_url = f"{base}/api/jobs/{job['id']}"
                while get(get_url)["state"] == "running":
                    time.sleep(0.05)  # next round's idle searches run with no job
        (i50, i99), (l50, l99) = percentiles(idle), percentiles(loaded)
        print(json.dumps({
            "images": n, "model": "demo", "searches_idle": len(idle), "searches_under_load": len(loaded),
            "duplicates_jobs_run": jobs_run, "duplicates_job_seconds_median": round(float(np.median(job_seconds)), 2)
            if job_seconds else None,
            "idle_ms": {"p50": round(i50, 2), "p99": round(i99, 2)},
            "under_load_ms": {"p50": round(l50, 2), "p99": round(l99, 2)},
            "p99_under_load_over_idle": round(l99 / i99, 2), "p50_under_load_over_idle": round(l50 / i50, 2),
        }, indent=2))
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", default=None, help="Default: 100k, or 10k with --under-load.")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--model", default="ViT-B-32/random")
    parser.add_argument("--under-load", action="store_true", help="Searches while a duplicates job runs, vs idle.")
    parser.add_argument("--rounds", type=int, default=3, help="With --under-load: idle/loaded rounds.")
    args = parser.parse_args()
    if args.under_load:
        args.images = args.images or "10k"
        work = Path(tempfile.mkdtemp(prefix="bench_serve_load_"))
        try:
            under_load(args, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return
    n = parse_count(args.images or "100k")
    spec = ModelSpec.parse(args.model)
    work = Path(tempfile.mkdtemp(prefix="bench_serve_"))
    server = None
    try:
        mixture = Mixture(512, clusters=max(16, n // 1000))
        write_vectors(work, n, mixture)
        store = metadata_db(work, n)
        store.set_model_identity(ModelIdentity(spec.name, spec.pretrained, 512))
        store.close()

        server, base = start_server(work)
        started = time.perf_counter()
        get(search_url(base, "warm up"))  # waits for the index and the model to load
        print(f"server up, index and model loaded: {time.perf_counter() - started:.1f}s", file=sys.stderr)

        texts = [f"a photo of thing number {i} on a table" for i in range(args.queries)]
        urls = [search_url(base, t) for t in texts]
        new = timed_queries(urls)
        cached = timed_queries(urls)

        from clipsearch import Library

        with Library.open(work) as lib:
            lib.search(texts[0], k=10)
            baseline = []
            for text in texts:
                t = time.perf_counter()
                lib.search(text, k=10)
                baseline.append(time.perf_counter() - t)

        (new50, new99), (c50, c99), (b50, b99) = percentiles(new), percentiles(cached), percentiles(baseline)
        print(json.dumps({
            "images": n, "model": str(spec), "queries": args.queries,
            "new_text_ms": {"p50": round(new50, 2), "p99": round(new99, 2)},
            "cached_text_ms": {"p50": round(c50, 2), "p99": round(c99, 2)},
            "in_process_ms": {"p50": round(b50, 2), "p99": round(b99, 2)},
            "text_encoder_share_of_new_query": round(1 - c50 / new50, 3),
            "http_over_in_process": round(c50 / b50, 2),
            "mean_new_ms": round(float(np.mean(new)) * 1000, 2),
        }, indent=2))
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
