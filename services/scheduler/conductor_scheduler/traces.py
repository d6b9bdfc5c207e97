"""Which trace a scheduler decision continues: the one its job's submission began (the
``traceparent`` the fold kept with the job), so that a job's placement, its reason changes and a
cancel or completion the scheduler decides are spans of the job's one trace."""

from __future__ import annotations

from dataclasses import dataclass

from conductor_contracts import events as ev
from conductor_platform import tracing
from conductor_scheduler.state import ClusterState, PendingJob

PLACE_SPAN = "conductor.scheduler.place"


@dataclass(frozen=True)
class DecisionSpan:
    name: str
    parent: str | None  # the traceparent of the job's submission (None: a decision about no job)
    attributes: dict[str, str | int]


def _job(state: ClusterState, job_id: int) -> PendingJob | None:
    # Read before the decision is folded back: a job being placed or ended is still where it was.
    pending = state.pending.get(job_id)
    if pending is not None:
        return pending
    allocation = state.running.get(job_id)
    return None if allocation is None else allocation.job


def span_of(state: ClusterState, decision: ev.Event) -> DecisionSpan:
    """The span that publishes ``decision``."""
    name = PLACE_SPAN if isinstance(decision, ev.JobPlaced) else f"conductor.scheduler.{decision.type}"
    job_id = getattr(decision, "job_id", None)
    if not isinstance(job_id, int):
        node = getattr(decision, "node", None)
        return DecisionSpan(name, None, {tracing.NODE: node} if isinstance(node, str) else {})
    attributes: dict[str, str | int] = {tracing.JOB_ID: job_id}
    if isinstance(decision, ev.JobPlaced):
        attributes |= {tracing.NODE: decision.node, tracing.RUN: decision.run}
    job = _job(state, job_id)
    return DecisionSpan(name, None if job is None else job.traceparent, attributes)
