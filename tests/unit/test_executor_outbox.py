"""The executor's outbox: durable, in order, retried until published, across restarts."""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Callable
from pathlib import Path

import pytest

from conductor_contracts import events as ev
from conductor_executor import supervision as sv
from conductor_executor.outbox import Outbox, file_name, parse_name
from conductor_executor.outbox import encode as outbox_encode
from conductor_executor.service import Executor
from conductor_executor.settings import ExecutorSettings
from conductor_platform.retry import Backoff, transient
from tests.integration.helpers import eventually


class Stream:
    """Publishes into a list; fails the first ``failures`` tries."""

    def __init__(self, failures: int = 0) -> None:
        self.failures, self.tries = failures, 0
        self.events: list[ev.Event] = []

    async def publish(self, event: ev.Event, headers: dict[str, str] | None = None) -> None:
        self.tries += 1
        if self.tries <= self.failures:
            raise ConnectionError("not connected to NATS")
        self.events.append(event)


def _outbox(folder: Path, stream: Stream) -> Outbox:
    return Outbox(folder, stream.publish, Backoff(0.001, 0.002))


async def _drain(outbox: Outbox) -> None:
    publisher = asyncio.create_task(outbox.run())
    try:
        assert await outbox.drained(10)
    finally:
        publisher.cancel()


async def test_events_are_published_in_order_after_any_number_of_failures(tmp_path: Path) -> None:
    stream = Stream(failures=100)  # far beyond the 30 tries the executor once gave an outcome
    outbox = _outbox(tmp_path, stream)
    sent: list[ev.Event] = [
        ev.JobStarted(job_id=3, node="n", pid=10),
        ev.JobStarted(job_id=4, node="n", pid=11),
        ev.JobCompleted(job_id=3, node="n"),
        ev.JobFailed(job_id=4, node="n", exit_code=2),
    ]
    for event in sent:
        outbox.put(event)
    await _drain(outbox)
    assert stream.events == sent
    assert stream.tries == 100 + len(sent)
    assert not list(tmp_path.iterdir())


async def test_what_is_pending_survives_a_restart_and_goes_first(tmp_path: Path) -> None:
    before = _outbox(tmp_path, Stream())
    before.put(ev.JobStarted(job_id=3, node="n", pid=10))
    before.put(ev.JobCompleted(job_id=3, node="n"))
    (tmp_path / ".000000000003-4-JobStarted.json.tmp").write_bytes(b"{")  # a write cut short
    stream = Stream()
    after = _outbox(tmp_path, stream)
    assert after.holds_outcome(3) and not after.holds_outcome(4)
    after.put(ev.NodeRegistered(node="n", cpus=1, memory_mb=1))
    await _drain(after)
    assert [e.type for e in stream.events] == ["JobStarted", "JobCompleted", "NodeRegistered"]
    assert not list(tmp_path.iterdir())


async def test_two_runs_of_a_job_are_kept_apart_and_one_can_be_dropped(tmp_path: Path) -> None:
    outbox = _outbox(tmp_path, Stream())
    outbox.put(ev.JobStarted(job_id=3, node="n", pid=10))
    outbox.put(ev.JobFailed(job_id=3, node="n", exit_code=None, node_fail=True))
    outbox.put(ev.JobStarted(job_id=3, node="n", pid=11, run=1))
    outbox.put(ev.JobCompleted(job_id=3, node="n", run=1))
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names[2:] == ["000000000003-3r1-JobStarted.json", "000000000004-3r1-JobCompleted.json"]
    after = _outbox(tmp_path, Stream())  # read back from the names alone
    assert after.holds_outcome(3, 0) and after.holds_outcome(3, 1) and not after.holds_outcome(3, 2)
    assert [(n.job_id, n.run, n.kind) for n in after.owed()][2] == (3, 1, "JobStarted")
    assert after.discard(3, 0) == 2
    assert not after.holds_outcome(3, 0) and after.holds_outcome(3, 1)
    stream = Stream()
    after = _outbox(tmp_path, stream)
    await _drain(after)
    assert [(e.type, getattr(e, "run", None)) for e in stream.events] == [("JobStarted", 1), ("JobCompleted", 1)]


