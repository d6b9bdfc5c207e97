"""The projector: a durable consumer over the whole stream, folding events into the read models.

Cycle: fetch a batch, apply it in one transaction with the position it reaches, commit, then ack
(AckAll: one ack covers the batch). A crash before the ack redelivers the batch; the stored position
makes the replay a no-op.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from sqlalchemy.ext.asyncio import create_async_engine

from conductor_contracts import events as ev
from conductor_contracts import subjects
from conductor_platform.bus import Bus, connect
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
            await _rebuild(bus, settings.consumer)
            await sink.reset(engine)
            log.info("read models dropped; replaying the log")
        sub = await bus.js.pull_subscribe(
            subjects.ALL,
            durable=settings.consumer,
            stream=bus.stream,
            config=ConsumerConfig(
                ack_policy=AckPolicy.ALL, deliver_policy=DeliverPolicy.ALL, max_ack_pending=-1, ack_wait=60
            ),
        )
        log.info("projecting", extra={"consumer": settings.consumer})
        while not stop.is_set():
            try:
                msgs = await sub.fetch(settings.batch_size, timeout=1)
            except (NatsTimeout, TimeoutError):
                continue
            batch = [(m.metadata.sequence.stream, ev.decode(m.data)) for m in msgs]
            reached = await sink.apply_batch(engine, settings.consumer, batch)
            await msgs[-1].ack()
            log.debug("applied", extra={"events": len(batch), "position": reached})
    finally:
        await bus.close()
        await engine.dispose()


async def _rebuild(bus: Bus, consumer: str) -> None:
    with contextlib.suppress(NotFoundError):
        await bus.js.delete_consumer(bus.stream, consumer)
