"""The executor's outbox: durable, in order, retried until published, across restarts."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from conductor_contracts import events as ev
from conductor_executor.outbox import Outbox
from conductor_executor.service import Executor
from conductor_executor.settings import ExecutorSettings
from conductor_platform.retry import Backoff, transient


class Stream:
    """Publishes into a list; fails the first ``failures`` tries."""

    def __init__(self, failures: int = 0) -> None:
        self.failures, self.tries = failures, 0
        self.events: list[ev.Event] = []

    async def publish(self, event: ev.Event) -> None:
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


async def test_an_unreadable_file_is_set_aside_not_blocking_the_rest(tmp_path: Path) -> None:
    (tmp_path / "000000000001-5-JobCompleted.json").write_text("not json")
    stream = Stream()
    outbox = _outbox(tmp_path, stream)
    outbox.put(ev.JobCompleted(job_id=6, node="n"))
    await _drain(outbox)
    assert [e.job_id for e in stream.events if isinstance(e, ev.JobCompleted)] == [6]
    assert [p.name for p in tmp_path.iterdir()] == ["000000000001-5-JobCompleted.bad"]


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


def test_recovery_reports_node_fail_only_for_jobs_without_an_outcome(tmp_path: Path) -> None:
    settings = ExecutorSettings(node="n", cpus=1, memory="1G", state_dir=tmp_path)
    for job_id in (5, 6, 7):
        (settings.jobs_dir / str(job_id)).mkdir(parents=True)
    (settings.jobs_dir / "7" / "done").write_text("JobCompleted")
    # Job 5's outcome reached the outbox, but the executor stopped before its done marker.
    _outbox(settings.outbox_dir, Stream()).put(ev.JobCompleted(job_id=5, node="n"))
    executor = Executor(settings)
    executor.recover()
    assert [p.name.split("-", 1)[1] for p in executor.outbox.pending()] == ["5-JobCompleted.json", "6-JobFailed.json"]
    assert all((settings.jobs_dir / str(j) / "done").exists() for j in (5, 6, 7))