async def test_an_unreadable_file_without_a_substitute_is_set_aside_not_blocking_the_rest(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "000000000001-5-JobCompleted.json").write_text("not json")
    stream = Stream()
    outbox = _outbox(tmp_path, stream)
    outbox.put(ev.JobCompleted(job_id=6, node="n"))
    await _drain(outbox)
    assert [e.job_id for e in stream.events if isinstance(e, ev.JobCompleted)] == [6]
    assert [p.name for p in tmp_path.iterdir()] == ["000000000001-5-JobCompleted.json.bad"]
    # Set aside is done with, not a failed publish to wait and retry after.
    assert not [r for r in caplog.records if "publish failed" in r.getMessage()]


async def test_a_job_id_as_large_as_a_stream_sequence_goes_out(tmp_path: Path) -> None:
    stream = Stream()
    outbox = _outbox(tmp_path, stream)
    outbox.put(ev.JobCompleted(job_id=2**64 - 1, node="n"))
    await _drain(_outbox(tmp_path, stream))  # a restart reads its name back
    assert [e.job_id for e in stream.events if isinstance(e, ev.JobCompleted)] == [2**64 - 1]


def test_backoff_doubles_up_to_its_cap_and_resets() -> None:
    backoff = Backoff(0.5, 5)
    assert [backoff.next() for _ in range(6)] == [0.5, 1, 2, 4, 5, 5]
    backoff.reset()
    assert backoff.next() == 0.5


@pytest.mark.parametrize(
    ("err", "expected"), [(TimeoutError(), True), (ConnectionError(), True), (ValueError("bad"), False)]
)
def test_nats_trouble_is_transient_a_bad_message_is_not(err: Exception, expected: bool) -> None:
    assert transient(err) is expected


async def test_recovery_reports_node_fail_only_for_jobs_without_an_outcome(tmp_path: Path) -> None:
    settings = ExecutorSettings(node="n", cpus=1, memory="1G", state_dir=tmp_path)
    for job_id in (5, 6, 7):
        (settings.jobs_dir / str(job_id)).mkdir(parents=True)
    (settings.jobs_dir / "7" / "done").write_text("JobCompleted")
    # Job 5's outcome reached the outbox, but the executor stopped before its done marker.
    _outbox(settings.outbox_dir, Stream()).put(ev.JobCompleted(job_id=5, node="n"))
    executor = Executor(settings)
    await executor.recover()
    assert [p.name.split("-", 1)[1] for p in executor.outbox.pending()] == ["5-JobCompleted.json", "6-JobFailed.json"]
    assert all((settings.jobs_dir / str(j) / "done").exists() for j in (5, 6, 7))


def _settings(tmp_path: Path) -> ExecutorSettings:
    return ExecutorSettings(node="n", cpus=1, memory="1G", state_dir=tmp_path, retry_first_s=0.001, retry_max_s=0.002)


def _executor(settings: ExecutorSettings, stream: Stream) -> Executor:
    executor = Executor(settings)
    executor.outbox._publish = stream.publish  # the stream without NATS
    return executor


async def test_a_truncated_outcome_still_ends_its_job_visibly(tmp_path: Path) -> None:
    # The review's repro: the job ended while NATS was away, its JobCompleted waited in the outbox,
    # the executor was SIGKILLed and the file cut to 40 bytes (`truncate -s 40`). The job is marked done.
    settings = _settings(tmp_path)
    (settings.jobs_dir / "5").mkdir(parents=True)
    (settings.jobs_dir / "5" / "done").write_text("JobCompleted")
    _outbox(settings.outbox_dir, Stream()).put(ev.JobCompleted(job_id=5, node="n"))
    [kept] = settings.outbox_dir.iterdir()
    kept.write_bytes(kept.read_bytes()[:40])
    stream = Stream(failures=3)  # NATS still away for a while: the substitute is retried like any event
    executor = _executor(settings, stream)
    await executor.recover()
    await executor.register()
    await _drain(executor.outbox)
    failed, registered = stream.events
    assert isinstance(failed, ev.JobFailed) and failed.job_id == 5 and failed.node_fail
    assert failed.message.startswith("the executor's record of this job's outcome was damaged: ")
    assert isinstance(registered, ev.NodeRegistered)  # not blocked behind it
    assert [p.name for p in settings.outbox_dir.iterdir()] == [f"{kept.name}.bad"]  # kept for a human


@pytest.mark.parametrize("kind", ["JobStarted", "JobFailed", "JobTimedOut", "JobOutOfMemory", "JobCancelled"])
async def test_any_damaged_event_of_a_job_ends_it_node_fail(tmp_path: Path, kind: str) -> None:
    settings = _settings(tmp_path)
    settings.outbox_dir.mkdir(parents=True)
    (settings.outbox_dir / f"000000000001-9-{kind}.json").write_bytes(b'{"type": "' + kind.encode())
    stream = Stream()
    executor = _executor(settings, stream)
    await _drain(executor.outbox)
    [failed] = stream.events
    assert isinstance(failed, ev.JobFailed) and failed.job_id == 9 and failed.node_fail and failed.node == "n"


