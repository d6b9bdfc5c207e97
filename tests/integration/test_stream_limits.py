"""The stream's own limits, as every service makes or updates it, on a real nats-server."""

from __future__ import annotations

import asyncio

from nats.js.api import AckPolicy, ConsumerConfig, StorageType, StreamConfig

from conductor_contracts import subjects
from conductor_platform.bus import Bus, ensure_stream


async def _consumers(bus: Bus, count: int) -> None:
    async def one(i: int) -> None:
        config = ConsumerConfig(name=f"c{i}", ack_policy=AckPolicy.NONE, mem_storage=True, inactive_threshold=60)
        await bus.js.add_consumer(bus.stream, config=config)

    for start in range(0, count, 100):
        await asyncio.gather(*(one(i) for i in range(start, min(start + 100, count))))


async def test_the_stream_takes_more_consumers_than_the_servers_default(bus: Bus) -> None:
    # nats-server 2.15 stops a stream without a limit of its own at 1,000 consumers: one per node's
    # executor, and a 1,000-node cluster's last executors could not start.
    info = await bus.js.stream_info(bus.stream)
    assert info.config.max_consumers == subjects.STREAM_SPEC.max_consumers
    await _consumers(bus, 1_050)
    assert (await bus.js.stream_info(bus.stream)).state.consumer_count == 1_050


async def test_a_stream_made_without_the_limit_gets_it(bus: Bus) -> None:
    # As an earlier version made it: the server's default applies until the next service starts.
    await bus.js.delete_stream(bus.stream)
    spec = subjects.STREAM_SPEC
    old = StreamConfig(name=spec.name, subjects=list(spec.subjects), storage=StorageType.FILE, allow_atomic=True)
    await bus.js.add_stream(old)
    await ensure_stream(bus.js)
    assert (await bus.js.stream_info(bus.stream)).config.max_consumers == spec.max_consumers
