"""The projector on real NATS and PostgreSQL: batches, position, redelivery, rebuild."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import event, func, insert, select, text
from sqlalchemy.exc import ProgrammingError
from sqlalchemy.ext.asyncio import AsyncEngine

from conductor_contracts import events as ev
from conductor_platform.bus import Bus
from conductor_platform.settings import EXIT_BAD_SETTING
from conductor_projector import sink
from conductor_projector import tables as t
from conductor_projector.service import run
from conductor_projector.settings import ProjectorSettings
from tests.integration.helpers import eventually
from tests.unit.scheduling import node, submitted


async def _job(engine: AsyncEngine, job_id: int) -> dict[str, object] | None:
    async with engine.connect() as conn:
        row = (await conn.execute(select(t.jobs).where(t.jobs.c.job_id == job_id))).mappings().first()
        return dict(row) if row else None


async def test_a_batch_applied_twice_is_applied_once(engine: AsyncEngine) -> None:
    batch: list[tuple[int, ev.Event]] = [
        (1, node("n1", 2)),
        (2, submitted()),
        (3, ev.JobPlaced(job_id=2, node="n1", cores=(0,), memory_mb=100)),
        (4, ev.JobFailed(job_id=2, node="n1", exit_code=3)),
    ]
    assert await sink.apply_batch(engine, "p", batch) == 4
    # A redelivery after a crash between commit and ack: nothing changes, nothing fails.
    assert await sink.apply_batch(engine, "p", batch) == 4
    # A late event for a finished job does not resurrect it.
    await sink.apply_batch(engine, "p", [(5, ev.JobCancelled(job_id=2, node="n1"))])
    job = await _job(engine, 2)
    assert job is not None and job["state"] == "FAILED" and job["exit_code"] == 3
    async with engine.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(t.jobs)) == 1


async def test_service_projects_the_stream_and_rebuilds(
    bus: Bus, engine: AsyncEngine, nats_url: str, database_url: str
) -> None:
    settings = ProjectorSettings(nats_url=nats_url, database_url=database_url, batch_size=3)
    await bus.publish(node("n1", 2))
    ids = [await bus.publish(submitted()) for _ in range(7)]
    await bus.publish(ev.JobPlaced(job_id=ids[0], node="n1", cores=(0,), memory_mb=100), by_scheduler=True)
    await bus.publish(ev.JobCompleted(job_id=ids[0], node="n1"))

    async def completed() -> bool:
        job = await _job(engine, ids[0])
        return bool(job and job["state"] == "COMPLETED")

    stop = asyncio.Event()
    task = asyncio.create_task(run(settings, stop=stop))
    await eventually(completed, what="job projected as COMPLETED")
    stop.set()
    await task
    # A restart resumes from its durable consumer and stored position: nothing is applied twice.
    await bus.publish(ev.JobCancelled(job_id=ids[1]), by_scheduler=True)
    stop = asyncio.Event()
    task = asyncio.create_task(run(settings, stop=stop))
    await eventually(lambda: _state_is(engine, ids[1], "CANCELLED"), what="cancel projected")
    stop.set()
    await task
    # Rebuild: drop the read models and replay the log into the same result.
    async with engine.begin() as conn:
        await conn.execute(t.jobs.update().values(state="PENDING", name="tampered"))
    stop = asyncio.Event()
    task = asyncio.create_task(run(settings, rebuild=True, stop=stop))
    await eventually(lambda: _state_is(engine, ids[1], "CANCELLED"), what="rebuilt")
    stop.set()
    await task
    async with engine.connect() as conn:
        names = set((await conn.execute(select(t.jobs.c.name))).scalars())
        count = await conn.scalar(select(func.count()).select_from(t.jobs))
    assert names == {"j"} and count == 7
    assert (await _job(engine, ids[0]) or {})["state"] == "COMPLETED"


async def _state_is(engine: AsyncEngine, job_id: int, state: str) -> bool:
    job = await _job(engine, job_id)
    return bool(job and job["state"] == state)


async def test_a_rebuild_beside_a_running_projector_loses_nothing(
    bus: Bus, engine: AsyncEngine, nats_url: str, database_url: str
) -> None:
    settings = ProjectorSettings(nats_url=nats_url, database_url=database_url, batch_size=5, linger_s=0)
    await bus.publish(node("n1", 2))
    ids = [await bus.publish(submitted()) for _ in range(30)]
    stop = asyncio.Event()
    running = asyncio.create_task(run(settings, stop=stop))
    await eventually(lambda: _count_is(engine, 30), what="first jobs projected")

    rebuild = asyncio.create_task(run(settings, rebuild=True, stop=stop))
    try:
        for _ in range(30):  # the running projector keeps applying new events while the rebuild replays
            ids.append(await bus.publish(submitted()))
            await asyncio.sleep(0.01)
        await eventually(lambda: _count_is(engine, 60), what="every job projected")
        async with engine.connect() as conn:
            assert await sink.position(conn, settings.consumer) == ids[-1]
            assert set((await conn.execute(select(t.jobs.c.job_id))).scalars()) == set(ids)
    finally:  # a failure must not leave projectors running into the next test
        stop.set()
        await asyncio.gather(running, rebuild)


async def _count_is(engine: AsyncEngine, n: int) -> bool:
    async with engine.connect() as conn:
        return await conn.scalar(select(func.count()).select_from(t.jobs)) == n


async def test_a_rebuild_makes_a_dropped_table_again(
    bus: Bus, engine: AsyncEngine, nats_url: str, database_url: str
) -> None:
    # The read models "can be dropped and rebuilt at any time": a table dropped by hand made the
    # rebuild's emptying fail for ever, and a migration at head does not add a table back.
    settings = ProjectorSettings(nats_url=nats_url, database_url=database_url)
    await bus.publish(node("n1", 2))
    for _ in range(3):
        await bus.publish(submitted())
    stop = asyncio.Event()
    task = asyncio.create_task(run(settings, stop=stop))
    await eventually(lambda: _count_is(engine, 3), what="jobs projected")
    stop.set()
    await task
    async with engine.begin() as conn:
        await conn.execute(text("DROP TABLE jobs"))
    stop = asyncio.Event()
    task = asyncio.create_task(run(settings, rebuild=True, stop=stop))
    try:

        async def rebuilt() -> bool:
            try:
                return await _count_is(engine, 3)
            except ProgrammingError:  # not made again yet
                return False

        await eventually(rebuilt, what="jobs rebuilt")
        async with engine.connect() as conn:
            assert await conn.scalar(select(func.count()).select_from(t.nodes)) == 1
    finally:
        stop.set()
        await task


async def test_read_models_of_a_newer_schema_end_the_projector_as_a_setting(
    engine: AsyncEngine, nats_url: str, database_url: str
) -> None:
    # Made by a newer version (a downgrade, or the wrong DATABASE_URL): no retry mends it. It retried
    # every few seconds for ever, with a traceback each time.
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE alembic_version SET version_num = '0999'"))
    with pytest.raises(SystemExit) as ended:
        await run(ProjectorSettings(nats_url=nats_url, database_url=database_url))
    assert ended.value.code == EXIT_BAD_SETTING


async def test_a_position_deleted_by_hand_makes_the_read_models_again_not_doubled(
    bus: Bus, engine: AsyncEngine, nats_url: str, database_url: str
) -> None:
    # The projector read the log from its start again over the rows it had: node allocations, applied
    # as increments, were counted twice (12 of a node's 8 CPUs) until a rebuild.
    settings = ProjectorSettings(nats_url=nats_url, database_url=database_url, linger_s=0)
    await bus.publish(node("n1", 8))
    for core in range(3):
        job = await bus.publish(submitted())
        await bus.publish(ev.JobPlaced(job_id=job, node="n1", cores=(core,), memory_mb=100), by_scheduler=True)

    async def allocated(cpus: int) -> bool:
        async with engine.connect() as conn:
            return await conn.scalar(select(t.nodes.c.cpus_alloc).where(t.nodes.c.name == "n1")) == cpus

    stop = asyncio.Event()
    task = asyncio.create_task(run(settings, stop=stop))
    try:
        await eventually(lambda: allocated(3), what="three CPUs allocated")
        async with engine.begin() as conn:
            await conn.execute(t.positions.delete())
        last = await bus.publish(submitted())
        await eventually(lambda: _state_is(engine, last, "PENDING"), what="the next event projected")
        assert await allocated(3)
        async with engine.connect() as conn:
            assert await sink.position(conn, settings.consumer) == last
    finally:
        stop.set()
        await task


async def test_a_rebuild_empties_the_read_models_whatever_their_size(engine: AsyncEngine) -> None:
    # A DELETE per table took time in proportion to the rows (300,000 here: ~200-500 ms against ~10 ms
    # of TRUNCATE; millions outlast the projector's 60 s statement timeout, and the rebuild tried it
    # again for ever), and took the tables in the order that deadlocked with a live batch.
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO jobs (job_id, name, account, partition, state, cpus, ntasks_per_node, cpus_per_task,"
                " memory_mb, working_directory, standard_output, environment, script, submit_time)"
                " SELECT n, 'j' || n, 'a' || (n % 50), 'default', 'COMPLETED', 1, 1, 1, 100, '/tmp', '/tmp/o',"
                " '{}', 'true', now() FROM generate_series(1, 300000) AS n"
            )
        )
        await conn.execute(insert(t.positions).values(name="projector", position=300000))
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(" ".join(statement.split()).upper())

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        await sink.reset(engine)
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)
    assert not [s for s in statements if s.startswith("DELETE")]
    [emptied] = [s for s in statements if s.startswith("TRUNCATE")]
    assert emptied.startswith('TRUNCATE "PROJECTOR_POSITIONS"')  # the first lock a batch takes
    assert await _count_is(engine, 0)
    async with engine.connect() as conn:
        assert await sink.position(conn, "projector") == 0
