"""Fresh state per test on the session's real servers: an empty stream, an empty schema; or servers
of the test's own (``servers``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.js.errors import NotFoundError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from conductor_contracts import public, subjects
from conductor_platform.bus import Bus, connect
from conductor_platform.settings import async_database_url
from conductor_projector import migrate
from conductor_scheduler import snapshot
from tests.system import OwnServers

pytestmark = pytest.mark.integration


@pytest.fixture
async def bus(nats_url: str) -> AsyncIterator[Bus]:
    bus = await connect(nats_url, name="tests")
    with contextlib.suppress(NotFoundError):
        await bus.js.delete_stream(subjects.STREAM)
    with contextlib.suppress(NotFoundError):
        await bus.js.delete_stream(public.STREAM)
    with contextlib.suppress(NotFoundError, Exception):
        await bus.js.delete_object_store(snapshot.BUCKET)
    with contextlib.suppress(NotFoundError, Exception):
        await bus.js.delete_key_value(subjects.LEASES_BUCKET)
    with contextlib.suppress(NotFoundError, Exception):
        await bus.js.delete_key_value(subjects.COMPACTION_BUCKET)
    # An earlier test's executor of the same node name is another instance: a start would wait to see it beat.
    with contextlib.suppress(NotFoundError, Exception):
        await bus.js.delete_key_value(subjects.HEARTBEATS_BUCKET)
    with contextlib.suppress(NotFoundError, Exception):
        await bus.js.delete_key_value(subjects.PUBLIC_POSITION_BUCKET)
    # Job ids start over with the stream: an earlier test's output stored for the same id must go too.
    with contextlib.suppress(NotFoundError, Exception):
        await bus.js.delete_object_store(subjects.OUTPUT_BUCKET)
    await connect_stream(bus)
    yield bus
    await bus.close()


async def connect_stream(bus: Bus) -> None:
    from nats.js.errors import ServerError

    from conductor_platform.bus import ensure_stream

    # Made again right after the test before deleted it: once in a full run nats-server answered
    # "error creating store for stream" (10049), its store of the same name not yet gone.
    for attempt in range(5):
        try:
            await ensure_stream(bus.js)
            return
        except ServerError as err:
            if err.err_code != 10049 or attempt == 4:
                raise
            await asyncio.sleep(0.2 * (attempt + 1))


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(async_database_url(database_url))
    async with engine.begin() as conn:
        await conn.execute(text("DROP SCHEMA public CASCADE"))
        await conn.execute(text("CREATE SCHEMA public"))
    await asyncio.to_thread(migrate.upgrade, database_url)
    yield engine
    await engine.dispose()


@pytest.fixture
async def servers(tmp_path: Path) -> AsyncIterator[OwnServers]:
    """A nats-server and a PostgreSQL of the test's own, which it may kill and start again."""
    servers = await asyncio.to_thread(OwnServers, tmp_path)
    try:
        yield servers
    finally:
        await asyncio.to_thread(servers.stop)
