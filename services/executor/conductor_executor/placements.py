"""The executor's durable consumer: this node's placements, its NodeLost and every cancel request,
acked one by one.

NodeLost comes through the same consumer as placements so that both are handled in stream order: a
placement stored before the NodeLost is handled before it (and killed with the node's other jobs), one
stored after the node registered again is handled after it.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StatusCode
from nats.js.errors import NotFoundError

from conductor_contracts import events as ev
from conductor_contracts import subjects
from conductor_platform.bus import Bus

_ENDS_REQUEST = (StatusCode.NO_MESSAGES, StatusCode.REQUEST_TIMEOUT, StatusCode.CONFLICT)


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
    """This consumer's messages in batches, each batch as soon as it is there.

    nats-py's ``fetch`` of more than one message waits out its whole timeout when fewer are stored
    (the server holds a request that has ``expires`` until then), and its ``fetch(1)`` costs a request,
    a task and a timer per message. This sends one request for what the stream has now (``no_wait``,
    which the server ends with a status at once) and, only when that was nothing, one that waits for
    the next messages and returns with the first ones; messages that request delivers later stay
    queued, in order, for the next batch. The idea of ``conductor_platform.quick_reader``, for a
    consumer whose messages are acked one by one rather than read as a log.
    """

    def __init__(self, sub: JetStreamContext.PullSubscription) -> None:
        self.sub = sub
        inner: Any = getattr(sub, "_sub", None)
        self._inner = inner
        self._queue: asyncio.Queue[Msg] | None = getattr(inner, "_pending_queue", None)
        # nats-py's fetch, one at a time, with a version of it that keeps its queue elsewhere.
        self._quick = self._queue is not None and all(hasattr(sub, name) for name in ("_nc", "_nms", "_deliver"))

    async def fetch(self, limit: int, wait_s: float) -> list[Msg]:
        """Up to ``limit`` messages, in stream order; raises TimeoutError when none came in ``wait_s``."""
        if not self._quick:
            return await self.sub.fetch(1, timeout=wait_s)
        out, _ = self._take(limit, [])
        if len(out) == limit:
            return out
        deadline = time.monotonic() + wait_s
        await self._request({"batch": limit - len(out), "no_wait": True})
        out = await self._collect(limit, out, deadline, until_drained=False)
        if out:
            return out
        await self._request({"batch": limit, "expires": max(int((deadline - time.monotonic()) * 1e9), 1_000_000)})
        out = await self._collect(limit, out, deadline, until_drained=True)
        if not out:
            raise TimeoutError
        return out

    async def _request(self, request: dict[str, Any]) -> None:
        await self.sub._nc.publish(self.sub._nms, json.dumps(request).encode(), self.sub._deliver)

    async def _collect(self, limit: int, out: list[Msg], deadline: float, *, until_drained: bool) -> list[Msg]:
        """Until ``limit`` messages, a status that ends the request, the deadline, or (``until_drained``)
        as soon as some have come and no more are queued."""
        assert self._queue is not None
        while len(out) < limit:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                first = await asyncio.wait_for(self._queue.get(), left)
            except TimeoutError:
                break
            if self._processable(first):
                out.append(first)
            elif not until_drained and JetStreamContext.is_status_msg(first) in _ENDS_REQUEST:
                break
            out, ended = self._take(limit, out)
            # A status may be the late end of an earlier request that timed out: only the request for
            # what the stream has now is taken to end with it; the one that waits ends with messages,
            # or at its deadline.
            if (ended and not until_drained) or (until_drained and out):
                break
        return out

    def _take(self, limit: int, out: list[Msg]) -> tuple[list[Msg], bool]:
        """What is queued (up to ``limit``); and whether a status ended a request meanwhile."""
        assert self._queue is not None
        while len(out) < limit and not self._queue.empty():
            msg = self._queue.get_nowait()
            if self._processable(msg):
                out.append(msg)
            elif JetStreamContext.is_status_msg(msg) in _ENDS_REQUEST:
                return out, True
        return out, False

    def _processable(self, msg: Msg) -> bool:
        self._inner._pending_size -= len(msg.data)  # nats-py's slow-consumer accounting
        status = JetStreamContext.is_status_msg(msg)
        if not status:
            return True
        if status in _ENDS_REQUEST or status == StatusCode.CONTROL_MESSAGE:
            return False
        raise ConnectionError(f"the consumer answered {status}: {(msg.headers or {}).get('Description', '')}")