async def test_a_damaged_job_started_followed_by_its_outcome_gives_way_to_it(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    settings.outbox_dir.mkdir(parents=True)
    (settings.outbox_dir / "000000000001-9-JobStarted.json").write_bytes(b"\x00\x00")
    stream = Stream()
    executor = _executor(settings, stream)
    executor.outbox.put(ev.JobCompleted(job_id=9, node="n"))
    await _drain(executor.outbox)
    assert [(e.type, getattr(e, "job_id", None)) for e in stream.events] == [("JobCompleted", 9)]


async def test_a_damaged_registration_registers_again(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    settings.outbox_dir.mkdir(parents=True)
    (settings.outbox_dir / "000000000001-node-NodeRegistered.json").write_text("{}")
    (settings.outbox_dir / "000000000002-4-JobCompleted.json").write_bytes(
        ev.encode(ev.JobCompleted(job_id=4, node="n"))
    )
    stream = Stream()
    await _drain(_executor(settings, stream).outbox)
    registered, completed = stream.events
    assert isinstance(registered, ev.NodeRegistered) and registered.node == "n" and registered.cpus == 1
    assert isinstance(completed, ev.JobCompleted) and completed.job_id == 4


async def test_anything_unexpected_in_the_folder_is_set_aside_and_never_stops_the_executor(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "7.json").write_text("{}")  # the review's repro: this crashed the executor at start
    (tmp_path / "12-x.json").write_text("{}")
    (tmp_path / "999999999999999999999-1-JobCompleted.json").write_text("{}")
    (tmp_path / "000000000003-8-JobCompleted.json").mkdir()  # the right name, not a file
    (tmp_path / "notes.txt").write_text("a human was here")
    (tmp_path / "000000000002-6-JobCompleted.json").write_bytes(ev.encode(ev.JobCompleted(job_id=6, node="n")))
    stream = Stream()
    outbox = _outbox(tmp_path, stream)
    outbox.put(ev.JobCompleted(job_id=7, node="n"))
    await _drain(outbox)
    assert [e.job_id for e in stream.events if isinstance(e, ev.JobCompleted)] == [6, 7]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "000000000003-8-JobCompleted.json.bad",
        "12-x.json.bad",
        "7.json.bad",
        "999999999999999999999-1-JobCompleted.json.bad",
        "notes.txt.bad",
    ]
    assert sum(r.getMessage() == "outbox: file set aside" for r in caplog.records) == 5


async def test_a_folder_or_link_of_an_events_name_made_while_it_runs_is_set_aside_not_substituted(
    tmp_path: Path,
) -> None:
    # A job may make them (a working directory there, once): read as unreadable events, they made the
    # outbox publish a substitute NODE_FAIL for the job their name says, another user's running one.
    stream = Stream()
    outbox = _outbox(tmp_path, stream)
    (tmp_path / "000000000001-41-JobCompleted.json").mkdir()
    target = tmp_path.parent / "elsewhere.json"
    target.write_bytes(ev.encode(ev.JobCompleted(job_id=42, node="n")))
    (tmp_path / "000000000002-42-JobCompleted.json").symlink_to(target)
    outbox.put(ev.JobCompleted(job_id=7, node="n"))
    await _drain(outbox)
    assert [(e.type, getattr(e, "job_id", None)) for e in stream.events] == [("JobCompleted", 7)]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "000000000001-41-JobCompleted.json.bad",
        "000000000002-42-JobCompleted.json.bad",
    ]


class BrokenDisk(Outbox):
    """An outbox whose writes fail (ENOSPC) while ``broken``: chmod does not stop root."""

    broken = True
    tries = 0

    def _write_file(self, name: str, data: bytes) -> None:
        self.tries += 1
        if self.broken:
            raise OSError(errno.ENOSPC, "No space left on device")
        super()._write_file(name, data)


def _broken_disk(executor: Executor) -> BrokenDisk:
    outbox = BrokenDisk(executor.settings.outbox_dir, executor.outbox._publish, Backoff(0.001, 0.002))
    executor.outbox = outbox
    return outbox


async def _until(condition: Callable[[], bool]) -> None:
    async def probe() -> bool:
        return condition()

    await eventually(probe, what="the disk tried")


