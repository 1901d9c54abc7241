"""Indexing on a Ray cluster: ``clipsearch index PATH --engine ray``.

The driver (the process running ``index``) does everything a local run does except
decode and encode: it scans, compares with the database, commits every batch through
the same ``Indexer._commit`` and keeps the writer lock, so the crash-safety and resume
guarantees of a local run hold unchanged. What it hands to the cluster is the list of
files to embed, as a Ray Data dataset; ``map_batches`` runs :class:`_EmbedActor` on an
actor pool, one model per actor (on a GPU where the cluster has them), and the results
stream back in whatever order they finish.

Inside an actor, files are decoded by the same killable worker processes as a local
run (``decodepool.py``): a file that hangs or crashes its decoder costs that file, not
the actor. An actor that dies anyway (a killed process, a lost node) is restarted by
Ray and its batch run again; the driver drops any file it has already received, so a
retried batch never adds a row twice.

Two ways for the vectors to come back; the switch is :data:`SHARD_THRESHOLD` files to
embed in one run (or ``--ray-shards`` / ``--no-ray-shards``):

- below it, each vector travels with its metadata through Ray's object store (2 KB per
  image for a 512-d model), and the driver appends it to the vector file;
- from it on, each actor writes its batch's vectors as a float16 shard file in the
  library folder (which must then be storage that every node mounts at the same path),
  and only metadata (about 150 bytes per image) crosses the object store; the driver
  reads each shard once from storage, appends it to the vector file while committing
  its rows, and deletes it. A shard whose rows were never committed (the driver died)
  is deleted by the next run, and its files are embedded again.
"""

from __future__ import annotations

import queue
import re
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import errors
from .decodepool import DecodeLimits, Decoded
from .encoder import ModelSpec
from .errors import ClipSearchError, ClusterError, RayUnavailableError
from .results import ModelIdentity

# Files to embed in one run from which actors write vector shards instead of sending
# vectors through the object store. A million 512-d float32 vectors are 2 GB: the most
# worth holding in a driver's object store (Ray's default is 30% of its RAM) without
# spilling, and far more than any one batch needs.
SHARD_THRESHOLD = 1_000_000
SHARD_FOLDER = "shards"
# Files per actor call: large enough that the call's fixed costs (starting its decode
# workers, one model call's overhead) are small beside the work, small enough that a
# killed actor loses little.
DEFAULT_RAY_BATCH = 256
_CALLS = 2  # batches in an actor at once: one decoding while the other is encoded
_CPUS_PER_CPU_ACTOR = 4  # a CPU-only actor's share of a node: its torch threads and decoders


@dataclass(frozen=True)
class RayOptions:
    """How to run an index on Ray (see :func:`Library.index`'s ``ray``)."""

    address: str | None = None  # None: a local Ray, started here; "auto" or ray://HOST:PORT: a cluster
    gpus_per_worker: float = 0.0  # 0: CPU actors
    workers: int | None = None  # actors; default: as many as the cluster's GPUs (or CPUs) allow
    batch_size: int = DEFAULT_RAY_BATCH
    shards: bool | None = None  # None: from SHARD_THRESHOLD


def _ray():
    try:
        import ray
        import ray.data  # noqa: F401 (the extra must bring Ray Data, not just Ray core)
    except ImportError as exc:
        raise RayUnavailableError("[[engine=ray]] needs Ray Data, which is not installed",
                                  hint="pip install 'clipsearch[ray]'") from exc
    return ray


