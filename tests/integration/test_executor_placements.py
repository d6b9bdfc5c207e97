"""The executor's reader of its consumer (``placements.PlacementReader``) on a real JetStream: a batch
comes back as soon as it is there, in stream order, every message once."""

from __future__ import annotations

import asyncio

import pytest

from conductor_contracts import events as ev
from conductor_executor.placements import PlacementReader, subscribe
from conductor_platform.bus import Bus

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
