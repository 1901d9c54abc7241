"""Long work off the request path: background jobs, each in a process of its own.

A server must answer a search in milliseconds while a duplicates scan, an evaluation or
a tag run takes a minute. So a job never runs in the server's process: it runs in a
spawned child that opens the same library and calls the same :class:`Library` method
the CLI calls, at a lower CPU priority. That gives three things a thread could not:

* nothing is shared with the server's searches: no lock, no GIL (the pixel check and
  the evaluation loops are Python), and the scheduler lets searches go first;
* cancelling is killing the process, at any moment: a job is either read-only or writes
  in one transaction (``tag``), and a killed writer leaves the library as it was, as a
  killed ``clipsearch`` command would;
* a job that crashes its process, or runs out of memory, costs that job only.

Progress and the result come back over a pipe as JSON (the child is ours, but nothing
here unpickles what a job sends). Jobs are bounded: at most ``max_running`` at a time,
``max_queued`` waiting, and the last ``keep_finished`` finished ones (results
included) kept for whoever asks; an identical request joins the job already queued or
running instead of starting another, and a job is cancelled only when every request
that joined it has cancelled.
"""

from __future__ import annotations

import atexit
import itertools
import json
import logging
import multiprocessing as mp
import os
import signal
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .errors import ClipSearchError, JobNotFoundError, TooManyJobsError

# Background jobs yield the CPU to the server's requests (see decodepool.DECODE_NICENESS
# for why a niced process costs its betters little).
JOB_NICENESS = 10
# How often a job reports progress at most: a pipe message per tick, not per image.
_PROGRESS_EVERY_S = 0.1
QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
ACTIVE = (QUEUED, RUNNING)
log = logging.getLogger(__name__)


def _duplicates(lib, params: dict, progress) -> Any:
    groups = lib.duplicates(params["threshold"], crops=params["crops"], progress=progress)
    return [g.to_dict() for g in groups]


def _evaluate(lib, params: dict, progress) -> Any:
    return lib.evaluate(params["folder"], params.get("labels"), templates=params.get("templates", ()),
                        classifier=params.get("classifier"), compare_templates=params.get("compare_templates", False),
                        few_shot=params.get("few_shot"), roots_only=params.get("roots_only", False),
                        progress=progress).to_dict()


def _tag(lib, params: dict, progress) -> Any:
    return lib.tag(params.get("labels"), templates=params.get("templates", ()), classifier=params.get("classifier"),
                   threshold=params["threshold"], top_k=params["top_k"], min_cosine=params.get("min_cosine"),
                   folders=params.get("folders", ()), dry_run=params.get("dry_run", False),
                   progress=progress).to_dict()


# What a job may do: its kind names a Library call. Parameters are checked by whoever
# submits (the web layer), so that a bad request is a 4xx at once, not a failed job.
KINDS: dict[str, Callable[[Any, dict, Callable[[str, int, int], None]], Any]] = {
    "duplicates": _duplicates,
    "eval": _evaluate,
    "tag": _tag,
}


@dataclass
class Job:
    """One job's state, as ``GET /api/jobs/{id}`` shows it."""

    id: str
    kind: str
    params: dict
    state: str = QUEUED
    stage: str | None = None
    done: int = 0
    total: int = 0
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    result: Any = None
    error: dict | None = None
    watchers: int = 1  # requests that started or joined it and have not cancelled
    _process: Any = field(default=None, repr=False)

    @property
    def key(self) -> str:
        return _key(self.kind, self.params)

    @property
    def pid(self) -> int | None:
        """The process running it, while it runs."""
        return self._process.pid if self._process is not None else None

    def to_dict(self, result: bool = True) -> dict:
        out = {
            "id": self.id, "kind": self.kind, "params": self.params, "state": self.state,
            "progress": {"stage": self.stage, "done": self.done, "total": self.total},
            "created": _iso(self.created), "started": _iso(self.started), "finished": _iso(self.finished),
            "seconds": round((self.finished or time.time()) - self.started, 3) if self.started else None,
            "error": self.error,
        }
        if result:
            out["result"] = self.result
        return out


