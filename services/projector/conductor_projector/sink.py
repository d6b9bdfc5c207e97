"""All SQL the projector writes: one transaction per batch, together with the position it reaches."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import bindparam, select, update
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
    fold_jobs,
    to_operations,
)


async def position(conn: AsyncConnection, name: str) -> int:
    value = await conn.scalar(select(t.positions.c.position).where(t.positions.c.name == name))
    return int(value or 0)


async def _execute(conn: AsyncConnection, ops: Sequence[Operation]) -> None:
    """Node registrations first (in the log they precede any placement on the node), then the job
    operations as one read of the rows they touch, one upsert of those that changed and one update
    of the nodes' allocations: a few statements a batch instead of one per event."""
    for op in ops:
        match op:
            case UpsertNode():
                stmt = insert(t.nodes).values(op.values)
                # Only the registered fields: a re-registering node keeps its allocation.
                fresh = {key: stmt.excluded[key] for key in op.values if key != "name"}
                await conn.execute(stmt.on_conflict_do_update(index_elements=["name"], set_=fresh))
            case UpdateNode():
                await conn.execute(update(t.nodes).where(t.nodes.c.name == op.name).values(op.values))
    job_ops = [op for op in ops if isinstance(op, InsertJob | UpdateJob)]
    touched = {int(op.values["job_id"]) if isinstance(op, InsertJob) else op.job_id for op in job_ops}
    if not touched:
        return
    result = await conn.execute(select(t.jobs).where(t.jobs.c.job_id.in_(touched)))
    rows = {int(r["job_id"]): dict(r) for r in result.mappings()}
    changed, allocations = fold_jobs(rows, job_ops, _JOB_COLUMNS)
    if changed:
        stmt = insert(t.jobs)
        upsert = stmt.on_conflict_do_update(
            index_elements=["job_id"], set_={c: stmt.excluded[c] for c in _JOB_COLUMNS if c != "job_id"}
        )
        await conn.execute(upsert, [rows[job_id] for job_id in sorted(changed)])
    moves = [
        {"b_node": node, "b_cpus": a.cpus, "b_memory": a.memory_mb}
        for node, a in sorted(allocations.items())
        if a.cpus or a.memory_mb
    ]
    if moves:
        n = t.nodes.c
        await conn.execute(
            update(t.nodes)
            .where(n.name == bindparam("b_node"))
            .values(
                cpus_alloc=n.cpus_alloc + bindparam("b_cpus"), memory_alloc_mb=n.memory_alloc_mb + bindparam("b_memory")
            ),
            moves,
        )


_JOB_COLUMNS = tuple(c.name for c in t.jobs.columns)


class PositionMovedBack(Exception):
    """The stored position is behind this batch (the read models were reset for a rebuild): the
    events in between must be read again first."""

    def __init__(self, position: int) -> None:
        super().__init__(f"the stored position went back to {position}")
        self.position = position


async def apply_batch(
    engine: AsyncEngine, name: str, batch: Sequence[tuple[int, ev.Event]], *, read_from: int | None = None
) -> int:
    """Apply the events past the stored position, which only ever covers a gap-free prefix of the log;
    returns the new position. Events at or below it are skipped, so a batch read again (after a crash,
    or by a second projector) applies nothing twice. A batch that starts past position + 1 raises
    PositionMovedBack, unless it is the first of a read that began at position + 1 (``read_from``):
    then the log itself has nothing in between."""
    async with engine.begin() as conn:
        await conn.execute(insert(t.positions).values(name=name, position=0).on_conflict_do_nothing())
        current = await conn.scalar(select(t.positions.c.position).where(t.positions.c.name == name).with_for_update())
        current = int(current or 0)
        if batch and batch[0][0] > current + 1 and read_from != current + 1:
            raise PositionMovedBack(current)
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
