"""Finding duplicates: candidate pairs from the vectors, verdicts from the pixels, groups.

1. candidates: each image's ``neighbours`` nearest in the search index, at cosine >=
   ``threshold``, and with crops down to ``CROP_CANDIDATE``.
2. verdicts: byte copies (the same content hash) and identical vectors are duplicates
   outright. Every other pair is compared pixel by pixel (``pixelcheck.py``): CLIP
   similarity alone groups different pictures (on the demo model distinct pictures of
   one colour and shape reach cosine 0.9995) and misses crops. The pixels come from a
   signature per content hash, kept in ``pixels/`` in the library folder. ``index``
   makes them while it decodes each file for the model; for a file indexed before it
   did, the decode workers make it (in parallel) the first time the file is in a
   doubtful pair. A file deleted or changed since it was indexed is in no pair.
3. groups: the connected components of the duplicate pairs (:func:`connected_groups`).

Only numpy and Pillow: nothing here imports torch.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
from sqlalchemy import func, select

from . import pixelcheck
from .defaults import CROP_CANDIDATE, DUPLICATE_THRESHOLD
from .decodepool import DecodeLimits, DecodePool, Decoded, default_workers
from .files import write_atomic
from .index import VectorIndex
from .results import DuplicateGroup, Progress, SearchHit
from .store import STATUS_INDEXED, Store
from .tables import ImageRow

# Vectors this alike are the same picture to the model's precision (float16 storage).
IDENTICAL = 1 - 1e-6
SIGNATURES = "pixels"  # the folder of the library that keeps them
_BLOCK = 1024  # query rows per k-NN search
_PAIRS = 16_384  # pairs per pixel comparison, between progress reports
_MERGE_AT = 8  # signature files before they are merged into one
log = logging.getLogger(__name__)


def find_groups(store: Store, index: VectorIndex, folder: Path, threshold: float = DUPLICATE_THRESHOLD,
                neighbours: int = 16, crops: bool = True, progress: Progress | None = None,
                workers: int | None = None) -> list[list[tuple[float, int]]]:
    """Groups of duplicates among the indexed images, each as ``(best score, id)`` per member.

    ``folder`` is the library's: signatures are kept in its ``pixels/``. ``progress`` is
    called as ``progress(stage, done, total)`` for "finding neighbours", "reading pixels"
    (files not seen before) and "comparing pixels"."""
    floor = min(threshold, CROP_CANDIDATE) if crops else threshold
    ids, rows, _ = store.live()
    a, b, score = candidate_pairs(index, ids, rows, neighbours, floor, progress)
    # Byte copies are duplicates whether or not the index found them (an approximate one
    # misses a few among many identical vectors); they share one vector, so cosine 1.
    ca, cb = _copies(store)
    # A file deleted or changed since it was indexed is in no pair: its vector and its kept
    # signature show what it was, and a user who just deleted one of two copies must not
    # be shown it again. Only the files of candidate pairs are looked at.
    files = _unchanged_files(store, np.unique(np.concatenate([a, b, ca, cb])))
    here = np.array(sorted(files), np.int64)
    a, b, score = (x[np.isin(a, here) & np.isin(b, here)] for x in (a, b, score))
    ca, cb = (x[np.isin(ca, here) & np.isin(cb, here)] for x in (ca, cb))
    keep = verify(store, folder / SIGNATURES, files, a, b, score, crops, progress, workers)
    a, b = np.concatenate([a[keep], ca]), np.concatenate([b[keep], cb])
    score = np.concatenate([score[keep], np.ones(len(ca), np.float32)])
    best: dict[int, float] = {}
    for x, y, s in zip(a.tolist(), b.tolist(), score.tolist()):
        best[x], best[y] = max(best.get(x, -1.0), s), max(best.get(y, -1.0), s)
    return [[(best[i], i) for i in group] for group in connected_groups(zip(a.tolist(), b.tolist()))]


def candidate_pairs(index: VectorIndex, ids: np.ndarray, rows: np.ndarray, neighbours: int, floor: float,
                    progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs ``(a, b, cosine)`` with ``a < b``, each once, of images among each other's
    ``neighbours`` nearest at cosine >= ``floor``."""
    k = min(neighbours + 1, len(ids))  # the image itself comes back too
    found_a, found_b, found_s = [], [], []
    for start in range(0, len(ids), _BLOCK):
        if progress:
            progress("finding neighbours", start, len(ids))
        query = ids[start:start + _BLOCK]
        D, I = index.search(index.file.rows(rows[start:start + _BLOCK]), k)
        mine = np.repeat(query, k).reshape(len(query), k)
        ok = (I >= 0) & (I != mine) & (D >= floor)
        found_a.append(np.minimum(mine, I)[ok])
        found_b.append(np.maximum(mine, I)[ok])
        found_s.append(D[ok])
    if progress:
        progress("finding neighbours", len(ids), len(ids))
    if not found_a:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
    a, b, s = np.concatenate(found_a), np.concatenate(found_b), np.concatenate(found_s).astype(np.float32)
    # Each pair once (both ends usually find it), with its best score.
    order = np.lexsort((-s, b, a))
    a, b, s = a[order], b[order], s[order]
    first = np.ones(len(a), bool)
    first[1:] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])
    return a[first], b[first], s[first]


