"""Tagging a library: every stored image vector through a classifier head, in blocks.

A run reads the vectors from the memory-mapped vector file a block at a time (no image
is decoded or encoded again), ranks each block with ``Head.predict`` and streams the
tags into one database transaction (``Store.replace_tags``), so memory stays bounded by
the block size and a crash leaves the previous tags in place.

Thresholds are probabilities: a label is kept when its softmax share over the whole
label set reaches the threshold (the label's own, from the label file, else the run's),
it is among the ``top_k`` best, and, if asked, its cosine similarity reaches
``min_cosine``. With a probability floor ``p`` no image gets more than ``1/p`` labels.
Parents of kept labels are added with their child's probability.
"""

from __future__ import annotations

import csv
import io
import json
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from queue import Full, Queue

import numpy as np

from .classifier import Head, Predictions, iter_blocks
from .defaults import TAG_THRESHOLD, TAG_TOP_K
from .results import ImageTag, Progress, TagReport
from .store import Store

BLOCK = 4096  # images per block: a 1000-label block of logits is 16 MB, reused


def tag_images(store: Store, head: Head, *, threshold: float = TAG_THRESHOLD, top_k: int | None = TAG_TOP_K,
               min_cosine: float | None = None, folders: Sequence[str] = (), dry_run: bool = False,
               progress: Progress | None = None) -> TagReport:
    """Tag the indexed images under ``folders`` (all if none) with ``head``; see the module docstring."""
    started = time.perf_counter()
    ids, rows, _ = store.live(folders)
    report = TagReport(head.name, head.source, images=len(ids), dry_run=dry_run)
    counts = np.zeros(len(head.vocabulary), np.int64)
    logits = np.empty((BLOCK, len(head.labels)), np.float32)  # reused: fresh blocks cost page faults
    tagged = 0

    def batches() -> Iterator[tuple[np.ndarray, list[str], np.ndarray]]:
        nonlocal tagged
        for block in iter_blocks(len(ids), BLOCK):
            z = head.logits(store.vector_file().rows(rows[block]), out=logits[:block.stop - block.start])
            found = _rank_halves(head, z, pool, top_k=top_k, threshold=threshold, min_cosine=min_cosine,
                                 implied=True)
            counts[:] += np.bincount(found.labels, minlength=len(counts))
            tagged += len(np.unique(found.rows))
            if progress:
                progress("tagging", block.stop, len(ids))
            yield ids[block][found.rows], [head.vocabulary[c] for c in found.labels], found.probability

    with ThreadPoolExecutor(2) as pool:
        if dry_run:
            report.tags = sum(len(b[0]) for b in batches())
        else:
            report.tags = store.replace_tags(head.source, head.name, _ahead(batches()), folders)
    report.tagged = tagged
    report.counts = {head.vocabulary[i]: int(n) for i in np.argsort(-counts, kind="stable") if (n := counts[i])}
    report.seconds = time.perf_counter() - started
    return report


def _rank_halves(head: Head, z: np.ndarray, pool: ThreadPoolExecutor, **options) -> Predictions:
    """``head.rank`` of a block's two halves on two threads (numpy lets go of the GIL), so that
    ranking, like the BLAS product before it, uses two cores: 9 ms become 5.5 per 4096 x 1000
    block on the 2-core CPU machine (timed around ``head.rank``; ``benchmarks/bench_tag.py``
    measures the whole run)."""
    half = (len(z) + 1) // 2
    first, second = pool.map(lambda rows: head.rank(z[rows], **options), (slice(0, half), slice(half, len(z))))
    return Predictions(np.concatenate([first.rows, second.rows + half]),
                       *(np.concatenate([getattr(first, f), getattr(second, f)])
                         for f in ("labels", "probability", "cosine")))


def _ahead(items: Iterator, depth: int = 2) -> Iterator:
    """``items``, produced by a thread up to ``depth`` ahead: the next block is scored while
    SQLite writes this one (both release the GIL)."""
    done = object()
    stop = threading.Event()
    queue: Queue = Queue(depth)

    def put(item) -> bool:
        while not stop.is_set():
            try:
                queue.put(item, timeout=0.1)
                return True
            except Full:
                pass
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(done)
        except BaseException as exc:  # handed to the consumer, raised there
            put(exc)

    worker = threading.Thread(target=produce, daemon=True, name="clipsearch-tag")
    worker.start()
    try:
        while (item := queue.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()  # the consumer failed or stopped early: let the producer end
        worker.join()


def image_tags(store: Store, folders: Sequence[str] = ()) -> list[ImageTag]:
    """Every tag that counts (manual removals applied), by path then label."""
    return [ImageTag(image_id, t.path, t.label, round(float(t.score), 6), t.source, t.label_set,
                     _iso(t.created_at))
            for image_id, tags in store.tags_of(folders=folders).items() for t in tags]


def to_csv(tags: Sequence[ImageTag]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["id", "path", "label", "score", "source", "label_set", "created_at"])
    for t in tags:
        writer.writerow([t.id, t.path, t.label, t.score, t.source, t.label_set, t.created_at])
    return out.getvalue()


def to_json(tags: Sequence[ImageTag]) -> str:
    return json.dumps([t.to_dict() for t in tags], indent=2, ensure_ascii=False)


def _iso(when: datetime) -> str:
    return when.isoformat(timespec="seconds") if when else ""
