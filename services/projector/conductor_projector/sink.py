"""All SQL the projector writes: one transaction per batch, together with the position it reaches
(and the dead letters of the events it could not apply)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from sqlalchemy import BigInteger, bindparam, case, func, literal_column, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import StatementError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from conductor_contracts import events as ev
from conductor_contracts.subjects import SUBMITTED, subject_for
from conductor_contracts.text import printable
from conductor_projector import tables as t
from conductor_projector.faults import EventError, Fault, classify
from conductor_projector.metrics import (
    ALTERED_SUBMISSIONS,
    DEAD_LETTERS,
    PLACED_TO_START,
    START_TO_END,
    SUBMIT_TO_START,
)
from conductor_projector.operations import (
    InsertJob,
    InsertRow,
    Operation,
    Row,
    Undecodable,
    UpdateJob,
    UpdateNode,
    UpsertNode,
    fold_jobs,
    latencies,
    sanitized_submission,
    to_operations,
    unstorable,
)
from conductor_projector.operations import (
    Item as Item,  # apply_batch takes them: its callers name them sink.Item
)
from conductor_projector.row_cache import RowCache

log = logging.getLogger("conductor.projector")


async def position(conn: AsyncConnection, name: str) -> int:
    return (await position_and_log(conn, name))[0]


async def position_and_log(conn: AsyncConnection, name: str) -> tuple[int, str | None]:
    """The position and the log it counts in (None: not known)."""
    row = (
        await conn.execute(select(t.positions.c.position, t.positions.c.log).where(t.positions.c.name == name))
    ).first()
    return (0, None) if row is None else (int(row.position), row.log)


async def record_log(engine: AsyncEngine, name: str, log_identity: str) -> None:
    """Which log the position ``name`` counts in, from now on (the row made at 0 if there is none)."""
    async with engine.begin() as conn:
        made = insert(t.positions).values(name=name, position=0, log=log_identity)
        await conn.execute(made.on_conflict_do_update(index_elements=[t.positions.c.name], set_={"log": log_identity}))


async def _execute(
    conn: AsyncConnection, ops: Sequence[Operation], absent_above: int | None, kept: RowCache | None = None
) -> tuple[list[tuple[str, float]], dict[int, Row]]:
    """Node registrations first (in the log they precede any placement on the node), then the job
    operations as one read of the rows they touch, one upsert of those that changed and one update
    of the nodes' allocations: a few statements a batch instead of one per event. Returns the
    latencies of the jobs it started and ended (``operations.latencies``), and the rows of the jobs
    it touched as they are once the transaction commits.

    Rows ``kept`` from the batch before are not read again (``row_cache``). No row of a job above
    ``absent_above`` is in the table yet, so those are not read either: a job's row is made by its
    JobSubmitted, whose sequence is its id, and rows only ever change in the transaction that moves
    the position past the events they fold. In a batch that is the position it starts from; event by
    event, the sequence before the event's own; None when another projector writes the tables."""
    for op in ops:
        match op:
            case UpsertNode():
                stmt = insert(t.nodes).values(op.values)
                # Only the registered fields: a re-registering node keeps its allocation, and its
                # drain (a lost node that registers is back up).
                fresh: dict[str, Any] = {key: stmt.excluded[key] for key in op.values if key != "name"}
                drained = t.nodes.c.drain.is_not(None)
                fresh["state"] = case((drained, "DRAIN"), else_=stmt.excluded.state)
                fresh["reason"] = case((drained, func.nullif(t.nodes.c.drain, "")), else_=None)
                await conn.execute(stmt.on_conflict_do_update(index_elements=["name"], set_=fresh))
            case UpdateNode():
                values: dict[str, Any] = dict(op.values)
                if op.unless_down:
                    down = t.nodes.c.state == "DOWN"
                    for key in ("state", "reason"):
                        if key in values:
                            values[key] = case((down, t.nodes.c[key]), else_=values[key])
                await conn.execute(update(t.nodes).where(t.nodes.c.name == op.name).values(values))
            case InsertRow():
                await conn.execute(insert(op.table).values(op.values).on_conflict_do_nothing())
    job_ops = [op for op in ops if isinstance(op, InsertJob | UpdateJob)]
    touched = {int(op.values["job_id"]) if isinstance(op, InsertJob) else op.job_id for op in job_ops}
    if not touched:
        return [], {}
    rows = kept.take(touched) if kept is not None else {}
    if absent_above is None:
        absent_above = max(touched)
    if stored := [job_id for job_id in touched if job_id <= absent_above and job_id not in rows]:
        result = await conn.execute(select(t.jobs).where(t.jobs.c.job_id.in_(stored)))
        rows.update((int(r["job_id"]), dict(r)) for r in result.mappings())
    before = {job_id: (row["start_time"], row["end_time"]) for job_id, row in rows.items()}
    changed, allocations = fold_jobs(rows, job_ops, _JOB_COLUMNS)
    if changed:
        await _upsert_jobs_rows(conn, [rows[job_id] for job_id in sorted(changed)])
    moves = [
        {"b_node": node, "b_cpus": a.cpus, "b_memory": a.memory_mb}
        for node, a in sorted(allocations.items())
        if a.cpus or a.memory_mb
    ]
    if moves:
        n = t.nodes.c
        await conn.execute(
            update(t.nodes)
            .where(n.name == bindparam("b_node"))
            .values(
                cpus_alloc=n.cpus_alloc + bindparam("b_cpus"), memory_alloc_mb=n.memory_alloc_mb + bindparam("b_memory")
            ),
            moves,
        )
    return latencies(before, rows, changed), rows


