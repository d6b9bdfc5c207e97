"""One client's event feed: from a start sequence of the log to its SSE connection.

    log --fetch (a pull consumer, at most one buffer ahead)--> reader --queue (events_buffer)--> writer --> HTTP

The reader fetches only when the queue has room, so a slow client makes the gateway read slower, not
hold more: a client's memory is at most one fetched batch and one queue. A client whose queue stays
full for events_stall_s (it reads nothing) is sent an ``overflow`` message with the last event it
was sent, and the stream ends; it reconnects with Last-Event-ID and loses nothing. A failure of the
log ends the stream the same way with an ``error`` message.

The consumer is ephemeral and acks nothing (the feed is a reader, the log does not wait for it); it is
deleted when the response ends, and by the server after a minute without fetches if this gateway
dies first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from pydantic import ValidationError

from conductor_contracts import events as ev
from conductor_contracts.public import job_context, job_id_of
from conductor_gateway.feed_items import KEEPALIVE, FeedFilter, FeedItem, compacted, item, keepalive, notice, sse
from conductor_platform.bus import Bus
from conductor_platform.jobs import JobDirectory

log = logging.getLogger("conductor.gateway.feed")

# How long one fetch waits on the server for a new event; an idle feed asks again after it.
FETCH_WAIT_S = 5.0
# The server deletes a consumer nobody fetched from for this long past the stall limit (a gateway
# that died with clients connected leaves none behind for long).
ORPHAN_GRACE_S = 60.0


@dataclass(frozen=True)
class FeedLimits:
    heartbeat_s: float
    buffer: int
    stall_s: float


class _Overflow(Exception):
    pass


class ClientFeed:
    def __init__(
        self,
        bus: Bus,
        sub: JetStreamContext.PullSubscription,
        consumer: str,
        start_seq: int,
        selected: FeedFilter,
        directory: JobDirectory,
        limits: FeedLimits,
        preamble: bytes = b"",
    ) -> None:
        self._bus, self._sub, self._consumer = bus, sub, consumer
        self._preamble = preamble
        self._filter, self._directory, self._limits = selected, directory, limits
        # None wakes the writer when the reader ends the feed; bytes are a notice, sent in their turn.
        self._queue: asyncio.Queue[FeedItem | bytes | None] = asyncio.Queue(maxsize=limits.buffer)
        self._delivered = start_seq - 1
        self._next_seq = start_seq  # the sequence the log should hand this feed next
        # The last sequence the reader is done with: queued for the client, or skipped by its filter.
        self._passed = start_seq - 1
        self._ending: tuple[str, str] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._closed = False

    @classmethod
    async def open(
        cls,
        bus: Bus,
        start_seq: int,
        selected: FeedFilter,
        directory: JobDirectory,
        limits: FeedLimits,
        preamble: bytes = b"",
    ) -> ClientFeed:
        """Create the consumer from ``start_seq`` (>= 1): a failure here is the request's 503.
        ``preamble`` is sent before the first event."""
        name = f"feed-{uuid.uuid4().hex}"
        config = ConsumerConfig(
            name=name,
            description="GET /events",
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=start_seq,
            ack_policy=AckPolicy.NONE,
            inactive_threshold=limits.stall_s + ORPHAN_GRACE_S,
            mem_storage=True,
        )
        await bus.js.add_consumer(bus.stream, config=config)
        sub = await bus.js.pull_subscribe_bind(consumer=name, stream=bus.stream)
        return cls(bus, sub, name, start_seq, selected, directory, limits, preamble)

    async def stream(self) -> AsyncIterator[bytes]:
        """The SSE body: events, keepalive comments while idle, and a last message if the feed ends."""
        self._reader = asyncio.create_task(self._read())
        if self._preamble:
            yield self._preamble
        while self._ending is None:
            try:
                it = await asyncio.wait_for(self._queue.get(), self._limits.heartbeat_s)
            except TimeoutError:
                # An empty queue: everything up to _passed was sent or is not the client's.
                if self._queue.empty() and self._passed > self._delivered:
                    yield keepalive(self._passed)
                    self._delivered = self._passed
                else:
                    yield KEEPALIVE
                continue
            if isinstance(it, bytes):
                yield it
            elif it is not None:
                yield sse(it)
                self._delivered = it.seq
        kind, detail = self._ending
        yield notice(kind, self._delivered, detail)

    async def close(self) -> None:
        """Stop reading and delete the consumer; called once the response is over, however it ended."""
        if self._closed:
            return
        self._closed = True
        if self._reader is not None:
            await _stopped(self._reader)
        try:
            with anyio.fail_after(5):
                await self._bus.js.delete_consumer(self._bus.stream, self._consumer)
        except Exception as err:  # the server removes it itself once idle (inactive_threshold)
            log.info("feed consumer %s left to expire: %s", self._consumer, err or type(err).__name__)
        with contextlib.suppress(Exception):
            await self._sub.unsubscribe()

    async def _read(self) -> None:
        try:
            while not self._closed:  # a cancel lost in nats-py's fetch still ends it at the next turn
                for msg in await self._fetch():
                    seq = msg.metadata.sequence.stream
                    if seq > self._next_seq:
                        # A hole in the log: `conductor compact` purged what this feed had not read
                        # yet. Said in its turn, as at a start inside the compacted part; else the
                        # client's Last-Event-ID moved past it unaware.
                        await self._enqueue(compacted(self._next_seq - 1, seq))
                    self._next_seq = max(self._next_seq, seq + 1)
                    it = await self._item(seq, msg)
                    if it is not None and self._filter.matches(it):
                        await self._enqueue(it)
                    self._passed = seq
        except _Overflow:
            log.info("feed client too slow: sent up to %d, buffer full for %s s", self._delivered, self._limits.stall_s)
            self._end("overflow", "the client read too slowly and fell behind; reconnect with Last-Event-ID")
        except Exception as err:
            log.warning("feed ended", extra={"error": f"{type(err).__name__}: {err}"})
            self._end("error", "the job log is unavailable; reconnect with Last-Event-ID")

    async def _fetch(self) -> list[Msg]:
        # Never more than the queue can take: what is fetched is held until it is queued.
        try:
            return await self._sub.fetch(self._limits.buffer, timeout=FETCH_WAIT_S)
        except TimeoutError:  # nothing new in the log
            return []

    async def _item(self, seq: int, msg: Msg) -> FeedItem | None:
        try:
            event = ev.decode(msg.data)
        except ValidationError:  # not an event of this catalogue (every consumer skips it too)
            return None
        if isinstance(event, ev.JobSubmitted):
            self._directory.remember(seq, job_context(event))
        job_id = job_id_of(seq, event)
        return item(seq, event, await self._directory.of(self._bus, job_id) if job_id is not None else None)

    async def _enqueue(self, it: FeedItem | bytes) -> None:
        try:
            await asyncio.wait_for(self._queue.put(it), self._limits.stall_s)
        except TimeoutError:
            raise _Overflow from None

    def _end(self, kind: str, detail: str) -> None:
        self._ending = (kind, detail)
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(None)


async def _stopped(reader: asyncio.Task[None]) -> None:
    """Cancel the reader until it ends, for at most one fetch's wait and a second. nats-py's fetch waits
    in ``asyncio.wait_for``, which on Python 3.11 drops a cancel that comes as a message arrives: one
    cancel left about one close in eight waiting for ever, with its consumer and its request."""
    deadline = asyncio.get_running_loop().time() + FETCH_WAIT_S + 1
    while not reader.done():
        reader.cancel()
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            log.warning("feed reader did not stop; its consumer is deleted under it")
            return
        await asyncio.wait({reader}, timeout=min(0.1, left))
    with contextlib.suppress(BaseException):
        reader.result()
