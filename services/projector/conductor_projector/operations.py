"""Events to read-model operations: a pure converter, table-tested without a database.

Terminal states never change again, so every update of a job's state is guarded on the job still
being PENDING or RUNNING: an event that arrives for a finished job changes nothing.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import BigInteger, Integer, String, Table

from conductor_contracts import events as ev
from conductor_contracts.paths import output_files
from conductor_contracts.states import JobState, PendingReason
from conductor_projector import tables as t

ACTIVE = (JobState.PENDING.value, JobState.RUNNING.value)


@dataclass(frozen=True)
class InsertJob:
    values: dict[str, Any]


@dataclass(frozen=True)
class UpdateJob:
    job_id: int
    values: dict[str, Any]
    only_in: tuple[str, ...] = ACTIVE
    # Applies only to this run of the job (its ``restarts``): a report of an earlier run changes nothing.
    run: int | None = None
    # Not to a job submitted with requeue: its node failing requeues it (JobRequeued follows).
    unless_requeue: bool = False


@dataclass(frozen=True)
class UpsertNode:
    values: dict[str, Any]


@dataclass(frozen=True)
class UpdateNode:
    name: str
    values: dict[str, Any] = field(default_factory=dict)
    # Its state and reason only while the node is not DOWN (a drain or a resume of a lost node).
    unless_down: bool = False


@dataclass(frozen=True)
class InsertRow:
    """A row written once and never changed (a user, a workflow); a second insert changes nothing."""

    table: Table
    values: dict[str, Any]


Operation = InsertJob | UpdateJob | UpsertNode | UpdateNode | InsertRow


Row = dict[str, Any]


@dataclass
class Allocation:
    """What a batch changes in a node's allocated CPUs and memory."""

    cpus: int = 0
    memory_mb: int = 0


def fold_jobs(
    rows: dict[int, Row], ops: Sequence[Operation], columns: tuple[str, ...]
) -> tuple[set[int], dict[str, Allocation]]:
    """Apply a batch's job operations to the rows they touch, in memory and in order; ``rows`` holds
    the stored rows of those jobs. Returns the ids of the rows that changed and, per node, how its
    allocation moved (a job holds its CPUs and memory while RUNNING). An insert of a job that exists
    changes nothing; an update applies only while the job is in one of its ``only_in`` states."""
    changed: set[int] = set()
    nodes: dict[str, Allocation] = {}
    running = JobState.RUNNING.value
    for op in ops:
        if isinstance(op, InsertJob):
            job_id = int(op.values["job_id"])
            if job_id not in rows:
                rows[job_id] = dict.fromkeys(columns) | op.values
                changed.add(job_id)
        elif isinstance(op, UpdateJob):
            row = rows.get(op.job_id)
            if row is None or row["state"] not in op.only_in:
                continue
            if op.run is not None and (row.get("restarts") or 0) != op.run:
                continue
            if op.unless_requeue and row.get("requeue"):
                continue
            before, node_before = row["state"], row["node"]
            row.update(op.values)
            changed.add(op.job_id)
            sign = (row["state"] == running) - (before == running)
            node = row["node"] if sign > 0 else node_before  # a requeued job leaves its node behind
            if sign and node is not None:
                moved = nodes.setdefault(node, Allocation())
                moved.cpus += sign * row["cpus"]
                moved.memory_mb += sign * row["memory_mb"]
    return changed, nodes


def _submitted(seq: int, e: ev.JobSubmitted) -> InsertJob:
    stdout, stderr = output_files(seq, e)
    parents = e.parent_ids(seq)
    return InsertJob(
        {
            "job_id": seq,
            "name": e.name,
            "account": e.account,
            "partition": e.partition,
            "state": JobState.PENDING.value,
            "reason": "None",
            "cpus": e.cpus,
            "ntasks_per_node": e.ntasks_per_node,
            "cpus_per_task": e.cpus_per_task,
            "memory_mb": e.memory_mb,
            "time_limit_s": e.time_limit_s,
            "working_directory": e.working_directory,
            "standard_output": stdout,
            "standard_error": stderr,
            "environment": dict(e.environment),
            "script": e.script,
            "submit_time": e.occurred_at,
            "cancel_requested": False,
            "requeue": e.requeue,
            "restarts": 0,
            "workflow_id": e.workflow_id,
            "workflow_index": e.workflow_index,
            "branch_id": e.branch_id,
            "job_type": e.job_type,
            "parents": parents if e.workflow_id else None,
            "dependency": None if e.dependency is None else str(e.dependency),
            # Held from the submission on: the scheduler says so only when the reason changes.
            **({"reason": PendingReason.DEPENDENCY.value} if e.dependency is not None or parents else {}),
        }
    )


_RUNNING = (JobState.RUNNING.value,)


