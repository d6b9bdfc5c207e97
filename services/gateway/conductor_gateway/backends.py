"""What every route reads from: the log (NATS JetStream) and the read models (PostgreSQL).

Read-your-writes: what a gateway has just published may not be projected yet, so a lookup that
misses the read models looks in the log itself before it answers 404.
"""

from __future__ import annotations

from typing import Any

from nats.js.errors import NotFoundError
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncEngine

from conductor_contracts import api
from conductor_contracts import events as ev
from conductor_gateway import queries
from conductor_platform.bus import Bus, submission

__all__ = ["State", "job_submitted", "last_on", "missing_jobs", "submission"]


class State:
    bus: Bus
    engine: AsyncEngine


async def last_on(bus: Bus, subject: str) -> tuple[int, ev.Event] | None:
    """The newest event on ``subject`` and its sequence, from the log."""
    try:
        raw = await bus.js.get_last_msg(bus.stream, subject)
    except NotFoundError:
        return None
    try:
        return int(raw.seq or 0), ev.decode(raw.data or b"")
    except ValidationError:
        return None


async def missing_jobs(state: State, job_ids: list[int]) -> list[int]:
    """Those of ``job_ids`` that are no job: neither in the read models nor submitted in the log."""
    known = await queries.existing_jobs(state.engine, job_ids)
    return [job_id for job_id in job_ids if job_id not in known and await submission(state.bus, job_id) is None]


def job_submitted(spec: api.JobSpec, script: str, **extra: Any) -> ev.JobSubmitted:
    """The event of a submit's ``job`` object and script; ``extra`` sets the workflow's fields."""
    return ev.JobSubmitted(
        name=spec.name,
        account=spec.account,
        partition=spec.partition,
        ntasks_per_node=spec.ntasks_per_node,
        cpus_per_task=spec.cpus_per_task,
        cpus=spec.cpus,
        memory_mb=spec.memory_mb,
        time_limit_s=spec.time_limit_s,
        working_directory=spec.current_working_directory,
        standard_output=spec.standard_output or "",
        standard_error=spec.standard_error,
        environment=spec.environment,
        script=script,
        dependency=spec.parsed_dependency,
        requeue=spec.requeue,
        **extra,
    )
