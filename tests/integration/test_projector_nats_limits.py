"""Events the log took but NATS would refuse to republish (past max_payload once headers are added, a
subject past the control line): nats-server answers by closing the connection, which nats-py does not
reopen. Found by review: before, such an event stopped the projector for good, at every restart."""

from __future__ import annotations

import asyncio
import json

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from conductor_contracts import public, subjects
from conductor_platform.bus import Bus
from conductor_projector import republish, sink
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
                return int(info.state.messages) == 2

            # The one NATS cannot take is left off (logged, counted); the others are published.
            await eventually(republished, timeout=20, what="every other event on the public subjects")
            assert republish.NOT_PUBLISHED._value.get() > 0
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
