"""Read-model rows and not-yet-projected submissions, as the HTTP views of ``conductor_contracts.api``."""

from __future__ import annotations

from sqlalchemy.engine import RowMapping

from conductor_contracts import api
from conductor_contracts import events as ev
from conductor_contracts.paths import output_files
from conductor_contracts.states import JobState


def job_from_row(row: RowMapping) -> api.JobView:
    values = dict(row)
    values["job_id"] = str(values["job_id"])
    values["cores"] = values.get("cores") or []
    return api.JobView.model_validate(values)


def job_from_submission(job_id: int, event: ev.JobSubmitted, refused: str | None = None) -> api.JobView:
    """Read-your-writes: a job the projector has not reached yet is read from the log itself; or one
    it could not record (``refused`` says why), whose state then is not followed."""
    stdout, stderr = output_files(job_id, event)
    return api.JobView(
        job_id=str(job_id),
        name=event.name,
        account=event.account,
        partition=event.partition,
        state=JobState.PENDING.value,
        reason="None",
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
    return api.NodeView.model_validate(values)
