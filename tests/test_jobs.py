"""Background jobs (clipsearch/jobs.py): each in a process of its own, joined, bounded,
cancelled and reported, on a real demo-model library."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from PIL import Image

from clipsearch import Library, demoworld
from clipsearch.errors import JobNotFoundError, TooManyJobsError
from clipsearch.jobs import CANCELLED, DONE, FAILED, RUNNING, Jobs


def wait(jobs: Jobs, job_id: str, until=lambda job: job.state not in ("queued", "running"), timeout_s: float = 120):
    deadline = time.monotonic() + timeout_s
    while True:
        job = jobs.get(job_id)
        if until(job):
            return job
        assert time.monotonic() < deadline, f"job {job} never got there"
        time.sleep(0.02)


def running(jobs: Jobs, job_id: str):
    """The job once its process has started: frozen with SIGSTOP, so that it stays running
    for as long as the test needs, whatever the machine's speed."""
    job = wait(jobs, job_id, lambda j: j.state == RUNNING and j.pid is not None)
    os.kill(job.pid, signal.SIGSTOP)
    return job


def alive(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def jobs(demo_library):
    runner = Jobs(demo_library)
    yield runner
    runner.close()


@pytest.fixture(scope="module")
def with_copies(tmp_path_factory) -> Path:
    """A demo-model library of 12 pictures, two of them also copied and one resized."""
    root = tmp_path_factory.mktemp("jobs")
    photos = root / "photos"
    files = [p for p, _ in demoworld.write_images(photos, 12, seed=11, size_range=(96, 256), fmt="png")]
    shutil.copy(files[0], photos / "copy_of_first.png")
    shutil.copy(files[1], photos / "copy_of_second.png")
    with Image.open(files[2]) as im:
        im.resize((im.width // 2, im.height // 2), Image.Resampling.LANCZOS).save(photos / "half_of_third.png")
    with Library.open(root / "library", model="demo") as lib:
        lib.index([photos])
    return root / "library"


def test_a_job_runs_in_a_process_of_its_own_and_answers_what_the_facade_does(with_copies):
    jobs = Jobs(with_copies)
    try:
        job, joined = jobs.submit("duplicates", {"threshold": 0.995, "crops": False})
        assert not joined and job.state == RUNNING
        pid = running(jobs, job.id).pid
        assert pid != os.getpid()
        os.kill(pid, signal.SIGCONT)
        done = wait(jobs, job.id)
    finally:
        jobs.close()
    assert done.state == DONE and done.error is None and done.finished >= done.started
    with Library.open(with_copies) as lib:
        expected = [g.to_dict() for g in lib.duplicates(0.995, crops=False)]
    assert len(expected) >= 2 and done.result == expected
    assert done.stage and done.done == done.total > 0  # it reported its progress
    record = done.to_dict()
    assert record["state"] == "done" and record["result"] == expected and record["seconds"] > 0
    assert "result" not in done.to_dict(result=False)


def test_identical_requests_join_one_job_and_the_last_to_cancel_stops_it(jobs):
    first, _ = jobs.submit("duplicates", {"threshold": 0.96, "crops": False})
    pid = running(jobs, first.id).pid
    again, joined = jobs.submit("duplicates", {"crops": False, "threshold": 0.96})  # same, in another order
    assert joined and again is first and first.watchers == 2
    other, joined = jobs.submit("duplicates", {"threshold": 0.95, "crops": False})
    assert not joined and other.id != first.id
    assert jobs.cancel(first.id).state == RUNNING and alive(pid)  # one of two cancelled: it goes on
    assert jobs.cancel(first.id).state == CANCELLED
    assert not alive(pid)
    assert wait(jobs, other.id).state == DONE  # the queued one started once the slot was free


def test_jobs_are_bounded_and_queued_ones_run_in_turn(demo_library):
    with_room_for_two = Jobs(demo_library, max_running=1, max_queued=1)
    try:
        first, _ = with_room_for_two.submit("duplicates", {"threshold": 0.99, "crops": False})
        running(with_room_for_two, first.id)
        second, _ = with_room_for_two.submit("duplicates", {"threshold": 0.98, "crops": False})
        assert second.state == "queued"
        with pytest.raises(TooManyJobsError) as refused:
            with_room_for_two.submit("duplicates", {"threshold": 0.97, "crops": False})
        assert "1 jobs are running and 1 waiting" in refused.value.message and refused.value.hint
        os.kill(first.pid, signal.SIGCONT)
        assert wait(with_room_for_two, first.id).state == DONE
        assert wait(with_room_for_two, second.id).state == DONE
    finally:
        with_room_for_two.close()


def test_a_failed_job_says_why(jobs, demo_images):
    job, _ = jobs.submit("eval", {"folder": str(demo_images[0].parent.parent), "classifier": "nope"})
    failed = wait(jobs, job.id)
    assert failed.state == FAILED and failed.result is None
    assert "no classifier called 'nope'" in failed.error["error"] and "classifier train" in failed.error["hint"]
    assert failed.error["type"] == "ClassifierError"


def test_a_job_whose_process_dies_fails_and_says_so(jobs):
    job = running(jobs, jobs.submit("duplicates", {"threshold": 0.94, "crops": False})[0].id)
    os.kill(job.pid, signal.SIGKILL)
    died = wait(jobs, job.id)
    assert died.state == FAILED and "process died (exit code -9)" in died.error["error"]


def test_finished_jobs_are_forgotten_beyond_the_bound(demo_library):
    keeping_two = Jobs(demo_library, keep_finished=2)
    try:
        ids = []
        for threshold in (0.999, 0.998, 0.997):
            job, _ = keeping_two.submit("duplicates", {"threshold": threshold, "crops": False})
            wait(keeping_two, job.id)
            ids.append(job.id)
        with pytest.raises(JobNotFoundError):
            keeping_two.get(ids[0])
        assert [j.id for j in keeping_two.list()] == ids[1:]
    finally:
        keeping_two.close()


def test_a_tag_job_writes_the_tags_the_facade_would(demo_library, tmp_path):
    root = tmp_path / "library"
    shutil.copytree(demo_library, root)
    runner = Jobs(root)
    try:
        job, _ = runner.submit("tag", {"labels": "demo-colours", "threshold": 0.0, "top_k": 1})
        done = wait(runner, job.id)
        assert done.state == DONE, done.error
        assert done.result["tagged"] == 48 and done.result["label_set"] == "demo-colours"
    finally:
        runner.close()
    with Library.open(root) as lib:
        assert sum(t.images for t in lib.tags()) == 48


def test_closing_stops_every_job(demo_library):
    runner = Jobs(demo_library)
    job = running(runner, runner.submit("duplicates", {"threshold": 0.93, "crops": False})[0].id)
    pid = job.pid
    queued, _ = runner.submit("duplicates", {"threshold": 0.92, "crops": False})
    runner.close()
    assert not alive(pid)
    assert runner.get(job.id).state == CANCELLED and runner.get(queued.id).state == CANCELLED


def test_an_unknown_kind_is_a_programming_error(jobs):
    with pytest.raises(ValueError, match="unknown job kind"):
        jobs.submit("rm -rf", {})
    with pytest.raises(JobNotFoundError):
        jobs.get("no-such-job")


def test_a_closed_runner_starts_nothing(demo_library):
    runner = Jobs(demo_library)
    runner.close()
    with pytest.raises(TooManyJobsError, match="shutting down"):
        runner.submit("duplicates", {"threshold": 0.99, "crops": False})
