"""The projector: folds the whole stream, in order, into the read models.

Cycle: read a batch, apply it in one transaction together with the stream position it reaches,
commit. The position in Postgres is the projector's only cursor: on start it reads it and follows
the stream from the next sequence with a pull consumer (bus.LogReader). A crash loses at most an uncommitted
batch, which is read again; nothing is applied twice and nothing is skipped. (A durable consumer with
acks would redeliver a crashed batch *after* newer messages, and an ack of those would cover the gap:
see docs/decisions.md.)

Nothing but a stop ends the loop, or a NATS connection nats-py closed for good (``ConnectionClosedForGood``,
conductor_platform/closed.py: the process ends, for its supervisor to start it again). An event that
cannot be applied is recorded as a dead letter and skipped (see sink.apply_batch). Any other failure
(PostgreSQL or NATS away, or a bug) skips nothing: the projector logs one line, waits, and follows
the stream again from its stored position.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from prometheus_client import Counter
from sqlalchemy.ext.asyncio import AsyncEngine

from conductor_contracts.text import printable
from conductor_platform import database
from conductor_platform.bus import Bus, LogReader, connect, next_batch
from conductor_platform.closed import ConnectionClosedForGood, raise_if_closed
from conductor_platform.quick_reader import quick_read_from, stream_seq
from conductor_platform.retry import Backoff, Stopped, or_stop
from conductor_platform.settings import EXIT_BAD_SETTING
from conductor_platform.tasks import cancel_until_done
from conductor_platform.which_log import identity_of, other_log
from conductor_projector import archived, migrate, republish, sink
from conductor_projector.decoded import SharedDecoder
from conductor_projector.faults import Fault, classify
from conductor_projector.metrics import BATCH_SIZE, LAG, RETRIES
from conductor_projector.operations import Item, decode
from conductor_projector.row_cache import RowCache
from conductor_projector.settings import ProjectorSettings
from conductor_projector.shared_reads import SharedReads

log = logging.getLogger("conductor.projector")

__all__ = ["ConnectionClosedForGood", "run"]

T = TypeVar("T")
_NAME = "conductor-projector"
EVENTS_APPLIED = Counter(
    "conductor_projector_events_applied",
    "Events this projector read from the log and committed to the read models (dead letters included)",
)


async def run(settings: ProjectorSettings, *, rebuild: bool = False, stop: asyncio.Event | None = None) -> None:
    stop = stop or asyncio.Event()
    backoff = Backoff(settings.retry_first_s, settings.retry_max_s)
    try:
        await _retrying(stop, backoff, "migrating", lambda: _migrate(settings.database_url))
    except migrate.NewerSchema as err:  # a setting that does not hold: conductor up stops, not restarts
        log.error("%s", err)
        raise SystemExit(EXIT_BAD_SETTING) from None
    if stop.is_set():
        return
    engine = database.engine(settings.database_url, timeout_s=settings.database_timeout_s, pool_size=2)
    bus: Bus | None = None
    decoder: SharedDecoder | None = None
    shared: SharedReads | None = None
    republishing: asyncio.Task[None] | None = None
    try:
        bus = await _retrying(
            stop,
            backoff,
            "connecting to NATS",
            lambda: connect(settings.nats_url, name=_NAME, replicas=settings.stream_replicas),
        )
        if bus is None:
            return
        if rebuild:
            await _retrying(stop, backoff, "dropping the read models", lambda: _reset(engine, settings.database_url))
            if stop.is_set():
                return
            log.info("read models dropped; replaying the log")
        if settings.public_subjects and not rebuild:  # a rebuild would publish the whole log again
            retry = Backoff(settings.retry_first_s, settings.retry_max_s)
            decoder = SharedDecoder()  # the republisher reads the same events: each is decoded once
            shared = SharedReads()  # and takes the batches read here while it is level with them
            republishing = asyncio.create_task(
                republish.run(bus, stop, retry, settings.public_retention_s, decoder=decoder, shared=shared)
            )
        while not stop.is_set():
            try:
                # Given up at a stop, wherever it waits: a PostgreSQL that hangs would hold the stop
                # for its statement timeout. A batch not committed is read again at the next start.
                await or_stop(_follow(engine, bus, settings, stop, backoff, decoder, shared), stop)
            except Stopped:
                break
            except Exception as err:
                if stop.is_set():
                    break
                raise_if_closed(bus, err)  # nats-py will not reopen it: end, to be started again
                _failed("projecting", err, backoff)
                await backoff.wait(stop)
    finally:
        # Each on its own: the server that is gone may be why we stop, and the other must still go.
        if republishing is not None:
            await cancel_until_done(republishing)  # stop may not be set: the loop ended by a failure
        if bus is not None:
            try:
                await bus.close()
            except Exception as err:
                log.warning("closing the NATS connection failed", extra={"error": f"{type(err).__name__}: {err}"})
        await _dispose(engine, bounded=stop.is_set())


# How long a stop waits for PostgreSQL to answer the close of its connections.
_CLOSE_S = 2.0


async def _dispose(engine: AsyncEngine, *, bounded: bool) -> None:
    """The engine's connections closed; at a stop, without waiting on a PostgreSQL that hangs: a
    caught-up projector's idle connection waited the whole statement timeout (60 s) to be closed
    politely, then logged the timeout's traceback (review of 2026-12-02)."""
    closing = asyncio.ensure_future(engine.dispose())
    if not bounded:
        await closing
        return
    done, _ = await asyncio.wait({closing}, timeout=_CLOSE_S)
    if done:
        closing.result()
        return
    log.warning("PostgreSQL did not answer the close of the connections: they end with the process")
    # Cancelled, asyncpg drops the connection at once; SQLAlchemy logs that as a failed close.
    logging.getLogger("sqlalchemy.pool").setLevel(logging.CRITICAL)
    closing.cancel()
    await asyncio.wait({closing})
    if not closing.cancelled():
        closing.exception()  # retrieved: a failed close of a server that hangs says nothing more


