"""Which finished jobs' folders a sweep removes (``retention.FolderSweep``), on real folders."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from conductor_contracts import events as ev
from conductor_executor import supervision as sv
from conductor_executor.adoption import take_stock
from conductor_executor.outbox import Outbox
from conductor_executor.retention import GONE, FolderSweep, Position, sweep_once
from conductor_platform.retry import Backoff


async def _never(event: ev.Event, headers: dict[str, str]) -> None:
    raise ConnectionError("NATS away")


def _job(jobs: Path, job_id: int, run: int = 0, *, done: str | None = "JobCompleted", at: float = 1000.0) -> Path:
    """A started job's folder, done (its outcome marked in its record, at ``at``) or running."""
    folder = jobs / sv.folder_name(job_id, run)
    folder.mkdir(parents=True)
    (folder / "script.sh").write_text("true\n")
    (folder / sv.STATUS).write_text("pgid 99\nexit 0\n")
    sv.write_process(folder, sv.ProcessRecord(pid=4242, started=1.0, supervised=True, placed_seq=job_id + 1))
    if done is not None:
        sv.mark_done(folder, done)
    os.utime(folder / sv.PROCESS, (at, at))
    return folder


def _settled_twice(sweep: FolderSweep) -> dict[str, tuple[int, int]]:
    """What two sweeps in a row find settled, everything delivered being acked."""
    sweep.settled(sweep.listing(), Position(delivered=50, ack_floor=50))
    return sweep.settled(sweep.listing(), Position(delivered=50, ack_floor=50))


def test_a_folder_is_settled_one_sweep_after_it_was_listed_once_the_acks_caught_up(tmp_path: Path) -> None:
    sweep = FolderSweep(tmp_path, retention_s=0)
    _job(tmp_path, 1)
    # The first sweep knows no earlier position: nothing it lists can be known acked yet.
    assert sweep.settled(sweep.listing(), Position(delivered=10, ack_floor=10)) == {}
    _job(tmp_path, 2)
    # Delivered 10 then, acked only up to 9 now: a placement may still come again.
    assert sweep.settled(sweep.listing(), Position(delivered=12, ack_floor=9)) == {}
    # Acked past 12, what was delivered when both were listed: job 2 too, listed before that position.
    assert sweep.settled(sweep.listing(), Position(delivered=12, ack_floor=12)) == {"1": (1, 0), "2": (2, 0)}


def test_a_folder_made_after_the_last_position_waits_for_the_next(tmp_path: Path) -> None:
    sweep = FolderSweep(tmp_path, retention_s=0)
    _job(tmp_path, 1)
    sweep.settled(sweep.listing(), Position(delivered=5, ack_floor=5))
    _job(tmp_path, 2)
    assert set(sweep.settled(sweep.listing(), Position(delivered=9, ack_floor=9))) == {"1"}


def test_only_runs_done_for_the_retention_and_not_held_expire(tmp_path: Path) -> None:
    sweep = FolderSweep(tmp_path, retention_s=100)
    _job(tmp_path, 1, at=1000.0)  # done 200 s before "now"
    _job(tmp_path, 2, at=1150.0)  # done 50 s before
    _job(tmp_path, 3, done=None, at=900.0)  # still running
    _job(tmp_path, 4, run=2, at=1000.0)  # done, but its run is held by the executor
    never_started = tmp_path / sv.folder_name(5, 0)  # refused before its start: only a done file
    never_started.mkdir()
    (never_started / sv.DONE).write_text("JobCancelled")
    os.utime(never_started / sv.DONE, (1000.0, 1000.0))
    expired = sweep.expired(_settled_twice(sweep), now=1200.0, busy={(4, 2)})
    assert expired == {"1": (1, 0), "5": (5, 0)}


def test_removal_takes_what_the_job_left_and_follows_no_link(tmp_path: Path) -> None:
    jobs, outside = tmp_path / "jobs", tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep me")
    folder = _job(jobs, 7)
    (folder / "scratch" / "deep").mkdir(parents=True)
    (folder / "scratch" / "deep" / "file").write_text("x")
    (folder / "link").symlink_to(outside, target_is_directory=True)
    (folder / "file-link").symlink_to(outside / "precious")
    sweep = FolderSweep(jobs, retention_s=0)
    assert sweep.remove(["7", "8"]) == 1  # 8: not there (another process removed it)
    assert list(jobs.iterdir()) == []
    assert (outside / "precious").read_text() == "keep me"


def test_a_removal_cut_short_is_never_taken_for_a_job_and_is_finished_later(tmp_path: Path) -> None:
    # What an executor killed in the middle of removing job 12's folder leaves: part of its records.
    half = tmp_path / f"{GONE}12"
    half.mkdir()
    (half / sv.STATUS).write_text("pgid 99\n")
    stock = take_stock(tmp_path, lambda job_id, run: False, grace_s=1)
    assert not stock.running and not stock.ended and not stock.lost and not stock.orphans
    FolderSweep(tmp_path, retention_s=0).listing()
    assert not half.exists()


