"""A projector running in the test's process, and waiting for its position."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from sqlalchemy.ext.asyncio import AsyncEngine

from conductor_projector import sink
from conductor_projector.service import run
from conductor_projector.settings import ProjectorSettings
from tests.integration.helpers import eventually


@contextlib.asynccontextmanager
async def projector(settings: ProjectorSettings) -> AsyncIterator[asyncio.Task[None]]:
    """``conductor projector`` until the block ends; its task, to check how it ended."""
    stop = asyncio.Event()
    task = asyncio.create_task(run(settings, stop=stop))
    try:
        yield task
    finally:
        stop.set()
        await task


async def projected_to(engine: AsyncEngine, settings: ProjectorSettings, seq: int, timeout: float = 30) -> None:
    async def there() -> bool:
        async with engine.connect() as conn:
            return await sink.position(conn, settings.consumer) == seq

    await eventually(there, timeout=timeout, what=f"the projector's position at {seq}")
