"""Attacks on the job folder retention (retention.py), from a review that tried to break it: what a
job can leave at a record's name in its own folder."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from conductor_executor import supervision as sv
from conductor_executor.retention import FolderSweep
from tests.unit.test_executor_retention import _job


def test_a_fifo_named_done_in_a_finished_jobs_folder_does_not_hang_the_sweep(tmp_path: Path) -> None:
    """A job may put anything in its own folder ($CONDUCTOR_JOB_DIR): ``mkfifo $CONDUCTOR_JOB_DIR/done``.
    Its end is marked in process.json, so the FIFO stays; the sweep's ``read_done`` then opens it
    and blocks for ever: no folder of any job is removed again (and the worker thread never ends).
    A symlink ``done -> /dev/zero`` (or a huge sparse file) makes the same read eat the executor's
    memory instead."""
    folder = _job(tmp_path, 7)
    os.mkfifo(folder / sv.DONE)
    _job(tmp_path, 8)
    sweep = FolderSweep(tmp_path, retention_s=0)
    result: dict[str, object] = {}

    def expire() -> None:
        result["expired"] = sweep.expired({"7": (7, 0), "8": (8, 0)}, now=1e10, busy=set())

    worker = threading.Thread(target=expire, daemon=True)
    worker.start()
    worker.join(3)
    hung = worker.is_alive()
    if hung:  # free the reader: a writer that closes at once gives it an end of file
        fd = os.open(folder / sv.DONE, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        worker.join(3)
    assert not hung, "the sweep blocked reading a FIFO the job left as its 'done' record"


def test_a_done_record_that_is_a_link_is_not_followed(tmp_path: Path) -> None:
    """A finished job's ``done`` replaced by a link to a large file outside: the sweep reads all of it
    (here 64 MiB of a sparse file; /dev/zero never ends). It should not follow the job's links, nor
    read more than a record's size."""
    big = tmp_path / "outside-big"
    with open(big, "wb") as f:
        f.truncate(64 << 20)
    jobs = tmp_path / "jobs"
    folder = _job(jobs, 7)
    (folder / sv.DONE).symlink_to(big)
    reads: list[int] = []
    real = Path.read_bytes

    def counting(self: Path) -> bytes:
        data = real(self)
        reads.append(len(data))
        return data

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Path, "read_bytes", counting)
        FolderSweep(jobs, retention_s=0).expired({"7": (7, 0)}, now=1e10, busy=set())
    assert max(reads, default=0) < 1 << 20, f"the sweep read {max(reads)} bytes of a job's 'done' link"


def test_a_fifo_named_done_does_not_hang_the_executors_start(tmp_path: Path) -> None:
    """Same FIFO, at the executor's next start: ``take_stock`` (called on the event loop by
    ``Executor.recover``, before the node registers or beats) reads it and blocks for ever: one job
    wedges its node's executor at every restart. (Older than retention; retention does not help,
    since its sweep blocks on the same FIFO before it could remove that folder.)"""
    from conductor_executor.adoption import take_stock

    folder = _job(tmp_path, 7)
    os.mkfifo(folder / sv.DONE)
    worker = threading.Thread(target=take_stock, args=(tmp_path, lambda job_id, run: False, 1.0), daemon=True)
    worker.start()
    worker.join(3)
    hung = worker.is_alive()
    if hung:
        os.close(os.open(folder / sv.DONE, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(3)
    assert not hung, "take_stock blocked reading a FIFO the job left as its 'done' record"