def verify(store: Store, folder: Path, files: dict[int, tuple[str, str | None]], a: np.ndarray, b: np.ndarray,
           score: np.ndarray, crops: bool = True, progress: Progress | None = None,
           workers: int | None = None) -> np.ndarray:
    """Which of the pairs ``(a[i], b[i])`` show the same picture: a mask. ``files`` gives
    ``id -> (path, content hash)``. Byte copies and identical vectors do without pixels;
    otherwise a file without a kept signature that cannot be read now is in no pair."""
    ids = np.unique(np.concatenate([a, b]))
    # Each id's content as a number (-1: none recorded), to compare pairs in one go.
    codes: dict[str, int] = {}
    content = np.array([codes.setdefault(files[i][1], len(codes)) if files.get(i, ("", None))[1] else -1
                        for i in ids.tolist()], np.int64)
    ca, cb = content[np.searchsorted(ids, a)], content[np.searchsorted(ids, b)]
    keep = (score >= IDENTICAL) | ((ca == cb) & (ca >= 0))
    doubtful = np.flatnonzero(~keep)
    if not len(doubtful):
        return keep
    needed = np.unique(np.concatenate([a[doubtful], b[doubtful]]))
    signatures = SignatureStore(folder)
    table, row_of = signatures.signatures({i: files[i] for i in needed.tolist() if i in files}, progress, workers)
    if signatures.files() >= _MERGE_AT:
        signatures.merge(_live_digests(store))
    row = np.array([row_of.get(i, -1) for i in needed.tolist()], np.int64)
    ra, rb = row[np.searchsorted(needed, a[doubtful])], row[np.searchsorted(needed, b[doubtful])]
    readable = (ra >= 0) & (rb >= 0)
    doubtful, ra, rb = doubtful[readable], ra[readable], rb[readable]
    unpacked = pixelcheck.Signatures(table, np.concatenate([ra, rb]))
    for start in range(0, len(doubtful), _PAIRS):
        if progress:
            progress("comparing pixels", start, len(doubtful))
        stop = start + _PAIRS
        diff = pixelcheck.differences(unpacked, ra[start:stop], rb[start:stop], crops)
        keep[doubtful[start:stop]] = diff <= pixelcheck.MAX_DIFFERENCE
    if progress:
        progress("comparing pixels", len(doubtful), len(doubtful))
    return keep


def connected_groups(pairs: Iterable[tuple[int, int]]) -> list[list[int]]:
    """The connected components of the graph these pairs are the edges of, each sorted,
    largest first (then by first member)."""
    parent: dict[int, int] = {}

    def root(i: int) -> int:
        parent.setdefault(i, i)
        while parent[i] != i:
            parent[i] = parent[parent[i]]  # path halving keeps the trees flat
            i = parent[i]
        return i

    for x, y in pairs:
        rx, ry = root(x), root(y)
        if rx != ry:
            parent[max(rx, ry)] = min(rx, ry)
    members: dict[int, list[int]] = {}
    for i in parent:
        members.setdefault(root(i), []).append(i)
    return sorted((sorted(m) for m in members.values()), key=lambda m: (-len(m), m[0]))


def ranked_groups(found: list[list[tuple[float, int]]],
                  hits: Callable[[list[tuple[float, int]]], list[SearchHit]]) -> list[DuplicateGroup]:
    """:func:`find_groups`' groups of ``(score, id)`` as :class:`DuplicateGroup` s of the
    ``hits`` the library makes of them, best group first and each best image first. An
    image deleted meanwhile is left out, and a group left with one image dropped."""
    flat = [member for group in found for member in group]
    by_id = {h.id: h for start in range(0, len(flat), 10_000) for h in hits(flat[start:start + 10_000])}
    groups = []
    for members in found:
        images = sorted((by_id[i] for _, i in members if i in by_id), key=lambda h: (-h.score, h.path))
        if len(images) > 1:
            groups.append(DuplicateGroup(images[0].score, images))
    groups.sort(key=lambda g: (-g.score, -len(g.images), g.images[0].path))
    return groups


