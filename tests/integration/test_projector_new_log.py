"""Read models made of a log the stream no longer holds (deleted and made again, or a nats-server that
lost its unsynced tail) are made again from the log, not followed on from their old position."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from nats.js.errors import NotFoundError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from conductor_contracts import events as ev
from conductor_contracts import public, subjects
from conductor_platform.bus import Bus, ensure_stream
from conductor_projector import tables as t
from conductor_projector.service import run as project
from conductor_projector.settings import ProjectorSettings
from tests.integration.helpers import eventually
from tests.unit.scheduling import submitted


async def _names(engine: AsyncEngine) -> dict[int, str]:
    async with engine.connect() as conn:
        return {row.job_id: row.name for row in await conn.execute(select(t.jobs.c.job_id, t.jobs.c.name))}


async def _projecting_until(
    settings: ProjectorSettings, engine: AsyncEngine, expected: dict[int, str], *also: Callable[[], Awaitable[bool]]
) -> None:
    """A projector run until the read models hold ``expected`` and each of ``also`` holds."""
    stop = asyncio.Event()
    task = asyncio.create_task(project(settings, stop=stop))
    try:

        async def projected() -> bool:
            return await _names(engine) == expected

        await eventually(projected, what=f"the read models holding {expected}")
        for probe in also:
            await eventually(probe, what=probe.__doc__ or "")
    finally:
        stop.set()
        await task


async def test_read_models_ahead_of_the_log_are_made_again_from_it(
    bus: Bus, engine: AsyncEngine, nats_url: str, database_url: str
) -> None:
    settings = ProjectorSettings(nats_url=nats_url, database_url=database_url, public_subjects=False, linger_s=0)
    old = {await bus.publish(submitted(name=f"old-{n}")): f"old-{n}" for n in range(5)}
    await _projecting_until(settings, engine, old)

    await bus.js.delete_stream(subjects.STREAM)
    await ensure_stream(bus.js)
    new = {await bus.publish(submitted(name=f"new-{n}")): f"new-{n}" for n in range(2)}
    assert set(new) == {1, 2}
    # Before, it went on from position 5: jobs 1 and 2 kept the old log's rows, and the new log's
    # events from 6 on would have been applied to them.
    await _projecting_until(settings, engine, new)


async def _public_copies(bus: Bus) -> list[tuple[int, str]]:
    """(log sequence, job name) of every submission on the public subjects."""
    info = await bus.js.stream_info(public.STREAM)
    copies = []
    for seq in range(int(info.state.first_seq or 1), int(info.state.last_seq or 0) + 1):
        try:
            msg = await bus.js.get_msg(public.STREAM, seq=seq)
        except NotFoundError:
            continue
        event = ev.decode(msg.data or b"")
        if isinstance(event, ev.JobSubmitted):
            copies.append((int((msg.headers or {})[public.SEQ_HEADER]), event.name))
    return copies


async def _published(bus: Bus, jobs: dict[int, str]) -> bool:
    return sorted(await _public_copies(bus)) == sorted(jobs.items())


async def test_public_subjects_of_a_log_made_again_are_published_again_from_it(
    bus: Bus, engine: AsyncEngine, nats_url: str, database_url: str
) -> None:
    """The republisher went on after the newest copy's sequence, so the new log's events up to there
    were never published (and, its copies keyed by sequence, would have been dropped as duplicates)."""
    settings = ProjectorSettings(nats_url=nats_url, database_url=database_url, linger_s=0)
    old = {await bus.publish(submitted(name=f"old-{n}")): f"old-{n}" for n in range(5)}
    await _projecting_until(settings, engine, old, lambda: _published(bus, old))

    await bus.js.delete_stream(subjects.STREAM)
    await asyncio.sleep(1.1)  # the log's identity is its stream's creation time
    await ensure_stream(bus.js)
    new = {await bus.publish(submitted(name=f"new-{n}")): f"new-{n}" for n in range(7)}

    async def published() -> bool:
        """the new log's submissions, and only them, on the public subjects"""
        return await _published(bus, new)

    await _projecting_until(settings, engine, new, published)