def _ended(event: ev.TerminalJobEvent, state: JobState, **extra: Any) -> UpdateJob:
    # An ended job waits for nothing: the reason it waited with goes, its detail too.
    values = {
        "state": state.value,
        "end_time": event.occurred_at,
        "exit_code": event.exit_code,
        "reason": None,
        "reason_detail": None,
    }
    if event.started_at is not None:  # a short run's start, reported with its end instead of a JobStarted
        values["start_time"], values["pid"] = event.started_at, event.pid
    # A pending job is ended by the scheduler, whatever run it is at; a node reports on its run, and
    # only while the job runs (as the scheduler's fold has it): a pending job a node says it ended
    # was never placed there.
    if event.node is None:
        return UpdateJob(event.job_id, values | extra)
    return UpdateJob(event.job_id, values | extra, only_in=_RUNNING, run=event.run)


def _placed(seq: int, event: ev.JobPlaced) -> list[Operation]:
    values = {
        "state": JobState.RUNNING.value,
        "node": event.node,
        "cores": list(event.cores),
        "reason": None,
        "reason_detail": None,
        "placed_time": event.occurred_at,
    }
    return [UpdateJob(event.job_id, values, only_in=(JobState.PENDING.value,), run=event.run)]


def _reason_changed(seq: int, event: ev.JobReasonChanged) -> list[Operation]:
    values = {"reason": event.reason, "reason_detail": event.detail or None}
    return [UpdateJob(event.job_id, values, only_in=(JobState.PENDING.value,))]


def _started(seq: int, event: ev.JobStarted) -> list[Operation]:
    values = {"start_time": event.occurred_at, "pid": event.pid}
    return [UpdateJob(event.job_id, values, only_in=_RUNNING, run=event.run)]


# The events of every job, found by their type at once instead of down the match below.
_BY_TYPE: dict[type[Any], Callable[[int, Any], list[Operation]]] = {
    ev.JobSubmitted: lambda seq, event: [_submitted(seq, event)],
    ev.JobPlaced: _placed,
    ev.JobReasonChanged: _reason_changed,
    ev.JobStarted: _started,
    ev.JobCompleted: lambda seq, event: [_ended(event, JobState.COMPLETED)],
}


def to_operations(seq: int, event: ev.Event) -> list[Operation]:
    if (quick := _BY_TYPE.get(type(event))) is not None:
        return quick(seq, event)
    match event:
        case ev.JobSubmitted():
            return [_submitted(seq, event)]
        case ev.JobCancelRequested(job_id=job_id):
            return [UpdateJob(job_id, {"cancel_requested": True})]
        case ev.JobPlaced():
            return _placed(seq, event)
        case ev.JobReasonChanged():
            return _reason_changed(seq, event)
        case ev.JobStarted():
            return _started(seq, event)
        case ev.JobRequeued():
            requeued: dict[str, Any] = {
                "state": JobState.PENDING.value,
                "restarts": event.run + 1,
                "node": None,
                "cores": None,
                "pid": None,
                "placed_time": None,
                "start_time": None,
                "reason": PendingReason.REQUEUED.value,
                "reason_detail": event.reason or None,
            }
            return [UpdateJob(event.job_id, requeued, only_in=(JobState.RUNNING.value,), run=event.run)]
        case ev.JobFailed(never_started=True):
            return []  # the scheduler places it again (JobRequeued), or ends it (a JobFailed of its own)
        case ev.JobFailed():
            ended = _ended(event, ev.final_state(event), message=event.message or None)
            return [replace(ended, unless_requeue=event.node_fail)]
        case ev.JobCancelled(reason=reason) if reason:
            return [_ended(event, ev.final_state(event), reason=reason, reason_detail=event.detail or None)]
        case ev.JobCompleted() | ev.JobTimedOut() | ev.JobOutOfMemory() | ev.JobCancelled():
            return [_ended(event, ev.final_state(event))]
        case ev.UserCreated():
            user: dict[str, Any] = {
                "user_id": event.user_id,
                "username": event.username,
                "created_at": event.occurred_at,
            }
            return [InsertRow(t.users, user)]
        case ev.WorkflowSubmitted():
            workflow: dict[str, Any] = {
                "workflow_id": event.workflow_id,
                "user_id": event.user_id,
                "owner": event.owner,
                "name": event.name,
                "job_count": event.job_count,
                "first_job_id": seq + 1,  # its jobs follow it in one atomic batch
                "submit_time": event.occurred_at,
            }
            return [InsertRow(t.workflows, workflow)]
        case ev.NodeRegistered():
            return [
                UpsertNode(
                    {
                        "name": event.node,
                        "cpus": event.cpus,
                        "memory_mb": event.memory_mb,
                        "partitions": list(event.partitions),
                        "state": "UP",
                        "registered_at": event.occurred_at,
                    }
                )
            ]
        case ev.NodeLost(node=node):
            return [UpdateNode(node, {"state": "DOWN", "reason": event.reason or "lost"})]
        case ev.NodeDrainRequested(node=node):
            # (NodeDrained, which nothing publishes now, changes nothing: the scheduler's fold ignores it,
            # and DRAINING or DRAINED follows from the node's allocation.)
            drain = {"state": "DRAIN", "reason": event.reason or None, "drain": event.reason}
            return [UpdateNode(node, drain, unless_down=True)]
        case ev.NodeResumeRequested(node=node):
            return [UpdateNode(node, {"state": "UP", "reason": None, "drain": None}, unless_down=True)]
    return []


