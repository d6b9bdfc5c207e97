"""The public subjects (``conductor_contracts.public``): every event of the log published again into
the ``CONDUCTOR_PUBLIC`` stream, on a subject that names its type, account, workflow and job.

Its only cursor is the public stream itself: it starts after the log sequence of the newest message
stored there (its ``Conductor-Seq``), so a crash, a NATS restart or a lost publish is followed by
publishing again from what is really stored. Each message's ``Nats-Msg-Id`` is its log sequence (with
the log's identity), so two republishers (two projector replicas) or an overlap after a restart store
each event once (within the duplicate window). Copies of another log (its stream deleted and made
again, or a nats-server that lost the log's unsynced tail and kept these) are purged and the log is
published again from its start. Publishes are not awaited one by one: a batch is sent and only its last
message is acknowledged; messages on one connection arrive in order, so nothing later can be stored
past one that was lost.

In the projector's process it takes the batches the projector reads (``shared_reads``) while it is level
with them, and reads the log on its own only when it is not: behind them, well ahead of them (the
projector catching up), or when the projector has stopped reading (PostgreSQL away).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from nats.aio.msg import Msg
from nats.js.api import KeyValueConfig, StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError
from nats.js.kv import KeyValue
from prometheus_client import Counter

from conductor_contracts import events as ev
from conductor_contracts import public, subjects
from conductor_platform import tracing
from conductor_platform.bus import Bus, next_batch
from conductor_platform.jobs import JobDirectory
from conductor_platform.quick_reader import QuickLogReader, quick_read_from, stream_seq
from conductor_platform.retry import Backoff
from conductor_platform.which_log import log_identity, other_log
from conductor_projector.decoded import SharedDecoder
from conductor_projector.operations import Item, Undecodable
from conductor_projector.shared_reads import SharedReads, Taken, Where

log = logging.getLogger("conductor.projector")

POSITION_KEY = "published"
REPUBLISHED = Counter("conductor_public_events", "Events this process published on the public subjects")
NOT_PUBLISHED = Counter(
    "conductor_public_events_too_large",
    "Events left off the public subjects: their subject or their size with headers is past what NATS takes",
)
# nats-server refuses a control line ("HPUB <subject> <sizes>") past 4 KB and a message past its
# max_payload by closing the connection, which nats-py does not reopen: the publish must not be sent.
MAX_SUBJECT_BYTES = 4000
DUPLICATE_WINDOW_S = 2 * 3600.0
READ_ITSELF = Counter(
    "conductor_public_events_read",
    "Events the republisher read from the log itself rather than taking them from the projector's reads",
)
# An idle projector still reads once a second (and says so with an empty read): its reads not going
# further for this long, it is taken to have stopped (PostgreSQL away or refusing writes, a long
# transaction) and the republisher reads itself.
STALE_S = 3.0
# Ahead of the projector's reads by at most this many sequences (about half a second of its catch-up),
# the republisher waits for them rather than reading the same events a second time.
SLACK = 10_000


async def ensure_stream(bus: Bus, retention_s: float) -> None:
    config = StreamConfig(
        name=public.STREAM,
        subjects=[public.ALL],
        storage=StorageType.FILE,
        max_age=retention_s,
        duplicate_window=min(DUPLICATE_WINDOW_S, retention_s),  # the server refuses a window past max_age
        num_replicas=bus.replicas,
    )
    try:
        await bus.js.add_stream(config)
    except BadRequestError:
        await bus.js.update_stream(config)


async def _positions(bus: Bus) -> KeyValue:
    try:
        return await bus.js.key_value(subjects.PUBLIC_POSITION_BUCKET)
    except NotFoundError:
        config = KeyValueConfig(bucket=subjects.PUBLIC_POSITION_BUCKET, storage=StorageType.FILE, replicas=bus.replicas)
        return await bus.js.create_key_value(config=config)


async def _noted_position(bus: Bus) -> int:
    try:
        entry = await (await bus.js.key_value(subjects.PUBLIC_POSITION_BUCKET)).get(POSITION_KEY)
    except NotFoundError:
        return 0
    return int(entry.value or b"0")


async def published_up_to(bus: Bus) -> int:
    """The log sequence of the newest event in the public stream; when every event there has aged out
    (a quiet week), the position noted after the last batch (0: nothing ever published)."""
    return (await _newest(bus))[0]


async def _newest(bus: Bus) -> tuple[int, str | None]:
    """``published_up_to`` and the log identity its newest message names (None: none, or a copy
    published before copies named their log)."""
    info = await bus.js.stream_info(public.STREAM)
    if not info.state.messages:
        return (await _noted_position(bus) if info.state.last_seq else 0), None
    try:
        last = await bus.js.get_msg(public.STREAM, seq=info.state.last_seq)
    except NotFoundError:
        return 0, None
    headers = last.headers or {}
    return int(headers.get(public.SEQ_HEADER, 0)), headers.get(public.LOG_HEADER)


async def _start(bus: Bus, positions: KeyValue, identity: str) -> int:
    """Where publishing goes on from: after the newest copy, unless the copies are of another log or
    ahead of this one, which are purged, and the log is published again from its start."""
    position, of = await _newest(bus)
    why = other_log(await bus.js.stream_info(bus.stream), of, position)
    if why is None:
        return position
    log.error("the public subjects are not of this log (%s): publishing it again from its start", why)
    await bus.js.purge_stream(public.STREAM)
    await positions.put(POSITION_KEY, b"0")
    return 0


async def _subject(bus: Bus, jobs: JobDirectory, seq: int, event: ev.Event) -> str:
    if isinstance(event, ev.JobSubmitted):
        jobs.remember(seq, public.job_context(event))
    job_id = public.job_id_of(seq, event)
    context = await jobs.of(bus, job_id) if job_id is not None else None
    return public.subject(seq, event, context)


def too_large(subject: str, headers: dict[str, str], data: bytes, max_payload: int) -> str | None:
    """Why NATS would refuse this publish (None: it would not)."""
    if len(subject.encode()) > MAX_SUBJECT_BYTES:
        return f"its subject takes {len(subject.encode())} bytes (at most {MAX_SUBJECT_BYTES})"
    # As nats-py frames headers: "NATS/1.0\r\n", "key: value\r\n" each, "\r\n".
    size = 12 + sum(len(k.encode()) + len(v.encode()) + 4 for k, v in headers.items()) + len(data)
    if size > max_payload:
        return f"it takes {size} bytes with its headers (the server takes at most {max_payload})"
    return None


async def _send(bus: Bus, outgoing: list[tuple[str, bytes, dict[str, str]]]) -> None:
    """All but the last sent without waiting; the last one acknowledged by the public stream, which
    so exists and took the batch (messages on one connection arrive in order). A stream deleted
    meanwhile answers nothing: the loop starts again, makes it anew and fills it from the log (a
    flush said only that the server had the messages, and they went nowhere, review of 2026-12-02)."""
    for subject, data, headers in outgoing[:-1]:
        await bus.nc.publish(subject, data, headers=headers)
    subject, data, headers = outgoing[-1]
    await bus.js.publish(subject, data, headers=headers, stream=public.STREAM, timeout=10)


class _Source:
    """Where the republisher's next events come from: the projector's reads when they hold them, else
    a reader of its own, opened from the position and closed as soon as the projector's reads will do."""

    def __init__(self, bus: Bus, decoder: SharedDecoder, shared: SharedReads | None, position: int) -> None:
        self.bus, self.decoder, self.shared, self.position = bus, decoder, shared, position
        self.own: QuickLogReader | None = None

    async def next(self) -> list[tuple[int, Msg, Item]]:
        """The events after ``position`` that are there now, in log order ([] after a wait)."""
        shared = self.shared
        where = Where.NOTHING if shared is None else shared.take(self.position)
        if isinstance(where, Taken):
            await self.close()
            return where.events
        if shared is not None and self._worth_waiting(shared, where):
            await self.close()
            await shared.wait(STALE_S)
            return []
        if self.own is None:
            self.own = await quick_read_from(self.bus, self.position + 1)
        # Up to 2000 at a time while catching up; live, what arrives within 50 ms: one flush
        # (a round trip to the server) for each batch, not for each trickle of events. A short wait
        # for the first: the projector's reads may hold what follows by then.
        msgs = await next_batch(self.own, 2000, wait_s=0.25, linger_s=0.05)
        READ_ITSELF.inc(len(msgs))
        decode = self.decoder.decode
        return [(seq, m, decode(seq, m.subject, m.data)) for m in msgs if (seq := stream_seq(m)) > self.position]

    def _worth_waiting(self, shared: SharedReads, where: Where) -> bool:
        """Whether the projector is reading and about to read what follows the position."""
        if where is Where.LEVEL:
            return shared.progressing(STALE_S)
        if where is Where.AHEAD:
            return shared.progressing(STALE_S) and self.position - (shared.newest or 0) <= SLACK
        return False

    async def close(self) -> None:
        if self.own is not None:
            own, self.own = self.own, None
            with contextlib.suppress(Exception):  # the connection may be what failed
                await own.unsubscribe()


