"""The projector's loop rides out its servers going away, in process (the chaos tests show the same
for the whole system under its supervisor, which would restart a projector that exited)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import psutil
import pytest
from nats.aio.msg import Msg
from nats.errors import ConnectionClosedError
from prometheus_client import REGISTRY
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from conductor_platform.bus import Bus, LogReader, connect, next_batch
from conductor_platform.localservers import LocalServer
from conductor_platform.settings import async_database_url
from conductor_projector import service
from conductor_projector import tables as t
from conductor_projector.settings import ProjectorSettings
from tests.integration.helpers import eventually
from tests.system import OwnServers
from tests.unit.scheduling import submitted


def _retries() -> float:
    return REGISTRY.get_sample_value("conductor_projector_retries_total") or 0.0


async def _projected(engine: AsyncEngine, job_id: int) -> bool:
    try:
        async with engine.connect() as conn:
            return bool(await conn.scalar(select(func.count()).where(t.jobs.c.job_id == job_id)))
    except Exception:  # the test's own connections die with the server too
        return False


@dataclass
class _Projecting:
    bus: Bus
    engine: AsyncEngine  # the test's own
    stop: asyncio.Event
    task: asyncio.Task[None]


@contextlib.asynccontextmanager
async def _projecting(settings: ProjectorSettings) -> AsyncIterator[_Projecting]:
    """The projector running in this process, a first job projected; stopped on the way out."""
    bus: Bus = await connect(settings.nats_url, name="tests")
    engine = create_async_engine(async_database_url(settings.database_url))
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(settings, stop=stop))
    try:
        first = await bus.publish(submitted())
        await eventually(lambda: _projected(engine, first), what="first job projected")
        yield _Projecting(bus, engine, stop, task)
    finally:
        stop.set()
        try:
            await task
        finally:
            await bus.close()
            await engine.dispose()


async def test_the_projector_waits_for_postgres_to_come_back_without_exiting(servers: OwnServers) -> None:
    settings = ProjectorSettings(nats_url=servers.nats.url, database_url=servers.postgres.url, retry_max_s=0.5)
    async with _projecting(settings) as running:
        retries = _retries()
        await asyncio.to_thread(servers.kill, servers.postgres)
        second = await running.bus.publish(submitted())

        async def tried_twice() -> bool:
            return _retries() >= retries + 2

        await eventually(tried_twice, what="the projector failing on the missing PostgreSQL, twice")
        assert not running.task.done(), "the projector exited while PostgreSQL was away"
        await asyncio.to_thread(servers.restart_postgres)
        await eventually(lambda: _projected(running.engine, second), timeout=60, what="second job projected")
        assert not running.task.done()
        async with running.engine.connect() as conn:  # an outage is no event's fault
            assert await conn.scalar(select(func.count()).select_from(t.dead_letters)) == 0


async def test_a_failure_to_read_the_stream_is_retried_from_the_position(
    bus: Bus, engine: AsyncEngine, nats_url: str, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A NATS error out of the subscription (its connection closed under it) ends the read, not the
    projector: it reads again from its stored position."""
    calls = 0

    async def failing_once(sub: LogReader, limit: int, **kwargs: float) -> list[Msg]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionClosedError
        return await next_batch(sub, limit, **kwargs)

    monkeypatch.setattr(service, "next_batch", failing_once)
    settings = ProjectorSettings(nats_url=nats_url, database_url=database_url, retry_max_s=0.5)
    job = await bus.publish(submitted())
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(settings, stop=stop))
    try:
        await eventually(lambda: _projected(engine, job), what="the job projected after the failed read")
        assert calls > 1 and not task.done()
    finally:
        stop.set()
        await task


@contextlib.contextmanager
def _frozen(server: LocalServer) -> Iterator[None]:
    """The server and its processes stopped (SIGSTOP), as a hung PostgreSQL: connections open,
    nothing answered; woken again on the way out."""
    processes = [psutil.Process(server.process.pid)]
    processes += processes[0].children(recursive=True)
    for process in processes:
        process.suspend()
    try:
        yield
    finally:
        for process in processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.resume()


@pytest.mark.parametrize("writing", [True, False], ids=["writing a batch", "caught up"])
async def test_a_stop_is_not_held_by_a_postgresql_that_hangs(
    servers: OwnServers, caplog: pytest.LogCaptureFixture, writing: bool
) -> None:
    """Stopping the projector while PostgreSQL hung waited for its statement timeout (60 s) and then
    logged a traceback (reviews of 2026-12-02): the batch it was writing is given up at the stop, and
    written again from the position by the next start; an idle connection is not closed politely."""
    settings = ProjectorSettings(nats_url=servers.nats.url, database_url=servers.postgres.url, database_timeout_s=60)
    async with _projecting(settings) as running:
        with _frozen(servers.postgres):
            if writing:
                await running.bus.publish(submitted())
            applied = REGISTRY.get_sample_value("conductor_projector_events_applied_total") or 0.0
            await asyncio.sleep(2)  # the projector is writing the second job's batch and waits, or is idle
            assert (REGISTRY.get_sample_value("conductor_projector_events_applied_total") or 0.0) == applied
            running.stop.set()
            await asyncio.wait_for(asyncio.shield(running.task), 20)  # its statement timeout is 60 s
    assert not [r for r in caplog.records if r.exc_info is not None], "a stop is not a failure"
