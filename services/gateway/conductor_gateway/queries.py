"""All SQL the gateway runs: reads of the read models, never writes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncEngine

from conductor_projector import tables as t


async def job(engine: AsyncEngine, job_id: int) -> RowMapping | None:
    async with engine.connect() as conn:
        result = await conn.execute(select(t.jobs).where(t.jobs.c.job_id == job_id))
        return result.mappings().first()


async def jobs(
    engine: AsyncEngine, *, state: str | None, account: str | None, name: str | None, before: int | None, limit: int
) -> Sequence[RowMapping]:
    query = select(t.jobs).order_by(t.jobs.c.job_id.desc()).limit(limit)
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
    """How far into the log the read models are (the newest projector's position); also a ping."""
    async with engine.connect() as conn:
        return int(await conn.scalar(select(func.coalesce(func.max(t.positions.c.position), 0))) or 0)
