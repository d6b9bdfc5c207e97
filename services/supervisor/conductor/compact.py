"""``conductor compact``: bound the log by moving its oldest events into an archive.

The log is the record, so nothing leaves it that a reader still needs. Everything below one sequence,
the *watermark*, is written to a gzip'd JSON-lines archive (fsynced, then renamed into place) and only
then purged from the stream. The watermark is the lowest of:

- the scheduler's stored snapshot (it starts from there, and replays only what follows);
- the read models' stored positions (the projectors go on from there);
- the public subjects' position (the projector's republisher goes on from there);
- the oldest job that has not ended (an executor, the gateway and the feed read a live job's
  submission from the log by its id, which is its sequence);
- the first event younger than ``--keep`` (the event feed and debugging read recent history).

Two kinds of message stay whatever their age: users (a name is taken for good: the gateway's check is
"no message on this user's subject yet") and the newest scheduler decision (the fencing token of the
next one). The watermark reached is kept in a KV bucket, so a reader that would replay the whole log
(a scheduler without a usable snapshot, ``conductor projector --rebuild``) knows that the log no longer
starts at 1 and reads the archive first.

Run it from cron or a Kubernetes CronJob; a crash at any point is mended by running it again (the
archive of a range is rewritten whole, and a purge only removes what an archive already holds).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gzip
import json
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from nats.errors import Error as NatsError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import KeyWrongLastSequenceError, NotFoundError
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import create_async_engine

from conductor_contracts import subjects
from conductor_contracts.text import printable
from conductor_platform.archive import (
    COMPACTION_KEY,
    CompactionRecord,
    compaction_bucket,
    compaction_record,
    encode_record,
    segment_name,
    segments,
)
from conductor_platform.bus import Bus, next_batch, read_from
from conductor_platform.settings import async_database_url
from conductor_platform.which_log import log_identity
from conductor_projector import tables
from conductor_scheduler import snapshot


@dataclass(frozen=True)
class Watermark:
    """Each bound of the watermark, so an operator sees which one holds the log back."""

    snapshot: int
    read_models: int
    public: int
    oldest_live_job: int
    keep: int
    last_scheduler_decision: int

    @property
    def seq(self) -> int:
        return min(self.snapshot, self.read_models, self.public, self.oldest_live_job, self.keep)

    def limited_by(self) -> str:
        bounds = {
            "the scheduler's snapshot": self.snapshot,
            "the read models' position": self.read_models,
            "the public subjects' position": self.public,
            # Known from the snapshot: the job may have ended since, and the next snapshot moves it.
            "the oldest job not ended when the scheduler saved its snapshot": self.oldest_live_job,
            "--keep": self.keep,
        }
        return min(bounds, key=lambda name: bounds[name])


async def _first_younger_than(bus: Bus, keep_s: float, after: int) -> int:
    """The sequence of the first event stored less than ``keep_s`` ago (``after``: none is)."""
    since = datetime.fromtimestamp(time.time() - keep_s).astimezone()
    config = ConsumerConfig(
        deliver_policy=DeliverPolicy.BY_START_TIME,
        opt_start_time=since,
        ack_policy=AckPolicy.NONE,
        inactive_threshold=10.0,
    )
    info = await bus.js.add_consumer(bus.stream, config=config)
    try:
        sub = await bus.js.pull_subscribe_bind(consumer=info.name, stream=bus.stream)
        try:
            msgs = await sub.fetch(1, timeout=1.0)
        except TimeoutError:
            return after
        finally:
            await sub.unsubscribe()
        return int(msgs[0].metadata.sequence.stream) if msgs else after
    finally:
        await bus.js.delete_consumer(bus.stream, info.name)


CONNECT_S = 15.0


class CompactionError(Exception):
    """Said in one line, not a traceback; nothing was purged that the archive does not hold."""


class Unreachable(CompactionError):
    """A server compaction must read is away or refuses."""


class Refused(CompactionError):
    """Compaction cannot go on safely: another run, a log it cannot read whole, another log's record."""


async def _read_models_position(database_url: str) -> int:
    """The lowest position of the read models (0 while a rebuild has just reset them)."""
    engine = create_async_engine(async_database_url(database_url))
    try:
        async with engine.connect() as conn:
            return int(await conn.scalar(select(func.min(tables.positions.c.position))) or 0)
    except Exception as err:
        why = printable(err, 300) or type(err).__name__  # a timeout says nothing of its own
        raise Unreachable(
            f"cannot read the read models' position at DATABASE_URL ({why}): what a projector has not read "
            "yet must not be compacted, so PostgreSQL must answer at DATABASE_URL, the read models' database"
        ) from err
    finally:
        await engine.dispose()


