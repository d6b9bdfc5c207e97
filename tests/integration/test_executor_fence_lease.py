"""A requeue job whose executor died for good is killed by its own supervisor before the scheduler
can run it again elsewhere; other jobs run on."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from conductor_contracts import events as ev
from conductor_executor import compiled
from conductor_executor import supervision as sv
from conductor_executor.heartbeat import Heartbeat
from conductor_executor.outcomes import FENCED
from conductor_executor.service import Executor, run
from conductor_platform.bus import Bus
from tests.integration.helpers import eventually
from tests.integration.test_executor import NODE, executor_settings, running
from tests.integration.test_executor_nodes import _alive, _group, _of, _place, _started, _submit


async def test_a_requeue_job_outliving_its_executor_is_fenced_by_its_supervisor(
    bus: Bus, nats_url: str, tmp_path: Path
) -> None:
    if compiled.compiler() is None:
        pytest.skip("no C compiler here: the shell supervisor does not fence its job")
    # The executor is stopped leaving its jobs running, and never comes back in time: nothing touches
    # its lease. The scheduler would declare the node lost after node_lost_after_s and run the requeue
    # job again elsewhere, while this run went on: twice at once.
    fast = {"node_lost_after_s": 3, "heartbeat_s": 0.5}
    settings = executor_settings(nats_url, tmp_path, stop_jobs_on_exit=False, **fast)
    requeue, plain = await _submit(bus, tmp_path, requeue=True), await _submit(bus, tmp_path)
    async with running(bus, settings):
        for job_id, core in ((requeue, 0), (plain, 1)):
            await bus.publish(ev.JobPlaced(job_id=job_id, node=NODE, cores=(core,), memory_mb=100), by_scheduler=True)
        groups = {job_id: await _group(settings, job_id) for job_id in (requeue, plain)}

    async def fenced() -> bool:
        return not _alive(groups[requeue])

    await eventually(fenced, what="the requeue job killed by its supervisor")
    assert sv.FENCED in sv.read_kill(settings.jobs_dir / sv.folder_name(requeue, 0))
    assert _alive(groups[plain])  # a job that did not ask to be requeued is NODE_FAIL if lost: it runs on

    # An executor back before any NodeLost reports the fenced run as its own fence would (the scheduler
    # then requeues it), and takes the other job over.
    async with running(bus, executor_settings(nats_url, tmp_path, **fast)):

        async def outcome() -> ev.Event | None:
            return next((e for _, e in await _of(bus, requeue) if isinstance(e, ev.TERMINAL_JOB_EVENTS)), None)

        ended = await eventually(outcome, what="the fenced run reported")
        assert isinstance(ended, ev.JobFailed) and ended.node_fail and ended.message == FENCED
        assert _alive(groups[plain])


async def test_a_requeue_job_of_a_live_executor_is_not_fenced(bus: Bus, nats_url: str, tmp_path: Path) -> None:
    if compiled.compiler() is None:
        pytest.skip("no C compiler here: the shell supervisor does not fence its job")
    # Fenced after 5 s unheard: a busy machine's heartbeat may be late by a second or two, not five.
    settings = executor_settings(nats_url, tmp_path, node_lost_after_s=6, heartbeat_s=0.5)
    requeue = await _submit(bus, tmp_path, requeue=True)
    async with running(bus, settings):
        await _place(bus, requeue)
        await eventually(lambda: _started(bus, requeue), what="started")
        group = await _group(settings, requeue)
        folder = settings.jobs_dir / sv.folder_name(requeue, 0)
        await asyncio.sleep(7)  # past the fence's 5 s, with the executor alive and beating
        assert _alive(group) and sv.FENCED not in sv.read_kill(folder)
        (tmp_path / "go").touch()

        async def completed() -> bool:
            return any(isinstance(e, ev.JobCompleted) for _, e in await _of(bus, requeue))

        await eventually(completed, what="completed")


async def test_a_requeue_job_of_an_executor_that_cannot_heartbeat_is_fenced_and_reported_as_lost(
    bus: Bus, nats_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if compiled.compiler() is None:
        pytest.skip("no C compiler here: the shell supervisor does not fence its job")
    # An executor alive but unheard (stuck before its first beat on a full disk, or cut off from NATS)
    # is, to the scheduler, as gone as a dead one: the lease follows the heartbeats that get through,
    # not the process. And the run its supervisor fenced is reported as fenced (NODE_FAIL, requeued),
    # not as the FAILED 137 its exit alone says.
    settings = executor_settings(nats_url, tmp_path, node_lost_after_s=3, heartbeat_s=0.5)
    requeue = await _submit(bus, tmp_path, requeue=True)
    async with running(bus, settings):
        await bus.publish(ev.JobPlaced(job_id=requeue, node=NODE, cores=(0,), memory_mb=100), by_scheduler=True)
        group = await _group(settings, requeue)

        async def unheard(self: Heartbeat, bus: Bus | None) -> None:
            raise ConnectionError("the heartbeats' server is unreachable")

        monkeypatch.setattr(Heartbeat, "_write", unheard)

        async def outcome() -> ev.Event | None:
            return next((e for _, e in await _of(bus, requeue) if isinstance(e, ev.TERMINAL_JOB_EVENTS)), None)

        ended = await eventually(outcome, what="the fenced run reported")
        assert isinstance(ended, ev.JobFailed) and ended.node_fail and ended.message == FENCED

        async def gone() -> bool:
            # Polled: its last process may be a zombie for a moment after its supervisor exited (the
            # fresh-clone check found the group there once, right after the report).
            return not _alive(group)

        await eventually(gone, what="the fenced job's group gone")


async def test_an_executor_stuck_before_its_first_heartbeat_does_not_keep_requeue_jobs_alive(
    bus: Bus, nats_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if compiled.compiler() is None:
        pytest.skip("no C compiler here: the shell supervisor does not fence its job")
    # Restarted on a full disk, an executor retried a record for ever before it registered or beat:
    # the scheduler declared the node lost and requeued the job elsewhere, while this executor's
    # process kept the lease fresh and the first run went on. Twice at once.
    fast = {"node_lost_after_s": 3, "heartbeat_s": 0.5}
    settings = executor_settings(nats_url, tmp_path, stop_jobs_on_exit=False, **fast)
    requeue = await _submit(bus, tmp_path, requeue=True)
    async with running(bus, settings):
        await bus.publish(ev.JobPlaced(job_id=requeue, node=NODE, cores=(0,), memory_mb=100), by_scheduler=True)
        group = await _group(settings, requeue)

    async def stuck(self: Executor) -> None:
        await asyncio.Event().wait()

    monkeypatch.setattr(Executor, "recover", stuck)
    stop = asyncio.Event()
    again = asyncio.create_task(run(settings, stop))
    try:

        async def fenced() -> bool:
            return not _alive(group)

        await eventually(fenced, what="the requeue job fenced by its supervisor")
    finally:
        stop.set()
        again.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await again