# Events that cannot be stored as they are. The gateway bounds what it accepts, but the log may hold
# older or hand-made events, and one of them must never stop the read models.


@dataclass(frozen=True)
class Undecodable:
    """A message in the stream that is no event this version can read (garbage, a foreign schema)."""

    subject: str
    data: bytes
    error: str


# What a message of the log is to the projector: an event, or what it could not read.
Item = ev.Event | Undecodable


def decode(subject: str, data: bytes) -> Item:
    try:
        return ev.decode(data)
    except Exception as err:  # whatever the bytes are, it is their fault, not the projector's
        return Undecodable(subject, data, str(err))


INT32 = (-(2**31), 2**31 - 1)
# A btree index entry holds at most 2704 bytes: indexed text is cut well below it.
INDEXED_TEXT_BYTES = 1024
_INDEXED_TEXT = ("name", "account")
_TEXT = ("name", "account", "partition", "working_directory", "standard_output", "standard_error", "script")
_INT32 = ("ntasks_per_node", "cpus_per_task", "cpus", "memory_mb", "time_limit_s")
# PostgreSQL's text holds no NUL, and UTF-8 cannot encode a lone surrogate.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable(text: str, max_bytes: int | None = None) -> str:
    clean = _UNSTORABLE.sub("\ufffd", text)
    if max_bytes is not None and len(clean.encode()) > max_bytes:
        clean = clean.encode()[:max_bytes].decode(errors="ignore")
    return clean


def sanitize(event: ev.JobSubmitted) -> tuple[ev.JobSubmitted, list[str]]:
    """A copy of a submission that the read model can store, and a note for each field it changed."""
    changes: dict[str, Any] = {}
    notes: list[str] = []
    for name in _TEXT:
        value = getattr(event, name)
        if value is None:
            continue
        limit = INDEXED_TEXT_BYTES if name in _INDEXED_TEXT else None
        clean = storable(value, limit)
        if clean != value:
            changes[name] = clean
            cut = limit is not None and len(storable(value).encode()) > limit
            notes.append(f"{name} {'cut to ' + str(limit) + ' bytes' if cut else 'had NUL or invalid characters'}")
    environment = {storable(k): storable(v) for k, v in event.environment.items()}
    if environment != event.environment:
        changes["environment"] = environment
        notes.append("environment had NUL or invalid characters")
    low, high = INT32
    for name in _INT32:
        value = getattr(event, name)
        if value is not None and not low <= value <= high:
            changes[name] = min(max(value, low), high)
            notes.append(f"{name} {value} out of range, stored as {changes[name]}")
    return event.model_copy(update=changes), notes


def sanitized_submission(seq: int, event: ev.JobSubmitted) -> InsertJob | None:
    """The row of a submission PostgreSQL refused as it was, with a message saying what was changed;
    None when there is nothing to change (the fault is elsewhere)."""
    clean, notes = sanitize(event)
    if not notes:
        return None
    row = _submitted(seq, clean).values
    return InsertJob(row | {"message": "not stored as submitted (the read model cannot hold it): " + "; ".join(notes)})


_INT64 = (-(2**63), 2**63 - 1)


def _keyed(op: Operation) -> dict[str, Any]:
    """The values an operation sends, its key included."""
    match op:
        case UpdateJob():
            return {"job_id": op.job_id, **op.values}
        case UpdateNode():
            return {"name": op.name, **op.values}
    return op.values


@dataclass(frozen=True)
class _Bounds:
    """What a column holds: an integer range, or text of a maximum length (characters, and bytes
    when it is indexed)."""

    where: str
    ints: tuple[int, int] | None = None
    chars: int | None = None
    text_bytes: int | None = None
    text: bool = False


def _bounds(table: Table) -> dict[str, _Bounds]:
    indexed = {c.name for c in table.primary_key.columns} | {c.name for i in table.indexes for c in i.columns}
    out: dict[str, _Bounds] = {}
    for column in table.columns:
        where = f"{table.name}.{column.name}"
        if isinstance(column.type, Integer):
            out[column.name] = _Bounds(where, ints=_INT64 if isinstance(column.type, BigInteger) else INT32)
        elif isinstance(column.type, String):
            limit = INDEXED_TEXT_BYTES if column.name in indexed else None
            out[column.name] = _Bounds(where, chars=column.type.length, text_bytes=limit, text=True)
    return out