async def test_an_outcome_the_disk_refuses_is_tried_until_written_and_only_then_marked_done(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = _settings(tmp_path)
    folder = settings.jobs_dir / "5"
    folder.mkdir(parents=True)
    sv.write_process(folder, sv.ProcessRecord(pid=4242, started=1.0, supervised=True))
    executor = _executor(settings, Stream())
    outbox = _broken_disk(executor)
    finishing = asyncio.create_task(executor.finish(5, ev.JobCompleted(job_id=5, node="n")))
    await _until(lambda: outbox.tries >= 5)
    assert not finishing.done() and sv.read_done(folder) is None and not outbox.pending()
    assert any(r.getMessage() == "outbox: could not write an event; retrying" for r in caplog.records)
    outbox.broken = False
    await finishing
    assert sv.read_done(folder) == "JobCompleted"
    assert [p.name.split("-", 1)[1] for p in outbox.pending()] == ["5-JobCompleted.json"]


async def test_a_stop_ends_the_retries_without_a_done_marker(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    (settings.jobs_dir / "5").mkdir(parents=True)
    stop = asyncio.Event()
    executor = Executor(settings, stop)
    outbox = _broken_disk(executor)
    finishing = asyncio.create_task(executor.finish(5, ev.JobCompleted(job_id=5, node="n")))
    await _until(lambda: outbox.tries >= 2)
    stop.set()
    await finishing
    # No marker: the next start reports the job NODE_FAIL rather than leaving it RUNNING.
    assert not (settings.jobs_dir / "5" / "done").exists()
    restarted = _executor(settings, Stream())
    await restarted.recover()
    assert [p.name.split("-", 1)[1] for p in restarted.outbox.pending()] == ["5-JobFailed.json"]


async def test_registration_and_recovery_wait_for_a_disk_that_refuses_them(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    (settings.jobs_dir / "5").mkdir(parents=True)
    stream = Stream()
    executor = _executor(settings, stream)
    outbox = _broken_disk(executor)
    starting = asyncio.create_task(executor.recover())
    await _until(lambda: outbox.tries >= 3)
    outbox.broken = False
    await starting
    outbox.broken = True
    registering = asyncio.create_task(executor.register())
    await _until(lambda: outbox.tries >= 6)
    outbox.broken = False
    await registering
    await _drain(outbox)
    assert [e.type for e in stream.events] == ["JobFailed", "NodeRegistered"]


def test_an_outbox_folder_that_cannot_exist_does_not_stop_the_executor(tmp_path: Path) -> None:
    (tmp_path / "n").write_text("a regular file where the node's folder goes")
    executor = Executor(_settings(tmp_path))
    assert executor.outbox.pending() == []
    with pytest.raises(OSError):
        executor.outbox.put(ev.JobCompleted(job_id=1, node="n"))


async def test_a_job_ending_as_its_placement_is_handled_is_on_disk_at_once_or_retried_aside(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    for job_id in (5, 6):
        (settings.jobs_dir / str(job_id)).mkdir(parents=True)
    executor = _executor(settings, Stream())
    # A healthy disk: outcome and marker before the placement is acked, nothing left running.
    executor._report(5, ev.JobCancelled(job_id=5, node="n"))
    assert (settings.jobs_dir / "5" / "done").exists() and executor.outbox.holds_outcome(5)
    assert not executor.monitors
    outbox = _broken_disk(executor)
    executor._report(6, ev.JobCancelled(job_id=6, node="n"))  # returns: the consumer goes on
    await _until(lambda: outbox.tries >= 3)
    assert not (settings.jobs_dir / "6" / "done").exists()
    outbox.broken = False
    await _until(lambda: (settings.jobs_dir / "6" / "done").exists())
    assert outbox.holds_outcome(6)


class FailingJobs(Stream):
    """Fails the first publish of each job in ``jobs``."""

    def __init__(self, jobs: set[int]) -> None:
        super().__init__()
        self.failing = set(jobs)

    async def publish(self, event: ev.Event, headers: dict[str, str] | None = None) -> None:
        job = getattr(event, "job_id", None)
        if job in self.failing:
            self.failing.discard(job)
            raise ConnectionError("not connected to NATS")
        await super().publish(event, headers)


async def test_writes_in_flight_together_are_each_durable_and_keep_their_order(tmp_path: Path) -> None:
    stream = Stream()
    outbox = _outbox(tmp_path, stream)
    sent: list[ev.Event] = [ev.JobStarted(job_id=j, node="n", pid=j) for j in range(1, 21)]
    await asyncio.gather(*(outbox.write(event) for event in sent))  # committed in groups
    assert [name.job_id for name in _outbox(tmp_path, Stream()).owed()] == list(range(1, 21))
    await _drain(outbox)
    assert stream.events == sent


async def test_a_write_the_disk_refuses_fails_alone_in_its_group(tmp_path: Path) -> None:
    class RefusesJob7(Outbox):
        def _write_file(self, name: str, data: bytes) -> None:
            if "-7-" in name:
                raise OSError(errno.ENOSPC, "No space left on device")
            super()._write_file(name, data)

    outbox = RefusesJob7(tmp_path, Stream().publish, Backoff(0.001, 0.002))
    results = await asyncio.gather(
        *(outbox.write(ev.JobCompleted(job_id=j, node="n")) for j in (6, 7, 8)), return_exceptions=True
    )
    assert results[0] is None and isinstance(results[1], OSError) and results[2] is None
    assert [name.job_id for name in outbox.owed()] == [6, 8]


async def test_a_job_s_events_are_never_in_flight_together_so_a_failed_publish_cannot_reorder_them(
    tmp_path: Path,
) -> None:
    # Published several at once: job 3's JobStarted fails while job 4's goes through. Job 3's outcome
    # must still follow its JobStarted; a node's registration follows everything before it.
    stream = FailingJobs({3})
    outbox = _outbox(tmp_path, stream)
    for event in (
        ev.JobStarted(job_id=3, node="n", pid=10),
        ev.JobStarted(job_id=4, node="n", pid=11),
        ev.JobCompleted(job_id=3, node="n"),
        ev.JobCompleted(job_id=4, node="n"),
        ev.NodeRegistered(node="n", cpus=1, memory_mb=1),
        ev.JobStarted(job_id=5, node="n", pid=12),
    ):
        outbox.put(event)
    await _drain(outbox)
    order = [(e.type, getattr(e, "job_id", None)) for e in stream.events]
    assert order.index(("JobStarted", 3)) < order.index(("JobCompleted", 3))
    assert order.index(("JobStarted", 4)) < order.index(("JobCompleted", 4))
    assert order[-2:] == [("NodeRegistered", None), ("JobStarted", 5)]
    assert len(order) == 6 and not list(tmp_path.iterdir())


def test_the_publisher_stops_at_an_event_still_being_written(tmp_path: Path) -> None:
    outbox = _outbox(tmp_path, Stream())
    for job_id in (1, 2, 3):
        outbox.put(ev.JobCompleted(job_id=job_id, node="n"))
    second = outbox.owed()[1]
    outbox._writing.add(file_name(second.seq, ev.JobCompleted(job_id=2, node="n")))
    # Its writer writes the job's done marker when it gets it back: only then may it be published.
    assert [name.job_id for p in outbox._window() if (name := parse_name(p.name))] == [1]


async def test_published_files_are_written_again_rather_than_created_and_deleted(tmp_path: Path) -> None:
    stream = Stream()
    folder, spares = tmp_path / "outbox", tmp_path / "spares"
    outbox = Outbox(folder, stream.publish, Backoff(0.001, 0.002), spares=spares)
    # Long ones first: what a spare held must not outlast the shorter event written into it.
    first: list[ev.Event] = [ev.JobFailed(job_id=j, node="n", exit_code=1, message="x" * 900) for j in (1, 2, 3)]
    await asyncio.gather(*(outbox.write(event) for event in first))
    inodes = {p.stat().st_ino for p in folder.iterdir()}
    await _drain(outbox)
    await eventually(lambda: _async(len(list(spares.iterdir())) == 3), what="published files kept as spares")
    assert not list(folder.iterdir()) and {p.stat().st_ino for p in spares.iterdir()} == inodes
    # The next events go into those files, whole: nothing of what they held before is left.
    later: list[ev.Event] = [
        ev.JobCompleted(job_id=4, node="n"),
        ev.JobFailed(job_id=5, node="n", exit_code=1, message="x" * 500),
    ]
    assert all(len(outbox_encode(event)) < len(outbox_encode(first[0])) for event in later)
    await outbox.write(later[0])
    outbox.put(later[1])
    assert {p.stat().st_ino for p in folder.iterdir()} <= inodes and len(list(spares.iterdir())) == 1
    restarted = Outbox(folder, stream.publish, Backoff(0.001, 0.002), spares=spares)  # finds its spare again
    assert len(restarted._spares) == 1
    await _drain(restarted)
    assert stream.events == first + later


async def _async(value: bool) -> bool:
    return value
