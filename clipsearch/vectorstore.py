"""The exact vectors: an append-only, memory-mapped float16 file beside the database.

One file per generation ``G``, ``vectors.G.f16``, holds one row of ``dim`` float16
values per vector. Rows are only ever appended; the database says which row belongs to
each image (``images.row``), so a replaced or deleted image simply leaves a dead row.
``Store.compact`` writes the live rows to generation ``G + 1`` and retires the old files.

Why a flat file and not SQLite blobs: any index, exact or compressed, can be rebuilt
from it without re-encoding a single image, and it is read with ``np.memmap`` at disk
speed, a 10M-image library being 10 GB at 512 dimensions. float16 keeps cosine scores
to about 1e-3, far finer than any difference a search or a tag depends on.

Crash safety: rows are written and fsynced before the transaction that points at them
commits. A crash in between leaves unreferenced rows (dead, dropped by the next
compaction); a torn last row is cut off on the next write.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

_DTYPE = np.float16
_CHUNK = 65536  # rows per read when streaming the whole file


class VectorFile:
    """The rows of one generation; reads see every row appended before the call."""

    def __init__(self, folder: Path, generation: int, dim: int):
        self.folder = Path(folder)
        self.generation = generation
        self.dim = dim
        self.path = self.folder / f"vectors.{generation}.f16"
        self._row_bytes = dim * np.dtype(_DTYPE).itemsize
        self._map: np.memmap | None = None

    def __len__(self) -> int:
        """Whole rows in the file (a crash may have torn the last one)."""
        try:
            return self.path.stat().st_size // self._row_bytes
        except FileNotFoundError:
            return 0

    @property
    def nbytes(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0

    def append(self, x: np.ndarray) -> np.ndarray:
        """Write rows durably; returns their row numbers."""
        x = np.ascontiguousarray(x, _DTYPE).reshape(-1, self.dim)
        start = len(self)
        with open(self.path, "ab") as f:
            f.truncate(start * self._row_bytes)  # a torn tail: row numbers stay file positions
            f.write(x.tobytes())
            f.flush()
            os.fsync(f.fileno())
        return np.arange(start, start + len(x), dtype=np.int64)

    def matrix(self) -> np.ndarray:
        """All rows, memory-mapped as float16 ``(n, dim)``; remapped when the file has grown."""
        n = len(self)
        if self._map is None or len(self._map) != n:
            self._map = (np.memmap(self.path, _DTYPE, "r", shape=(n, self.dim)) if n
                         else np.empty((0, self.dim), _DTYPE))
        return self._map

    def rows(self, rows) -> np.ndarray:
        """The unit vectors at these rows, as float32 ``(len(rows), dim)``."""
        rows = np.asarray(rows, np.int64).reshape(-1)
        return _unit(self.matrix()[rows])

    def chunks(self, start: int = 0, stop: int | None = None):
        """``(first_row, float32 unit vectors)`` over rows ``[start, stop)``, a block at a time."""
        m = self.matrix()
        stop = len(m) if stop is None else stop
        for i in range(start, stop, _CHUNK):
            yield i, _unit(m[i:min(i + _CHUNK, stop)])

    def copy_rows(self, target: "VectorFile", rows: np.ndarray) -> None:
        """Append the given rows (in order) to ``target``: compaction."""
        for i in range(0, len(rows), _CHUNK):
            target.append(self.matrix()[rows[i:i + _CHUNK]])

    def delete(self) -> None:
        self._map = None  # readers holding a map keep reading the unlinked file
        self.path.unlink(missing_ok=True)


def _unit(block: np.ndarray) -> np.ndarray:
    # Rounding to float16 moves a unit vector's norm by up to ~1e-4; re-normalising keeps a
    # vector's similarity to itself at 1.0, not 1.0001.
    x = np.asarray(block, np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1)
