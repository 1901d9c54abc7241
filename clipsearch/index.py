"""A FAISS index of L2-normalised vectors under inner product, keyed by database ids.

Speaks FAISS's own shapes: ``search(xq, k) -> (D, I)``, with ``I == -1`` where fewer
than ``k`` vectors exist. Inner product of unit vectors is cosine similarity.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import faiss
import numpy as np


def _as_matrix(x: np.ndarray, dim: int) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim == 1:
        x = x.reshape(1, -1)
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"expected vectors of dimension {dim}, got shape {x.shape}")
    return x


def _as_ids(ids) -> np.ndarray:
    return np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)


class VectorIndex:
    """Exact inner-product search over vectors keyed by int64 ids."""

    def __init__(self, dim: int, index: faiss.Index | None = None):
        if dim <= 0:
            raise ValueError(f"dimension must be positive, got {dim}")
        self.dim = dim
        self._index = index if index is not None else faiss.IndexIDMap2(faiss.IndexFlatIP(dim))

    @property
    def ntotal(self) -> int:
        return int(self._index.ntotal)

    def __len__(self) -> int:
        return self.ntotal

    def ids(self) -> np.ndarray:
        return faiss.vector_to_array(self._index.id_map).astype(np.int64)

    def add(self, ids, x: np.ndarray) -> None:
        """Add vectors; an id already present is replaced, never duplicated."""
        ids = _as_ids(ids)
        x = _as_matrix(x, self.dim)
        if len(ids) != len(x):
            raise ValueError(f"{len(ids)} ids for {len(x)} vectors")
        if len(np.unique(ids)) != len(ids):
            raise ValueError("duplicate ids in one add")
        if not len(ids):
            return
        self.remove(ids)
        self._index.add_with_ids(x, ids)

    def remove(self, ids) -> int:
        ids = _as_ids(ids)
        if not len(ids) or not self.ntotal:
            return 0
        return int(self._index.remove_ids(faiss.IDSelectorBatch(ids)))

    def search(self, xq: np.ndarray, k: int, subset=None) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest ids; with ``subset``, only among those ids (exact, not over-fetched)."""
        if k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        xq = _as_matrix(xq, self.dim)
        if not self.ntotal or (subset is not None and not len(subset)):
            return (np.full((len(xq), k), -np.inf, np.float32), np.full((len(xq), k), -1, np.int64))
        if subset is None:
            return self._index.search(xq, k)
        params = faiss.SearchParameters(sel=faiss.IDSelectorBatch(_as_ids(subset)))
        return self._index.search(xq, k, params=params)

    def range(self, xq: np.ndarray, min_score: float, subset=None) -> tuple[np.ndarray, np.ndarray]:
        """Every id scoring at least ``min_score`` for one query vector, best first: ``(D, I)``."""
        xq = _as_matrix(xq, self.dim)[:1]
        if not self.ntotal or (subset is not None and not len(subset)):
            return np.empty(0, np.float32), np.empty(0, np.int64)
        params = None if subset is None else faiss.SearchParameters(sel=faiss.IDSelectorBatch(_as_ids(subset)))
        # FAISS keeps inner products strictly above the radius; nudge it so min_score counts.
        _, D, I = self._index.range_search(xq, float(np.nextafter(np.float32(min_score), np.float32(-np.inf))),
                                           params=params)
        order = np.argsort(-D, kind="stable")
        return D[order], I[order].astype(np.int64)

    def save(self, path: Path) -> None:
        """Write atomically: a reader sees the old file or the new one, never half of one."""
        path = Path(path)
        data = faiss.serialize_index(self._index)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data.tobytes())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: Path) -> "VectorIndex":
        data = np.fromfile(path, dtype=np.uint8)
        index = faiss.deserialize_index(data)
        return cls(index.d, index)

    @classmethod
    def build(cls, ids: np.ndarray, x: np.ndarray, dim: int) -> "VectorIndex":
        vi = cls(dim)
        if len(ids):
            vi._index.add_with_ids(_as_matrix(x, dim), _as_ids(ids))
        return vi