_JOB_COLUMNS = tuple(c.name for c in t.jobs.columns)


def _upsert_jobs() -> Any:
    stmt = insert(t.jobs)
    fresh = {c: stmt.excluded[c] for c in _JOB_COLUMNS if c != "job_id"}
    return stmt.on_conflict_do_update(index_elements=["job_id"], set_=fresh)


# Built once: building it (``excluded``'s column proxies) cost more than applying a batch's rows.
_UPSERT_JOBS = _upsert_jobs()


@dataclass(frozen=True)
class _DriverStatement:
    """_UPSERT_JOBS as the driver takes it: its SQL, how a row becomes its positional values, and
    SQLAlchemy's own processing of the values that have any (JSON serialized, booleans checked)."""

    sql: str
    values: Callable[[Row], tuple[Any, ...]]
    processors: tuple[tuple[int, Callable[[Any], Any]], ...]


_DRIVER_STATEMENTS: dict[tuple[str, str], _DriverStatement] = {}


def _driver_statement(dialect: Dialect) -> _DriverStatement:
    if (known := _DRIVER_STATEMENTS.get((dialect.name, dialect.driver))) is None:
        compiled = _UPSERT_JOBS.compile(dialect=dialect)
        order = tuple(compiled.positiontup or ())
        if sorted(order) != sorted(_JOB_COLUMNS):
            raise RuntimeError(f"the upsert of jobs binds {order}, not each column once by its name")
        processors = []
        for i, name in enumerate(order):
            column_type = t.jobs.c[name].type
            if (process := column_type.dialect_impl(dialect).bind_processor(dialect)) is not None:
                processors.append((i, process))
        known = _DriverStatement(str(compiled), itemgetter(*order), tuple(processors))
        _DRIVER_STATEMENTS[dialect.name, dialect.driver] = known
    return known


async def _upsert_jobs_rows(conn: AsyncConnection, rows: list[Row]) -> None:
    """``conn.execute(_UPSERT_JOBS, rows)``, the same values sent, without SQLAlchemy's handling of
    each row and value around them (a third of the CPU of a rebuild's SQL): positional values to the
    driver, through the bind processors of the columns that have one, as SQLAlchemy does (a test
    holds the rows stored equal). Failures are still SQLAlchemy's errors, classified alike."""
    if conn.dialect.driver != "asyncpg":  # the values are positional for asyncpg's $1, $2...
        await conn.execute(_UPSERT_JOBS, rows)
        return
    statement = _driver_statement(conn.dialect)
    params: list[tuple[Any, ...]] = []
    for row in rows:
        values = list(statement.values(row))
        for i, process in statement.processors:
            values[i] = process(values[i])
        params.append(tuple(values))
    await conn.exec_driver_sql(statement.sql, params)