def _copies(store: Store) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of indexed images with the same content, each chained to the next."""
    shared = (select(ImageRow.content_hash)
              .where(ImageRow.status == STATUS_INDEXED, ImageRow.content_hash.is_not(None))
              .group_by(ImageRow.content_hash).having(func.count() > 1))
    stmt = (select(ImageRow.content_hash, ImageRow.id)
            .where(ImageRow.status == STATUS_INDEXED, ImageRow.content_hash.in_(shared))
            .order_by(ImageRow.content_hash, ImageRow.id))
    with store.engine.connect() as conn:
        found = conn.execute(stmt).all()
    pairs = [(x[1], y[1]) for x, y in zip(found, found[1:]) if x[0] == y[0]]
    return np.array([p[0] for p in pairs], np.int64), np.array([p[1] for p in pairs], np.int64)


def _live_digests(store: Store) -> set[bytes]:
    stmt = select(ImageRow.content_hash).where(ImageRow.status == STATUS_INDEXED, ImageRow.content_hash.is_not(None))
    with store.engine.connect() as conn:
        return {bytes.fromhex(h) for (h,) in conn.execute(stmt)}


def _unchanged_files(store: Store, ids: np.ndarray) -> dict[int, tuple[str, str | None]]:
    """``id -> (path, content hash)`` of those indexed images whose file is still there with
    the size and modification time it was indexed with (as ``index`` tells changes),
    read in slices (SQLite caps the number of parameters of a statement)."""
    out = {}
    with store.engine.connect() as conn:
        for start in range(0, len(ids), 10_000):
            chunk = [int(i) for i in ids[start:start + 10_000]]
            stmt = (select(ImageRow.id, ImageRow.path, ImageRow.content_hash, ImageRow.size, ImageRow.mtime_ns)
                    .where(ImageRow.id.in_(chunk)))
            for i, path, content, size, mtime_ns in conn.execute(stmt):
                try:
                    st = os.stat(path)
                except OSError:
                    continue
                if (st.st_size, st.st_mtime_ns) == (size, mtime_ns):
                    out[i] = (path, content)
    return out


class SignatureStore:
    """Pixel signatures by content hash, in files of their own under ``folder``.

    Each run that computes new signatures writes them to a new file, whole or not at all
    (a temporary name, then a rename), so concurrent runs and crashes leave no half-written
    record; a file that does not read back as one of ours is deleted and its signatures
    made again. ``index`` adds the signatures of what it decodes (``Indexer``), so most
    are there before ``duplicates`` first runs. ``merge`` puts the ones still in use into one file (``verify`` calls it
    past ``_MERGE_AT`` files).
    """

    _MAGIC = b"clipsearch pixel signatures 1\n\x00\x00"  # 32 bytes, then the record count (8)

    def __init__(self, folder: Path):
        self.folder = folder
        self.record = 16 + pixelcheck.SIGNATURE_BYTES

    def signatures(self, files: dict[int, tuple[str, str | None]], progress: Progress | None = None,
                   workers: int | None = None) -> tuple[np.ndarray, dict[int, int]]:
        """The signatures of ``files`` (``id -> (path, content hash)``) as rows of an array,
        and ``id -> row``; ids whose file cannot be read now are left out."""
        digests, table, _ = self._load()
        wanted = {i: bytes.fromhex(h) if h else None for i, (_, h) in files.items()}
        row_of = {i: digests[d] for i, d in wanted.items() if d in digests}
        # One file per content not kept yet (copies share a signature); another copy where
        # that one cannot be read.
        todo: dict[bytes | int, list[int]] = {}
        for i in files:
            if i not in row_of:
                todo.setdefault(wanted[i] or -i, []).append(i)
        made: dict[bytes, int] = {}
        new = np.empty((len(todo), pixelcheck.SIGNATURE_BYTES), np.uint8)
        while todo:
            for i, digest, sig in self._compute([(ids[0], files[ids[0]][0]) for ids in todo.values()],
                                                progress, workers):
                if digest in made:  # a changed file now holds content already read
                    continue
                new[len(made)] = sig
                made[digest] = len(table) + len(made)
            todo = {d: ids[1:] for d, ids in todo.items() if d not in made and len(ids) > 1}
        if made:
            try:
                self.add(list(made), new[:len(made)])
            except OSError as exc:  # they serve this run all the same
                log.warning("duplicates: could not keep pixel signatures in %s: %s", self.folder, exc)
            table = np.concatenate([table, new[:len(made)]])
        # A file whose content is not what was indexed has changed since: its vector is stale.
        row_of.update({i: made[d] for i, d in wanted.items() if i not in row_of and d in made})
        return table, row_of

    def files(self) -> int:
        return len(self._segments())

    def nbytes(self) -> int:
        """What they take on disk."""
        total = 0
        for path in self._segments():
            with contextlib.suppress(FileNotFoundError):  # merged away meanwhile
                total += path.stat().st_size
        return total

    def _segments(self) -> list[Path]:
        return sorted(self.folder.glob("*.sig")) if self.folder.is_dir() else []

    def _compute(self, jobs: list[tuple[int, str]], progress: Progress | None, workers: int | None):
        """``(id, digest, signature)`` of each file that can be decoded now."""
        if not jobs:
            return
        workers = max(1, min(workers or default_workers(), len(jobs)))
        paths = dict(jobs)
        if progress:
            progress("reading pixels", 0, len(jobs))
        last = time.monotonic()
        for done, d in enumerate(self._decoded(jobs, workers), 1):
            if d.error is None and d.pixels is not None:
                yield d.key, bytes.fromhex(d.content_hash), pixelcheck.signature(d.pixels, d.width, d.height)
            else:
                log.info("duplicates: skipping %s: %s", paths[d.key], d.error)
            if progress and (time.monotonic() - last > 0.2 or done == len(jobs)):
                progress("reading pixels", done, len(jobs))
                last = time.monotonic()

    @staticmethod
    def _decoded(jobs: list[tuple[int, str]], workers: int) -> Iterator[Decoded]:
        """The decode workers' results: each file under the indexer's time and memory
        limits, in a process that a bad file may hang or crash without harm."""
        yield from DecodePool(workers, lambda: pixelcheck.PIXEL_SPEC, lambda _: False, DecodeLimits(),
                              niceness=0).run(jobs)

    def _load(self) -> tuple[dict[bytes, int], np.ndarray, list[Path]]:
        digests: dict[bytes, int] = {}
        tables = []
        segments = self._segments()
        kept, count = [], 0
        for path in segments:
            records = self._read(path)
            if records is None:
                log.warning("duplicates: %s is damaged; its signatures will be made again", path)
                path.unlink(missing_ok=True)
                continue
            kept.append(path)
            keys = records[:, :16].tobytes()
            digests.update((keys[16 * n:16 * n + 16], count + n) for n in range(len(records)))
            tables.append(records[:, 16:])
            count += len(records)
        table = np.concatenate(tables) if tables else np.empty((0, pixelcheck.SIGNATURE_BYTES), np.uint8)
        return digests, table, kept

    def _read(self, path: Path) -> np.ndarray | None:
        try:
            data = path.read_bytes()
        except FileNotFoundError:  # merged away by another run since we listed it
            return np.empty((0, self.record), np.uint8)
        except OSError:
            return None
        head = len(self._MAGIC) + 8
        if len(data) < head or not data.startswith(self._MAGIC):
            return None
        count = int.from_bytes(data[len(self._MAGIC):head], "little")
        if len(data) != head + count * self.record:
            return None
        return np.frombuffer(data, np.uint8, offset=head).reshape(count, self.record)

    def add(self, digests: Sequence[bytes], table: np.ndarray) -> Path:
        """Keep the signatures ``table[n]`` of the contents ``digests[n]`` (16-byte content
        hashes), in a file of their own."""
        self.folder.mkdir(parents=True, exist_ok=True)
        records = np.concatenate([np.frombuffer(b"".join(digests), np.uint8).reshape(-1, 16), table], 1)
        # Named by time, so files sort oldest first and later signatures win.
        path = self.folder / f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.sig"
        write_atomic(path, self._MAGIC + len(records).to_bytes(8, "little") + records.tobytes())
        return path

    def merge(self, live: set[bytes]) -> None:
        """One file of the signatures of the content hashes in ``live``, for all the others."""
        digests, table, segments = self._load()
        keep = [(d, n) for d, n in digests.items() if d in live]
        merged = self.add([d for d, _ in keep], table[[n for _, n in keep]])
        for path in segments:
            if path != merged:
                path.unlink(missing_ok=True)