class RayEmbedder:
    """Embeds files on a Ray cluster's actor pool; yields ``Decoded`` results carrying
    their vectors, for ``Indexer`` to commit."""

    def __init__(self, spec: ModelSpec, options: RayOptions, precision: str, recorded: Sequence[str],
                 workdir: Path, limits: DecodeLimits = DecodeLimits()):
        self.spec = spec
        self.options = options
        self.precision = precision
        self.recorded = list(recorded)
        self.workdir = workdir
        self.limits = limits

    def batch_size(self) -> int:
        return self.options.batch_size

    def run(self, jobs: Sequence[tuple[Any, str]], is_known: Callable[[str], bool],
            model_ready: Callable[[ModelIdentity, str], None]) -> Iterator[Decoded]:
        """One :class:`Decoded` per job (with ``vector`` set when it was embedded), as the
        cluster finishes them. ``model_ready`` is called once, before the first vector."""
        ray = _ray()
        started_here = self._connect(ray)
        shards = self._shard_folder(len(jobs))
        try:
            yield from self._results(ray, jobs, shards, is_known, model_ready)
        except ray.exceptions.RayError as exc:  # an actor's error, or a cluster that went away
            raise _cluster_error(exc) from exc
        finally:
            if shards is not None:
                shutil.rmtree(shards, ignore_errors=True)
            if started_here:
                ray.shutdown()

    def _connect(self, ray) -> bool:
        """Join the cluster (or start a local one); True if this call started Ray."""
        _quiet(ray)
        if ray.is_initialized():
            return False
        try:
            ray.init(address=self.options.address, include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
        except Exception as exc:  # ConnectionError, or a ray://... that refuses us
            raise RayUnavailableError(f"cannot reach the Ray cluster at {self.options.address}: {exc}",
                                      hint="start one with `ray start --head`, or leave out [[ray_address]] "
                                           "to run on this machine") from exc
        return True

    def _shard_folder(self, count: int) -> Path | None:
        folder = self.workdir / SHARD_FOLDER
        shutil.rmtree(folder, ignore_errors=True)  # a dead run's uncommitted shards
        use = self.options.shards if self.options.shards is not None else count >= SHARD_THRESHOLD
        if not use:
            return None
        run = folder / uuid.uuid4().hex
        run.mkdir(parents=True)
        return run

    def _pool(self, ray) -> tuple[int, int]:
        """``(actors, CPUs per actor)`` for this cluster; an actor runs a decode worker per CPU."""
        nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
        return plan_actors(nodes, self.options.gpus_per_worker, self.options.workers)

    def _results(self, ray, jobs, shards: Path | None, is_known, model_ready) -> Iterator[Decoded]:
        actors, cpus = self._pool(ray)
        device = "cuda" if self.options.gpus_per_worker > 0 else "cpu"
        # One block per actor batch: Ray's default of one block per item costs a scheduling
        # round per file.
        blocks = max(1, -(-len(jobs) // self.options.batch_size))
        dataset = ray.data.from_items([{"key": int(k), "path": str(p)} for k, p in jobs], override_num_blocks=blocks)
        embedded = dataset.map_batches(
            _EmbedActor, batch_size=self.options.batch_size, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=actors, max_concurrent_calls_per_actor=_CALLS,
                                               enable_true_multi_threading=True), num_cpus=cpus,
            num_gpus=self.options.gpus_per_worker or None,
            fn_constructor_kwargs=dict(model=str(self.spec), device=device, precision=self.precision,
                                       recorded=self.recorded, workdir=str(self.workdir), limits=self.limits,
                                       decoders=cpus, shards=str(shards) if shards else None))
        seen: set[int] = set()
        ready = False
        for out in embedded.iter_batches(batch_size=None, batch_format="numpy"):
            vectors = _vectors_of(out)
            if not ready and vectors is not None and len(vectors):
                model_ready(ModelIdentity(self.spec.name, self.spec.pretrained, vectors.shape[1]),
                            str(out["precision"][0]))
                ready = True
            for i, key in enumerate(out["key"].tolist()):
                if key in seen:  # a batch Ray ran again after its first result arrived
                    continue
                seen.add(key)
                error = str(out["error"][i]) or None
                content = str(out["content_hash"][i]) or None
                if error is not None:
                    yield Decoded(key, content, error=error)
                    continue
                taken = int(out["taken_ns"][i])
                signature = out["signature"][i]
                yield Decoded(key, content, same_content=is_known(content), width=int(out["width"][i]),
                              height=int(out["height"][i]), taken_ns=None if taken == _NO_TIME else taken,
                              vector=vectors[i], signature=np.frombuffer(signature, np.uint8) if signature else None)


def _cluster_error(exc: BaseException) -> ClipSearchError:
    """What to tell the user of a failed Ray run: our own error where an actor raised one
    (its message and hint, e.g. missing weights), else Ray's first line."""
    cause = getattr(exc, "cause", None)  # a task's exception, when Ray could keep it
    if isinstance(cause, ClipSearchError):
        return cause
    # An actor that failed to start reaches us as text only: its traceback, ending with
    # our error's line and hint.
    text = str(exc)
    found = re.search(r"clipsearch\.errors\.(\w+): ([^\n]*)(?:\nhint: ([^\n]*))?", text)
    kind = getattr(errors, found[1], None) if found else None
    if isinstance(kind, type) and issubclass(kind, ClipSearchError):
        return kind(errors.marked(found[2]), hint=errors.marked(found[3]))  # each surface words it again
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
    return ClusterError(f"the Ray run failed: {first}",
                        hint="every batch committed before it is kept: run the same index again to go on")


def _quiet(ray) -> None:
    """Keep Ray Data's progress bars and logs off stdout, which ``--json`` owns: the
    indexer draws its own progress."""
    import logging

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    context.enable_auto_log_stats = False
    # Ray's own notes (token auth on a local cluster, "progress bars disabled", "dataset
    # finished") follow our verbosity: with `-v` (the root logger at INFO) they show, else
    # only its errors. Ray Data's logger has handlers of its own, so it is set too.
    level = logging.INFO if logging.getLogger().isEnabledFor(logging.INFO) else logging.ERROR
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(level)


_NO_TIME = np.iinfo(np.int64).min  # taken_ns of a photo without an EXIF date (Arrow has no None in int64)


def plan_actors(nodes: list[dict[str, float]], gpus_per_worker: float = 0,
                workers: int | None = None) -> tuple[int, int]:
    """``(actors, CPUs per actor)`` for nodes with these resources (``{"CPU": .., "GPU": ..}``).

    Each actor asks for the same number of CPUs, so that number must fit every node that is
    to hold actors, at the density it is to hold them: dividing the cluster's total CPUs
    instead would ask a GPU node with few cores for more than it has, and leave its GPUs idle
    while Ray waits for room. GPU actors: one per ``gpus_per_worker`` of each node, sharing
    that node's CPUs. CPU actors: ``_CPUS_PER_CPU_ACTOR`` each (fewer if a node is smaller).
    """
    cpus = [max(1, int(n.get("CPU", 0))) for n in nodes] or [1]
    if gpus_per_worker > 0:
        slots = [int(n.get("GPU", 0) // gpus_per_worker) for n in nodes]
        if not any(slots):
            most = max((n.get("GPU", 0) for n in nodes), default=0)
            raise RayUnavailableError(f"[[gpus_per_worker={gpus_per_worker:g}]] asks for more GPUs than the cluster "
                                      f"has ({most:g} on its largest node)",
                                      hint="use [[gpus_per_worker=0]] for CPU workers")
        per_actor = min(max(1, c // s) for c, s in zip(cpus, slots) if s)
    else:
        per_actor = min(_CPUS_PER_CPU_ACTOR, min(cpus))
        slots = [c // per_actor for c in cpus]
    if workers:  # as many as asked for, made smaller if they would not fit at this size
        room = sum(c for c, s in zip(cpus, slots) if s)
        return workers, max(1, min(per_actor, room // workers))
    return sum(slots), per_actor


def _vectors_of(out: dict[str, np.ndarray]) -> np.ndarray | None:
    """The vectors of the rows Ray hands back: sent with them, or read from their shards
    (then deleted). A block is usually one actor call's result, one shard; Ray may also
    join several, so each row is matched to its own shard."""
    if "vector" in out:
        return np.asarray(out["vector"], np.float32)
    shards = np.asarray(out["shard"], dtype=object)
    vectors = None
    for shard in dict.fromkeys(shards.tolist()):  # in order, each once
        if not shard:
            continue  # a batch whose every file failed wrote no shard
        rows = np.flatnonzero(shards == shard)
        path = Path(shard)
        part = np.fromfile(path, np.float16).reshape(len(rows), -1)
        if vectors is None:
            vectors = np.zeros((len(shards), part.shape[1]), np.float32)
        vectors[rows] = part
        path.unlink(missing_ok=True)
    return vectors


class _EmbedActor:
    """One model on one Ray worker: decodes a batch of files and embeds them."""

    def __init__(self, model: str, device: str, precision: str, recorded: list[str], workdir: str,
                 limits: DecodeLimits, decoders: int, shards: str | None):
        from .decodepool import DecodePool
        from .encoder import Encoder

        self.encoder = Encoder(ModelSpec.parse(model), device, precision, workdir=Path(workdir),
                               recorded=recorded).load()
        spec = self.encoder.pixel_spec
        # Calls run _CALLS at a time (see RayEmbedder), each with its own decode workers, so
        # that one batch decodes while another is encoded; the model takes one at a time.
        self.pools: queue.SimpleQueue = queue.SimpleQueue()
        for _ in range(_CALLS):
            self.pools.put(DecodePool(max(1, decoders), lambda: spec, lambda _hash: False, limits,
                                      keep_workers=True, signatures=True))
        self.model_lock = threading.Lock()
        self.shards = Path(shards) if shards else None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        keys = batch["key"].tolist()
        pool = self.pools.get()
        try:
            decoded = {d.key: d for d in pool.run(enumerate(batch["path"].tolist()))}
        finally:
            self.pools.put(pool)
        done = [decoded[i] for i in range(len(keys))]
        good = [d for d in done if d.error is None]
        dim = self.encoder.dim
        vectors = np.zeros((len(keys), dim), np.float32)
        if good:
            with self.model_lock:
                vectors[[d.key for d in good]] = self.encoder.encode_crops(np.stack([d.pixels for d in good]))
        out = {
            "key": np.asarray(keys, np.int64),
            "content_hash": np.asarray([d.content_hash or "" for d in done], dtype=object),
            "error": np.asarray([d.error or "" for d in done], dtype=object),
            "width": np.asarray([d.width for d in done], np.int64),
            "height": np.asarray([d.height for d in done], np.int64),
            "taken_ns": np.asarray([_NO_TIME if d.taken_ns is None else d.taken_ns for d in done], np.int64),
            "precision": np.asarray([self.encoder.precision] * len(keys), dtype=object),
            # duplicates' pixel signatures, as a local run keeps them (b"": none)
            "signature": np.asarray([b"" if d.signature is None else d.signature.tobytes() for d in done],
                                    dtype=object),
        }
        if self.shards is None:
            out["vector"] = vectors
        else:
            path = self.shards / f"{uuid.uuid4().hex}.f16"
            if good:
                vectors.astype(np.float16).tofile(path)
            out["shard"] = np.asarray([str(path) if good else ""] * len(keys), dtype=object)
        return out
