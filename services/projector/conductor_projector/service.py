"""The projector: folds the whole stream, in order, into the read models.

Cycle: read a batch, apply it in one transaction together with the stream position it reaches,
commit. The position in Postgres is the projector's only cursor: on start it reads it and follows
the stream from the next sequence with an ordered consumer. A crash loses at most an uncommitted
batch, which is read again; nothing is applied twice and nothing is skipped. (A durable consumer with
acks would redeliver a crashed batch *after* newer messages, and an ack of those would cover the gap:
see docs/decisions.md.)
"""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from conductor_contracts import events as ev
from conductor_platform.bus import connect, next_batch, read_from
from conductor_platform.settings import async_database_url
from conductor_projector import migrate, sink
from conductor_projector.settings import ProjectorSettings

log = logging.getLogger("conductor.projector")


async def run(settings: ProjectorSettings, *, rebuild: bool = False, stop: asyncio.Event | None = None) -> None:
    stop = stop or asyncio.Event()
    await asyncio.to_thread(migrate.upgrade, settings.database_url)
    engine = create_async_engine(async_database_url(settings.database_url), pool_size=2)
    bus = await connect(settings.nats_url, name="conductor-projector")
    try:
        if rebuild:
            await sink.reset(engine)
            log.info("read models dropped; replaying the log")
        position = await _position(engine, settings.consumer)
        sub = await read_from(bus, position + 1)
        fresh_read: int | None = position + 1  # where the current read began, until its first batch
        log.info("projecting", extra={"from_seq": position + 1})
        while not stop.is_set():
            msgs = await next_batch(sub, settings.batch_size, wait_s=1.0, linger_s=settings.linger_s)
            if not msgs:
                continue
            batch = [(m.metadata.sequence.stream, ev.decode(m.data)) for m in msgs]
            try:
                reached = await sink.apply_batch(engine, settings.consumer, batch, read_from=fresh_read)
            except sink.PositionMovedBack as moved:
                # Someone rebuilds the read models: join in, from where they are.
                log.info("position moved back; reading again", extra={"from_seq": moved.position + 1})
                await sub.unsubscribe()
                sub, fresh_read = await read_from(bus, moved.position + 1), moved.position + 1
                continue
            fresh_read = None
            log.debug("applied", extra={"events": len(batch), "position": reached})
        await sub.unsubscribe()
    finally:
        await bus.close()
        await engine.dispose()


async def _position(engine: AsyncEngine, name: str) -> int:
    async with engine.connect() as conn:
        return await sink.position(conn, name)
