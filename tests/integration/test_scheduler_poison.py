"""The scheduler on a real JetStream with messages it cannot read in its log: it skips them and goes
on placing, also when one sits on its own fenced subjects, and a failed read of the stream does not
end it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from nats.aio.msg import Msg
from nats.errors import ConnectionClosedError
from nats.js.errors import NotFoundError
from prometheus_client import REGISTRY

from conductor_contracts import events as ev
from conductor_contracts import subjects
from conductor_platform.bus import Bus, LogReader, connect, next_batch
from conductor_platform.localservers import _nats_binary, free_port, start_nats
from conductor_scheduler import service
from conductor_scheduler.settings import SchedulerSettings
from tests.integration.helpers import eventually
from tests.unit.scheduling import node, submitted


def _skipped() -> float:
    return REGISTRY.get_sample_value("conductor_scheduler_skipped_events_total") or 0.0


async def _placement(bus: Bus, node_name: str) -> ev.JobPlaced | None:
    try:
        msg = await bus.js.get_last_msg(subjects.STREAM, subjects.placements_for(node_name))
    except NotFoundError:
        return None
    event = ev.decode(msg.data or b"")
    return event if isinstance(event, ev.JobPlaced) else None


async def test_unreadable_events_are_skipped_and_jobs_still_placed(bus: Bus, nats_url: str) -> None:
    skipped = _skipped()
    await bus.js.publish(subjects.SUBMITTED, b"garbage", stream=subjects.STREAM)
    # On a scheduler subject it moves the fence: a scheduler that ignored it would be fenced out forever.
    await bus.js.publish("conductor.sched.job.1.reason", b"{}", stream=subjects.STREAM)
    await bus.publish(node("n1", 2))
    job = await bus.publish(submitted())
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(SchedulerSettings(nats_url=nats_url, use_lease=False), stop))
    try:

        async def placed() -> ev.JobPlaced | None:
            return await _placement(bus, "n1")

        placement = await eventually(placed, what="the job placed")
        assert placement.job_id == job
    finally:
        stop.set()
        scheduler = await task
    assert scheduler is not None and scheduler.skipped == 2 and _skipped() == skipped + 2


async def test_a_failed_read_of_the_stream_is_followed_by_a_new_read(
    bus: Bus, nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = 0

    async def failing_once(sub: LogReader, limit: int, **kwargs: float) -> list[Msg]:
        nonlocal calls
        calls += 1
        if calls == 2:  # after the node was read: the new read must start past it, not fold it twice
            raise ConnectionClosedError
        return await next_batch(sub, limit, **kwargs)

    monkeypatch.setattr(service, "next_batch", failing_once)
    settings = SchedulerSettings(nats_url=nats_url, use_lease=False, retry_max_s=0.5)
    await bus.publish(node("n1", 2))
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(settings, stop))
    try:

        async def failed_and_read_again() -> bool:
            return calls > 2

        await eventually(failed_and_read_again, what="a read after the failed one")
        job = await bus.publish(submitted(cpus=2))

        async def placed() -> ev.JobPlaced | None:
            return await _placement(bus, "n1")

        assert (await eventually(placed, what="the job placed")).job_id == job
        assert not task.done()
    finally:
        stop.set()
        scheduler = await task
    assert scheduler is not None and scheduler.state.nodes["n1"].cpus == 2 and scheduler.skipped == 0


async def test_the_scheduler_waits_for_jetstream_instead_of_exiting(tmp_path: Path) -> None:
    """A nats-server without JetStream answers connections but not the stream: the scheduler keeps
    trying (a supervisor's restarts would come later and later), then places once JetStream is there."""
    port = free_port()
    plain = await asyncio.create_subprocess_exec(
        _nats_binary(), "-a", "127.0.0.1", "-p", str(port), stdout=asyncio.subprocess.DEVNULL
    )
    stop = asyncio.Event()
    settings = SchedulerSettings(nats_url=f"nats://127.0.0.1:{port}", use_lease=True, retry_max_s=0.2)
    task = asyncio.create_task(service.run(settings, stop))
    try:
        await asyncio.sleep(3)  # several failed starts; a scheduler that exits on the first is done by now
        assert not task.done(), task
        plain.kill()
        await plain.wait()
        real = start_nats(tmp_path / "nats", port)
        try:
            other = await connect(real.url, name="tests")
            await other.publish(node("n1", 2))
            job = await other.publish(submitted())

            async def placed() -> ev.JobPlaced | None:
                return await _placement(other, "n1")

            assert (await eventually(placed, what="the job placed once JetStream is there")).job_id == job
            await other.close()
        finally:
            stop.set()
            try:
                await task
            finally:
                real.stop()  # whatever the scheduler ended with: a failed run left this server running
    finally:
        stop.set()
        if plain.returncode is None:
            plain.kill()
            await plain.wait()
