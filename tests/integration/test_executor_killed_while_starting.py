"""An executor SIGKILLed while it starts a batch of placements together (some spawned and not yet
recorded): the next executor gives every job one outcome, none runs twice, and no process is left of
a job reported NODE_FAIL (its cores are given to others)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path

import pytest

from conductor_contracts import events as ev
from conductor_platform.bus import Bus
from tests.integration.executor_jobs import counted_job, events_by_job, place_as_one_batch, processes_in
from tests.integration.helpers import eventually
from tests.integration.test_executor import _has, executor_settings, running
from tests.integration.test_executor_restart import ExecutorProcess

CPUS = 32
JOBS = 32


@pytest.mark.parametrize("kill_after_handled", [1, 4, 9])
async def test_killed_while_starting_a_batch_leaves_nothing_of_the_jobs_it_fails(
    bus: Bus, nats_url: str, tmp_path: Path, kill_after_handled: int
) -> None:
    settings = executor_settings(nats_url, tmp_path, cpus=CPUS, memory="8G")
    works = {}
    ids = []
    for i in range(JOBS):
        work = tmp_path / f"work-{i}"
        work.mkdir()
        job_id = await bus.publish(counted_job(tmp_path, work, "sleep 4\n"))
        ids.append(job_id)
        works[job_id] = work
    executor = ExecutorProcess(settings, cpus=CPUS, memory="8G")
    try:
        await eventually(lambda: _has(bus, ev.NodeRegistered), what="node registered")
        await place_as_one_batch(bus, executor, settings, ids, handled=kill_after_handled)
    finally:
        executor.kill()
    try:
        async with running(bus, settings):

            async def all_ended() -> dict[int, list[ev.Event]] | None:
                found = await events_by_job(bus)
                return found if all(job_id in found for job_id in ids) else None

            await eventually(all_ended, timeout=60, what="every job's outcome")
            failed = {j for j, [o, *_] in (await events_by_job(bus)).items() if isinstance(o, ev.JobFailed)}
            left = {j: processes_in(works[j]) for j in failed if processes_in(works[j])}
            await asyncio.sleep(1.0)  # a second outcome would come now
            found = await events_by_job(bus)
    finally:
        for work in works.values():
            for pid in processes_in(work):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    print(f"\nNODE_FAIL: {len(failed)} of {JOBS}")
    assert not left, f"processes of jobs reported failed still run: {left}"
    for job_id in ids:
        assert len(found[job_id]) == 1, f"job {job_id}: {found[job_id]}"
        runs = tmp_path / f"runs-{job_id}"
        count = len(runs.read_text().splitlines()) if runs.exists() else 0
        assert count <= 1, f"job {job_id} ran {count} times"
        if not isinstance(found[job_id][0], ev.JobFailed):
            assert count == 1, f"job {job_id} ran {count} times, yet {found[job_id][0]}"