async def _follow(
    bus: Bus,
    jobs: JobDirectory,
    stop: asyncio.Event,
    retry: Backoff,
    decoder: SharedDecoder,
    shared: SharedReads | None,
) -> None:
    positions = await _positions(bus)
    identity = await log_identity(bus)
    source = _Source(bus, decoder, shared, await _start(bus, positions, identity))
    log.info("publishing on the public subjects", extra={"from_seq": source.position + 1})
    try:
        while not stop.is_set():
            batch = await source.next()
            outgoing: list[tuple[str, bytes, dict[str, str]]] = []
            for seq, msg, event in batch:
                if isinstance(event, Undecodable):  # what no consumer can read is not published either
                    continue
                # The event's trace goes along: a subscriber can continue the job's trace.
                headers = tracing.headers(tracing.of_headers(msg.headers))
                headers |= {"Nats-Msg-Id": f"{seq}@{identity}", public.SEQ_HEADER: str(seq)}
                headers[public.LOG_HEADER] = identity
                subject = await _subject(bus, jobs, seq, event)
                if problem := too_large(subject, headers, msg.data, bus.nc.max_payload):
                    NOT_PUBLISHED.inc()
                    log.error("event left off the public subjects: %s", problem, extra={"seq": seq})
                    continue
                outgoing.append((subject, msg.data, headers))
            if outgoing:
                await _send(bus, outgoing)
            if batch:
                REPUBLISHED.inc(len(batch))
                source.position = batch[-1][0]
                # Only read once the public stream is empty: its newest message says it otherwise.
                await positions.put(POSITION_KEY, str(source.position).encode())
                retry.reset()
    finally:
        await source.close()


async def run(
    bus: Bus,
    stop: asyncio.Event,
    retry: Backoff,
    retention_s: float,
    *,
    decoder: SharedDecoder | None = None,
    shared: SharedReads | None = None,
) -> None:
    """Until ``stop``; any failure (NATS away) is followed by starting again from what is stored.
    ``decoder``: shared with the projector's own reading of the log (each event decoded once);
    ``shared``: the projector's reads, taken instead of reading the log again while they hold what follows."""
    jobs = JobDirectory()
    decoder = decoder or SharedDecoder()
    while not stop.is_set():
        try:
            await ensure_stream(bus, retention_s)
            await _follow(bus, jobs, stop, retry, decoder, shared)
        except asyncio.CancelledError:
            raise
        except Exception as err:
            log.warning(
                "publishing on the public subjects failed; retrying", extra={"error": f"{type(err).__name__}: {err}"}
            )
            await retry.wait(stop)
