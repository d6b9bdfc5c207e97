"""Attacks on the job folder retention (retention.py) and on the executor's start, from a review that
tried to break them: what a job can leave at a record's name in its own folder ($CONDUCTOR_JOB_DIR).
A FIFO there blocked every later sweep and every later start; a link was followed and read whole.
Each case for the three kinds of folder: a record that says whether its run is done, an earlier
executor's record (which does not: its ``done`` file is read), and no record (a job that never
started: its ``done`` file too)."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from conductor_executor import supervision as sv
from conductor_executor.adoption import take_stock
from conductor_executor.retention import FolderSweep
from tests.unit.test_executor_retention import _job

KINDS = ("record", "older record", "no record")


def _folder(jobs: Path, job_id: int, kind: str) -> Path:
    """A finished job's folder of that kind, done long ago, its ``done`` file still to be put there."""
    if kind == "record":
        return _job(jobs, job_id)
    folder = jobs / str(job_id)
    folder.mkdir(parents=True)
    if kind == "older record":  # no "done" field: written before done went into the record
        (folder / sv.PROCESS).write_text(json.dumps({"pid": 4242, "started": 1.0}))
        os.utime(folder / sv.PROCESS, (1000.0, 1000.0))
    return folder


def _returns(call: Callable[[], object], unblock: Path) -> bool:
    """``call`` returns within 3 s (else a writer opening ``unblock`` frees the reader it waits as)."""
    worker = threading.Thread(target=call, daemon=True)
    worker.start()
    worker.join(3)
    if worker.is_alive():
        os.close(os.open(unblock, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(3)
        return False
    return True


@pytest.mark.parametrize("kind", KINDS)
def test_a_fifo_named_done_stops_neither_a_sweep_nor_a_start(tmp_path: Path, kind: str) -> None:
    folder = _folder(tmp_path, 7, kind)
    os.mkfifo(folder / sv.DONE)
    _job(tmp_path, 8)
    sweep = FolderSweep(tmp_path, retention_s=0)
    found: dict[str, object] = {}

    def expire() -> None:
        found["expired"] = sweep.expired({"7": (7, 0), "8": (8, 0)}, now=1e10, busy=set())

    assert _returns(expire, folder / sv.DONE), "the sweep waited on a FIFO the job left as 'done'"
    # Job 8 goes; job 7 only if its record says it is done (a FIFO says nothing).
    assert found["expired"] == ({"7": (7, 0), "8": (8, 0)} if kind == "record" else {"8": (8, 0)})
    assert _returns(lambda: take_stock(tmp_path, lambda job_id, run: False, 1.0), folder / sv.DONE), (
        "the executor's start waited on a FIFO the job left as 'done'"
    )


@pytest.mark.parametrize("kind", KINDS[1:])
def test_a_done_record_that_is_a_link_is_not_followed(tmp_path: Path, kind: str) -> None:
    outside = tmp_path / "outside"
    outside.write_text("JobCompleted")
    folder = _folder(tmp_path / "jobs", 7, kind)
    (folder / sv.DONE).symlink_to(outside)
    assert sv.read_done(folder) is None
    assert FolderSweep(tmp_path / "jobs", retention_s=0).expired({"7": (7, 0)}, now=1e10, busy=set()) == {}


def test_an_older_executors_finished_folder_is_still_done_after_an_upgrade(tmp_path: Path) -> None:
    folder = _folder(tmp_path, 7, "older record")
    (folder / sv.DONE).write_text("JobCompleted")
    assert sv.read_done(folder) == "JobCompleted"
    stock = take_stock(tmp_path, lambda job_id, run: False, 1.0)
    assert not stock.running and not stock.ended and not stock.lost
    assert FolderSweep(tmp_path, retention_s=0).expired({"7": (7, 0)}, now=1e10, busy=set()) == {"7": (7, 0)}


def test_a_done_file_a_running_job_wrote_does_not_make_it_done(tmp_path: Path) -> None:
    folder = _job(tmp_path, 7, done=None)
    (folder / sv.DONE).write_text("JobCompleted")
    assert sv.read_done(folder) is None
    assert FolderSweep(tmp_path, retention_s=0).expired({"7": (7, 0)}, now=1e10, busy=set()) == {}


@pytest.mark.parametrize("thing", ["folder", "fifo", "link"])
def test_records_are_written_over_whatever_the_job_put_at_their_names(tmp_path: Path, thing: str) -> None:
    outside = tmp_path / "outside"
    outside.write_text("keep me")
    folder = tmp_path / "7"
    folder.mkdir()
    for name in (sv.PROCESS, sv.DONE, sv.KILL):
        path = folder / name
        if thing == "folder":
            (path / "inside").mkdir(parents=True)
        elif thing == "fifo":
            os.mkfifo(path)
        else:
            path.symlink_to(outside)
    sv.write_kill(folder, frozenset({"cancelled"}))
    sv.mark_done(folder, "JobCancelled")  # no usable record: in a done file
    assert sv.read_kill(folder) == frozenset({"cancelled"})
    assert sv.read_done(folder) == "JobCancelled"
    assert outside.read_text() == "keep me"