class PositionMovedBack(Exception):
    """The stored position is behind this batch (the read models were reset for a rebuild): the
    events in between must be read again first."""

    def __init__(self, position: int) -> None:
        super().__init__(f"the stored position went back to {position}")
        self.position = position


# Bounds of what a dead letter keeps: enough to see what went wrong, never a row too big to write.
DATA_CHARS = 8192
ERROR_CHARS = 2000
NOTE_CHARS = 300
_INT64 = (-(2**63), 2**63 - 1)


@dataclass(frozen=True)
class DeadLetter:
    seq: int
    subject: str
    event_type: str | None
    job_id: int | None
    error: str
    data: str


@dataclass
class _Recorded:
    """What a batch set aside; reported (log, counters) only once its transaction has committed."""

    dead: list[DeadLetter] = field(default_factory=list)
    altered: list[tuple[int, str]] = field(default_factory=list)
    latencies: list[tuple[str, float]] = field(default_factory=list)


async def apply_batch(
    engine: AsyncEngine,
    name: str,
    batch: Sequence[tuple[int, Item]],
    *,
    read_from: int | None = None,
    subjects: Mapping[int, str] | None = None,
    kept: RowCache | None = None,
) -> int:
    """Apply the events past the stored position, which only ever covers a gap-free prefix of the log;
    returns the new position. Events at or below it are skipped, so a batch read again (after a crash,
    or by a second projector) applies nothing twice. A batch that starts past position + 1 raises
    PositionMovedBack, unless it is the first of a read that began at position + 1 (``read_from``):
    then the log itself has nothing in between.

    An event that cannot be applied does not stop the batch: when the batch fails on its content, it
    is applied again event by event, each in a savepoint; a submission that fails is stored with its
    unstorable fields changed (and a message saying so), and any event that still fails is recorded
    in ``dead_letters`` and skipped, in the transaction that moves the position past it. Errors that
    are not an event's fault (PostgreSQL away, a bug) are raised: nothing is skipped for them.
    ``subjects`` gives the subject of each sequence, for the dead letters. ``kept``: the rows this
    caller's batches wrote, which spare the next batch reading them (``row_cache``)."""
    recorded = _Recorded()
    try:
        reached = await _apply(engine, name, batch, read_from, subjects or {}, recorded, kept, one_by_one=False)
    except Exception as err:
        if classify(err) is not Fault.DATA:
            raise
        log.warning(
            "a batch failed on an event's content; applying it event by event",
            extra={"first_seq": batch[0][0], "last_seq": batch[-1][0], "error": printable(str(err), NOTE_CHARS)},
        )
        recorded = _Recorded()
        reached = await _apply(engine, name, batch, read_from, subjects or {}, recorded, kept, one_by_one=True)
    _report(name, recorded)
    return reached