_BOUNDS = {table.name: _bounds(table) for table in (t.jobs, t.nodes, t.users, t.workflows)}


def _problem(bounds: _Bounds, name: str, value: Any) -> str | None:
    if bounds.ints is not None and isinstance(value, int) and not isinstance(value, bool):
        low, high = bounds.ints
        if not low <= value <= high:
            return f"{name} {value} is out of range for {bounds.where} ({'int64' if high > INT32[1] else 'int32'})"
    elif bounds.text and isinstance(value, str):
        if _UNSTORABLE.search(value):
            return f"{name} holds NUL or a lone surrogate, which {bounds.where} cannot"
        if bounds.chars is not None and len(value) > bounds.chars:
            return f"{name} is longer than the {bounds.chars} characters of {bounds.where}"
        limit = bounds.text_bytes
        if limit is not None and len(value) * 4 > limit and len(value.encode()) > limit:  # 4: UTF-8's widest
            return f"{name} is over the {limit} bytes an indexed column such as {bounds.where} is given"
    return None


def unstorable(op: Operation) -> str | None:
    """Why PostgreSQL would refuse a value of this operation, or None. Checked on each event before
    any is written, so whether an event is stored does not depend on the batch it came in (a batch
    folds a job's events in memory, where a later event could hide an earlier unstorable value)."""
    table = op.table.name if isinstance(op, InsertRow) else _TABLES[type(op)]
    columns, ints, texts = _BOUNDS[table], _INTS[table], _TEXTS[table]
    # The key apart from the values: building the keyed dict (_keyed) cost more than the checks.
    values = op.values
    key: tuple[str, Any] | None = None
    if isinstance(op, UpdateJob):
        key = ("job_id", op.job_id)
    elif isinstance(op, UpdateNode):
        key = ("name", op.name)
    if key is not None:
        if key[0] in values:  # never made so, but then its value is the one sent, in the key's place
            values = _keyed(op)
        elif (bounds := columns.get(key[0])) is not None and (problem := _problem(bounds, *key)) is not None:
            return problem
    for name, value in values.items():
        # Most values are neither text nor int (None, times, lists, booleans): nothing to check. A
        # cheap test first, for the exact types events give; _problem says what is wrong, if anything.
        kind = type(value)
        if kind is str:
            if (bounds := texts.get(name)) is None:
                continue
            if not (
                (not value.isascii() and _UNSTORABLE.search(value) is not None)
                or "\x00" in value
                or (bounds.chars is not None and len(value) > bounds.chars)
                or (bounds.text_bytes is not None and len(value) * 4 > bounds.text_bytes)
            ):
                continue
        elif kind is int:
            if (limits := ints.get(name)) is None or limits[0] <= value <= limits[1]:
                continue
        elif not isinstance(value, _STR_OR_INT):  # a subclass (a bool, an enum): _problem decides
            continue
        if (bounds := columns.get(name)) is not None and (problem := _problem(bounds, name, value)) is not None:
            return problem
    return None


# What _BOUNDS says of each table's integer and text columns, for unstorable's cheap test.
_INTS = {table: {n: b.ints for n, b in columns.items() if b.ints is not None} for table, columns in _BOUNDS.items()}
_TEXTS = {table: {n: b for n, b in columns.items() if b.text} for table, columns in _BOUNDS.items()}
_TABLES = {InsertJob: t.jobs.name, UpdateJob: t.jobs.name, UpsertNode: t.nodes.name, UpdateNode: t.nodes.name}
_STR_OR_INT = (str, int)  # not ``str | int``, which is built anew at each use


Times = tuple[Any, Any]  # a job's (start_time, end_time)


def latencies(before: dict[int, Times], rows: dict[int, Row], changed: set[int]) -> list[tuple[str, float]]:
    """What a batch's changes took: ("wait", submit -> start) and ("start", placed -> start) for each
    job it started, ("run", start -> end) for each job it ended after a start; ``before`` holds the
    rows' times before it."""
    out: list[tuple[str, float]] = []
    for job_id in sorted(changed):
        row = rows[job_id]
        start, end = row.get("start_time"), row.get("end_time")
        was_start, was_end = before.get(job_id, (None, None))
        if start is not None and was_start is None and row.get("submit_time") is not None:
            out.append(("wait", max(0.0, (start - row["submit_time"]).total_seconds())))
        if start is not None and was_start is None and row.get("placed_time") is not None:
            out.append(("start", max(0.0, (start - row["placed_time"]).total_seconds())))
        if end is not None and was_end is None and start is not None:
            out.append(("run", max(0.0, (end - start).total_seconds())))
    return out