def test_an_executor_killed_halfway_through_a_removal_reports_nothing_at_its_next_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _job(tmp_path, 7)

    def killed_halfway(path: Path, ignore_errors: bool = False) -> None:
        (Path(path) / sv.PROCESS).unlink()  # its record first, as a removal in directory order may
        raise SystemExit("killed")

    monkeypatch.setattr("conductor_executor.retention.shutil.rmtree", killed_halfway)
    with pytest.raises(SystemExit):
        FolderSweep(tmp_path, retention_s=0).remove(["7"])
    # A job folder with a status and no record would be reported lost (NODE_FAIL) a second time.
    stock = take_stock(tmp_path, lambda job_id, run: False, grace_s=1)
    assert not stock.running and not stock.ended and not stock.lost and not stock.unrecorded


async def test_a_folder_stays_when_the_outbox_cannot_tell_what_it_owes(tmp_path: Path) -> None:
    """An outbox folder that cannot be listed (EMFILE, EIO...) says nothing is pending to its
    publisher; to the sweep it must say "cannot tell": the folder of a run whose outcome may still
    be owed (its output is uploaded from the folder's records right before) stays."""
    jobs, outbox_dir = tmp_path / "jobs", tmp_path / "outbox"
    _job(jobs, 7)
    outbox = Outbox(outbox_dir, _never, Backoff(0.001, 0.002))
    outbox.put(ev.JobCompleted(job_id=7, node="n", exit_code=0, run=0))
    assert outbox.runs_owed() == {(7, 0)}
    sweep, bus = FolderSweep(jobs, retention_s=0), _AllAcked()
    assert await sweep_once(sweep, bus, "d", set, outbox.runs_owed) == 0  # type: ignore[arg-type]
    assert await sweep_once(sweep, bus, "d", set, outbox.runs_owed) == 0  # type: ignore[arg-type]
    outbox_dir.rename(tmp_path / "elsewhere")  # as unlistable as it gets, for a test run as root
    assert outbox.pending() == []
    with pytest.raises(OSError):
        await sweep_once(sweep, bus, "d", set, outbox.runs_owed)  # type: ignore[arg-type]
    assert (jobs / "7").exists()


class _AllAcked:
    """What ``sweep_once`` asks of a bus: a consumer whose every delivered placement is acked."""

    stream = "S"

    def __init__(self) -> None:
        position = SimpleNamespace(delivered=SimpleNamespace(stream_seq=50), ack_floor=SimpleNamespace(stream_seq=50))

        async def consumer_info(stream: str, durable: str) -> SimpleNamespace:
            return position

        self.js = SimpleNamespace(consumer_info=consumer_info)


def test_what_still_runs_with_a_folders_mark_is_killed_before_the_folder_goes(tmp_path: Path) -> None:
    """A job can make its own records say it is done (it writes in its folder) and run on: once its
    folder is gone nothing would find it, so what carries the folder's mark is killed first."""
    folder = _job(tmp_path, 7)
    marked = subprocess.Popen(["sleep", "60"], env=os.environ | {sv.MARK: sv.mark_of(folder)}, start_new_session=True)
    bystander = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        assert FolderSweep(tmp_path, retention_s=0).remove(["7"]) == 1
        assert marked.wait(5) == -signal.SIGKILL
        assert bystander.poll() is None
    finally:
        for process in (marked, bystander):
            process.kill()
            process.wait()


def test_a_folder_that_cannot_be_removed_whole_is_retried_and_reported_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # As root nothing a job does stops the removal; a removal that leaves the folder stands for it.
    (tmp_path / f"{GONE}7").mkdir()
    sweep = FolderSweep(tmp_path, retention_s=0)
    with monkeypatch.context() as patched:
        patched.setattr("conductor_executor.retention.shutil.rmtree", lambda path, ignore_errors: None)
        for _ in range(3):
            assert sweep.listing() == {}
    warned = [r for r in caplog.records if "could not be removed whole" in r.getMessage()]
    assert len(warned) == 1
    assert sweep.listing() == {}  # the real removal, at a later sweep
    assert not (tmp_path / f"{GONE}7").exists()


def test_a_stuck_folder_that_something_else_removed_is_forgotten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("7", "8"):
        (tmp_path / f"{GONE}{name}").mkdir()
    sweep = FolderSweep(tmp_path, retention_s=0)
    with monkeypatch.context() as patched:
        patched.setattr("conductor_executor.retention.shutil.rmtree", lambda path, ignore_errors: None)
        sweep.listing()
        assert sweep._stuck == {f"{GONE}7", f"{GONE}8"}
        (tmp_path / f"{GONE}7").rmdir()  # an operator's clean-up
        sweep.listing()
    assert sweep._stuck == {f"{GONE}8"}