async def _apply(
    engine: AsyncEngine,
    name: str,
    batch: Sequence[tuple[int, Item]],
    read_from: int | None,
    subjects: Mapping[int, str],
    recorded: _Recorded,
    kept: RowCache | None,
    *,
    one_by_one: bool,
) -> int:
    staged: dict[int, Row] = {}
    async with engine.begin() as conn:
        stored = await _lock_positions(conn)
        if name not in stored:  # the first batch ever (or of a rebuild): the row to lock, then lock it
            await conn.execute(insert(t.positions).values(name=name, position=0).on_conflict_do_nothing())
            stored = await _lock_positions(conn)
        current, version = stored[name]
        if current == 0 and len(stored) == 1 and await _empty(conn):
            # Rows with no position (its row deleted by hand; under this lock nobody else is applying
            # a batch): the log is applied from its start again, and over these rows it counted node
            # allocations twice, which are increments. Emptied, they are made again from the log.
            log.warning("the read models held rows but no position: emptied, to be made again from the log")
        if batch and batch[0][0] > current + 1 and read_from != current + 1:
            raise PositionMovedBack(current)
        fresh = [(seq, item) for seq, item in batch if seq > current]
        if not fresh:
            return current
        # Another name's projector writes these tables too (not a set-up we make; decisions.md):
        # its rows are beyond what this position says, so every row touched is read, as before.
        alone = len(stored) == 1
        if kept is not None:
            kept.align(current, version)
            if one_by_one or not alone:
                kept.forget()  # which rows a savepoint rolled back is not worth tracking here
                kept = None
        if one_by_one:
            for seq, item in fresh:
                await _apply_one(conn, name, seq, item, subjects.get(seq), recorded, alone=alone)
        else:
            events = [(seq, item) for seq, item in fresh if not isinstance(item, Undecodable)]
            ops = [op for seq, event in events for op in _operations(seq, event)]
            found, staged = await _execute(conn, ops, absent_above=current if alone else None, kept=kept)
            recorded.latencies += found
            for seq, item in fresh:
                if isinstance(item, Undecodable):  # no need to try what could not even be read
                    await _dead_letter(conn, name, _letter(seq, item, subjects.get(seq), item.error), recorded)
        reached = max(seq for seq, _ in fresh)
        moved = update(t.positions).where(t.positions.c.name == name).values(position=reached)
        written = int((await conn.execute(moved.returning(_VERSION))).scalar_one())
    if kept is not None:  # committed: what it wrote is what is stored at ``reached``
        kept.committed(reached, written, staged)
    return reached


# The positions row's version: the id of the transaction that last wrote it (PostgreSQL's ``xmin``),
# which a lock does not change. Equal to the one this projector's last commit wrote: nobody else
# moved it since, not even a rebuild that deleted it and caught up to the same sequence again.
_VERSION = literal_column("xmin", BigInteger).label("version")


async def _lock_positions(conn: AsyncConnection) -> dict[str, tuple[int, int]]:
    """Every projector's position and its row's version, locked: projectors of different names
    (which should not share a database) apply their batches one at a time."""
    p = t.positions.c
    result = await conn.execute(select(p.name, p.position, _VERSION).with_for_update())
    return {str(name): (int(position or 0), int(version)) for name, position, version in result}


def _operations(seq: int, event: ev.Event) -> list[Operation]:
    """The event's operations, refused (EventError) when PostgreSQL could not store one of them."""
    try:
        ops = to_operations(seq, event)
    except Exception as err:
        raise EventError(f"{type(err).__name__}: {err}") from err
    for op in ops:
        if (problem := unstorable(op)) is not None:
            raise EventError(problem)
    return ops


async def _apply_one(
    conn: AsyncConnection, name: str, seq: int, item: Item, subject: str | None, recorded: _Recorded, *, alone: bool
) -> None:
    if isinstance(item, Undecodable):
        await _dead_letter(conn, name, _letter(seq, item, subject, item.error), recorded)
        return
    try:
        async with conn.begin_nested():
            recorded.latencies += (await _execute(conn, _operations(seq, item), seq - 1 if alone else None))[0]
        return
    except Exception as err:
        if classify(err) is not Fault.DATA:
            raise
        error = _reason(err)
    if isinstance(item, ev.JobSubmitted) and (row := sanitized_submission(seq, item)) is not None:
        try:
            if (problem := unstorable(row)) is not None:
                raise EventError(problem)
            async with conn.begin_nested():
                recorded.latencies += (await _execute(conn, [row], seq - 1 if alone else None))[0]
            recorded.altered.append((seq, str(row.values["message"])))
            return
        except Exception as err:
            if classify(err) is not Fault.DATA:
                raise
            error = f"{error}; and with its fields made storable: {_reason(err)}"
    await _dead_letter(conn, name, _letter(seq, item, subject, error), recorded)


def _reason(err: Exception) -> str:
    """The driver's own words, without SQLAlchemy's copy of the statement and all its parameters."""
    if isinstance(err, StatementError) and err.orig is not None:
        return str(err.orig)
    return str(err)


