"""Tagging throughput: N stored vectors against L labels, next to the bare matrix product.

    python benchmarks/bench_tag.py [--images 1M] [--labels 1000] [--dim 512] [--threshold 0.1]
                                   [--top-k 5] [--workdir DIR]

It writes a library of N synthetic image vectors (clustered like CLIP embeddings, see
``bench_search.Mixture``) with N metadata rows, and a zero-shot head of L labels whose
vectors sit near the clusters' centres, at CLIP's logit scale of 100. Then, in one run:

1. baseline: the bare product ``X @ W.T`` of every image vector (already float32 in
   memory) with the label matrix, block by block, as numpy/BLAS does it; nothing else;
2. ``tag --dry-run``: what ``clipsearch tag`` computes: read the float16 vector file,
   score, softmax over all labels, threshold, top-k and parents, writing nothing;
3. ``tag``: the same, plus writing the tags to SQLite in one transaction.

It prints seconds, images/s and the ratios 2/1 and 3/1 (target on the 2-core CPU
machine: 1M x 1000 in <= 60 s, the overhead over the bare product <= 1.5x). Peak memory
(ru_maxrss) is printed after the set-up and after the tag runs (before the baseline
loads every vector): tagging works in blocks, so it adds little.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_search import Mixture, metadata_db, parse_count, write_vectors  # noqa: E402
from clipsearch.classifier import ZERO_SHOT, Head, iter_blocks  # noqa: E402
from clipsearch.tagging import BLOCK, tag_images  # noqa: E402


def rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", default="1M")
    parser.add_argument("--labels", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--threshold", type=float, default=0.1)
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    n = parse_count(args.images)

    work = Path(tempfile.mkdtemp(prefix="bench_tag_", dir=args.workdir))
    try:
        started = time.perf_counter()
        mixture = Mixture(args.dim, clusters=args.labels)
        vectors = write_vectors(work, n, mixture)
        store = metadata_db(work, n)
        rng = np.random.default_rng(5)
        words = mixture.centres + rng.standard_normal(mixture.centres.shape, dtype=np.float32) * (0.6 / np.sqrt(args.dim))
        words /= np.linalg.norm(words, axis=1, keepdims=True)
        head = Head("bench", ZERO_SHOT, tuple(f"label {i}" for i in range(args.labels)), words,
                    np.zeros(args.labels, np.float32), 100.0)
        print(f"setup: {n:,} vectors x {args.labels} labels, {time.perf_counter() - started:.0f}s", file=sys.stderr)

        setup_rss = rss_gb()
        t = time.perf_counter()
        dry = tag_images(store, head, threshold=args.threshold, top_k=args.top_k, dry_run=True)
        dry_s = time.perf_counter() - t
        t = time.perf_counter()
        real = tag_images(store, head, threshold=args.threshold, top_k=args.top_k)
        real_s = time.perf_counter() - t
        tag_rss = rss_gb()
        store.close()

        # The baseline last: its matrix of every vector in float32 would hide the tag runs' peak.
        x = np.concatenate([block for _, block in vectors.chunks()])
        w_t = np.ascontiguousarray(words.T)
        t = time.perf_counter()
        for block in iter_blocks(n, BLOCK):
            x[block] @ w_t
        baseline = time.perf_counter() - t
        del x

        result = {
            "images": n, "labels": args.labels, "dim": args.dim, "threshold": args.threshold, "top_k": args.top_k,
            "tags": real.tags, "tagged_images": real.tagged,
            "baseline_product_s": round(baseline, 2), "tag_dry_run_s": round(dry_s, 2), "tag_s": round(real_s, 2),
            "tag_images_per_s": round(n / real_s),
            "dry_run_over_product": round(dry_s / baseline, 2), "tag_over_product": round(real_s / baseline, 2),
            "gflops_product": round(2 * n * args.labels * args.dim / baseline / 1e9, 1),
            "peak_rss_gb_after_setup": round(setup_rss, 2), "peak_rss_gb_after_tagging": round(tag_rss, 2),
        }
        assert dry.tags == real.tags
        print(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
