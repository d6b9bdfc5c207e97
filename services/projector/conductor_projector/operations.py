"""Events to read-model operations: a pure converter, table-tested without a database.

Terminal states never change again, so every update of a job's state is guarded on the job still
being PENDING or RUNNING: an event that arrives for a finished job changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from conductor_contracts import events as ev
from conductor_contracts.paths import output_files
from conductor_contracts.states import JobState

ACTIVE = (JobState.PENDING.value, JobState.RUNNING.value)


@dataclass(frozen=True)
class InsertJob:
    values: dict[str, Any]


@dataclass(frozen=True)
class UpdateJob:
    job_id: int
    values: dict[str, Any]
    only_in: tuple[str, ...] = ACTIVE


@dataclass(frozen=True)
class UpsertNode:
    values: dict[str, Any]


@dataclass(frozen=True)
class UpdateNode:
    name: str
    values: dict[str, Any] = field(default_factory=dict)


Operation = InsertJob | UpdateJob | UpsertNode | UpdateNode


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
            before = row["state"]
            row.update(op.values)
            changed.add(op.job_id)
            sign = (row["state"] == running) - (before == running)
            if sign and row["node"] is not None:
                moved = nodes.setdefault(row["node"], Allocation())
                moved.cpus += sign * row["cpus"]
                moved.memory_mb += sign * row["memory_mb"]
    return changed, nodes


def _submitted(seq: int, e: ev.JobSubmitted) -> InsertJob:
    stdout, stderr = output_files(seq, e)
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
        }
    )


def _ended(event: ev.TerminalJobEvent, state: JobState, **extra: Any) -> UpdateJob:
    values = {"state": state.value, "end_time": event.occurred_at, "exit_code": event.exit_code, "reason": None}
    return UpdateJob(event.job_id, values | extra)


def to_operations(seq: int, event: ev.Event) -> list[Operation]:
    match event:
        case ev.JobSubmitted():
            return [_submitted(seq, event)]
        case ev.JobCancelRequested(job_id=job_id):
            return [UpdateJob(job_id, {"cancel_requested": True})]
        case ev.JobPlaced():
            values = {
                "state": JobState.RUNNING.value,
                "node": event.node,
                "cores": list(event.cores),
                "reason": None,
                "reason_detail": None,
            }
            return [UpdateJob(event.job_id, values, only_in=(JobState.PENDING.value,))]
        case ev.JobReasonChanged():
            values = {"reason": event.reason, "reason_detail": event.detail or None}
            return [UpdateJob(event.job_id, values, only_in=(JobState.PENDING.value,))]
        case ev.JobStarted():
            return [UpdateJob(event.job_id, {"start_time": event.occurred_at, "pid": event.pid})]
        case ev.JobCompleted():
            return [_ended(event, JobState.COMPLETED)]
        case ev.JobFailed():
            state = JobState.NODE_FAIL if event.node_fail else JobState.FAILED
            return [_ended(event, state, message=event.message or None)]
        case ev.JobTimedOut():
            return [_ended(event, JobState.TIMEOUT)]
        case ev.JobOutOfMemory():
            return [_ended(event, JobState.OUT_OF_MEMORY)]
        case ev.JobCancelled():
            return [_ended(event, JobState.CANCELLED)]
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
            return [UpdateNode(node, {"state": "DOWN"})]
        case ev.NodeDrained(node=node):
            return [UpdateNode(node, {"state": "DRAINED"})]
    return []
