"""The event that ends a job, from how it ended: a pure function of the supervisor's record."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from conductor_contracts import events as ev

# By its executor, or by its supervisor when the executor itself was stopped, frozen or gone.
FENCED = (
    "killed as its executor's heartbeats had not got through for longer than node_lost_after_s (the "
    "executor cut off from NATS, stopped or gone): its node may have been declared lost and the job "
    "requeued elsewhere"
)
# As Slurm's jobs on a node that goes down: NODE_FAIL, and a job that asked to be requeued is.
STOPPED = "killed as its executor stopped (CONDUCTOR_STOP_JOBS_ON_EXIT, as under conductor up)"
REPLACED = (
    "killed as another executor of its node took the node over while this job's executor was frozen or "
    "cut off (a node has one executor)"
)


def outcome_event(
    job_id: int,
    node: str,
    exit_code: int | None,
    reasons: frozenset[str],
    ended_at: float | None,
    lost_message: str,
    run: int = 0,
    started: ev.JobStarted | None = None,
) -> ev.TerminalJobEvent:
    """A kill's reason wins over the status it caused (a cancelled job exits 143), and over a missing
    record of it: the executor writes its reason before it signals, so a job that then killed its
    supervisor (or removed the record) still ends as what was asked, not as NODE_FAIL, which would
    requeue it. ``exit_code`` None without a reason: nothing says how the job ended (its supervisor
    vanished), NODE_FAIL with ``lost_message``.
    ``ended_at``: when the job ended (wall clock), the event's time; now when unknown. ``run``: the
    run of the job it ends (``JobPlaced.run``). A run killed as ``lost`` has no outcome at all: the
    caller does not ask for one. ``started``: the run's JobStarted when it did not go out: the outcome
    carries its pid and start instead."""
    at: dict[str, Any] = {"run": run}
    if ended_at is not None:
        at["occurred_at"] = datetime.fromtimestamp(ended_at, UTC)
    if started is not None:
        at["pid"], at["started_at"] = started.pid, started.occurred_at
    if "cancelled" in reasons:
        return ev.JobCancelled(job_id=job_id, node=node, exit_code=exit_code, **at)
    if "fenced" in reasons:
        return ev.JobFailed(job_id=job_id, node=node, exit_code=exit_code, message=FENCED, node_fail=True, **at)
    if "replaced" in reasons:
        return ev.JobFailed(job_id=job_id, node=node, exit_code=exit_code, message=REPLACED, node_fail=True, **at)
    if "stopped" in reasons:
        return ev.JobFailed(job_id=job_id, node=node, exit_code=exit_code, message=STOPPED, node_fail=True, **at)
    if "oom" in reasons:
        return ev.JobOutOfMemory(job_id=job_id, node=node, exit_code=exit_code, **at)
    if "timeout" in reasons:
        return ev.JobTimedOut(job_id=job_id, node=node, exit_code=exit_code, **at)
    if exit_code is None:
        return ev.JobFailed(job_id=job_id, node=node, exit_code=None, message=lost_message, node_fail=True, **at)
    if exit_code == 0:
        return ev.JobCompleted(job_id=job_id, node=node, exit_code=0, **at)
    return ev.JobFailed(job_id=job_id, node=node, exit_code=exit_code, **at)
