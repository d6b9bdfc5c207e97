"""Events the read models cannot hold, straight in the stream (past the gateway's checks): the
projector stores what it can, records the rest as dead letters, and goes on to the end of the log."""

from __future__ import annotations

from prometheus_client import REGISTRY
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from conductor_contracts import events as ev
from conductor_contracts import subjects
from conductor_platform.bus import Bus
from conductor_projector import sink
from conductor_projector import tables as t
from conductor_projector.operations import Undecodable
from conductor_projector.settings import ProjectorSettings
from tests.integration.projecting import projected_to, projector
from tests.unit.scheduling import node, submitted


async def _job(engine: AsyncEngine, job_id: int) -> dict[str, object] | None:
    async with engine.connect() as conn:
        row = (await conn.execute(select(t.jobs).where(t.jobs.c.job_id == job_id))).mappings().first()
        return dict(row) if row else None


async def _dead_letters(engine: AsyncEngine) -> dict[int, dict[str, object]]:
    async with engine.connect() as conn:
        rows = (await conn.execute(select(t.dead_letters))).mappings()
        return {int(r["stream_seq"]): dict(r) for r in rows}


def _dead_letter_count() -> float:
    return REGISTRY.get_sample_value("conductor_projector_dead_letters_total") or 0.0


async def test_poison_events_are_stored_altered_or_dead_lettered_and_the_log_goes_on(
    bus: Bus, engine: AsyncEngine, nats_url: str, database_url: str
) -> None:
    counted = _dead_letter_count()
    await bus.publish(node("n1", 2))
    # What the gateway used to accept: "99999999" minutes, 2048T of memory, a NUL in a path.
    bad = submitted().model_copy(
        update={"working_directory": "/tmp/a\x00b", "time_limit_s": 99999999 * 60, "memory_mb": 2048 * 1024 * 1024}
    )
    bad_id = await bus.publish(bad)
    garbage = (await bus.js.publish(subjects.SUBMITTED, b"garbage\x00\xff", stream=subjects.STREAM)).seq
    good = await bus.publish(submitted())
    await bus.publish(ev.JobPlaced(job_id=good, node="n1", cores=(0,), memory_mb=100), by_scheduler=True)
    # An executor's report PostgreSQL cannot hold (a pid over int32) about a job that exists.
    started = await bus.publish(ev.JobStarted(job_id=good, node="n1", pid=2**40))
    last = await bus.publish(ev.JobCompleted(job_id=good, node="n1"))

    settings = ProjectorSettings(nats_url=nats_url, database_url=database_url)  # all in one batch
    async with projector(settings):
        await projected_to(engine, settings, last)

    done = await _job(engine, good)
    assert done is not None and done["state"] == "COMPLETED" and done["node"] == "n1"
    assert "JobStarted" in str(done["message"])  # what could not be applied to it says so on the job
    altered = await _job(engine, bad_id)
    assert altered is not None and altered["state"] == "PENDING"
    assert altered["working_directory"] == "/tmp/a\ufffdb"
    assert altered["time_limit_s"] == 2**31 - 1 and altered["memory_mb"] == 2**31 - 1
    message = str(altered["message"])
    assert "working_directory" in message and "time_limit_s" in message and "memory_mb" in message
    letters = await _dead_letters(engine)
    assert set(letters) == {garbage, started}
    assert letters[garbage]["subject"] == subjects.SUBMITTED and letters[garbage]["job_id"] == garbage
    assert letters[garbage]["event_type"] is None and letters[garbage]["data"] == "garbage\\x00\\xff"
    assert letters[started]["event_type"] == "JobStarted" and letters[started]["job_id"] == good
    assert "int32" in str(letters[started]["error"])
    assert _dead_letter_count() == counted + 2


async def test_a_dead_letter_is_recorded_once_however_often_its_batch_is_read(engine: AsyncEngine) -> None:
    garbage = Undecodable(subjects.SUBMITTED, b"{", "not json")
    batch: list[tuple[int, sink.Item]] = [(1, node("n1", 2)), (2, garbage), (3, submitted())]
    counted = _dead_letter_count()
    assert await sink.apply_batch(engine, "p", batch) == 3
    assert await sink.apply_batch(engine, "p", batch) == 3  # read again after a crash: nothing twice
    assert set(await _dead_letters(engine)) == {2} and _dead_letter_count() == counted + 1
    assert await _job(engine, 3) is not None


async def test_a_node_allocation_past_an_integer_is_kept_not_refused(engine: AsyncEngine) -> None:
    """No value is out of range, and neither is their sum: a node's allocation is BIGINT. (INTEGER
    sums overflowed in one order of events and not in another, so batching changed the read model.)"""
    batch: list[tuple[int, sink.Item]] = [
        (1, node("n1", 4)),
        (2, submitted(cpus=1)),
        (3, submitted(cpus=2**31 - 1)),
        (4, ev.JobPlaced(job_id=2, node="n1", cores=(0,), memory_mb=100)),
        (5, ev.JobPlaced(job_id=3, node="n1", cores=(1,), memory_mb=100)),
        (6, ev.JobStarted(job_id=2, node="n1", pid=42)),
    ]
    assert await sink.apply_batch(engine, "p", batch) == 6
    assert await _dead_letters(engine) == {}
    placed, running = await _job(engine, 3), await _job(engine, 2)
    assert placed is not None and placed["state"] == "RUNNING" and placed["node"] == "n1"
    assert running is not None and running["state"] == "RUNNING" and running["pid"] == 42
    async with engine.connect() as conn:
        allocated = (await conn.execute(select(t.nodes.c.cpus_alloc).where(t.nodes.c.name == "n1"))).scalar_one()
    assert allocated == 2**31
