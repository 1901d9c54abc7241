"""One ``index`` run: scan, tell new and changed files from unchanged ones, embed, commit.

Files are read, hashed and decoded by worker processes (``decodepool.py``) a few
batches ahead of the model, so the CPU or GPU running the model rarely waits. Every
batch's vectors are appended to the vector file and its rows committed to the database
in one transaction before they enter the in-memory FAISS index: an interrupted run
keeps every finished batch, and the next run picks up where it stopped.

New files are numbered in scan order before any is embedded, so their ids do not
depend on which finished first. The same run can hand decoding and encoding to a
cluster instead (an ``Embedder``, see ``cluster.py``): it then commits the vectors the
cluster sends back through the same code, with the same guarantees and the same ids.

Moves, renames and copies are recognised by content: every new file is read and
hashed (XXH3-128 over the whole file) before it is decoded, and a file whose hash the
library already knows takes that vector instead of being decoded and encoded. A whole
file hash, not a partial one like rclip's first-megabyte-plus-last-kilobyte, because
a false match would silently give a photo another photo's vector (an edit that keeps
the file's head and tail would do it); the read is needed anyway for any file that is
decoded, and the hash costs a tenth of a millisecond per 3 MB (see ``images.hash_bytes``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from .decodepool import DecodeLimits, DecodePool, Decoded
from .encoder import Encoder
from .errors import NoImagesError
from .index import VectorIndex
from .pixels import PixelSpec
from .results import FileError, IndexReport, ModelIdentity
from .scanner import FoundFile, ScanOptions, scan
from .store import FailedImage, IndexedImage, KnownFile, MovedImage, Store

if TYPE_CHECKING:
    from .duplicates import SignatureStore

# Batches decoded ahead of the one being encoded: enough to hide a slow file, few
# enough that memory stays small.
_BATCHES_AHEAD = 2
# Pixel signatures kept in memory before they are written out: 50 MB, and a file each.
_SIGNATURES_PER_FILE = 8192
log = logging.getLogger(__name__)


class IndexProgress(Protocol):
    """What an ``index`` run reports while it works; the CLI draws it as a progress bar."""

    def scanned(self, count: int) -> None: ...

    def start(self, total: int) -> None: ...

    def advance(self, count: int) -> None: ...

    def skipped(self, path: str, reason: str) -> None: ...

    def rebuilding(self, what: str) -> None: ...


class Embedder(Protocol):
    """Somewhere else to decode and embed files (``cluster.RayEmbedder``): the run then
    commits what it yields exactly as it commits its own."""

    def batch_size(self) -> int: ...

    def run(self, jobs: list[tuple[int, str]], is_known: Callable[[str], bool],
            model_ready: Callable[[ModelIdentity, str], None]) -> Iterator[Decoded]: ...


class _Silent:
    def scanned(self, count: int) -> None:
        pass

    def start(self, total: int) -> None:
        pass

    def advance(self, count: int) -> None:
        pass

    def skipped(self, path: str, reason: str) -> None:
        pass

    def rebuilding(self, what: str) -> None:
        pass


@dataclass(frozen=True)
class _Job:
    file: FoundFile
    old_id: int | None  # the row this path had before, if it changed
    new_id: int | None = None  # else the id it takes, numbered in scan order (Store.next_image_id)


class Indexer:
    """Brings the database and the vector index up to date with the files under some roots."""

    def __init__(self, store: Store, encoder: Encoder, vectors: Callable[[], VectorIndex],
                 batch_size: int | None = None, workers: int = 2,
                 before_encoding: Callable[[ModelIdentity, str], None] = lambda identity, precision: None,
                 limits: DecodeLimits = DecodeLimits(), embedder: Embedder | None = None,
                 signatures: SignatureStore | None = None):
        self.store = store
        self.encoder = encoder
        self._vectors = vectors
        self.batch_size = batch_size
        self.workers = workers
        self.limits = limits
        self.embedder = embedder  # None: decode here and encode with ``encoder``
        # Where the decode workers' pixel signatures of new content go, for duplicates.
        self.signatures = signatures
        self._new_signatures: dict[bytes, np.ndarray] = {}
        self._before_encoding = before_encoding
        self._hash_lock = threading.Lock()
        self._hashes_this_run: dict[str, int] = {}
        self._gone: dict[int, KnownFile] = {}
        self._progress: IndexProgress = _Silent()
        self._precision: str | None = None  # settled by the encoder when first needed

    def run(self, roots: list[Path], progress: IndexProgress | None = None, *,
            retry_errors: bool = False, scan_options: ScanOptions = ScanOptions(),
            require_images: bool = True) -> IndexReport:
        """Index what changed under ``roots``; with ``require_images``, roots that hold no image
        and never did are an error (a mistyped folder), else just nothing to do."""
        progress = self._progress = progress or _Silent()
        started = time.perf_counter()
        report = IndexReport()
        jobs = self._plan(roots, scan_options, retry_errors, report, progress, require_images)
        progress.start(len(jobs))
        problems = [(job, Decoded(None, error=job.file.problem)) for job in jobs if job.file.problem]
        decodable = [(i, job.file.path) for i, job in enumerate(jobs) if not job.file.problem]
        if problems:
            self._commit(problems, report, progress)
        if decodable:
            try:
                self._decode_and_commit(jobs, decodable, report, progress)
            finally:  # an interrupted run keeps the signatures of what it committed too
                self._write_signatures()
        if self._gone:  # not claimed by a moved file: deleted
            gone = list(self._gone)
            self.store.commit_batch(removed=gone)
            self._vectors().remove(gone)
            report.removed = len(gone)
        report.seconds = time.perf_counter() - started
        report.precision = self._precision
        return report

    def _decode_and_commit(self, jobs: list[_Job], decodable: list[tuple[int, str]], report: IndexReport,
                           progress: IndexProgress) -> None:
        if self.embedder is None:
            batch_size = self.batch_size or self.encoder.batch_size()
            results = DecodePool(self.workers, self._pixel_spec, self._known_content, self.limits,
                                 ahead=batch_size * _BATCHES_AHEAD,
                                 signatures=self.signatures is not None).run(decodable)
        else:
            batch_size = self.batch_size or self.embedder.batch_size()
            results = self.embedder.run(decodable, self._known_content, self._model_ready)
        batch: list[tuple[_Job, Decoded]] = []
        for decoded in results:
            batch.append((jobs[decoded.key], decoded))
            if len(batch) >= batch_size:
                self._commit(batch, report, progress)
                batch = []
        if batch:
            self._commit(batch, report, progress)

    def _plan(self, roots: list[Path], scan_options: ScanOptions, retry_errors: bool, report: IndexReport,
              progress: IndexProgress, require_images: bool = True) -> list[_Job]:
        """Walk the roots and compare with the database: the files that need work."""
        found = []
        for f in scan(roots, scan_options):
            found.append(f)
            if len(found) % 1000 == 0:
                progress.scanned(len(found))
        known = self.store.known_files(roots)
        if not found and not known and require_images:
            raise NoImagesError(f"no image files found under {', '.join(map(str, roots))}",
                                hint="clipsearch indexes .jpg, .png, .webp, .gif, .tif and similar files")
        jobs: list[_Job] = []
        next_id = self.store.next_image_id()
        for f in found:
            old = known.pop(f.path, None)
            if old is None:
                jobs.append(_Job(f, None, next_id))
                next_id += 1
            elif (old.size, old.mtime_ns) == (f.size, f.mtime_ns) and not (retry_errors and old.status == "error"):
                report.unchanged += 1
            else:
                jobs.append(_Job(f, old.id))
        # What is left was indexed under these roots once and is not there now: moved
        # (a new file will claim it by content) or deleted (removed at the end).
        self._gone = {k.id: k for k in known.values()}
        return jobs

    # -- called by the decode pool's dispatcher thread ------------------------------

    def _pixel_spec(self) -> PixelSpec:
        # Only the first file that needs the model pays for loading it.
        self.encoder.load(notice=self._progress.rebuilding)
        self._model_ready(self.encoder.identity, self.encoder.precision)
        return self.encoder.pixel_spec

    def _model_ready(self, identity: ModelIdentity, precision: str) -> None:
        self._precision = precision
        self._before_encoding(identity, precision)

    def _known_content(self, content_hash: str) -> bool:
        return self._source_of(content_hash) is not None

    # -- committing -------------------------------------------------------------------

    def _commit(self, batch: list[tuple[_Job, Decoded]], report: IndexReport, progress: IndexProgress) -> None:
        good = [(job, d) for job, d in batch if d.error is None]
        bad = [(job, d) for job, d in batch if d.error is not None]

        # Encode each distinct new content once; identical files in this batch, or ones
        # committed since their worker asked, share a vector. The database was already
        # asked by the worker's dispatcher: only content it knew needs its row id from there.
        known = {d.content_hash: self._source_of(d.content_hash) if d.same_content
                 else self._hashes_this_run.get(d.content_hash) for _, d in good}
        first_with: dict[str, Decoded] = {}
        vectors = {}
        new_signatures = {d.content_hash: d.signature for _, d in good
                          if known[d.content_hash] is None and d.signature is not None}
        for _, d in good:
            if known[d.content_hash] is None and d.vector is not None:  # embedded on a cluster
                vectors.setdefault(d.content_hash, (d.vector, d.width, d.height, d.taken_ns))
            elif known[d.content_hash] is None and d.pixels is not None:
                first_with.setdefault(d.content_hash, d)
        if first_with:
            encoded = self.encoder.encode_crops(np.stack([d.pixels for d in first_with.values()]))
            vectors.update({h: (vec, d.width, d.height, d.taken_ns) for (h, d), vec in zip(first_with.items(), encoded)})
        sources = self.store.images([i for i in known.values() if i is not None])

        indexed, moved = [], []
        for job, d in good:
            f, source = job.file, known[d.content_hash]
            if source is not None and job.old_id is None and self._gone.pop(source, None):
                moved.append(MovedImage(source, f.path, f.size, f.mtime_ns))
                report.moved += 1
                continue
            if source is not None:
                src = sources[source]
                vector, width, height, taken = self.store.vector_of(source), src.width, src.height, src.taken_ns
            else:
                vector, width, height, taken = vectors[d.content_hash]
            indexed.append(IndexedImage(f.path, f.size, f.mtime_ns, d.content_hash, width, height, vector, taken,
                                        job.new_id))
            if job.old_id is None:
                report.added += 1
            else:
                report.updated += 1
        failed = [FailedImage(job.file.path, job.file.size, job.file.mtime_ns, d.error, job.new_id) for job, d in bad]

        ids, rows = self.store.commit_batch(indexed, failed, moved=moved)
        # A changed file that now fails to decode must not keep its old vector. (A batch of
        # failures alone may come before any model is loaded, so the index is not touched.)
        stale = [job.old_id for job, _ in bad if job.old_id is not None]
        if stale:
            self._vectors().remove(stale)
        if len(ids):
            self._vectors().assign(ids, rows)
        with self._hash_lock:
            for item, image_id in zip(indexed, ids):
                self._hashes_this_run.setdefault(item.content_hash, int(image_id))
        if self.signatures is not None:
            self._new_signatures.update((bytes.fromhex(h), sig) for h, sig in new_signatures.items())
            if len(self._new_signatures) >= _SIGNATURES_PER_FILE:
                self._write_signatures()
        for job, d in bad:
            report.errors.append(FileError(job.file.path, d.error))
            progress.skipped(job.file.path, d.error)
        progress.advance(len(batch))

    def _write_signatures(self) -> None:
        new, self._new_signatures = self._new_signatures, {}
        if not new or self.signatures is None:
            return
        try:
            self.signatures.add(list(new), np.stack(list(new.values())))
        except OSError as exc:  # duplicates makes them itself then: no reason to fail a run
            log.warning("could not keep pixel signatures for duplicates: %s", exc)

    def _source_of(self, content_hash: str) -> int | None:
        """The id of an indexed row with this content, if there is one."""
        with self._hash_lock:
            if content_hash in self._hashes_this_run:
                return self._hashes_this_run[content_hash]
        found = self.store.find_by_hash(content_hash)
        return found[0] if found else None
