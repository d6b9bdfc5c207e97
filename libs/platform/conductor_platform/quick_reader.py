"""The log, read in batches at a cost per message a few times lower than nats-py's ``fetch``.

``bus.LogReader`` fetches with nats-py's ``PullSubscription.fetch``, which waits for each message of
a batch with its own task, timer and uuid4, and parses each message's reply subject into metadata:
about a quarter of the projector's CPU while it catches up. ``QuickLogReader`` is the same reader
(same pull consumer, same checks that the log has no gap) whose fetch sends one pull request and
then takes the messages that have arrived straight from the subscription's queue, waiting only when
it is empty. Messages a timed-out request delivers later stay queued, in order, for the next fetch.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import StatusCode

from conductor_platform.bus import Bus, LogReader, read_from

_ENDS_REQUEST = (StatusCode.NO_MESSAGES, StatusCode.REQUEST_TIMEOUT, StatusCode.CONFLICT)


def stream_seq(msg: Msg) -> int:
    """The message's stream sequence from its reply subject; nats-py's full metadata only when the
    subject is not the plain ``$JS.ACK.<stream>.<consumer>.<delivered>.<seq>.<cseq>.<ts>.<pending>``."""
    tokens = (msg.reply or "").split(".")
    if len(tokens) == 9 and tokens[0] == "$JS":
        return int(tokens[5])
    return int(msg.metadata.sequence.stream)


class QuickPull:
    """Pulls of a pull subscription at a lower cost than nats-py's ``fetch``: one request for what the
    stream has now (``no_wait``, which the server ends with a status at once) and, only when that was
    nothing, one that waits for the next messages and returns with the first ones; the messages are
    taken straight from the subscription's queue. nats-py's ``fetch`` of more than one message waits
    out its whole timeout when fewer are stored, and spends a task, a timer and a uuid4 per message."""

    def __init__(self, sub: JetStreamContext.PullSubscription, inner: Any, queue: asyncio.Queue[Msg]) -> None:
        self._sub, self._inner, self._queue = sub, inner, queue
        self._nc: Any = sub._nc

    @classmethod
    def of(cls, sub: JetStreamContext.PullSubscription) -> QuickPull | None:
        """None with a nats-py that keeps its queue elsewhere than where this looks."""
        inner: Any = getattr(sub, "_sub", None)
        queue = getattr(inner, "_pending_queue", None)
        if queue is None or not all(hasattr(sub, name) for name in ("_nc", "_nms", "_deliver")):
            return None
        return cls(sub, inner, queue)

    async def pull(self, limit: int, wait_s: float) -> list[Msg]:
        """Up to ``limit`` messages in stream order, as soon as there are some; [] after ``wait_s``."""
        out, _ = self._take(limit, [])
        if len(out) == limit:
            return out
        deadline = time.monotonic() + wait_s
        await self._request({"batch": limit - len(out), "no_wait": True})
        out = await self._collect(limit, out, deadline, until_drained=False)
        if out:
            return out
        await self._request({"batch": limit, "expires": max(int((deadline - time.monotonic()) * 1e9), 1_000_000)})
        return await self._collect(limit, out, deadline, until_drained=True)

    async def pull_within(self, limit: int, wait_s: float) -> list[Msg]:
        """What arrives within ``wait_s`` (up to ``limit``), asked for with one request: a batch
        gathered over a linger asks the server once, where ``pull`` in a loop asked again for every
        message that trickled in (two requests each, a third of a live projector's CPU in its
        socket writes)."""
        out, _ = self._take(limit, [])
        if len(out) == limit or wait_s <= 0:
            return out
        deadline = time.monotonic() + wait_s
        await self._request({"batch": limit - len(out), "expires": max(int(wait_s * 1e9), 1_000_000)})
        return await self._collect(limit, out, deadline, until_drained=False)

    async def _request(self, request: dict[str, Any]) -> None:
        sub: Any = self._sub
        await self._nc.publish(sub._nms, json.dumps(request).encode(), sub._deliver)

    async def _collect(self, limit: int, out: list[Msg], deadline: float, *, until_drained: bool) -> list[Msg]:
        """Until ``limit`` messages, a status that ends the request, the deadline, or (``until_drained``)
        as soon as some have come and no more are queued."""
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
            # A status may be the late end of an earlier request that timed out: only the request
            # that asks for what the stream has now is taken to end with it; the one that waits for
            # new messages ends with them, or at its deadline.
            if (ended and not until_drained) or (until_drained and out):
                break
        return out

    def _take(self, limit: int, out: list[Msg]) -> tuple[list[Msg], bool]:
        """What is queued (up to ``limit``); and whether a status ended a request meanwhile."""
        queue = self._queue
        while len(out) < limit and not queue.empty():
            msg = queue.get_nowait()
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


class QuickLogReader(LogReader):
    def __init__(self, base: LogReader) -> None:
        super().__init__(base.bus, base.sub, base.next_seq, base.name)
        self._puller = QuickPull.of(base.sub)

    @property
    def _quick(self) -> bool:
        return self._puller is not None

    async def _fetch(self, limit: int, wait_s: float) -> list[Msg]:
        if self._puller is None:
            return await super()._fetch(limit, wait_s)
        return self._in_order(await self._puller.pull(limit, max(wait_s, 0.01)))

    async def _fetch_within(self, limit: int, wait_s: float) -> list[Msg]:
        if self._puller is None:
            return await super()._fetch_within(limit, wait_s)
        return self._in_order(await self._puller.pull_within(limit, wait_s))

    def _in_order(self, msgs: list[Msg]) -> list[Msg]:
        for msg in msgs:
            seq = stream_seq(msg)
            if seq < self.next_seq:
                raise ConnectionError(f"the log went back: sequence {seq} after {self.next_seq - 1}")
            self.next_seq = seq + 1
        return msgs


async def quick_read_from(bus: Bus, start_seq: int) -> QuickLogReader:
    return QuickLogReader(await read_from(bus, start_seq))
