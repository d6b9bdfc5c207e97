"""The rows a projector keeps between batches spare it reading them back, and never stand for rows
another writer changed since (the real PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event, select
from sqlalchemy.ext.asyncio import AsyncEngine

from conductor_contracts import events as ev
from conductor_projector import sink
from conductor_projector import tables as t
from conductor_projector.row_cache import RowCache
from tests.unit.scheduling import node, submitted

# A job's life over four batches, as a live projector sees it.
LIFE: list[list[tuple[int, sink.Item]]] = [
    [(1, node("n1", 4)), (2, submitted())],
    [(3, ev.JobPlaced(job_id=2, node="n1", cores=(0,), memory_mb=100))],
    [(4, ev.JobStarted(job_id=2, node="n1", pid=4242))],
    [(5, ev.JobCompleted(job_id=2, node="n1"))],
]


@contextmanager
def jobs_read(engine: AsyncEngine) -> Iterator[list[str]]:
    """The statements that read the jobs table while it is open."""
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "FROM jobs" in statement:
            seen.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)


async def _job(engine: AsyncEngine) -> dict[str, Any]:
    async with engine.connect() as conn:
        return dict((await conn.execute(select(t.jobs).where(t.jobs.c.job_id == 2))).mappings().one())


async def _node_cpus(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(select(t.nodes.c.cpus_alloc).where(t.nodes.c.name == "n1")) or 0)


async def test_a_job_whose_row_was_kept_is_not_read_back(engine: AsyncEngine) -> None:
    await sink.reset(engine)
    kept = RowCache()
    with jobs_read(engine) as reads:
        for batch in LIFE:
            await sink.apply_batch(engine, "p", batch, kept=kept)
    assert reads == []
    job = await _job(engine)
    assert (job["state"], job["pid"], job["exit_code"]) == ("COMPLETED", 4242, 0)
    assert job["start_time"] is not None and job["end_time"] is not None
    assert await _node_cpus(engine) == 0
    assert len(kept) == 0  # a finished job is not kept

    await sink.reset(engine)
    with jobs_read(engine) as reads:  # without: each later batch reads the row back
        for batch in LIFE:
            await sink.apply_batch(engine, "p", batch)
    assert len(reads) == 3
    assert await _job(engine) == job


async def test_a_batch_another_projector_applied_is_not_hidden_by_kept_rows(engine: AsyncEngine) -> None:
    await sink.reset(engine)
    kept = RowCache()
    await sink.apply_batch(engine, "p", LIFE[0], kept=kept)
    await sink.apply_batch(engine, "p", LIFE[1], kept=kept)
    await sink.apply_batch(engine, "p", LIFE[2])  # another projector, same read models
    with jobs_read(engine) as reads:
        await sink.apply_batch(engine, "p", LIFE[3], kept=kept)
    assert len(reads) == 1  # the kept row was dropped and read again
    job = await _job(engine)
    assert (job["state"], job["pid"]) == ("COMPLETED", 4242)  # the other projector's start stays
    assert job["start_time"] is not None


async def test_a_rebuild_in_between_drops_the_kept_rows(engine: AsyncEngine) -> None:
    await sink.reset(engine)
    kept = RowCache()
    for batch in LIFE[:3]:
        await sink.apply_batch(engine, "p", batch, kept=kept)
    await sink.reset(engine)  # someone rebuilds the read models, and has replayed up to seq 3
    for batch in LIFE[:2]:
        await sink.apply_batch(engine, "p", batch)
    with jobs_read(engine) as reads:
        await sink.apply_batch(engine, "p", LIFE[2] + LIFE[3], kept=kept)
    assert len(reads) == 1  # kept at seq 4, the position is 3: the row is read
    job = await _job(engine)
    assert (job["state"], job["pid"]) == ("COMPLETED", 4242)
    assert await _node_cpus(engine) == 0
