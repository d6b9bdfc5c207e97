"""An executor SIGKILLed while it starts a batch of placements together (some spawned and not yet
recorded): the next executor gives every job one outcome, none runs twice, and no process is left of
a job reported NODE_FAIL (its cores are given to others)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from conductor_contracts import events as ev
from conductor_platform.bus import Bus
from tests.integration.helpers import eventually, read_log
from tests.integration.test_executor import NODE, _has, executor_settings, running
from tests.integration.test_executor_restart import ExecutorProcess
from tests.unit.scheduling import submitted

CPUS = 32
JOBS = 32


def _in(work: Path) -> list[int]:
    found = []
    for proc in psutil.process_iter(["cwd", "status"]):
        if proc.info.get("cwd") == str(work) and proc.info.get("status") != psutil.STATUS_ZOMBIE:
            found.append(proc.pid)
    return found


async def _outcomes(bus: Bus) -> dict[int, list[ev.Event]]:
    found: dict[int, list[ev.Event]] = {}
    for _, _, event in await read_log(bus):
        if isinstance(event, ev.TERMINAL_JOB_EVENTS):
            found.setdefault(event.job_id, []).append(event)
    return found


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
        job = submitted().model_copy(
            update={
                "working_directory": str(work),
                "script": f"echo run >> {tmp_path}/runs-$CONDUCTOR_JOB_ID\nsleep 4\n",
                "time_limit_s": 60,
                "name": "tj",
            }
        )
        job_id = await bus.publish(job)
        ids.append(job_id)
        works[job_id] = work
    executor = ExecutorProcess(settings, cpus=CPUS, memory="8G")
    try:
        await eventually(lambda: _has(bus, ev.NodeRegistered), what="node registered")
        os.kill(executor.process.pid, signal.SIGSTOP)  # so that it fetches them as one batch
        for core, job_id in enumerate(ids):
            await bus.publish(ev.JobPlaced(job_id=job_id, node=NODE, cores=(core,), memory_mb=10), by_scheduler=True)
        os.kill(executor.process.pid, signal.SIGCONT)
        deadline = time.monotonic() + 20
        while sum((settings.jobs_dir / str(j)).exists() for j in ids) < kill_after_handled:
            assert time.monotonic() < deadline, "the executor handled too few placements"
            await asyncio.sleep(0.0005)
    finally:
        executor.kill()
    try:
        async with running(bus, settings):

            async def all_ended() -> dict[int, list[ev.Event]] | None:
                found = await _outcomes(bus)
                return found if all(job_id in found for job_id in ids) else None

            await eventually(all_ended, timeout=60, what="every job's outcome")
            failed = {j for j, [o, *_] in (await _outcomes(bus)).items() if isinstance(o, ev.JobFailed)}
            left = {j: _in(works[j]) for j in failed if _in(works[j])}
            await asyncio.sleep(1.0)  # a second outcome would come now
            found = await _outcomes(bus)
    finally:
        for work in works.values():
            for pid in _in(work):
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