async def watermark(bus: Bus, database_url: str, keep_s: float, public_subjects: bool = True) -> Watermark:
    info = await bus.js.stream_info(bus.stream)
    after = int(info.state.last_seq) + 1
    state = await snapshot.restore(bus)
    if state is None:  # no snapshot: a scheduler replays the whole log, so nothing may go
        snapshot_bound, live, last_decision = 1, 1, 0
    else:
        snapshot_bound = state.last_seq + 1
        live = min([*state.pending, *state.running, *state.orphans], default=snapshot_bound)
        last_decision = state.last_scheduler_seq
    positions = await _read_models_position(database_url)
    public_bound = after
    if public_subjects:
        from conductor_projector.republish import published_up_to

        try:
            public_bound = await published_up_to(bus) + 1
        except NotFoundError:
            public_bound = 1
    return Watermark(
        snapshot=snapshot_bound,
        read_models=positions + 1,
        public=public_bound,
        oldest_live_job=live,
        keep=await _first_younger_than(bus, keep_s, after),
        last_scheduler_decision=last_decision,
    )


# A fetch that brings nothing is not the end of the range: a server paused for two seconds answers the
# same (review of 2026-12-02: a segment named for 486 events held 60, and the rest was purged). The
# range ends where the stream holds nothing more below it, asked by sequence; this many empty
# fetches in a row while it does hold more, and the run gives up.
_STALLS = 15
_FETCH_S = 2.0


async def _stored_from(bus: Bus, seq: int) -> int | None:
    """The sequence of the first message the stream holds at or after ``seq``, None when none."""
    try:
        msg = await bus.js.get_msg(bus.stream, seq=seq, subject=subjects.ALL, next=True)
    except NotFoundError:
        return None
    return None if msg.seq is None else int(msg.seq)


