"""The executor's durable consumer: this node's placements, its NodeLost and every cancel request,
acked one by one.

Its ``ack_wait`` is short (``ACK_WAIT_S``): the messages an executor killed with ``-9`` had fetched
and not acked reach its successor that long after their delivery, not the 30 s it was. While a batch
takes longer to handle than a fraction of it, the batch's messages not settled yet are said to be in
progress (``+WPI``) so that a live executor's are not delivered again meanwhile. A message delivered
again all the same (the executor stalled longer than that) is handled after the first copy, in the
same loop, and a job's folder stops a second start.

NodeLost comes through the same consumer as placements so that both are handled in stream order: a
placement stored before the NodeLost is handled before it (and killed with the node's other jobs), one
stored after the node registered again is handled after it.
"""

from __future__ import annotations

import asyncio
import logging

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from conductor_contracts import events as ev
from conductor_contracts import subjects
from conductor_platform.bus import Bus
from conductor_platform.quick_reader import QuickPull

log = logging.getLogger("conductor.executor")

# How long a fetched message may stay unacked before the server delivers it again (to a successor).
ACK_WAIT_S = 5.0
# How often a batch still being handled says its unsettled messages are in progress.
PROGRESS_EVERY_S = ACK_WAIT_S / 3


async def subscribe(bus: Bus, node: str) -> JetStreamContext.PullSubscription:
    durable = await ensure_consumer(bus, node)
    return await bus.js.pull_subscribe_bind(durable=durable, stream=bus.stream)


def filters(node: str) -> list[str]:
    return [subjects.placements_for(node), subjects.subject_for(ev.NodeLost(node=node)), subjects.CANCEL_ALL]


def durable_name(node: str) -> str:
    return subjects.executor_consumer(node)


async def ensure_consumer(bus: Bus, node: str) -> str:
    durable = durable_name(node)
    try:
        info = await bus.js.consumer_info(bus.stream, durable)
    except NotFoundError:
        await bus.js.add_consumer(
            bus.stream,
            ConsumerConfig(
                durable_name=durable,
                filter_subjects=filters(node),
                deliver_policy=DeliverPolicy.NEW,
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=ACK_WAIT_S,
                max_ack_pending=1000,
            ),
        )
        return durable
    stale_filters = sorted(info.config.filter_subjects or ()) != sorted(filters(node))
    stale_wait = info.config.ack_wait is None or abs(info.config.ack_wait - ACK_WAIT_S) > 0.001
    if stale_filters or stale_wait:
        # A consumer of an earlier executor (from before NodeLost was read, or with the 30 s
        # ack_wait): updated in place (nats-server >= 2.10), keeping its position, so nothing placed
        # meanwhile is missed.
        await bus.js.add_consumer(bus.stream, info.config.evolve(filter_subjects=filters(node), ack_wait=ACK_WAIT_S))
    return durable


class PlacementReader:
    """This consumer's messages in batches, each batch as soon as it is there
    (``conductor_platform.quick_reader.QuickPull``), for a consumer whose messages are acked one by
    one rather than read as a log; nats-py's ``fetch`` of one at a time where that is not available."""

    def __init__(self, sub: JetStreamContext.PullSubscription, progress_every_s: float = PROGRESS_EVERY_S) -> None:
        self.sub = sub
        self._puller = QuickPull.of(sub)
        self._every = progress_every_s
        # The batch last returned, while some of it is not settled, and what says so in its stead.
        self._batch: list[Msg] = []
        self._timer: asyncio.TimerHandle | None = None
        self._sending: asyncio.Task[None] | None = None

    async def fetch(self, limit: int, wait_s: float) -> list[Msg]:
        """Up to ``limit`` messages, in stream order; raises TimeoutError when none came in ``wait_s``.
        The batch returned before is handled by now: its progress is no longer said."""
        self.close()
        if self._puller is None:
            out = await self.sub.fetch(1, timeout=wait_s)
        else:
            out = await self._puller.pull(limit, wait_s)
        if not out:
            raise TimeoutError
        self._batch = out
        self._timer = asyncio.get_running_loop().call_later(self._every, self._tick)
        return out

    def close(self) -> None:
        """Stop saying the last batch is in progress."""
        self._batch = []
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._sending is not None:
            self._sending.cancel()
            self._sending = None

    def _tick(self) -> None:
        """The batch is still being handled: its messages not settled yet are in progress. Settled:
        acked, nak'd or terminated (nats-py's ``_ackd``; without it, all are, which the server ignores
        for those settled already)."""
        self._timer = None
        pending = [msg for msg in self._batch if not getattr(msg, "_ackd", False)]
        if not pending:
            self._batch = []
            return
        self._sending = asyncio.ensure_future(self._in_progress(pending))

    async def _in_progress(self, pending: list[Msg]) -> None:
        try:
            for msg in pending:
                await msg.in_progress()
        except Exception as err:  # NATS away or the connection closed: they are delivered again later
            log.debug("could not say the placements are in progress", extra={"error": str(err)})
            self._sending = None
            return
        self._sending = None
        self._timer = asyncio.get_running_loop().call_later(self._every, self._tick)
