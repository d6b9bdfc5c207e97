"""Review: failures found by the review (each test here fails on c4786a5)."""

from __future__ import annotations

import asyncio
import json

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from conductor_contracts import public, subjects
from conductor_platform.bus import Bus
from conductor_projector import sink
from conductor_projector.service import run
from conductor_projector.settings import ProjectorSettings
from tests.integration.helpers import eventually
from tests.unit.scheduling import submitted


@pytest.mark.parametrize("public_subjects", [False, True])
async def test_an_event_near_the_payload_limit_does_not_stop_the_projector(
    bus: Bus, engine: AsyncEngine, nats_url: str, database_url: str, public_subjects: bool
) -> None:
    """An event the stream took (its payload a few bytes under max_payload, no headers) is republished
    with its headers added (Nats-Msg-Id, Conductor-Seq): over max_payload, the server closes the
    projector's connection ('Maximum Payload Violation'), the republisher starts again at the same
    event, and the projector, which shares the connection, never reaches the end of the log."""
    limit = bus.nc.max_payload
    base = json.loads(submitted().model_dump_json())
    data = json.dumps(base | {"script": ""}).encode()
    data = json.dumps(base | {"script": "x" * (limit - 30 - len(data))}).encode()
    assert limit - 60 < len(data) <= limit
    await bus.js.publish(subjects.SUBMITTED, data)  # no headers at all
    last = await bus.publish(submitted())
    settings = ProjectorSettings(nats_url=nats_url, database_url=database_url, public_subjects=public_subjects)
    stop = asyncio.Event()
    task = asyncio.create_task(run(settings, stop=stop))
    try:

        async def at_the_end() -> bool:
            async with engine.connect() as conn:
                return await sink.position(conn, settings.consumer) == last

        await eventually(at_the_end, timeout=30, what="the position at the end of the log")
        await asyncio.sleep(8)  # the republisher, if it is caught in a loop, closes the connection meanwhile
        last = await bus.publish(submitted())
        await eventually(at_the_end, timeout=20, what="the position at a later event")
        if public_subjects:

            async def republished() -> bool:
                info = await bus.js.stream_info(public.STREAM)
                return int(info.state.messages) == 3

            await eventually(republished, timeout=20, what="every event on the public subjects")
    finally:
        stop.set()
        await task


async def test_a_long_account_does_not_stop_the_projector(
    bus: Bus, engine: AsyncEngine, nats_url: str, database_url: str
) -> None:
    """A submission whose account makes a public subject longer than the server's control line (4 KB):
    the republisher's publish makes the server close the projector's connection, for good; the read
    models stop with it (the projector shares the connection), at this event and at every restart."""
    await bus.publish(submitted().model_copy(update={"account": "a" * 5000}))
    last = await bus.publish(submitted())
    settings = ProjectorSettings(nats_url=nats_url, database_url=database_url)
    stop = asyncio.Event()
    task = asyncio.create_task(run(settings, stop=stop))
    try:

        async def at_the_end() -> bool:
            async with engine.connect() as conn:
                return await sink.position(conn, settings.consumer) == last

        await eventually(at_the_end, timeout=30, what="the position at the end of the log")
        await asyncio.sleep(5)
        last = await bus.publish(submitted())
        await eventually(at_the_end, timeout=20, what="the position at a later event")
    finally:
        stop.set()
        await task


def test_the_shared_decoder_bounds_what_it_keeps_in_bytes_not_only_in_events() -> None:
    """decoded.py says the 16384 events kept cost "at most some 25 MB (an event and its bytes take
    about 1.5 KB)"; the bound is a count. With the republisher stalled (NATS refusing its publishes,
    the public stream full) the projector keeps every event it decodes, up to 16384: with scripts at
    the gateway's limit (up to 900 KB) that is over 10 GB held. Here 40 events of 900 KB, one reader."""
    from conductor_projector.decoded import SharedDecoder

    decoder = SharedDecoder()
    for seq in range(1, 41):
        data = submitted().model_copy(update={"script": "x" * 900 * 1024}).model_dump_json().encode()
        decoder.decode(seq, subjects.SUBMITTED, data)
    kept = sum(len(data) for _, data, _ in decoder._items.values())
    assert kept <= 25 * 1024 * 1024, f"{kept / 2**20:.0f} MB kept for a reader that may never come"
