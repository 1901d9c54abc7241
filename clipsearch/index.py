"""The vector index: a FAISS index over the rows of the vector file, chosen by size.

FAISS holds vectors under their row number in the vector file (``vectorstore.py``):
internal id ``r`` is row ``r``. The database maps rows to image ids, and a row whose
image was deleted or replaced is *dead*. Dead rows stay in the FAISS index and are
masked out at query time (an ``IDSelectorBitmap``): one deletion scheme that works for
every index type, including HNSW, which cannot remove vectors. ``optimize`` compacts
the vector file and rebuilds, which drops them for good.

Which index (see :func:`choose_index`) follows autofaiss's reasoning, tuned to what
builds in reasonable time on a laptop:

- ``Flat``: exact, while a query's full scan is still a few milliseconds;
- ``HNSW32``, then ``HNSW32,SQfp16`` under a tighter memory budget: graph search;
- ``OPQ,IVF_HNSW,PQ``: compressed codes past a few million vectors, or when nothing
  else fits the budget. Candidates are re-scored with the exact float16 vectors, so a
  returned score is always the true cosine similarity and PQ error only costs recall.

``nprobe``/``efSearch`` are tuned by :meth:`VectorIndex.tune` against exact search for
a recall target, and saved inside the FAISS file.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import faiss
import numpy as np

from .errors import ArgumentError, ConfigurationError
from .files import write_atomic
from .vectorstore import VectorFile

GIB = 1024 ** 3
DEFAULT_MEMORY_BUDGET = 2 * GIB
DEFAULT_TARGET_RECALL = 0.95
# Exact search reads every vector for every query: measured at ~20 ms a query for
# 100k x 512 floats on two cores (bench_search.py), memory-bound. Up to 50k (~10 ms) it
# needs no build and no tuning; past that a graph answers in about a millisecond.
FLAT_MAX = 50_000
# HNSW builds at ~10k vectors/s on two cores and keeps full vectors in memory; past
# this, IVF-PQ is built in minutes instead of hours.
HNSW_MAX = 4_000_000
# A filter that leaves at most this many images is searched exactly over just those
# vectors: faster than a graph walk that skips nearly every node, and never misses.
EXACT_SUBSET_MAX = 50_000
HNSW_EF_CONSTRUCTION = 80
_QUERY_COSINE = 0.9  # of tuning queries to the library vectors they are made from
RERANK = 10  # PQ candidates fetched per wanted hit, re-scored exactly
_HNSW_LINK_BYTES = 32 * 2 * 4 + 40  # level-0 links of HNSW32, plus upper levels and bookkeeping
_PQ_MIN_TRAIN = 10_000  # PQ needs 39 x 256 training vectors per sub-quantizer
_TIERS = ("Flat", "HNSW32", "HNSW32,SQfp16", "IVF")
# Rows per shard when building on-disk lists: a shard's codes are held in memory until
# written (72 MB at 64-byte codes), and shards fill in parallel.
ON_DISK_SHARD_ROWS = 1_000_000
_NO_FILTER = faiss.IDSelectorAll()


@dataclass(frozen=True)
class IndexPlan:
    """An index type for a library: the FAISS factory string and why it was chosen."""

    factory: str
    memory_bytes: int  # estimated size of the index in memory
    reason: str

    @property
    def tier(self) -> int:
        """Flat 0, HNSW 1, compact HNSW 2, IVF 3: a bigger library never moves down."""
        return next(i for i, t in reversed(list(enumerate(_TIERS))) if t in self.factory)

    @property
    def nlist(self) -> int:
        found = re.search(r"IVF(\d+)", self.factory)
        return int(found.group(1)) if found else 0


def choose_index(n: int, dim: int, memory_budget: int = DEFAULT_MEMORY_BUDGET) -> IndexPlan:
    """The index for ``n`` vectors of ``dim`` dimensions within ``memory_budget`` bytes."""
    flat = n * dim * 4
    if n <= FLAT_MAX and flat <= memory_budget:
        return IndexPlan("Flat", flat, f"exact search: up to {FLAT_MAX:,} vectors scan in ~10 ms")
    if n <= HNSW_MAX or n < _PQ_MIN_TRAIN:
        for factory, per_vector in (("HNSW32", dim * 4), ("HNSW32,SQfp16", dim * 2)):
            size = n * (per_vector + _HNSW_LINK_BYTES)
            if size <= memory_budget:
                return IndexPlan(factory, size, f"chosen for {n:,} vectors: a graph that fits the "
                                                f"{_gib(memory_budget)} budget in {_gib(size)}")
        if n < _PQ_MIN_TRAIN:
            return IndexPlan("HNSW32,SQfp16", size, f"chosen for {n:,} vectors: too few to train compressed "
                                                    f"codes, so the smallest index that needs no training")
    return ivf_plan(n, dim, memory_budget)


def ivf_plan(n: int, dim: int, memory_budget: int = DEFAULT_MEMORY_BUDGET, on_disk: bool = False) -> IndexPlan:
    """OPQ + IVF + PQ for ``n`` vectors: the most bytes per vector that fit the budget.
    ``on_disk``: the codes live in a memory-mapped file, so only the quantizer, the
    rotation and the list offsets count against the budget."""
    if on_disk and n < _PQ_MIN_TRAIN:
        raise ConfigurationError(f"an on-disk index needs at least {_PQ_MIN_TRAIN:,} vectors to train, not {n:,}",
                         hint="a library this small searches fast in memory: leave out [[on_disk]]")
    # About 4 sqrt(n) lists (the low end of FAISS's advice, for build time), found through
    # an HNSW graph over the centroids.
    nlist = int(min(65536, max(256, 2 ** math.floor(math.log2(4 * math.sqrt(n))))))
    # On disk the budget does not hold the codes: a byte per 8 dimensions (64 for 512-d),
    # FAISS's usual choice at a billion vectors, whose candidates are re-scored exactly.
    for m in [m for m in (64, 32, 16, 8) if m <= max(8, dim // 8)] if on_disk else (256, 128, 64, 32, 16, 8):
        d_out = min(dim, 4 * m)
        if m > dim or d_out % m:
            continue
        resident = nlist * (dim * 4 + _HNSW_LINK_BYTES + 16) + dim * d_out * 4
        size = resident + (0 if on_disk else n * (m + 8))
        if size <= memory_budget:
            # "np": no polysemous training, which FAISS does by default and which takes
            # minutes while buying nothing once candidates are re-scored exactly.
            where = (f"on disk ({_gib(n * (m + 8))} of lists, memory-mapped), {_gib(size)} resident" if on_disk
                     else f"{m} bytes each fit the {_gib(memory_budget)} budget")
            return IndexPlan(f"OPQ{m}_{d_out},IVF{nlist}_HNSW32,PQ{m}x8np", size, f"chosen for {n:,} vectors: {where}")
    raise ConfigurationError(f"no index for {n:,} vectors fits in {_gib(memory_budget)}",
                     hint="give a larger [[memory_budget]], or keep the index on disk ([[on_disk]])")


def _gib(n: int) -> str:
    return f"{n / GIB:.2f} GB"


def parse_size(text: str) -> int:
    """``"2GB"``, ``"512MB"``, ``"1.5G"`` or a number of bytes."""
    units = {"": 1, "B": 1, "K": 2 ** 10, "KB": 2 ** 10, "M": 2 ** 20, "MB": 2 ** 20, "G": GIB, "GB": GIB,
             "T": 2 ** 40, "TB": 2 ** 40}
    t = text.strip().upper().replace("IB", "B")
    number = t.rstrip("KMGTB")
    try:
        value = float(number) * units[t[len(number):]]
    except (ValueError, KeyError):
        raise ArgumentError(f"not a size: {text!r}", hint="for example 2GB or 512MB") from None
    if value <= 0:
        raise ArgumentError(f"a memory budget must be positive, not {text!r}")
    return int(value)


@dataclass
class IndexFacts:
    """What was built and measured, kept beside the index file for ``info``."""

    factory: str
    built_at: str
    reason: str = ""
    recall_at_10: float | None = None  # measured against exact search after tuning
    search_param: str = ""  # "efSearch=64", "nprobe=32", or "" for exact
    memory_budget: int = DEFAULT_MEMORY_BUDGET
    target_recall: float = DEFAULT_TARGET_RECALL
    # On-disk IVF (see VectorIndex.build_on_disk): the stem of its lists
    # (``<stem>.ivfdata``) and of its trained empty index (``<stem>.trained``).
    on_disk: str = ""


def exact_search(vectors: VectorFile, live: np.ndarray | None, xq: np.ndarray, k: int,
                 rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact top ``k`` rows, streaming the vector file: the ground truth.

    ``live`` masks dead rows (None: all are live); ``rows`` restricts the search to those rows.
    """
    xq = np.atleast_2d(np.asarray(xq, np.float32))
    best_d = np.full((len(xq), k), -np.inf, np.float32)
    best_i = np.full((len(xq), k), -1, np.int64)
    if rows is not None:
        blocks = [(rows[i:i + 65536], vectors.rows(rows[i:i + 65536])) for i in range(0, len(rows), 65536)]
    else:
        stop = len(vectors) if live is None else len(live)
        blocks = ((np.arange(start, start + len(block)), block) for start, block in vectors.chunks(0, stop))
    for ids, block in blocks:
        scores = xq @ block.T
        if live is not None:
            scores[:, ~live[ids]] = -np.inf
        cand = np.broadcast_to(ids, scores.shape)
        if scores.shape[1] > k:  # the block's own top k first: sorting whole blocks is slow
            part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
            scores, cand = np.take_along_axis(scores, part, 1), np.take_along_axis(cand, part, 1)
        d = np.concatenate([best_d, scores], axis=1)
        i = np.concatenate([best_i, cand], axis=1)
        top = np.argsort(-d, axis=1, kind="stable")[:, :k]
        best_d, best_i = np.take_along_axis(d, top, 1), np.take_along_axis(i, top, 1)
    best_i[~np.isfinite(best_d)] = -1
    return best_d, best_i


