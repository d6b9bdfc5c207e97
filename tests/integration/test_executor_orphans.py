"""A job's supervisor SIGKILLed with its ``status`` record torn or missing (killed before or while it
wrote the job's group): the executor reports the job NODE_FAIL and leaves none of its processes
running, also one that left the job's group and session, found by the mark in their environment;
and nothing that is not the job's is killed. At a restart and while the executor runs."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from pathlib import Path

import psutil

from conductor_contracts import events as ev
from conductor_executor import supervision as sv
from conductor_executor.settings import ExecutorSettings
from conductor_platform.bus import Bus
from tests.integration import test_executor_killed_job_leftovers as leftovers
from tests.integration.executor_jobs import processes_in
from tests.integration.helpers import eventually
from tests.integration.test_executor import NODE, _has, _outcome, running
from tests.integration.test_executor_restart import ExecutorProcess, _alive, _gone
from tests.unit.scheduling import submitted

# The jobs' working folder (whose processes are killed at the end), the executor's settings and the
# job's script: as the leftover tests have them.
work, settings, SCRIPT, _nothing_in = leftovers.work, leftovers.settings, leftovers.SCRIPT, leftovers._nothing_in


async def _place(bus: Bus, work: Path) -> int:
    job = submitted().model_copy(
        update={"working_directory": str(work), "script": SCRIPT, "time_limit_s": 600, "name": "tj"}
    )
    job_id = await bus.publish(job)
    await bus.publish(ev.JobPlaced(job_id=job_id, node=NODE, cores=(0,), memory_mb=100), by_scheduler=True)
    return job_id


async def _all_running(work: Path) -> list[int] | None:
    """The supervisor, the job's bash and its two sleeps, once both sleeps run."""
    found = processes_in(work)
    commands = set()
    for pid in found:
        with contextlib.suppress(psutil.Error):
            commands.add(" ".join(psutil.Process(pid).cmdline()))
    return found if {"sleep 300", "sleep 301"} <= commands else None


def _bystanders(settings: ExecutorSettings, tmp_path: Path, job_id: int) -> list[subprocess.Popen[bytes]]:
    """Processes that are no job's: one in a session of its own, and one whose mark names another
    folder that begins with the job's folder's name (job 5 is not job 50)."""
    other = sv.mark_of(settings.jobs_dir / f"{job_id}0")
    return [
        subprocess.Popen(["sleep", "60"], cwd=tmp_path, start_new_session=True),
        subprocess.Popen(["sleep", "60"], cwd=tmp_path, env={**os.environ, sv.MARK: other}, start_new_session=True),
    ]


async def test_a_job_whose_supervisor_died_without_its_status_is_killed_at_the_restart(
    bus: Bus, settings: ExecutorSettings, work: Path, tmp_path: Path
) -> None:
    executor = ExecutorProcess(settings)
    try:
        await eventually(lambda: _has(bus, ev.NodeRegistered), what="node registered")
        job_id = await _place(bus, work)
        await eventually(lambda: _has(bus, ev.JobStarted, job_id), what="job started")
        processes = await eventually(lambda: _all_running(work), what="the job's processes")
    finally:
        executor.kill()
    folder = settings.jobs_dir / str(job_id)
    record = sv.read_process(folder)
    assert record is not None
    os.kill(record.pid, signal.SIGKILL)  # the supervisor: nothing records the job's end
    await eventually(lambda: _gone(record.pid), what="the supervisor gone")
    (folder / sv.STATUS).unlink()  # as if it had died before writing the job's group
    assert all(_alive(pid) for pid in processes if pid != record.pid)
    bystanders = _bystanders(settings, tmp_path, job_id)
    try:
        async with running(bus, settings):
            failed = await _outcome(bus, job_id)
            assert isinstance(failed, ev.JobFailed) and failed.node_fail and failed.exit_code is None
            await eventually(lambda: _nothing_in(work), what="no process of the job left")
        assert all(b.poll() is None for b in bystanders), "a process that is no job's was killed"
    finally:
        for bystander in bystanders:
            bystander.kill()
            bystander.wait()


async def test_a_supervisor_killed_while_the_executor_runs_leaves_nothing_of_its_job(
    bus: Bus, settings: ExecutorSettings, work: Path, tmp_path: Path
) -> None:
    async with running(bus, settings):
        job_id = await _place(bus, work)
        await eventually(lambda: _has(bus, ev.JobStarted, job_id), what="job started")
        processes = await eventually(lambda: _all_running(work), what="the job's processes")
        folder = settings.jobs_dir / str(job_id)
        record = sv.read_process(folder)
        assert record is not None
        bystanders = _bystanders(settings, tmp_path, job_id)
        try:
            # Torn as a supervisor killed amid its first write leaves it: no line finished.
            (folder / sv.STATUS).write_text("pgid ")
            os.kill(record.pid, signal.SIGKILL)
            failed = await _outcome(bus, job_id)
            assert isinstance(failed, ev.JobFailed) and failed.node_fail and failed.exit_code is None
            assert "supervisor ended without recording" in failed.message
            await eventually(lambda: _nothing_in(work), what="no process of the job left")
            assert not any(_alive(pid) for pid in processes)
            await asyncio.sleep(0.2)
            assert all(b.poll() is None for b in bystanders), "a process that is no job's was killed"
        finally:
            for bystander in bystanders:
                bystander.kill()
                bystander.wait()
