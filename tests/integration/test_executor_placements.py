"""The executor's reader of its consumer (``placements.PlacementReader``) on a real JetStream: a batch
comes back as soon as it is there, in stream order, every message once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from conductor_contracts import events as ev
from conductor_executor.placements import PlacementReader, ensure_consumer, subscribe
from conductor_executor.service import Executor
from conductor_platform.bus import Bus
from tests.integration.test_executor import _outcome, executor_settings, running
from tests.unit.scheduling import submitted

NODE = "readernode"


def _placed(job_id: int) -> ev.JobPlaced:
    return ev.JobPlaced(job_id=job_id, node=NODE, cores=(0,), memory_mb=1)


async def _job_ids(reader: PlacementReader, limit: int, wait_s: float) -> list[int]:
    msgs = await reader.fetch(limit, wait_s)
    for msg in msgs:
        await msg.ack()
    placed = [ev.decode(msg.data) for msg in msgs]
    return [event.job_id for event in placed if isinstance(event, ev.JobPlaced)]


async def test_a_batch_returns_with_what_is_stored_without_waiting_for_more(bus: Bus) -> None:
    reader = PlacementReader(await subscribe(bus, NODE))
    for job_id in range(1, 6):
        await bus.publish(_placed(job_id))
    # Five stored, 32 asked for: back at once, not at the end of the 60 s it may wait (nats-py's
    # fetch of 32 would wait them out).
    assert await asyncio.wait_for(_job_ids(reader, 32, 60), 10) == [1, 2, 3, 4, 5]
    # Nothing stored: it waits for the next one, and returns with it.
    waiting = asyncio.create_task(_job_ids(reader, 32, 60))
    await asyncio.sleep(0.3)
    assert not waiting.done()
    await bus.publish(_placed(6))
    assert await asyncio.wait_for(waiting, 10) == [6]


async def test_nothing_stored_times_out_and_every_message_comes_once_in_order(bus: Bus) -> None:
    reader = PlacementReader(await subscribe(bus, NODE))
    with pytest.raises(TimeoutError):
        await reader.fetch(8, 0.2)
    seen: list[int] = []

    async def produce() -> None:
        for job_id in range(1, 41):
            await bus.publish(_placed(job_id))
            if job_id % 7 == 0:
                await asyncio.sleep(0.01)

    producing = asyncio.create_task(produce())
    deadline = asyncio.get_running_loop().time() + 30
    while len(seen) < 40:
        assert asyncio.get_running_loop().time() < deadline, f"only {seen} came"
        # Small batches and short waits: some requests end empty, some deliver after their fetch.
        try:
            seen += await _job_ids(reader, 3, 0.05)
        except TimeoutError:
            continue
    await producing
    assert seen == list(range(1, 41))


async def test_the_look_ups_of_a_batchs_placements_go_out_together(
    bus: Bus, nats_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = executor_settings(nats_url, tmp_path, cpus=4)
    await ensure_consumer(bus, settings.node)  # all is stored before the executor's first fetch
    workdir = str(tmp_path / "work")
    ids = [await bus.publish(submitted().model_copy(update={"working_directory": workdir})) for _ in range(4)]
    await bus.publish(ev.JobCancelRequested(job_id=ids[0]))
    for core, job_id in enumerate(ids):
        await bus.publish(
            ev.JobPlaced(job_id=job_id, node=settings.node, cores=(core,), memory_mb=1), by_scheduler=True
        )
    in_flight, most = 0, 0
    look_up = Executor.submission

    async def slow(self: Executor, job_id: int) -> ev.JobSubmitted:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        try:
            await asyncio.sleep(0.1)  # a server slow to answer
            return await look_up(self, job_id)
        finally:
            in_flight -= 1

    monkeypatch.setattr(Executor, "submission", slow)
    async with running(bus, settings):
        outcomes = [await _outcome(bus, job_id) for job_id in ids]
    # Each placement waited for look-ups sent with the others', not for its own in turn.
    assert most == len(ids)
    # The cancel stored before its placement still wins; the others ran.
    assert isinstance(outcomes[0], ev.JobCancelled)
    assert all(isinstance(outcome, ev.JobCompleted) for outcome in outcomes[1:])