async def _migrate(database_url: str) -> None:
    try:
        await migrate.upgrade_async(database_url)
    except Exception as err:
        if (newer := migrate.newer_schema(err)) is not None:
            raise newer from None
        raise


async def _reset(engine: AsyncEngine, database_url: str) -> None:
    """The read models emptied for a rebuild; made again first when a table is missing (dropped by
    hand): emptying them failed on it for ever, and a migration at head does not add it back."""
    if missing := await migrate.missing_tables(engine):
        log.warning("the read models miss tables; making them again", extra={"missing": missing})
        await migrate.remake(engine, database_url)
    await sink.reset(engine)


@dataclass(frozen=True)
class _Read:
    """A batch read from the log and decoded, ready to apply."""

    events: list[tuple[int, Item]]
    subjects: dict[int, str]
    pending: int  # what the log held past it when it was read


async def _read(
    sub: LogReader, settings: ProjectorSettings, decoder: SharedDecoder | None, shared: SharedReads | None
) -> _Read:
    after = sub.next_seq - 1  # the reader has every stored event up to here, and what it reads follows
    msgs = await next_batch(sub, settings.batch_size, wait_s=1.0, linger_s=settings.linger_s)
    events: list[tuple[int, Item]] = []
    subjects: dict[int, str] = {}
    for m in msgs:
        seq = stream_seq(m)
        events.append((seq, decode(m.subject, m.data) if decoder is None else decoder.decode(seq, m.subject, m.data)))
        subjects[seq] = m.subject
    if shared is not None:
        shared.offer(after, msgs, events)
    return _Read(events, subjects, msgs[-1].metadata.num_pending if msgs else 0)


