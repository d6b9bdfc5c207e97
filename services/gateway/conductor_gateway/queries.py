"""All SQL the gateway runs: reads of the read models, never writes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, literal, select, tuple_
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncEngine

from conductor_contracts.public import JobContext
from conductor_projector import tables as t

# A job's row without its script (up to the gateway's max_script_bytes, 512 KiB) and environment,
# which no answer includes: a list of 500 jobs read them all, ~450 MB of the gateway's memory for one
# request of big scripts, freed only in part afterwards.
_JOB = select(*(c for c in t.jobs.columns if c.name not in ("script", "environment")))


async def job(engine: AsyncEngine, job_id: int) -> RowMapping | None:
    async with engine.connect() as conn:
        result = await conn.execute(_JOB.where(t.jobs.c.job_id == job_id))
        return result.mappings().first()


async def jobs(
    engine: AsyncEngine, *, state: str | None, account: str | None, name: str | None, before: int | None, limit: int
) -> Sequence[RowMapping]:
    query = _JOB.order_by(t.jobs.c.job_id.desc()).limit(limit)
    filters: list[Any] = []
    if state:
        filters.append(t.jobs.c.state == state)
    if account:
        filters.append(t.jobs.c.account == account)
    if name:
        filters.append(t.jobs.c.name == name)
    if before is not None:
        filters.append(t.jobs.c.job_id < before)
    async with engine.connect() as conn:
        result = await conn.execute(query.where(*filters))
        return result.mappings().all()


async def dead_letter_of(engine: AsyncEngine, job_id: int) -> str | None:
    """Why the projector could not record this job's submission, if it could not."""
    d = t.dead_letters.c
    async with engine.connect() as conn:
        error = await conn.scalar(
            select(d.error).where(d.job_id == job_id, d.event_type == "JobSubmitted").order_by(d.stream_seq).limit(1)
        )
    return None if error is None else str(error)


async def nodes(engine: AsyncEngine) -> Sequence[RowMapping]:
    async with engine.connect() as conn:
        result = await conn.execute(select(t.nodes).order_by(t.nodes.c.name))
        return result.mappings().all()


async def projected_position(engine: AsyncEngine) -> int:
    """How far into the log the read models are (the newest projector's position); also a check that
    every table the queries read is there (one dropped by hand failed every query while this said
    ready)."""
    async with engine.connect() as conn:
        for table in (t.jobs, t.nodes, t.users, t.workflows, t.dead_letters):
            await conn.execute(select(literal(1)).select_from(table).limit(0))
        return int(await conn.scalar(select(func.coalesce(func.max(t.positions.c.position), 0))) or 0)


async def existing_jobs(engine: AsyncEngine, job_ids: list[int]) -> set[int]:
    if not job_ids:
        return set()
    async with engine.connect() as conn:
        result = await conn.execute(select(t.jobs.c.job_id).where(t.jobs.c.job_id.in_(job_ids)))
        return {int(row[0]) for row in result}


async def user(engine: AsyncEngine, user_id: str) -> RowMapping | None:
    async with engine.connect() as conn:
        return (await conn.execute(select(t.users).where(t.users.c.user_id == user_id))).mappings().first()


async def users(engine: AsyncEngine, limit: int, after: str | None = None) -> Sequence[RowMapping] | None:
    """Users in the order they were made, from the one after user ``after`` (None: that user is not
    known, so neither is where its page ended)."""
    u = t.users.c
    query = select(t.users).order_by(u.created_at, u.username).limit(limit)
    async with engine.connect() as conn:
        if after is not None:
            mark = (await conn.execute(select(u.created_at, u.username).where(u.user_id == after))).first()
            if mark is None:
                return None
            query = query.where(tuple_(u.created_at, u.username) > tuple_(literal(mark[0]), literal(mark[1])))
        result = await conn.execute(query)
        return result.mappings().all()


async def workflow(engine: AsyncEngine, workflow_id: str) -> RowMapping | None:
    async with engine.connect() as conn:
        query = select(t.workflows).where(t.workflows.c.workflow_id == workflow_id)
        return (await conn.execute(query)).mappings().first()


async def workflow_jobs(engine: AsyncEngine, workflow_id: str) -> Sequence[RowMapping]:
    async with engine.connect() as conn:
        query = _JOB.where(t.jobs.c.workflow_id == workflow_id).order_by(t.jobs.c.workflow_index)
        return (await conn.execute(query)).mappings().all()


async def workflows(
    engine: AsyncEngine, *, user_id: str | None, before: int | None, limit: int
) -> Sequence[RowMapping]:
    w = t.workflows.c
    filters: list[Any] = []
    if user_id:
        filters.append(w.user_id == user_id)
    if before is not None:
        filters.append(w.first_job_id < before)
    async with engine.connect() as conn:
        query = select(t.workflows).where(*filters).order_by(w.first_job_id.desc()).limit(limit)
        return (await conn.execute(query)).mappings().all()


async def job_context(engine: AsyncEngine, job_id: int) -> JobContext | None:
    """A job's account and workflow from its row: for the feed, when its submission was archived."""
    async with engine.connect() as conn:
        query = select(t.jobs.c.account, t.jobs.c.workflow_id).where(t.jobs.c.job_id == job_id)
        row = (await conn.execute(query)).first()
    return None if row is None else JobContext(str(row[0]), None if row[1] is None else str(row[1]))
