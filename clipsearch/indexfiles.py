"""``LiveIndex``: which search index a library holds, kept current with its database.

A library's index is ``index.<G>.faiss`` (with its ``.json``, and for an on-disk index
``index.<G>.<stamp>.ivfdata`` and ``.trained``), ``G`` being the vector file's generation
(``vectorstore.py``). One ``LiveIndex`` per open library owns it: it loads the file, or
rebuilds it from the vector file when it is missing or damaged; it takes in the rows that
another process wrote since (a crash between a commit and a save leaves the same lag);
after an index run it compacts dead vectors or moves to a bigger index type when the
library has outgrown its own; and it saves, removing the files it replaces.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import LibraryEmptyError
from .index import DEFAULT_MEMORY_BUDGET, DEFAULT_TARGET_RECALL, IndexPlan, VectorIndex, choose_index, ivf_plan
from .store import Store

if TYPE_CHECKING:  # for annotations only: a search has no use for the indexer
    from .indexer import IndexProgress

# index.<G>.faiss and .json; index.<G>.<stamp>.ivfdata and .trained for an on-disk index;
# index.v<N>.faiss from before vector files.
_INDEX_FILE = re.compile(r"^index\.v?\d+(\.\d+)?\.(faiss|json|ids|ivfdata|trained)$")
# An on-disk index is rebuilt once the rows added since its lists were written (held in
# memory) reach this share of them.
_DELTA_SHARE = 0.2
# Dead vectors (of deleted or changed images) are compacted away after an index run
# once they are this share of the vector file, and at least this many.
_COMPACT_SHARE, _COMPACT_MIN = 0.25, 10_000


class LiveIndex:
    """The search index of the library in ``root``, whose metadata ``store`` holds."""

    def __init__(self, root: Path, store: Store):
        self.root = root
        self.store = store
        self._vectors: VectorIndex | None = None
        self._seen: tuple[int, int] | None = None  # the (vector version, generation) it reflects
        self._writing = False
        # A server shares one library between request threads. Searches run at once (a
        # VectorIndex is safe for that); this lock only makes sure that bringing the index
        # up to date happens once, not once per thread that finds it stale.
        self._refreshing = threading.Lock()

    @property
    def path(self) -> Path:
        return self._path(self.store.generation())

    def _path(self, generation: int) -> Path:
        return self.root / f"index.{generation}.faiss"

    @property
    def current(self) -> VectorIndex:
        """The index, loaded or rebuilt, and brought up to date with the database."""
        if self._vectors is not None and self._writing:
            return self._vectors  # we hold the writer lock: nobody else changes anything
        if self._vectors is not None and self._seen == self.store.vector_state():
            return self._vectors
        with self._refreshing:
            if self._vectors is not None and self._seen == self.store.vector_state():
                return self._vectors  # another thread brought it up to date meanwhile
            return self._refresh()

    @contextmanager
    def writing(self) -> Iterator[None]:
        """While the caller, holding the library's writer lock, changes vectors: the index in
        memory is taken as current without asking the database each time."""
        self._writing = True
        try:
            yield
        except BaseException:
            self._seen = None  # re-checked against the database on next use
            raise
        finally:
            self._writing = False
        self._seen = self.store.vector_state()

    def settings(self) -> tuple[int, float]:
        """The memory budget and recall target that ``optimize`` last set."""
        budget = self.store.get_meta("memory_budget")
        target = self.store.get_meta("target_recall")
        return (int(budget) if budget else DEFAULT_MEMORY_BUDGET,
                float(target) if target else DEFAULT_TARGET_RECALL)

    def on_disk(self) -> bool:
        """Whether ``optimize --on-disk`` asked for the index's lists to live on disk."""
        return self.store.get_meta("on_disk") == "1"

    def plan(self, n: int, budget: int | None = None, on_disk: bool | None = None) -> IndexPlan:
        """The index for ``n`` vectors: the budget and on-disk choice given, else the library's."""
        dim, budget = self.store.vector_file().dim, budget or self.settings()[0]
        on_disk = self.on_disk() if on_disk is None else on_disk
        return ivf_plan(n, dim, budget, on_disk=True) if on_disk else choose_index(n, dim, budget)

    def after_run(self, version_before: int, progress: IndexProgress | None) -> None:
        """After an index run: compact or grow the index if it is due, else save it if the
        run changed vectors (or it was never saved). A run that changed nothing does not
        rewrite what may be a gigabyte of index."""
        if not self._maintain(progress):
            if self.store.vectors_version() != version_before or not self.path.exists():
                self.save()

    def reconfigure(self, budget: int, target: float, on_disk: bool) -> int:
        """Record the budget, recall target and on-disk choice, and rebuild the index for
        them, dead vectors compacted away. Returns how many dead vectors were dropped."""
        current = self.current
        plan = self.plan(current.ntotal, budget, on_disk)  # fails before anything changes
        self.store.set_meta("memory_budget", str(budget))
        self.store.set_meta("target_recall", str(target))
        self.store.set_meta("on_disk", "1" if on_disk else "0")
        dropped = current.dead
        with self.writing():
            self._rebuild(compact=dropped > 0, plan=plan)
        return dropped

    def save(self) -> None:
        """Write the index, and which image each of its rows holds: by a writer, under the
        writer lock, so the database's vector state is the one the index reflects."""
        path = self.path
        vectors = self.current
        vectors.save(path)
        vectors.save_ids(path, self.store.vector_state())
        keep = {path.name, path.with_suffix(".json").name, path.with_suffix(".ids").name}
        if vectors.on_disk:
            keep |= {f"{vectors.facts.on_disk}.ivfdata", f"{vectors.facts.on_disk}.trained"}
        for p in self.root.iterdir():
            if _INDEX_FILE.match(p.name) and p.name not in keep:
                p.unlink(missing_ok=True)

    def nbytes(self, vectors: VectorIndex | None) -> int:
        """The saved index's size on disk: its file, and its lists file when they are on disk."""
        files = [self.path] + ([self.root / f"{vectors.facts.on_disk}.ivfdata"]
                               if vectors is not None and vectors.on_disk else [])
        return sum(f.stat().st_size for f in files if f.exists())

    def _refresh(self) -> VectorIndex:
        if self.store.model_identity() is None:
            raise LibraryEmptyError.at(self.root)
        file = self.store.vector_file()
        if self._vectors is not None and self._vectors.file.generation == file.generation:
            ids, rows, version = self.store.live()
            # Another process indexed since we looked: take its rows, forget what it removed,
            # in one step as far as searches in other threads can tell.
            with self._vectors.lock.writing():
                self._vectors.remove(np.setdiff1d(self._vectors.ids(), ids))
                self._vectors.assign(ids, rows)
        else:
            path = self._path(file.generation)  # not self.path: one query less on a cold search
            state = self.store.vector_state()
            saved = VectorIndex.saved_ids(path, state) if state[1] == file.generation else None
            ids, rows, version = (*saved, state[0]) if saved is not None else self.store.live()
            try:
                self._vectors = VectorIndex.load(path, file, ids, rows) if path.exists() else None
            except (OSError, RuntimeError, ValueError):  # damaged, or replaced as we read: rebuild
                self._vectors = None
            if self._vectors is None:
                self._vectors = self._build(ids, rows)
        self._seen = (version, file.generation)
        return self._vectors

    def _build(self, ids: np.ndarray, rows: np.ndarray, plan: IndexPlan | None = None) -> VectorIndex:
        budget, target = self.settings()
        plan = plan or self.plan(len(ids))
        if self.on_disk() and self._writing:
            # A fresh stem per build: other processes may still map the lists it replaces.
            # (Only a writer makes files: a reader that finds the index damaged rebuilds it
            # in memory for itself, as for every index type.)
            stem = self.root / f"index.{self.store.generation()}.{time.time_ns()}"
            built = VectorIndex.build_on_disk(plan, self.store.vector_file(), ids, rows, stem, budget)
        else:
            built = VectorIndex.build(plan, self.store.vector_file(), ids, rows, budget)
        built.tune(target)
        return built

    def _maintain(self, progress: IndexProgress | None) -> bool:
        """Compact many dead vectors, and move to a bigger index type when the library has
        outgrown its own (never down: ``optimize`` does that). Returns whether it rebuilt
        (and saved) the index."""
        current = self.current
        rows = len(current.file)
        dead = rows - current.ntotal
        plan = self.plan(current.ntotal)
        have = IndexPlan(current.factory, 0, "")
        compact = dead >= max(_COMPACT_MIN, _COMPACT_SHARE * rows)
        grow = plan.tier > have.tier or (plan.nlist and plan.nlist >= 2 * max(have.nlist, 1)) or \
            current.delta_rows > _DELTA_SHARE * (rows - current.delta_rows)
        if not (compact or grow):
            return False
        if grow and progress is not None:
            progress.rebuilding(f"the library outgrew its index: building {plan.factory} for {current.ntotal:,} images")
        elif progress is not None:
            progress.rebuilding(f"compacting {dead:,} vectors of deleted or changed images")
        self._rebuild(compact=compact, plan=plan if grow or plan.tier >= have.tier else None)
        return True

    def _rebuild(self, compact: bool, plan: IndexPlan | None) -> None:
        if plan is None:  # keep the type
            plan = IndexPlan(self.current.factory, 0, self.current.facts.reason)
        if compact:
            self.store.compact()
        ids, rows, version = self.store.live()
        self._vectors = self._build(ids, rows, plan)
        self._seen = (version, self.store.generation())
        self.save()
