"""The executor's durable consumer: this node's placements and every cancel request, acked one by one."""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from conductor_contracts import subjects
from conductor_platform.bus import Bus


async def subscribe(bus: Bus, node: str) -> JetStreamContext.PullSubscription:
    durable = await ensure_consumer(bus, node)
    return await bus.js.pull_subscribe_bind(durable=durable, stream=bus.stream)


async def ensure_consumer(bus: Bus, node: str) -> str:
    durable = f"executor-{node}"
    try:
        await bus.js.consumer_info(bus.stream, durable)
    except NotFoundError:
        await bus.js.add_consumer(
            bus.stream,
            ConsumerConfig(
                durable_name=durable,
                filter_subjects=[subjects.placements_for(node), subjects.CANCEL_ALL],
                deliver_policy=DeliverPolicy.NEW,
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=30,
                max_ack_pending=1000,
            ),
        )
    return durable
