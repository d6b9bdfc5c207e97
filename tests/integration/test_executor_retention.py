"""Finished jobs' folders removed on a real JetStream: only once their placement is acked for good,
their outcome published and their run no longer held; a restart after that reports nothing again."""

from __future__ import annotations

from pathlib import Path

from conductor_contracts import events as ev
from conductor_executor.placements import durable_name, ensure_consumer
from conductor_executor.retention import FolderSweep, Key, sweep_once
from conductor_platform.bus import Bus
from tests.integration.executor_jobs import events_by_job
from tests.integration.helpers import eventually
from tests.integration.test_executor import NODE, executor_settings, running
from tests.unit.scheduling import submitted
from tests.unit.test_executor_retention import _job


async def test_a_folder_stays_while_a_placement_delivered_before_it_is_unacked(bus: Bus, tmp_path: Path) -> None:
    durable = await ensure_consumer(bus, NODE)
    for job_id in (1, 2, 3):
        _job(tmp_path, job_id)
    await bus.publish(ev.JobPlaced(job_id=9, node=NODE, cores=(0,), memory_mb=10), by_scheduler=True)
    pull = await bus.js.pull_subscribe_bind(durable=durable, stream=bus.stream)
    [delivered] = await pull.fetch(1, timeout=5)  # and not acked: as by an executor killed meanwhile

    sweep = FolderSweep(tmp_path, retention_s=0)

    def busy() -> set[Key]:
        return {(3, 0)}

    def owed() -> set[Key]:
        return {(2, 0)}

    for _ in range(3):
        assert await sweep_once(sweep, bus, durable, busy, owed) == 0
    assert sorted(path.name for path in tmp_path.iterdir()) == ["1", "2", "3"]
    await delivered.ack_sync()
    # Job 2's outcome is still in the outbox, job 3's run is held: only job 1's folder goes.
    assert await sweep_once(sweep, bus, durable, busy, owed) == 1
    assert sorted(path.name for path in tmp_path.iterdir()) == ["2", "3"]


async def test_finished_jobs_folders_go_and_a_restart_reports_nothing_twice(
    bus: Bus, nats_url: str, tmp_path: Path
) -> None:
    settings = executor_settings(nats_url, tmp_path, job_retention_s=0, job_sweep_s=0.1)
    assert durable_name(NODE) == f"executor-{NODE}"
    work = tmp_path / "work"
    async with running(bus, settings):
        ids = []
        for core in (0, 1):  # one job per core: a core still held refuses a placement
            job = submitted().model_copy(update={"working_directory": str(work), "script": "true", "name": "rt"})
            job_id = await bus.publish(job)
            await bus.publish(ev.JobPlaced(job_id=job_id, node=NODE, cores=(core,), memory_mb=10), by_scheduler=True)
            ids.append(job_id)

        async def all_ended() -> bool:
            return set(ids) <= set(await events_by_job(bus))

        await eventually(all_ended, what="every job's outcome")

        async def folders_gone() -> bool:
            return not any((settings.jobs_dir / str(job_id)).exists() for job_id in ids)

        await eventually(folders_gone, what="the finished jobs' folders removed")
    async with running(bus, settings):  # takes stock of the jobs folder again

        async def registered_twice() -> bool:
            return len((await events_by_job(bus, (ev.NodeRegistered,)))[0]) >= 2

        await eventually(registered_twice, what="the second start registered")
    outcomes = await events_by_job(bus)
    assert {job_id: len(outcomes[job_id]) for job_id in ids} == dict.fromkeys(ids, 1)
    assert all(isinstance(outcomes[job_id][0], ev.JobCompleted) for job_id in ids)