async def write_archive(bus: Bus, archive: Path, first: int, below: int) -> tuple[Path, int]:
    """Copy the log's messages in [first, below) into one segment; returns it and how many it holds.
    Refused when the stream does not deliver every message it holds in the range."""
    archive.mkdir(parents=True, exist_ok=True)
    path = archive / segment_name(first, below)
    # A name of this run's own: a run killed midway leaves one behind, which the next sweeps.
    fd, name = tempfile.mkstemp(dir=archive, prefix=f"{path.name}.", suffix=".partial")
    os.close(fd)
    partial = Path(name)
    try:
        count = await _copy_range(bus, partial, first, below)
        with open(partial, "rb") as written:
            os.fsync(written.fileno())
        os.replace(partial, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
    directory = os.open(archive, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return path, count


async def _copy_range(bus: Bus, partial: Path, first: int, below: int) -> int:
    count, expected, stalls = 0, first, 0
    reader = await read_from(bus, first)
    try:
        with gzip.open(partial, "wt", encoding="utf-8") as out:
            while expected < below:
                msgs = await next_batch(reader, 1000, wait_s=_FETCH_S)
                if not msgs:
                    held = await _stored_from(bus, expected)
                    if held is None or held >= below:
                        break  # the range is whole
                    stalls += 1
                    if stalls >= _STALLS:
                        raise Refused(
                            f"the log did not deliver sequence {held} (of {first}-{below - 1} to archive) within "
                            f"{_STALLS * _FETCH_S:g} s: nothing was archived or purged; run it again"
                        )
                    continue
                stalls = 0
                for msg in msgs:
                    seq = int(msg.metadata.sequence.stream)
                    if seq >= below:
                        expected = below
                        break
                    headers = dict(msg.headers) if msg.headers else None
                    out.write(encode_record(seq, msg.subject, msg.data, headers))
                    count += 1
                    expected = seq + 1
    finally:
        await reader.unsubscribe()
    # Whatever ended the read, nothing the stream holds in the range may be missing from the segment.
    held = await _stored_from(bus, expected) if expected < below else None
    if held is not None and held < below:
        raise Refused(f"the log holds sequence {held}, which the archive of {first}-{below - 1} missed: nothing purged")
    return count


async def purge(bus: Bus, below: int, last_scheduler_decision: int) -> None:
    """Remove what lies below ``below``, save users and the newest scheduler decision."""
    for subject in subjects.COMPACTED_SUBJECTS:
        upto = below
        if subject == subjects.SCHEDULER_ALL:
            upto = min(below, max(last_scheduler_decision, 1))
        if upto > 1:
            await bus.js.purge_stream(bus.stream, seq=upto, subject=subject)


@dataclass(frozen=True)
class Compaction:
    watermark: Watermark
    first: int
    below: int
    archived: int
    segment: Path | None
    purged: bool = True


@contextlib.contextmanager
def _only_run(archive: Path) -> Iterator[None]:
    """One run at a time on an archive: two at once each wrote the segment of one range, and the one
    that read the stream after the other had purged it put an empty segment in its place (review of
    2026-12-02: 76 events in neither). Held until the process ends, whatever ends it."""
    try:
        archive.mkdir(parents=True, exist_ok=True)
        fd = os.open(archive / ".compact.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as err:
        raise Refused(f"cannot use the archive folder {archive}: {printable(err, 300)}; nothing done") from err
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Refused(f"another `conductor compact` runs on the archive {archive}: nothing done") from None
        yield
    finally:
        os.close(fd)


async def compact(
    bus: Bus, database_url: str, archive: Path, keep_s: float, public_subjects: bool = True
) -> Compaction:
    with _only_run(archive):
        try:
            return await _compact(bus, database_url, archive, keep_s, public_subjects)
        except NatsError as err:  # a server that stalls past a request's timeout, mid-run
            why = printable(err, 300) or type(err).__name__
            raise Unreachable(f"NATS did not answer ({why}): nothing purged the archive lacks; run it again") from err


async def _compact(bus: Bus, database_url: str, archive: Path, keep_s: float, public_subjects: bool) -> Compaction:
    record = await compaction_record(bus)
    identity = await log_identity(bus)
    if record.log is not None and record.log != identity:
        raise Refused(
            "the compaction record is of another log (the stream was deleted and made again): move the "
            f"archive's segments of the old log out of {archive} and delete the key "
            f"{COMPACTION_KEY!r} of the KV bucket {subjects.COMPACTION_BUCKET!r}; nothing done"
        )
    mark = await watermark(bus, database_url, keep_s, public_subjects)
    first = record.below
    below = mark.seq
    if below <= first:
        # What a run recorded but did not purge (it crashed, or a rebuild held it back) goes now.
        purged = await _purge_if_no_rebuild_behind(bus, database_url, first, mark)
        return Compaction(mark, first, below, 0, None, purged)
    # A segment from ``first`` on is a run's that ended before its record (killed, NATS away): nothing
    # was purged after it, and this run's segment holds it all again, so it goes (else readers would
    # read those events twice, out of order).
    for start, _, stale in segments(archive):
        if start >= first:
            stale.unlink()
    for left in archive.glob("*.partial"):  # of runs killed while they wrote
        left.unlink(missing_ok=True)
    if first > 1 and not any(last == first - 1 for _, last, _ in segments(archive)):
        # Another folder holds the log's archive: a segment here would split it, and readers of either
        # folder would miss what the other holds (review of 2026-12-02).
        raise Refused(
            f"the archive at {archive} does not hold the segment ending at {first - 1}, which the last "
            "compaction recorded: give the log's archive with --archive (CONDUCTOR_ARCHIVE_DIR); nothing done"
        )
    segment, count = await write_archive(bus, archive, first, below)
    # Recorded before the purge: a crash between the two leaves a log that still holds what the
    # record says was archived, which readers handle (they read the archive and skip what follows).
    try:
        await _record(bus, record, below, archive, identity)
    except Refused:
        segment.unlink(missing_ok=True)  # never recorded, and it may hold less than its name says
        raise
    purged = await _purge_if_no_rebuild_behind(bus, database_url, below, mark)
    return Compaction(mark, first, below, count, segment, purged)


async def _record(bus: Bus, was: CompactionRecord, below: int, archive: Path, identity: str) -> None:
    """The new watermark, only over the record this run started from: a run on another archive (another
    machine) that recorded meanwhile wins, and this one purges nothing."""
    kv = await compaction_bucket(bus)
    value = json.dumps({"below": below, "archive": str(archive), "log": identity}).encode()
    try:
        if was.revision:
            await kv.update(COMPACTION_KEY, value, last=was.revision)
        else:
            await kv.create(COMPACTION_KEY, value)
    except KeyWrongLastSequenceError:
        raise Refused(
            "another `conductor compact` recorded a compaction while this one ran (on another archive?): "
            "this run purged nothing"
        ) from None


async def _purge_if_no_rebuild_behind(bus: Bus, database_url: str, below: int, mark: Watermark) -> bool:
    """Purge below ``below`` unless the read models' position moved back behind it since the
    watermark was taken: a rebuild that reset then may have read the compaction record before this
    run's, and reads from the stream what this run would purge. A rebuild that resets after this
    check reads this run's record and takes those events from the archive."""
    if await _read_models_position(database_url) + 1 < below:
        return False
    await purge(bus, below, mark.last_scheduler_decision)
    return True


def run(nats_url: str, database_url: str, archive: Path, keep_s: float, public_subjects: bool) -> Compaction:
    from conductor_platform.bus import connect

    async def main() -> Compaction:
        try:
            # nats-py tries a first connection for ever: a command run by hand, or by cron, gives up.
            bus = await asyncio.wait_for(connect(nats_url, name="conductor-compact", attempts=5), CONNECT_S)
        except Exception as err:
            why = printable(err, 300) or f"no connection within {CONNECT_S:g} s"
            raise Unreachable(f"cannot reach NATS at NATS_URL ({why})") from err
        try:
            return await compact(bus, database_url, archive, keep_s, public_subjects)
        finally:
            await bus.close()

    return asyncio.run(main())