def _search_params(index: faiss.Index, sel) -> faiss.SearchParameters:
    """Search parameters carrying ``sel`` that keep the index's own tuned settings."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexPreTransform):
        return faiss.SearchParametersPreTransform(index_params=_search_params(index.index, sel))
    if isinstance(index, faiss.IndexIVF):
        return faiss.SearchParametersIVF(sel=sel, nprobe=index.nprobe)
    if isinstance(index, faiss.IndexHNSW):
        return faiss.SearchParametersHNSW(sel=sel, efSearch=index.hnsw.efSearch)
    return faiss.SearchParameters(sel=sel)


class SharedLock:
    """Any number of readers at once, or one writer; both re-entrant within a thread.

    A waiting writer holds off new readers (not those re-entering), so that a stream of
    searches cannot starve the catch-up after another process indexed.
    """

    def __init__(self):
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer: int | None = None
        self._writes = 0  # the writer's depth
        self._waiting = 0  # writers waiting
        self._mine = threading.local()  # this thread's read depth

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        me, depth = threading.get_ident(), getattr(self._mine, "depth", 0)
        if depth or self._writer == me:  # already inside: never wait on ourselves
            self._mine.depth = depth + 1
            try:
                yield
            finally:
                self._mine.depth = depth
            return
        with self._cond:
            while self._writer is not None or self._waiting:
                self._cond.wait()
            self._readers += 1
        self._mine.depth = 1
        try:
            yield
        finally:
            self._mine.depth = 0
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        me = threading.get_ident()
        with self._cond:
            if self._writer != me:
                if getattr(self._mine, "depth", 0):
                    raise RuntimeError("a reader cannot become a writer: it would wait for itself")
                self._waiting += 1
                try:
                    while self._writer is not None or self._readers:
                        self._cond.wait()
                finally:
                    self._waiting -= 1
                self._writer = me
            self._writes += 1
        try:
            yield
        finally:
            with self._cond:
                self._writes -= 1
                if not self._writes:
                    self._writer = None
                    self._cond.notify_all()


class VectorIndex:
    """Nearest-neighbour search over the live rows of a vector file, answering image ids.

    Safe to share between threads: any number of searches run at once (FAISS's CPU
    indexes answer concurrent searches of one index, and the id maps are only read), while
    adding rows and changing whose they are wait for the searches in flight and hold off
    new ones (:class:`SharedLock`): neither FAISS's ``add`` nor the maps may change
    under a search.
    """

    def __init__(self, index: faiss.Index, vectors: VectorFile, facts: IndexFacts,
                 delta: faiss.Index | None = None, mapped: bool = False):
        self.lock = SharedLock()
        self._index = index
        # Loaded with its vectors mapped from the file (see _read_mapped): copied into
        # memory before the first add, which FAISS cannot do to mapped vectors.
        self._mapped = mapped
        # An on-disk index's lists are never written after they are built (other processes
        # map them): rows appended since go into ``_delta``, an in-memory index of the same
        # trained kind, searched alongside. A rebuild folds them in.
        self._delta = delta
        self.file = vectors
        self.facts = facts
        self.dim = index.d
        self._labels = np.full(index.ntotal, -1, np.int64)  # row -> image id; -1: dead
        self._row_of = np.full(0, -1, np.int64)  # image id -> row; -1: none
        self._live_bits: np.ndarray | None = None  # cached selector bitmap
        self.catch_up()

    # -- keeping up with the vector file and the database ------------------------------

    @property
    def factory(self) -> str:
        return self.facts.factory

    @property
    def exact(self) -> bool:
        return self.factory == "Flat"

    @property
    def ntotal(self) -> int:
        """Live vectors."""
        return int((self._labels >= 0).sum())

    def __len__(self) -> int:
        return self.ntotal

    @property
    def dead(self) -> int:
        return self._rows_indexed - self.ntotal

    @property
    def on_disk(self) -> bool:
        return bool(self.facts.on_disk)

    @property
    def delta_rows(self) -> int:
        """Rows an on-disk index holds in memory, added since its lists were written."""
        return int(self._delta.ntotal) if self._delta is not None else 0

    @property
    def _rows_indexed(self) -> int:
        return int(self._index.ntotal) + self.delta_rows

    def catch_up(self) -> None:
        """Add rows appended to the vector file since the index last saw it (as dead, until
        :meth:`assign` says whose they are)."""
        with self.lock.writing():
            self._catch_up()

    def _catch_up(self) -> None:
        for start, block in self.file.chunks(self._rows_indexed):
            if self._delta is not None:
                self._delta.add_with_ids(block, np.arange(start, start + len(block), dtype=np.int64))
            else:
                self._own()
                self._index.add(block)
        if self._rows_indexed > len(self._labels):
            self._labels = np.concatenate([self._labels, np.full(self._rows_indexed - len(self._labels), -1)])
            self._live_bits = None

    def _own(self) -> None:
        """Make a mapped index's vectors its own, in memory: FAISS aborts the process on an
        add to mapped ones. A copy of what is mapped, not a new read of the file, which
        another process may have replaced since."""
        if self._mapped:
            writer = faiss.VectorIOWriter()
            faiss.write_index(self._index, writer)
            reader = faiss.VectorIOReader()
            reader.data.swap(writer.data)
            self._index = faiss.read_index(reader)
            self._mapped = False

    def assign(self, ids, rows) -> None:
        """Image ``ids[i]`` now lives at ``rows[i]``; its previous row, if any, dies."""
        ids, rows = np.asarray(ids, np.int64).reshape(-1), np.asarray(rows, np.int64).reshape(-1)
        if not len(ids):
            return
        with self.lock.writing():
            self._catch_up()
            self.remove(ids)
            if ids.max() >= len(self._row_of):
                grown = np.full(max(int(ids.max()) + 1, 2 * len(self._row_of)), -1, np.int64)
                grown[:len(self._row_of)] = self._row_of
                self._row_of = grown
            self._row_of[ids] = rows
            self._labels[rows] = ids
            self._live_bits = None

    def remove(self, ids) -> None:
        ids = np.asarray(ids, np.int64).reshape(-1)
        with self.lock.writing():
            ids = ids[ids < len(self._row_of)]
            rows = self._row_of[ids]
            rows = rows[rows >= 0]
            if len(rows):
                self._labels[rows] = -1
                self._row_of[ids] = -1
                self._live_bits = None

    def ids(self) -> np.ndarray:
        return np.flatnonzero(self._row_of >= 0).astype(np.int64)

    def live_mask(self) -> np.ndarray:
        return self._labels >= 0

    # -- searching --------------------------------------------------------------------

    def search(self, xq: np.ndarray, k: int, subset=None) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest images as ``(D, I)``, ids ``-1`` past the end; with ``subset``,
        only among those image ids, exactly when the subset is small."""
        if k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        xq = _as_matrix(xq, self.dim)
        with self.lock.reading():
            return self._search(xq, k, subset)

    def _search(self, xq: np.ndarray, k: int, subset) -> tuple[np.ndarray, np.ndarray]:
        if subset is not None:
            subset = np.asarray(subset, np.int64).reshape(-1)
            subset = subset[(subset >= 0) & (subset < len(self._row_of))]
            rows = self._row_of[subset]
            rows = np.unique(rows[rows >= 0])  # live rows only: no mask needed below
            if not self.exact and len(rows) <= EXACT_SUBSET_MAX:
                D, R = exact_search(self.file, None, xq, k, rows)
                return D, self._to_ids(R)
            sel = faiss.IDSelectorBatch(rows) if len(rows) else None
            if sel is None:
                return np.full((len(xq), k), -np.inf, np.float32), np.full((len(xq), k), -1, np.int64)
        else:
            sel = self._live_selector()
        fetch = k * RERANK if "PQ" in self.factory else k
        D, R = self._index.search(xq, fetch, params=_search_params(self._index, sel) if sel is not None else None)
        if self.delta_rows:  # on disk: the rows added since, re-scored with the others below
            _, R_delta = self._delta.search(xq, fetch, params=_search_params(self._delta, sel or _NO_FILTER))
            R = np.concatenate([R, R_delta], axis=1)
        if fetch != k:
            D, R = self._rescore(xq, R, k)
        if subset is not None and not self.exact and ((R >= 0).sum(axis=1) < min(k, len(rows))).any():
            # A graph or list walk that skips most vectors can run dry before it finds k
            # allowed ones; the subset is then searched exactly rather than come up short.
            D, R = exact_search(self.file, None, xq, k, rows)
        return D, self._to_ids(R)

    def _live_selector(self):
        if not self.dead:
            return None
        bits = self._live_bits
        if bits is None:
            bits = self._live_bits = np.packbits(self.live_mask(), bitorder="little")
        selector = faiss.IDSelectorBitmap(len(self._labels), faiss.swig_ptr(bits))
        # FAISS reads the bits through a bare pointer: the selector keeps them alive, even
        # if a concurrent search replaces the cached array.
        selector.bits = bits
        return selector

    def _rescore(self, xq: np.ndarray, R: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact scores for approximate candidates, from the float16 vectors."""
        D_out = np.full((len(xq), k), -np.inf, np.float32)
        R_out = np.full((len(xq), k), -1, np.int64)
        for q, (x, rows) in enumerate(zip(xq, R)):
            rows = rows[rows >= 0]
            if not len(rows):
                continue
            scores = self.file.rows(rows) @ x
            top = np.argsort(-scores, kind="stable")[:k]
            D_out[q, :len(top)], R_out[q, :len(top)] = scores[top], rows[top]
        return D_out, R_out

    def _to_ids(self, R: np.ndarray) -> np.ndarray:
        if not len(self._labels):
            return np.full_like(R, -1)
        return np.where(R >= 0, self._labels[np.maximum(R, 0)], -1)

    def range(self, xq: np.ndarray, min_score: float, subset=None) -> tuple[np.ndarray, np.ndarray]:
        """Every image scoring at least ``min_score`` for one query vector, best first."""
        xq = _as_matrix(xq, self.dim)[:1]
        k = 256
        while True:
            D, I = (a[0] for a in self.search(xq, k, subset))
            keep = (I >= 0) & (D >= min_score)
            if keep.sum() < k or k >= self.ntotal:
                return D[keep], I[keep]
            k *= 4

    def top(self, xq: np.ndarray, need: int, subset=None) -> tuple[np.ndarray, np.ndarray]:
        """For one query vector, at least the ``need`` best hits, plus every hit tied with the
        last of them. FAISS cuts a group of equal scores (exact duplicates share one vector)
        arbitrarily; fetching past the group lets the caller order it deterministically."""
        xq = _as_matrix(xq, self.dim)[:1]
        n = need + 1
        while True:
            D, I = (a[0] for a in self.search(xq, n, subset))
            found = int((I >= 0).sum())
            if found < n or D[n - 1] < D[need - 1]:
                return D, I
            n *= 2

    # -- tuning -----------------------------------------------------------------------

    def tune(self, target_recall: float = DEFAULT_TARGET_RECALL, queries: int = 200, k: int = 10,
             seed: int = 0) -> float:
        """Raise ``efSearch`` or ``nprobe`` until recall@k against exact search reaches the
        target; returns the recall reached.

        The queries are live vectors moved to a cosine of 0.9 from where they were, in a
        random direction. Unlike the vectors themselves (leave-one-out), whose graph node
        links straight to their neighbours, this slightly underestimates the recall of
        queries the index has never seen: measured on 200k clustered vectors, 0.871 and
        0.921 where held-out queries reached 0.896 and 0.934, and leave-one-out claimed
        0.939 and 0.949.
        """
        live_rows = np.flatnonzero(self.live_mask())
        if self.exact or len(live_rows) <= k:
            self.facts.recall_at_10, self.facts.search_param = 1.0, ""
            return 1.0
        rng = np.random.default_rng(seed)
        xq = self.file.rows(np.sort(rng.choice(live_rows, min(queries, len(live_rows)), replace=False)))
        away = rng.standard_normal(xq.shape).astype(np.float32)
        away -= (away * xq).sum(axis=1, keepdims=True) * xq  # orthogonal to the vector
        away /= np.linalg.norm(away, axis=1, keepdims=True)
        xq = xq * _QUERY_COSINE + away * math.sqrt(1 - _QUERY_COSINE ** 2)
        _, truth = exact_search(self.file, self.live_mask(), xq, k)
        ivf = faiss.try_extract_index_ivf(self._index)
        name, ladder = ("efSearch", (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)) if ivf is None \
            else ("nprobe", tuple(p for p in (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
                                  if p <= ivf.nlist))
        recall = 0.0
        for value in ladder:
            self._set(name, value)
            if ivf is not None and isinstance(faiss.downcast_index(ivf.quantizer), faiss.IndexHNSW):
                self._set("quantizer_efSearch", max(64, 2 * value))
            _, got = self.search(xq, k)
            recall = recall_at(truth, self._to_rows(got))
            self.facts.search_param = f"{name}={value}"
            if recall >= target_recall:
                break
        self.facts.recall_at_10, self.facts.target_recall = round(recall, 4), target_recall
        return recall

    def _set(self, name: str, value: int) -> None:
        for index in (self._index, self._delta):
            if index is not None:
                faiss.ParameterSpace().set_index_parameter(index, name, value)

    def _to_rows(self, ids: np.ndarray) -> np.ndarray:
        return np.where(ids >= 0, self._row_of[np.maximum(ids, 0)], -1)

    # -- building and persistence -----------------------------------------------------

    @classmethod
    def build(cls, plan: IndexPlan, vectors: VectorFile, ids: np.ndarray, rows: np.ndarray,
              memory_budget: int = DEFAULT_MEMORY_BUDGET, seed: int = 0) -> "VectorIndex":
        """A new index of the plan's type over every row of ``vectors``; ``ids``/``rows`` are
        the live ones. Trains on a sample of live rows when the type needs training."""
        built = cls(_trained(plan, vectors, rows, seed), vectors,
                    IndexFacts(plan.factory, _now(), plan.reason, memory_budget=memory_budget))
        built.assign(ids, rows)
        return built

    @classmethod
    def build_on_disk(cls, plan: IndexPlan, vectors: VectorFile, ids: np.ndarray, rows: np.ndarray, stem: Path,
                      memory_budget: int = DEFAULT_MEMORY_BUDGET, seed: int = 0,
                      shard_rows: int = ON_DISK_SHARD_ROWS) -> "VectorIndex":
        """An IVF index whose inverted lists live in ``<stem>.ivfdata``, memory-mapped, so
        that a library can serve an index far larger than its RAM. FAISS's recipe: train
        once on a sample, fill shards of rows in parallel (each a copy of the trained empty
        index), then merge the shards' lists into one on-disk file."""
        from concurrent.futures import ThreadPoolExecutor

        from faiss.contrib.ondisk import merge_ondisk

        if not plan.nlist:
            raise ValueError(f"{plan.factory} is not an IVF index")
        trained = _trained(plan, vectors, rows, seed)
        faiss.write_index(trained, f"{stem}.trained")
        delta = faiss.clone_index(trained)  # empty, for rows added later (merging fills ``trained``)
        n = len(vectors)
        with tempfile.TemporaryDirectory(prefix=".shards.", dir=stem.parent) as work:
            def fill(start: int) -> str:
                shard = faiss.clone_index(trained)
                for first, block in vectors.chunks(start, min(start + shard_rows, n)):
                    shard.add_with_ids(block, np.arange(first, first + len(block), dtype=np.int64))
                path = f"{work}/{start}.faiss"
                faiss.write_index(shard, path)
                return path

            with ThreadPoolExecutor(min(os.cpu_count() or 1, max(1, -(-n // shard_rows)))) as pool:
                shards = list(pool.map(fill, range(0, n, shard_rows)))
            with _c_stdout_silenced():  # FAISS reports its steps on the C stdout: keep ours clean
                merge_ondisk(trained, shards, f"{stem}.ivfdata")
        facts = IndexFacts(plan.factory, _now(), plan.reason, memory_budget=memory_budget, on_disk=stem.name)
        built = cls(trained, vectors, facts, delta=delta)
        built.assign(ids, rows)
        return built

    def save(self, path: Path) -> None:
        """Write the FAISS file and its facts, each atomically. An on-disk index's file holds
        its quantizer and list offsets, and names its lists file; the delta is not saved:
        loading adds those rows again from the vector file."""
        path = Path(path)
        write_atomic(path, faiss.serialize_index(self._index).tobytes())
        write_atomic(path.with_suffix(".json"), json.dumps(asdict(self.facts), indent=1).encode())

    def save_ids(self, path: Path, stamp: tuple[int, int]) -> None:
        """Write which image each row holds, as of ``stamp`` (the vector version and
        generation, ``Store.vector_state``), beside the index saved at ``path``."""
        with self.lock.reading():
            data = np.asarray(stamp, np.int64).tobytes() + self._labels.astype("<i8").tobytes()
        write_atomic(Path(path).with_suffix(".ids"), data)

    @staticmethod
    def saved_ids(path: Path, stamp: tuple[int, int]) -> tuple[np.ndarray, np.ndarray] | None:
        """``(ids, rows)`` as :meth:`save_ids` wrote them beside ``path``, if at ``stamp``:
        the database has changed no vector since, so they are what it would answer. A cold
        query reads them, not every image's row from the database (0.035 s for 100k)."""
        try:
            raw = np.fromfile(Path(path).with_suffix(".ids"), "<i8")
        except (OSError, ValueError):
            return None
        if len(raw) < 2 or (int(raw[0]), int(raw[1])) != tuple(stamp):
            return None
        labels = raw[2:].astype(np.int64)
        rows = np.flatnonzero(labels >= 0)
        return labels[rows], rows

    @classmethod
    def load(cls, path: Path, vectors: VectorFile, ids: np.ndarray, rows: np.ndarray) -> "VectorIndex":
        """Load a saved index; rows appended since it was saved are added now."""
        path = Path(path)
        try:
            facts = IndexFacts(**json.loads(path.with_suffix(".json").read_text()))
        except (OSError, ValueError, TypeError):
            facts = None
        delta, mapped = None, False
        if facts is not None and facts.on_disk:
            # The lists file is found beside the index file, wherever the library now is,
            # and mapped read-only: this process never writes it.
            with _c_stdout_silenced():
                index = faiss.read_index(str(path), faiss.IO_FLAG_ONDISK_SAME_DIR | faiss.IO_FLAG_READ_ONLY)
            delta = faiss.read_index(str(path.parent / f"{facts.on_disk}.trained"))
        else:
            index, mapped = _read_mapped(path)
        if index.d != vectors.dim or index.ntotal > len(vectors):
            raise ValueError(f"{path} does not belong to {vectors.path}")
        loaded = cls(index, vectors, facts or IndexFacts(_factory_of(index), _now()), delta=delta,
                     mapped=mapped)
        if delta is not None:  # the search settings tuned for the lists, for the delta too
            ivf = faiss.extract_index_ivf(index)
            loaded._set("nprobe", ivf.nprobe)
            quantizer = faiss.downcast_index(ivf.quantizer)
            if isinstance(quantizer, faiss.IndexHNSW):
                loaded._set("quantizer_efSearch", quantizer.hnsw.efSearch)
        loaded.assign(ids, rows)
        return loaded


def _read_mapped(path: Path) -> tuple[faiss.Index, bool]:
    """The index saved in ``path``, its vectors mapped from the file rather than read into
    memory: a search touches only the pages it visits, and processes share them. For a
    100k-image HNSW that is 4 ms instead of 0.18 s of a cold query. Where FAISS cannot map
    files, the file is read. Also says whether it is mapped."""
    try:
        return faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC), True
    except RuntimeError:
        return faiss.read_index(str(path)), False  # straight from the file: half the time of a copy via numpy


def _trained(plan: IndexPlan, vectors: VectorFile, rows: np.ndarray, seed: int) -> faiss.Index:
    """An empty index of the plan's type, trained on a sample of ``rows`` if it needs it."""
    index = faiss.index_factory(vectors.dim, plan.factory, faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.try_extract_index_ivf(index)
    for graph in (faiss.downcast_index(index), faiss.downcast_index(ivf.quantizer) if ivf else None):
        if isinstance(graph, faiss.IndexHNSW):
            # FAISS's default of 40 leaves clustered data (photos are) poorly linked:
            # measured on 200k clustered 512-d vectors, recall@10 stalls at 0.978 with
            # 40 and reaches 0.999 with 80, for a quarter more build time.
            graph.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    if isinstance(index, faiss.IndexPreTransform):
        for i in range(index.chain.size()):
            opq = faiss.downcast_VectorTransform(index.chain.at(i))
            if isinstance(opq, faiss.OPQMatrix):
                # FAISS's defaults (50 rounds on 65k vectors) take minutes at 512-d on
                # two cores; a few rounds give most of the rotation's gain.
                opq.niter, opq.max_train_points = 8, 32768
    if not index.is_trained:
        size = min(len(rows), max(_PQ_MIN_TRAIN, 30 * plan.nlist), 262_144)
        sample = np.sort(np.random.default_rng(seed).choice(rows, size, replace=False))
        index.train(vectors.rows(sample))
    return index


@contextlib.contextmanager
def _c_stdout_silenced():
    """FAISS's C++ code prints progress on file descriptor 1, under Python's feet: point it
    at /dev/null for the duration, so `--json` output stays JSON."""
    sys.stdout.flush()
    saved, null = os.dup(1), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    try:
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(null)


def recall_at(truth: np.ndarray, got: np.ndarray) -> float:
    """Mean fraction of each row of ``truth`` (ignoring -1) found in the same row of ``got``."""
    hits = total = 0
    for t, g in zip(truth, got):
        t = set(t[t >= 0].tolist())
        hits += len(t & set(g.tolist()))
        total += len(t)
    return hits / total if total else 1.0


def _factory_of(index: faiss.Index) -> str:
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexFlat):
        return "Flat"
    if isinstance(index, faiss.IndexHNSW):
        return "HNSW32,SQfp16" if isinstance(index, faiss.IndexHNSWSQ) else "HNSW32"
    ivf = faiss.try_extract_index_ivf(index)
    return f"IVF{ivf.nlist},PQ" if ivf is not None else "unknown"


def _as_matrix(x: np.ndarray, dim: int) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim == 1:
        x = x.reshape(1, -1)
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"expected vectors of dimension {dim}, got shape {x.shape}")
    return x


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
