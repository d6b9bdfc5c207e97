"""Events the log took but NATS would refuse to republish (past max_payload once headers are added, a
subject past the control line): nats-server answers by closing the connection, which nats-py does not
reopen. Found by review: before, such an event stopped the projector for good, at every restart."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from conductor_contracts import public, subjects
from conductor_platform.bus import Bus
from conductor_projector import republish
from conductor_projector.settings import ProjectorSettings
from tests.integration.helpers import eventually
from tests.integration.projecting import projected_to, projector
from tests.unit.scheduling import submitted


@pytest.mark.parametrize("public_subjects", [False, True])
async def test_an_event_near_the_payload_limit_does_not_stop_the_projector(
    bus: Bus, engine: AsyncEngine, nats_url: str, database_url: str, public_subjects: bool
) -> None:
    """An event the stream took a few bytes under max_payload, without headers: with the public
    subjects' headers added (Nats-Msg-Id, Conductor-Seq) it is past max_payload."""
    limit = bus.nc.max_payload
    base = json.loads(submitted().model_dump_json())
    data = json.dumps(base | {"script": ""}).encode()
    data = json.dumps(base | {"script": "x" * (limit - 30 - len(data))}).encode()
    assert limit - 60 < len(data) <= limit
    await bus.js.publish(subjects.SUBMITTED, data)  # no headers at all
    last = await bus.publish(submitted())
    settings = ProjectorSettings(nats_url=nats_url, database_url=database_url, public_subjects=public_subjects)
    left_off = republish.NOT_PUBLISHED._value.get()
    async with projector(settings):
        await projected_to(engine, settings, last)
        await asyncio.sleep(2)  # time for a republisher caught in a loop to close the connection
        await projected_to(engine, settings, await bus.publish(submitted()))
        if public_subjects:

            async def republished() -> bool:
                info = await bus.js.stream_info(public.STREAM)
                return int(info.state.messages) == 2

            # The one NATS cannot take is left off (logged, counted); the others are published.
            await eventually(republished, what="every other event on the public subjects")
            assert republish.NOT_PUBLISHED._value.get() == left_off + 1


async def test_a_long_account_does_not_stop_the_projector(
    bus: Bus, engine: AsyncEngine, nats_url: str, database_url: str
) -> None:
    """A submission whose account makes its public subject longer than the server's control line (4 KB)."""
    await bus.publish(submitted().model_copy(update={"account": "a" * 5000}))
    last = await bus.publish(submitted())
    settings = ProjectorSettings(nats_url=nats_url, database_url=database_url)
    left_off = republish.NOT_PUBLISHED._value.get()
    async with projector(settings):
        await projected_to(engine, settings, last)
        await asyncio.sleep(2)
        await projected_to(engine, settings, await bus.publish(submitted()))
    assert republish.NOT_PUBLISHED._value.get() == left_off + 1


async def test_a_connection_nats_py_closed_for_good_ends_the_projector(
    bus: Bus, engine: AsyncEngine, nats_url: str, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any other -ERR of the server closes the connection for good too: the projector must not retry
    on it forever, but end, for its supervisor to start it again."""
    from conductor_platform.bus import connect as real_connect
    from conductor_projector import service

    made: list[Bus] = []

    async def connect(*args: Any, **kwargs: Any) -> Bus:
        made.append(await real_connect(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(service, "connect", connect)
    settings = ProjectorSettings(nats_url=nats_url, database_url=database_url)
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(settings, stop=stop))
    try:
        await projected_to(engine, settings, await bus.publish(submitted()))
        await made[0].nc.close()  # what nats-py does on the server's -ERR
        with pytest.raises(service.ConnectionClosedForGood):
            await asyncio.wait_for(asyncio.shield(task), 20)
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await task
