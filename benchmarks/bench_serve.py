"""Warm query latency through HTTP: ``clipsearch serve`` answering ``GET /api/search``.

    python benchmarks/bench_serve.py [--images 100k] [--queries 200] [--model ViT-B-32/random]

It writes a library of N synthetic 512-d vectors (``bench_search.Mixture``) recorded as
made by the model (random weights: compute does not depend on weight values, and no
download is needed), starts a real ``clipsearch serve`` process on loopback, waits until
the index and the model are loaded, and then times, one request at a time:

1. ``new text``: 200 queries never seen before, so each one runs the text encoder;
2. ``cached text``: the same 200 again, answered from the library's text-embedding cache;
3. baseline: the same cached queries through ``Library.search`` in this process (no HTTP).

It prints p50/p99 of each, the text encoder's share of a new query (1 - cached/new, at
the median) and the HTTP layer's cost over the in-process call (2/3).
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


def timed_queries(base: str, texts: list[str]) -> list[float]:
    out = []
    for text in texts:
        started = time.perf_counter()
        found = get(f"{base}/api/search?" + urllib.parse.urlencode({"q": text, "n": 10}))
        out.append(time.perf_counter() - started)
        assert len(found["results"]) == 10
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", default="100k")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--model", default="ViT-B-32/random")
    args = parser.parse_args()
    n = parse_count(args.images)
    spec = ModelSpec.parse(args.model)
    work = Path(tempfile.mkdtemp(prefix="bench_serve_"))
    server = None
    try:
        mixture = Mixture(512, clusters=max(16, n // 1000))
        write_vectors(work, n, mixture)
        store = metadata_db(work, n)
        store.set_model_identity(ModelIdentity(spec.name, spec.pretrained, 512))
        store.close()

        server = subprocess.Popen([sys.executable, "-m", "clipsearch.cli", "serve", "--port", "0", "-L", str(work)],
                                  stdout=subprocess.PIPE, text=True)
        base = server.stdout.readline().rsplit(" at ", 1)[1].strip().rstrip("/")
        started = time.perf_counter()
        get(f"{base}/api/search?q=warm+up&n=10")  # waits for the index and the model to load
        print(f"server up, index and model loaded: {time.perf_counter() - started:.1f}s", file=sys.stderr)

        texts = [f"a photo of thing number {i} on a table" for i in range(args.queries)]
        new = timed_queries(base, texts)
        cached = timed_queries(base, texts)

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
