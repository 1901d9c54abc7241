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

import json
import math
import os
import re
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import faiss
import numpy as np

from .errors import QueryError
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
    # IVF: about 4 sqrt(n) lists (the low end of FAISS's advice, for build time), found
    # through an HNSW graph over the centroids.
    nlist = int(min(65536, max(256, 2 ** math.floor(math.log2(4 * math.sqrt(n))))))
    for m in (256, 128, 64, 32, 16, 8):
        if dim % m and m < dim:
            continue
        d_out = min(dim, 4 * m)
        size = n * (m + 8) + nlist * (dim * 4 + _HNSW_LINK_BYTES) + dim * d_out * 4
        if size <= memory_budget:
            # "np": no polysemous training, which FAISS does by default and which takes
            # minutes while buying nothing once candidates are re-scored exactly.
            return IndexPlan(f"OPQ{m}_{d_out},IVF{nlist}_HNSW32,PQ{m}x8np", size,
                             f"chosen for {n:,} vectors: {m} bytes each fit the {_gib(memory_budget)} budget")
    raise QueryError(f"no index for {n:,} vectors fits in {_gib(memory_budget)}",
                     hint="give a larger --memory-budget")


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
        raise QueryError(f"not a size: {text!r}", hint="for example 2GB or 512MB") from None
    if value <= 0:
        raise QueryError(f"a memory budget must be positive, not {text!r}")
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


class VectorIndex:
    """Nearest-neighbour search over the live rows of a vector file, answering image ids."""

    def __init__(self, index: faiss.Index, vectors: VectorFile, facts: IndexFacts):
        self._index = index
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
        return int(self._index.ntotal) - self.ntotal

    def catch_up(self) -> None:
        """Add rows appended to the vector file since the index last saw it (as dead, until
        :meth:`assign` says whose they are)."""
        start = int(self._index.ntotal)
        for _, block in self.file.chunks(start):
            self._index.add(block)
        if self._index.ntotal > len(self._labels):
            self._labels = np.concatenate([self._labels, np.full(self._index.ntotal - len(self._labels), -1)])
            self._live_bits = None

    def assign(self, ids, rows) -> None:
        """Image ``ids[i]`` now lives at ``rows[i]``; its previous row, if any, dies."""
        ids, rows = np.asarray(ids, np.int64).reshape(-1), np.asarray(rows, np.int64).reshape(-1)
        if not len(ids):
            return
        self.catch_up()
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
        params = _search_params(self._index, sel) if sel is not None else None
        D, R = self._index.search(xq, fetch, params=params)
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
        if self._live_bits is None:
            self._live_bits = np.packbits(self.live_mask(), bitorder="little")
        return faiss.IDSelectorBitmap(len(self._labels), faiss.swig_ptr(self._live_bits))

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
        space = faiss.ParameterSpace()
        recall = 0.0
        for value in ladder:
            space.set_index_parameter(self._index, name, value)
            if ivf is not None and isinstance(faiss.downcast_index(ivf.quantizer), faiss.IndexHNSW):
                space.set_index_parameter(self._index, "quantizer_efSearch", max(64, 2 * value))
            _, got = self.search(xq, k)
            recall = recall_at(truth, self._to_rows(got))
            self.facts.search_param = f"{name}={value}"
            if recall >= target_recall:
                break
        self.facts.recall_at_10, self.facts.target_recall = round(recall, 4), target_recall
        return recall

    def _to_rows(self, ids: np.ndarray) -> np.ndarray:
        return np.where(ids >= 0, self._row_of[np.maximum(ids, 0)], -1)

    # -- building and persistence -----------------------------------------------------

    @classmethod
    def build(cls, plan: IndexPlan, vectors: VectorFile, ids: np.ndarray, rows: np.ndarray,
              memory_budget: int = DEFAULT_MEMORY_BUDGET, seed: int = 0) -> "VectorIndex":
        """A new index of the plan's type over every row of ``vectors``; ``ids``/``rows`` are
        the live ones. Trains on a sample of live rows when the type needs training."""
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
        facts = IndexFacts(plan.factory, _now(), plan.reason, memory_budget=memory_budget)
        built = cls(index, vectors, facts)
        built.assign(ids, rows)
        return built

    def save(self, path: Path) -> None:
        """Write the FAISS file and its facts, each atomically."""
        path = Path(path)
        _write_atomic(path, faiss.serialize_index(self._index).tobytes())
        _write_atomic(path.with_suffix(".json"), json.dumps(asdict(self.facts), indent=1).encode())

    @classmethod
    def load(cls, path: Path, vectors: VectorFile, ids: np.ndarray, rows: np.ndarray) -> "VectorIndex":
        """Load a saved index; rows appended since it was saved are added now."""
        path = Path(path)
        index = faiss.read_index(str(path))  # straight from the file: half the time of a copy via numpy
        if index.d != vectors.dim or index.ntotal > len(vectors):
            raise ValueError(f"{path} does not belong to {vectors.path}")
        try:
            facts = IndexFacts(**json.loads(path.with_suffix(".json").read_text()))
        except (OSError, ValueError, TypeError):
            facts = IndexFacts(_factory_of(index), _now())
        loaded = cls(index, vectors, facts)
        loaded.assign(ids, rows)
        return loaded


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


def _write_atomic(path: Path, data: bytes) -> None:
    """A reader sees the old file or the new one, never half of one."""
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
