"""One ``index`` run: scan, tell new and changed files from unchanged ones, embed, commit.

Decoding runs on a thread pool a few batches ahead of the model (Pillow releases the
GIL while it decodes and resizes), so the CPU or GPU running the model rarely waits.
Every batch is committed to the database in its own transaction before its vectors
enter the in-memory FAISS index: an interrupted run keeps every finished batch, and
the next run picks up where it stopped.

Moves, renames and copies are recognised by content: every new file is read and
hashed (BLAKE2b over the whole file) before it is decoded, and a file whose hash the
library already knows takes that vector instead of being decoded and encoded. A whole
file hash, not a partial one, because a false match would silently give a photo
another photo's vector; the read is needed anyway for any file that is decoded.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from .encoder import Encoder, default_batch_size, resolve_device
from .errors import ImageError, NoImagesError
from .images import decode_image, hash_bytes, read_file
from .index import VectorIndex
from .results import FileError, IndexReport
from .scanner import FoundFile, ScanOptions, scan
from .store import FailedImage, IndexedImage, KnownFile, MovedImage, Store

# Batches decoded ahead of the one being encoded: enough to hide a slow file, few
# enough that memory stays small.
_BATCHES_AHEAD = 2


class IndexProgress(Protocol):
    """What an ``index`` run reports while it works; the CLI draws it as a progress bar."""

    def scanned(self, count: int) -> None: ...

    def start(self, total: int) -> None: ...

    def advance(self, count: int) -> None: ...

    def skipped(self, path: str, reason: str) -> None: ...


class _Silent:
    def scanned(self, count: int) -> None:
        pass

    def start(self, total: int) -> None:
        pass

    def advance(self, count: int) -> None:
        pass

    def skipped(self, path: str, reason: str) -> None:
        pass


@dataclass(frozen=True)
class _Job:
    file: FoundFile
    old_id: int | None  # the row this path had before, if it changed


@dataclass
class _Prepared:
    """A job after its worker ran: failed, matched to known content, or decoded."""

    job: _Job
    content_hash: str | None = None
    error: str | None = None
    same_as: int | None = None  # id of an indexed row with the same content
    width: int = 0
    height: int = 0
    pixels: object = None  # the model's input, from Encoder.preprocess
    vector: np.ndarray | None = field(default=None, repr=False)


def _chunks(items: Sequence, size: int):
    for i in range(0, len(items), size):
        yield items[i:i + size]


class Indexer:
    """Brings the database and the vector index up to date with the files under some roots."""

    def __init__(self, store: Store, encoder: Encoder, vectors: Callable[[], VectorIndex],
                 batch_size: int | None = None, workers: int = 2,
                 before_encoding: Callable[[], None] = lambda: None):
        self.store = store
        self.encoder = encoder
        self._vectors = vectors
        self.batch_size = batch_size
        self.workers = workers
        self._before_encoding = before_encoding
        self._model_lock = threading.Lock()
        self._model_ready = False
        self._hash_lock = threading.Lock()
        self._hashes_this_run: dict[str, int] = {}
        self._gone: dict[int, KnownFile] = {}

    def run(self, roots: list[Path], progress: IndexProgress | None = None, *,
            retry_errors: bool = False, scan_options: ScanOptions = ScanOptions()) -> IndexReport:
        progress = progress or _Silent()
        started = time.perf_counter()
        report = IndexReport()
        found = []
        for f in scan(roots, scan_options):
            found.append(f)
            if len(found) % 1000 == 0:
                progress.scanned(len(found))
        known = self.store.known_files(roots)
        if not found and not known:
            raise NoImagesError(f"no image files found under {', '.join(map(str, roots))}",
                                hint="clipsearch indexes .jpg, .png, .webp, .gif, .tif and similar files")
        jobs: list[_Job] = []
        for f in found:
            old = known.pop(f.path, None)
            if old is None:
                jobs.append(_Job(f, None))
            elif (old.size, old.mtime_ns) == (f.size, f.mtime_ns) and not (retry_errors and old.status == "error"):
                report.unchanged += 1
            else:
                jobs.append(_Job(f, old.id))
        # What is left was indexed under these roots once and is not there now: moved
        # (a new file will claim it by content) or deleted (removed at the end).
        self._gone = {k.id: k for k in known.values()}

        progress.start(len(jobs))
        if jobs:
            batch_size = self.batch_size or default_batch_size(resolve_device(self.encoder.requested_device))
            with ThreadPoolExecutor(self.workers, thread_name_prefix="decode") as pool:
                pending: deque[list[Future]] = deque()
                for batch in _chunks(jobs, batch_size):
                    pending.append([pool.submit(self._prepare, job) for job in batch])
                    if len(pending) > _BATCHES_AHEAD:
                        self._commit([f.result() for f in pending.popleft()], report, progress)
                while pending:
                    self._commit([f.result() for f in pending.popleft()], report, progress)

        if self._gone:
            gone = list(self._gone)
            self.store.commit_batch(removed=gone)
            self._vectors().remove(gone)
            report.removed = len(gone)
        report.seconds = time.perf_counter() - started
        return report

    # -- workers ----------------------------------------------------------------------

    def _ensure_model(self) -> None:
        # Loading is not thread-safe, and only the first file that needs the model pays for it.
        with self._model_lock:
            if not self._model_ready:
                self.encoder.load()
                self._before_encoding()
                self._model_ready = True

    def _known_content(self, content_hash: str) -> int | None:
        with self._hash_lock:
            if content_hash in self._hashes_this_run:
                return self._hashes_this_run[content_hash]
        found = self.store.find_by_hash(content_hash)
        return found[0] if found else None

    def _prepare(self, job: _Job) -> _Prepared:
        if job.file.problem:
            return _Prepared(job, error=job.file.problem)
        try:
            data = read_file(Path(job.file.path))
            prepared = _Prepared(job, hash_bytes(data))
            prepared.same_as = self._known_content(prepared.content_hash)
            if prepared.same_as is None:
                self._ensure_model()
                image, prepared.width, prepared.height = decode_image(data, self.encoder.image_size)
                prepared.pixels = self.encoder.preprocess(image)
            return prepared
        except ImageError as exc:
            return _Prepared(job, error=exc.message)

    # -- committing -------------------------------------------------------------------

    def _commit(self, batch: list[_Prepared], report: IndexReport, progress: IndexProgress) -> None:
        good = [p for p in batch if p.error is None]
        bad = [p for p in batch if p.error is not None]

        # Encode each distinct new content once; identical files in this batch, or ones
        # committed since their worker looked, share the vector.
        first_with: dict[str, _Prepared] = {}
        to_encode = []
        for p in good:
            if p.same_as is None:
                p.same_as = self._hashes_this_run.get(p.content_hash)
            if p.same_as is None and p.content_hash not in first_with:
                first_with[p.content_hash] = p
                to_encode.append(p)
        if to_encode:
            vectors = self.encoder.encode_pixels([p.pixels for p in to_encode])
            for p, vec in zip(to_encode, vectors):
                p.vector = vec

        sources = self.store.images([p.same_as for p in good if p.same_as is not None])
        indexed, moved = [], []
        for p in good:
            f = p.job.file
            if p.same_as is not None and p.job.old_id is None and self._gone.pop(p.same_as, None):
                moved.append(MovedImage(p.same_as, f.path, f.size, f.mtime_ns))
                report.moved += 1
                continue
            if p.same_as is not None:
                src = sources[p.same_as]
                vector, width, height = self.store.vector_of(src.id), src.width, src.height
            else:
                twin = first_with[p.content_hash]
                vector, width, height = twin.vector, twin.width, twin.height
            indexed.append(IndexedImage(f.path, f.size, f.mtime_ns, p.content_hash, width, height, vector))
            if p.job.old_id is None:
                report.added += 1
            else:
                report.updated += 1
        failed = [FailedImage(p.job.file.path, p.job.file.size, p.job.file.mtime_ns, p.error) for p in bad]

        ids = self.store.commit_batch(indexed, failed, moved=moved)
        index = self._vectors()
        # A changed file that now fails to decode must not keep its old vector.
        index.remove([p.job.old_id for p in bad if p.job.old_id is not None])
        if ids:
            index.add(ids, np.stack([item.vector for item in indexed]))
        with self._hash_lock:
            for item, image_id in zip(indexed, ids):
                self._hashes_this_run.setdefault(item.content_hash, image_id)
        for p in bad:
            report.errors.append(FileError(p.job.file.path, p.error))
            progress.skipped(p.job.file.path, p.error)
        progress.advance(len(batch))
