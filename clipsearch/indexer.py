"""One ``index`` run: scan, tell new and changed files from unchanged ones, embed, commit.

Decoding runs on a thread pool a few batches ahead of the model (Pillow releases the
GIL while it decodes and resizes), so the CPU or GPU running the model rarely waits.
Every batch is committed to the database in its own transaction before its vectors
enter the in-memory FAISS index: an interrupted run keeps every finished batch, and
the next run picks up where it stopped.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .encoder import Encoder, default_batch_size
from .errors import ImageError, NoImagesError
from .images import DecodedImage, read_image
from .index import VectorIndex
from .results import FileError, IndexReport
from .scanner import FoundFile, scan
from .store import FailedImage, IndexedImage, Store

# Batches decoded ahead of the one being encoded: enough to hide a slow file, few
# enough that memory stays small.
_BATCHES_AHEAD = 2


class IndexProgress(Protocol):
    """What an ``index`` run reports while it works; the CLI draws it as a progress bar."""

    def start(self, total: int) -> None: ...

    def advance(self, count: int) -> None: ...

    def skipped(self, path: str, reason: str) -> None: ...


class _Silent:
    def start(self, total: int) -> None:
        pass

    def advance(self, count: int) -> None:
        pass

    def skipped(self, path: str, reason: str) -> None:
        pass


@dataclass(frozen=True)
class _Job:
    file: FoundFile
    old_id: int | None  # the row this file had before, if it changed


@dataclass(frozen=True)
class _Decoded:
    job: _Job
    decoded: DecodedImage | None = None
    pixels: object = None  # a preprocessed tensor
    error: str | None = None


def _chunks(items: Sequence, size: int):
    for i in range(0, len(items), size):
        yield items[i:i + size]


class Indexer:
    """Brings the database and the vector index up to date with the files under some roots."""

    def __init__(self, store: Store, encoder: Encoder, vectors: Callable[[], VectorIndex],
                 batch_size: int | None = None, workers: int = 2,
                 before_encoding: Callable[[], None] = lambda: None):
        self.store = store
        self._before_encoding = before_encoding
        self.encoder = encoder
        self._vectors = vectors
        self.batch_size = batch_size
        self.workers = workers

    def run(self, roots: list[Path], progress: IndexProgress | None = None) -> IndexReport:
        progress = progress or _Silent()
        started = time.perf_counter()
        report = IndexReport()
        found = list(scan(roots))
        known = self.store.known_files(roots)
        if not found and not known:
            raise NoImagesError(f"no image files found under {', '.join(map(str, roots))}",
                                hint="clipsearch indexes .jpg, .png, .webp, .gif, .tif and similar files")
        jobs: list[_Job] = []
        for f in found:
            old = known.pop(f.path, None)
            if old is None:
                jobs.append(_Job(f, None))
            elif (old.size, old.mtime_ns) == (f.size, f.mtime_ns):
                report.unchanged += 1
            else:
                jobs.append(_Job(f, old.id))
        # What is left in `known` was indexed under these roots once and is gone now.
        gone = [k.id for k in known.values()]
        if gone:
            self.store.commit_batch(removed=gone)
            self._vectors().remove(gone)
            report.removed = len(gone)

        progress.start(len(jobs))
        if jobs:
            # Only now, with work to do, pay for torch; and before the threads start,
            # because loading a model is not thread-safe.
            self.encoder.load()
            self._before_encoding()
            target = self.encoder.image_size
            batch_size = self.batch_size or default_batch_size(self.encoder.device)
            with ThreadPoolExecutor(self.workers, thread_name_prefix="decode") as pool:
                pending: deque[list[Future]] = deque()
                for batch in _chunks(jobs, batch_size):
                    pending.append([pool.submit(self._decode, job, target) for job in batch])
                    if len(pending) > _BATCHES_AHEAD:
                        self._commit([f.result() for f in pending.popleft()], report, progress)
                while pending:
                    self._commit([f.result() for f in pending.popleft()], report, progress)
        report.seconds = time.perf_counter() - started
        return report

    def _decode(self, job: _Job, target: int) -> _Decoded:
        try:
            decoded = read_image(Path(job.file.path), target)
            return _Decoded(job, decoded, self.encoder.preprocess(decoded.image))
        except ImageError as exc:
            return _Decoded(job, error=exc.message)

    def _commit(self, batch: list[_Decoded], report: IndexReport, progress: IndexProgress) -> None:
        good = [d for d in batch if d.error is None]
        bad = [d for d in batch if d.error is not None]
        vectors = self.encoder.encode_pixels([d.pixels for d in good]) if good else None
        indexed = [
            IndexedImage(d.job.file.path, d.job.file.size, d.job.file.mtime_ns, d.decoded.content_hash,
                         d.decoded.width, d.decoded.height, vec)
            for d, vec in zip(good, vectors if vectors is not None else [])
        ]
        failed = [FailedImage(d.job.file.path, d.job.file.size, d.job.file.mtime_ns, d.error) for d in bad]
        ids = self.store.commit_batch(indexed, failed)
        index = self._vectors()
        # A changed file that now fails to decode must not keep its old vector.
        index.remove([d.job.old_id for d in bad if d.job.old_id is not None])
        if ids:
            index.add(ids, vectors)
        for d in good:
            if d.job.old_id is None:
                report.added += 1
            else:
                report.updated += 1
        for d in bad:
            report.errors.append(FileError(d.job.file.path, d.error))
            progress.skipped(d.job.file.path, d.error)
        progress.advance(len(batch))
