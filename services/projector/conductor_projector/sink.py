"""All SQL the projector writes: one transaction per batch, together with the position it reaches."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from conductor_contracts import events as ev
from conductor_projector import tables as t
from conductor_projector.operations import (
    InsertJob,
    Operation,
    UpdateJob,
    UpdateNode,
    UpsertNode,
    to_operations,
)


async def position(conn: AsyncConnection, name: str) -> int:
    value = await conn.scalar(select(t.positions.c.position).where(t.positions.c.name == name))
    return int(value or 0)


async def _execute(conn: AsyncConnection, ops: Sequence[Operation]) -> None:
    inserts: list[dict[str, Any]] = []

    async def flush() -> None:
        if inserts:
            await conn.execute(insert(t.jobs).on_conflict_do_nothing(index_elements=["job_id"]), inserts)
            inserts.clear()

    for op in ops:
        if isinstance(op, InsertJob):
            inserts.append(op.values)
            continue
        await flush()
        match op:
            case UpdateJob():
                await conn.execute(
                    update(t.jobs).where(t.jobs.c.job_id == op.job_id, t.jobs.c.state.in_(op.only_in)).values(op.values)
                )
            case UpsertNode():
                stmt = insert(t.nodes).values(op.values)
                await conn.execute(
                    stmt.on_conflict_do_update(
                        index_elements=["name"], set_={c.name: c for c in stmt.excluded if c.name != "name"}
                    )
                )
            case UpdateNode():
                await conn.execute(update(t.nodes).where(t.nodes.c.name == op.name).values(op.values))
    await flush()


async def apply_batch(engine: AsyncEngine, name: str, batch: Sequence[tuple[int, ev.Event]]) -> int:
    """Apply the events past the stored position; returns the new position. Redelivered events below
    the position are skipped, so a crash between commit and ack applies nothing twice."""
    async with engine.begin() as conn:
        await conn.execute(insert(t.positions).values(name=name, position=0).on_conflict_do_nothing())
        current = await conn.scalar(select(t.positions.c.position).where(t.positions.c.name == name).with_for_update())
        current = int(current or 0)
        fresh = [(seq, event) for seq, event in batch if seq > current]
        if not fresh:
            return current
        await _execute(conn, [op for seq, event in fresh for op in to_operations(seq, event)])
        reached = max(seq for seq, _ in fresh)
        await conn.execute(update(t.positions).where(t.positions.c.name == name).values(position=reached))
        return reached


async def reset(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(t.jobs.delete())
        await conn.execute(t.nodes.delete())
        await conn.execute(t.positions.delete())
