"""The log reader (``quick_reader.QuickLogReader``) on a real JetStream: every message once, in
order, whatever the batch sizes, including what arrives while a fetch waits and what a request that
timed out delivers late."""

from __future__ import annotations

import asyncio

from conductor_contracts import events as ev
from conductor_contracts import subjects
from conductor_platform.bus import Bus, next_batch
from conductor_platform.quick_reader import QuickLogReader, quick_read_from, stream_seq


async def _publish(bus: Bus, count: int) -> None:
    for i in range(count):
        event = ev.JobStarted(job_id=i + 1, node="n", pid=i + 1)
        await bus.nc.publish(subjects.subject_for(event), ev.encode(event))
    await bus.nc.flush()


async def _read_all(reader: QuickLogReader, until: int, limit: int) -> list[int]:
    seen: list[int] = []
    for _ in range(200):
        if seen and seen[-1] >= until:
            break
        seen += [stream_seq(m) for m in await next_batch(reader, limit, wait_s=0.2, linger_s=0.01)]
    return seen


async def test_reads_every_message_once_in_order_across_batches(bus: Bus) -> None:
    await _publish(bus, 250)
    await asyncio.sleep(0.2)
    reader = await quick_read_from(bus, 1)
    try:
        assert reader._quick  # the fast path, not nats-py's fetch, is what this test is about
        assert await _read_all(reader, 250, 64) == list(range(1, 251))
    finally:
        await reader.unsubscribe()


async def test_starts_where_asked_and_follows_what_comes_later(bus: Bus) -> None:
    await _publish(bus, 10)
    await asyncio.sleep(0.2)
    reader = await quick_read_from(bus, 6)
    try:
        assert await _read_all(reader, 10, 100) == list(range(6, 11))
        # Nothing there: a fetch waits (a long poll), then ends empty; what is published next is read.
        assert await next_batch(reader, 100, wait_s=0.1) == []
        waiting = asyncio.create_task(next_batch(reader, 100, wait_s=2.0))
        await asyncio.sleep(0.05)
        await _publish(bus, 3)
        first = [stream_seq(m) for m in await waiting]
        assert first and first[0] == 11
        assert first + (await _read_all(reader, 13, 100) if first[-1] < 13 else []) == [11, 12, 13]
    finally:
        await reader.unsubscribe()


async def test_what_a_timed_out_request_delivers_late_is_kept_for_the_next_fetch(bus: Bus) -> None:
    reader = await quick_read_from(bus, 1)
    try:
        # A fetch that gives up leaves its request open on the server for a moment: the messages it
        # is then sent wait in the subscription's queue and are the next fetch's, in order.
        assert await next_batch(reader, 50, wait_s=0.05) == []
        await _publish(bus, 30)
        await asyncio.sleep(0.2)
        assert await _read_all(reader, 30, 7) == list(range(1, 31))
    finally:
        await reader.unsubscribe()


async def test_a_linger_gathers_what_trickles_in_with_one_request(bus: Bus) -> None:
    reader = await quick_read_from(bus, 1)
    requests: list[str] = []

    async def counted(msg: object) -> None:
        requests.append(getattr(msg, "subject", ""))

    watch = await bus.nc.subscribe("$JS.API.CONSUMER.MSG.NEXT.>", cb=counted)
    try:
        batch = asyncio.create_task(next_batch(reader, 100, wait_s=2.0, linger_s=1.0))
        await asyncio.sleep(0.1)
        await _publish(bus, 1)
        await asyncio.sleep(0.1)  # the first message is in: the linger has begun
        before = len(requests)
        for _ in range(9):
            await _publish(bus, 1)
            await asyncio.sleep(0.02)
        got = [stream_seq(m) for m in await batch]
        # One batch of all ten; the linger asked the server once, not twice per message that came.
        assert got == list(range(1, 11))
        assert len(requests) - before <= 2, requests
    finally:
        await watch.unsubscribe()
        await reader.unsubscribe()