async def _follow(
    engine: AsyncEngine,
    bus: Bus,
    settings: ProjectorSettings,
    stop: asyncio.Event,
    backoff: Backoff,
    decoder: SharedDecoder | None,
    shared: SharedReads | None = None,
) -> None:
    """Follow the stream from the stored position until stopped; raises on any failure, after which
    the caller starts again from the position, which is where the last committed batch left it.

    The next batch is read and decoded while the current one is written: PostgreSQL works on its
    transaction while this process decodes, instead of each waiting for the other. At most one batch
    is read ahead, and it is only ever applied after the one before it committed."""
    async with engine.connect() as conn:
        position, of = await sink.position_and_log(conn, settings.consumer)
    info = await bus.js.stream_info(bus.stream)
    identity = identity_of(info)
    if why := other_log(info, of, position):
        # Made of events the log does not hold: following on from there skipped the events that took
        # those sequences, and applied later ones to other jobs' rows of the same ids. The log is the
        # record: made again from it.
        log.error("the read models are not of this log (%s): rebuilding them from the log", why)
        await _reset(engine, settings.database_url)
        position = 0
    if of != identity:
        await sink.record_log(engine, settings.consumer, identity)
    position = await archived.apply_archived(engine, bus, settings, position)
    sub = await quick_read_from(bus, position + 1)
    fresh_read: int | None = position + 1  # where the current read began, until its first batch
    kept = RowCache(settings.kept_rows)
    log.info("projecting", extra={"from_seq": position + 1})
    ahead: asyncio.Task[_Read] = asyncio.create_task(_read(sub, settings, decoder, shared))
    try:
        while not stop.is_set():
            read = await ahead
            ahead = asyncio.create_task(_read(sub, settings, decoder, shared))
            if not read.events:
                continue
            try:
                await sink.apply_batch(
                    engine, settings.consumer, read.events, read_from=fresh_read, subjects=read.subjects, kept=kept
                )
            except sink.PositionMovedBack as moved:
                # Someone rebuilds the read models: join in, from where they are. On a compacted log
                # that may lie in the archive, which the stream no longer holds: that part first.
                log.info("position moved back; reading again", extra={"from_seq": moved.position + 1})
                await _cancelled(ahead)
                await sub.unsubscribe()
                position = await archived.apply_archived(engine, bus, settings, moved.position)
                sub, fresh_read = await quick_read_from(bus, position + 1), position + 1
                ahead = asyncio.create_task(_read(sub, settings, decoder, shared))
                continue
            EVENTS_APPLIED.inc(len(read.events))
            BATCH_SIZE.observe(len(read.events))
            LAG.set(read.pending)
            fresh_read = None
            backoff.reset()
    finally:
        await _cancelled(ahead)
        # The connection may be the thing that failed; the subscription goes with it either way.
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


async def _cancelled(task: asyncio.Task[_Read]) -> None:
    """The read ahead, stopped and its outcome (a batch, or the failure it met) dropped: what it read
    is read again from the position."""
    task.cancel()
    with contextlib.suppress(BaseException):
        await task


async def _retrying(stop: asyncio.Event, backoff: Backoff, what: str, step: Callable[[], Awaitable[T]]) -> T | None:
    """Runs ``step`` until it succeeds (its result) or the projector is stopped (None)."""
    while not stop.is_set():
        try:
            result = await or_stop(step(), stop)
        except Stopped:
            return None
        except migrate.NewerSchema:
            raise
        except Exception as err:
            _failed(what, err, backoff)
            await backoff.wait(stop)
            continue
        backoff.reset()
        return result
    return None


def _failed(what: str, err: Exception, backoff: Backoff) -> None:
    RETRIES.inc()
    extra = {"error": printable(f"{type(err).__name__}: {err}", 500), "retry_in_s": backoff.next_s}
    if isinstance(err, archived.ArchiveMissing):  # the operator's to mend: the message says how
        log.error("%s waits for the archive; retrying", what, extra=extra)
    elif classify(err) is Fault.TRANSIENT:
        log.warning("%s failed: PostgreSQL or NATS unavailable; retrying", what, extra=extra)
    else:  # not the servers: a bug or a schema out of step, worth its traceback
        log.exception("%s failed; retrying", what, extra=extra)
