"""Read-model rows and not-yet-projected submissions, as the HTTP views of ``conductor_contracts.api``."""

from __future__ import annotations

from sqlalchemy.engine import RowMapping

from conductor_contracts import api, api_workflows
from conductor_contracts import events as ev
from conductor_contracts.paths import output_files
from conductor_contracts.states import JobState, PendingReason


def job_from_row(row: RowMapping) -> api.JobView:
    values = dict(row)
    values["job_id"] = str(values["job_id"])
    values["cores"] = values.get("cores") or []
    values["parents"] = [str(j) for j in values.get("parents") or []]
    return api.JobView.model_validate(values)


def job_from_submission(job_id: int, event: ev.JobSubmitted, refused: str | None = None) -> api.JobView:
    """Read-your-writes: a job the projector has not reached yet is read from the log itself; or one
    it could not record (``refused`` says why), whose state then is not followed."""
    stdout, stderr = output_files(job_id, event)
    held = event.dependency is not None or bool(event.parent_ids(job_id))
    return api.JobView(
        job_id=str(job_id),
        name=event.name,
        account=event.account,
        partition=event.partition,
        state=JobState.PENDING.value,
        reason=PendingReason.DEPENDENCY.value if held else "None",
        dependency=None if event.dependency is None else str(event.dependency),
        requeue=event.requeue,
        workflow_id=event.workflow_id,
        workflow_index=event.workflow_index,
        branch_id=event.branch_id,
        job_type=event.job_type,
        parents=[str(j) for j in event.parent_ids(job_id)],
        cpus=event.cpus,
        memory_mb=event.memory_mb,
        time_limit_s=event.time_limit_s,
        working_directory=event.working_directory,
        standard_output=stdout,
        standard_error=stderr,
        submit_time=event.occurred_at,
        message=None
        if refused is None
        else f"the read models could not record this job, so its state is not followed here: {refused}",
    )


def node_from_row(row: RowMapping) -> api.NodeView:
    values = dict(row)
    used = values.get("cpus_alloc") or 0
    values["allocation"] = "idle" if used <= 0 else "allocated" if used >= values["cpus"] else "mixed"
    if values["state"] == "DRAIN":
        values["state"] = "DRAINING" if used > 0 else "DRAINED"
    return api.NodeView.model_validate(values)


def workflow_state(states: list[str]) -> str:
    """A workflow's state from its jobs': COMPLETED when all completed; once all have ended, FAILED
    when one failed (timed out, ran out of memory, lost its node), else CANCELLED; RUNNING once one
    has left PENDING; PENDING before."""
    if states and all(JobState(s).is_terminal for s in states):
        if all(s == JobState.COMPLETED for s in states):
            return JobState.COMPLETED.value
        if any(s not in (JobState.COMPLETED, JobState.CANCELLED) for s in states):
            return JobState.FAILED.value
        return JobState.CANCELLED.value
    if any(s != JobState.PENDING for s in states):
        return JobState.RUNNING.value
    return JobState.PENDING.value


def workflow_job(index: int, job: api.JobView, parent_indices: list[int]) -> api_workflows.WorkflowJobView:
    """A workflow's job: what its job view says, with its place in the list."""
    return api_workflows.WorkflowJobView.model_validate(
        job.model_dump() | {"index": index, "parent_indices": parent_indices}
    )


def workflow(event: ev.WorkflowSubmitted, jobs: list[api_workflows.WorkflowJobView]) -> api_workflows.WorkflowView:
    starts = [j.start_time or j.end_time for j in jobs if j.state != JobState.PENDING]
    state = workflow_state([j.state for j in jobs])
    ends = [j.end_time for j in jobs if j.end_time is not None]
    return api_workflows.WorkflowView(
        workflow_id=event.workflow_id,
        name=event.name,
        user_id=event.user_id,
        owner=event.owner,
        state=state,
        job_count=event.job_count,
        submit_time=event.occurred_at,
        start_time=min((s for s in starts if s is not None), default=None),
        end_time=max(ends) if ends and JobState(state).is_terminal else None,
        jobs=jobs,
    )