class Jobs:
    """The background jobs of one library (its folder ``root``), run as child processes."""

    def __init__(self, root: Path, *, device: str = "auto", max_running: int = 1, max_queued: int = 8,
                 keep_finished: int = 20):
        if max_running < 1 or max_queued < 0 or keep_finished < 0:
            raise ValueError("max_running must be at least 1, the others not negative")
        self.root, self.device = root, device
        self.max_running, self.max_queued, self.keep_finished = max_running, max_queued, keep_finished
        self._jobs: OrderedDict[str, Job] = OrderedDict()  # in submission order
        self._lock = threading.Lock()
        self._numbers = itertools.count(1)
        self._closed = False
        atexit.register(self.close)  # before multiprocessing's own hook, which would wait for them

    # -- what requests call ----------------------------------------------------------

    def submit(self, kind: str, params: dict) -> tuple[Job, bool]:
        """Start (or queue) a job; returns it, and whether it joined an identical one."""
        if kind not in KINDS:
            raise ValueError(f"unknown job kind {kind!r}")
        key = _key(kind, params)
        with self._lock:
            if self._closed:
                raise TooManyJobsError("the server is shutting down: it starts no more jobs")
            for job in self._jobs.values():
                if job.state in ACTIVE and job.key == key:
                    job.watchers += 1
                    return job, True
            queued = sum(j.state == QUEUED for j in self._jobs.values())
            running = sum(j.state == RUNNING for j in self._jobs.values())
            if running >= self.max_running and queued >= self.max_queued:
                raise TooManyJobsError(f"{running} jobs are running and {queued} waiting",
                                       hint="wait for one to finish, or cancel one")
            job = Job(f"{next(self._numbers)}-{os.urandom(3).hex()}", kind, json.loads(json.dumps(params)))
            self._jobs[job.id] = job
            self._start_queued()
            return job, False

    def get(self, job_id: str) -> Job:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise JobNotFoundError(f"no job {job_id!r}", hint="finished jobs are kept for a while, then forgotten")
        return job

    def list(self) -> list[Job]:
        with self._lock:
            return list(self._jobs.values())

    def cancel(self, job_id: str) -> Job:
        """Withdraw one request's interest in a job; the last one to go stops it."""
        job = self.get(job_id)
        with self._lock:
            if job.state not in ACTIVE:
                return job
            job.watchers -= 1
            if job.watchers > 0:
                return job
            process = job._process
            self._finish(job, CANCELLED)
        if process is not None:
            _stop(process)
        return job

    def close(self) -> None:
        """Stop every job (the server is going away)."""
        with self._lock:
            self._closed = True
            processes = [j._process for j in self._jobs.values() if j.state == RUNNING and j._process]
            for job in self._jobs.values():
                if job.state in ACTIVE:
                    self._finish(job, CANCELLED)
        for process in processes:
            _stop(process)

    # -- running ---------------------------------------------------------------------

    def _start_queued(self) -> None:
        """Start queued jobs while slots are free (called with the lock held)."""
        if self._closed:
            return
        running = sum(j.state == RUNNING for j in self._jobs.values())
        for job in list(self._jobs.values()):
            if running >= self.max_running:
                break
            if job.state == QUEUED:
                self._launch(job)
                running += 1

    def _launch(self, job: Job) -> None:
        from .decodepool import start_child

        ctx = mp.get_context("spawn")  # never fork a server that holds threads and maybe torch
        ours, theirs = ctx.Pipe(duplex=False)
        # Not a daemon: a job may start processes of its own (the duplicates scan decodes
        # files in killable decode workers); close() and the exit hook stop it instead.
        process = ctx.Process(target=_child, args=(str(self.root), self.device, job.kind, job.params, theirs),
                              name=f"clipsearch-job-{job.id}")
        job.state, job.started, job._process = RUNNING, time.time(), process
        try:
            start_child(process)
        except OSError as exc:
            self._finish(job, FAILED, error={"error": f"the job could not start: {exc}", "hint": None})
            return
        finally:
            theirs.close()
        threading.Thread(target=self._follow, args=(job, process, ours), daemon=True,
                         name=f"clipsearch-job-{job.id}").start()

    def _follow(self, job: Job, process, conn) -> None:
        """Read one job's messages until it ends, then start the next queued job."""
        outcome: tuple[str, Any] | None = None
        try:
            while True:
                message = json.loads(conn.recv_bytes())
                if message[0] == "progress":
                    with self._lock:
                        job.stage, job.done, job.total = message[1:]
                else:
                    outcome = (message[0], message[1])
                    break
        except (EOFError, OSError, ValueError):
            pass  # the process ended without a word: killed, or it crashed
        finally:
            conn.close()
        process.join(10)
        with self._lock:
            if job.state == RUNNING:  # not cancelled meanwhile
                if outcome is None:
                    code = process.exitcode
                    self._finish(job, FAILED, error={
                        "error": f"the job's process died (exit code {code})",
                        "hint": "it may have run out of memory; see the server's log"})
                elif outcome[0] == DONE:
                    self._finish(job, DONE, result=outcome[1])
                else:
                    self._finish(job, FAILED, error=outcome[1])
            self._start_queued()

    def _finish(self, job: Job, state: str, *, result: Any = None, error: dict | None = None) -> None:
        """Called with the lock held."""
        job.state, job.finished, job.result, job.error, job._process = state, time.time(), result, error, None
        if job.started is None:
            job.started = job.finished
        finished = [j for j in self._jobs.values() if j.state not in ACTIVE]
        for old in finished[:max(0, len(finished) - self.keep_finished)]:
            del self._jobs[old.id]


def _key(kind: str, params: dict) -> str:
    return kind + json.dumps(params, sort_keys=True, default=str)


def _iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")


def _stop(process) -> None:
    # A kill, not a request to stop: a job holds nothing that a crash would not leave
    # consistent (see the module docstring), and a stopped or stuck process obeys it too.
    process.kill()
    process.join(5)


def _child(root: str, device: str, kind: str, params: dict, conn) -> None:
    """A job's process: open the library, run the call, send the outcome."""
    # Ctrl-C on the server reaches its whole process group; the server stops its jobs.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(os, "nice"):
        os.nice(JOB_NICENESS)
    last = [0.0, None]

    def send(*message) -> None:
        conn.send_bytes(json.dumps(message).encode())

    def progress(stage: str, done: int, total: int) -> None:
        now = time.monotonic()
        if stage != last[1] or done >= total or now - last[0] >= _PROGRESS_EVERY_S:
            last[:] = now, stage
            send("progress", stage, int(done), int(total))

    from .library import Library

    try:
        with Library.open(root, device=device, create=False) as lib:
            result = KINDS[kind](lib, params, progress)
        send(DONE, result)
    except ClipSearchError as exc:
        message, hint = exc.worded("web")  # jobs run for the web API
        send(FAILED, {"error": message, "hint": hint, "type": type(exc).__name__})
    except Exception as exc:  # a bug costs this job, and is logged where the server logs
        log.exception("job %s failed", kind)
        send(FAILED, {"error": f"internal error: {type(exc).__name__}: {exc}", "hint": None,
                      "type": "InternalError"})
    finally:
        conn.close()