def _letter(seq: int, item: Item, subject: str | None, error: str) -> DeadLetter:
    if isinstance(item, Undecodable):
        job_id = seq if item.subject == SUBMITTED else None  # a submission's job id is its sequence
        return DeadLetter(
            seq, item.subject, None, job_id, printable(error, ERROR_CHARS), printable(item.data, DATA_CHARS)
        )
    concerns = seq if isinstance(item, ev.JobSubmitted) else getattr(item, "job_id", None)
    if not (isinstance(concerns, int) and _INT64[0] <= concerns <= _INT64[1]):
        concerns = None
    try:
        data = ev.encode(item)
    except Exception:  # a lone surrogate does not even serialize
        data = repr(item).encode(errors="backslashreplace")
    return DeadLetter(
        seq, subject or _subject(item), item.type, concerns, printable(error, ERROR_CHARS), printable(data, DATA_CHARS)
    )


def _subject(event: ev.Event) -> str:
    try:
        return subject_for(event)
    except Exception:
        return ""


async def _dead_letter(conn: AsyncConnection, name: str, letter: DeadLetter, recorded: _Recorded) -> None:
    """Every field is escaped and bounded, so this insert cannot fail on the event's content."""
    values = {
        "consumer": name,
        "stream_seq": letter.seq,
        "subject": printable(letter.subject, NOTE_CHARS),
        "event_type": letter.event_type,
        "job_id": letter.job_id,
        "error": letter.error,
        "data": letter.data,
    }
    await conn.execute(insert(t.dead_letters).values(values).on_conflict_do_nothing())
    recorded.dead.append(letter)
    if letter.job_id is None or letter.event_type in (None, "JobSubmitted"):
        return
    # The job this event concerns says so, instead of silently staying as it was.
    note = printable(f"{letter.event_type} at stream seq {letter.seq} could not be applied: {letter.error}", NOTE_CHARS)
    try:
        async with conn.begin_nested():
            await conn.execute(
                update(t.jobs)
                .where(t.jobs.c.job_id == letter.job_id)
                .values(message=func.concat_ws("; ", t.jobs.c.message, note))
            )
    except Exception as err:
        if classify(err) is not Fault.DATA:
            raise


def _report(name: str, recorded: _Recorded) -> None:
    histograms = {"wait": SUBMIT_TO_START, "start": PLACED_TO_START, "run": START_TO_END}
    for kind, seconds in recorded.latencies:
        histograms[kind].observe(seconds)
    for letter in recorded.dead:
        DEAD_LETTERS.inc()
        log.error(
            "event at stream seq %d could not be applied: recorded as a dead letter and skipped",
            letter.seq,
            extra={
                "consumer": name,
                "seq": letter.seq,
                "subject": letter.subject,
                "event_type": letter.event_type,
                "job_id": letter.job_id,
                "error": printable(letter.error, NOTE_CHARS),
            },
        )
    for seq, message in recorded.altered:
        ALTERED_SUBMISSIONS.inc()
        log.warning(
            "submission at stream seq %d stored with fields changed",
            seq,
            extra={"consumer": name, "job_id": seq, "detail": message},
        )


async def reset(engine: AsyncEngine) -> None:
    """Every read model emptied for a rebuild. TRUNCATE, not DELETE: a million rows' DELETE outlasted
    the projector's statement timeout (CONDUCTOR_DATABASE_TIMEOUT_S) and was tried again for ever.
    The positions come first: the lock on them is the first a projector's batch takes, so the
    truncate waits for a batch under way instead of taking the jobs from under it (a deadlock)."""
    tables = (t.positions, t.jobs, t.nodes, t.users, t.workflows, t.dead_letters)
    async with engine.begin() as conn:
        await conn.execute(text("TRUNCATE " + ", ".join(f'"{table.name}"' for table in tables)))


async def _empty(conn: AsyncConnection) -> int:
    """Every read-model row deleted (the positions aside); how many there were."""
    deleted = 0
    for table in (t.jobs, t.nodes, t.users, t.workflows, t.dead_letters):
        deleted += (await conn.execute(table.delete())).rowcount or 0
    return deleted
