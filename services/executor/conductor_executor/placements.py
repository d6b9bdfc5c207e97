"""The executor's durable consumer: this node's placements, its NodeLost and every cancel request,
acked one by one.

NodeLost comes through the same consumer as placements so that both are handled in stream order: a
placement stored before the NodeLost is handled before it (and killed with the node's other jobs), one
stored after the node registered again is handled after it.
"""

from __future__ import annotations

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from conductor_contracts import events as ev
from conductor_contracts import subjects
from conductor_platform.bus import Bus
from conductor_platform.quick_reader import QuickPull


async def subscribe(bus: Bus, node: str) -> JetStreamContext.PullSubscription:
    durable = await ensure_consumer(bus, node)
    return await bus.js.pull_subscribe_bind(durable=durable, stream=bus.stream)


def filters(node: str) -> list[str]:
    return [subjects.placements_for(node), subjects.subject_for(ev.NodeLost(node=node)), subjects.CANCEL_ALL]


async def ensure_consumer(bus: Bus, node: str) -> str:
    durable = f"executor-{node}"
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
                ack_wait=30,
                max_ack_pending=1000,
            ),
        )
        return durable
    if sorted(info.config.filter_subjects or ()) != sorted(filters(node)):
        # A consumer of an executor from before NodeLost was read: its filters are updated in place
        # (nats-server >= 2.10), keeping its position, so nothing placed meanwhile is missed.
        await bus.js.add_consumer(bus.stream, info.config.evolve(filter_subjects=filters(node)))
    return durable


class PlacementReader:
    """This consumer's messages in batches, each batch as soon as it is there
    (``conductor_platform.quick_reader.QuickPull``), for a consumer whose messages are acked one by
    one rather than read as a log; nats-py's ``fetch`` of one at a time where that is not available."""

    def __init__(self, sub: JetStreamContext.PullSubscription) -> None:
        self.sub = sub
        self._puller = QuickPull.of(sub)

    async def fetch(self, limit: int, wait_s: float) -> list[Msg]:
        """Up to ``limit`` messages, in stream order; raises TimeoutError when none came in ``wait_s``."""
        if self._puller is None:
            return await self.sub.fetch(1, timeout=wait_s)
        out = await self._puller.pull(limit, wait_s)
        if not out:
            raise TimeoutError
        return out
