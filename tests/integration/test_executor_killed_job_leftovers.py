"""A job the executor kills (a cancel, its time limit) leaves nothing running, also a child that left
the job's group and session (``setsid``, a daemonising child): the group kill does not reach it, its
mark does. The job's cores go to others as soon as its outcome is in; a process of the job still
running then ran outside the scheduler's accounting, and after a requeue, next to the job's next run."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from conductor_contracts import events as ev
from conductor_executor import supervision as sv
from conductor_executor.settings import ExecutorSettings
from conductor_platform.bus import Bus
from tests.integration.executor_jobs import kill_all_in, processes_in
from tests.integration.helpers import eventually
from tests.integration.test_executor import NODE, _has, _outcome, executor_settings, running
from tests.integration.test_executor_restart import ExecutorProcess
from tests.unit.scheduling import submitted

# The job's bash, a child in its group, and one that leaves its group and session (setsid).
SCRIPT = "setsid sleep 301 &\nsleep 300\n"


@pytest.fixture
def work(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "work"
    path.mkdir()
    yield path
    kill_all_in(path)


@pytest.fixture
def settings(nats_url: str, tmp_path: Path) -> ExecutorSettings:
    return executor_settings(nats_url, tmp_path)


SLEEPS = frozenset({"sleep 300", "sleep 301"})


async def _sleeps_running(work: Path, sleeps: frozenset[str] = SLEEPS) -> bool:
    commands = set()
    for pid in processes_in(work):
        with contextlib.suppress(psutil.Error):
            commands.add(" ".join(psutil.Process(pid).cmdline()))
    return sleeps <= commands


async def _nothing_in(work: Path) -> bool:
    return not processes_in(work)


async def _started(
    bus: Bus, work: Path, time_limit_s: int, script: str = SCRIPT, sleeps: frozenset[str] = SLEEPS
) -> int:
    """A job placed on the executor, once its ``sleeps`` run."""
    job = submitted().model_copy(
        update={"working_directory": str(work), "script": script, "time_limit_s": time_limit_s, "name": "tj"}
    )
    job_id = await bus.publish(job)
    await bus.publish(ev.JobPlaced(job_id=job_id, node=NODE, cores=(0,), memory_mb=100), by_scheduler=True)
    await eventually(lambda: _has(bus, ev.JobStarted, job_id), what="job started")
    await eventually(lambda: _sleeps_running(work, sleeps), what="the job's processes")
    return job_id


def _bystander(tmp_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """A process that is no job's, in a session of its own."""
    return subprocess.Popen(["sleep", "60"], cwd=tmp_path, env=env, start_new_session=True)


async def _no_leftovers(work: Path, bystander: subprocess.Popen[bytes]) -> None:
    await eventually(lambda: _nothing_in(work), timeout=5, what="no process of the killed job left")
    await asyncio.sleep(0.2)
    assert bystander.poll() is None, "a process that is no job's was killed"


async def test_a_cancelled_job_leaves_no_process_running(
    bus: Bus, settings: ExecutorSettings, work: Path, tmp_path: Path
) -> None:
    executor = ExecutorProcess(settings)
    bystander = _bystander(tmp_path)
    try:
        await eventually(lambda: _has(bus, ev.NodeRegistered), what="node registered")
        job_id = await _started(bus, work, 600)
        await bus.publish(ev.JobCancelRequested(job_id=job_id))
        assert isinstance(await _outcome(bus, job_id), ev.JobCancelled)
        await _no_leftovers(work, bystander)
    finally:
        executor.kill()
        bystander.kill()
        bystander.wait()


async def test_a_job_killed_at_its_time_limit_leaves_no_process_running(
    bus: Bus, settings: ExecutorSettings, work: Path, tmp_path: Path
) -> None:
    executor = ExecutorProcess(settings)
    bystander = _bystander(tmp_path, {**os.environ, sv.MARK: ""})
    try:
        await eventually(lambda: _has(bus, ev.NodeRegistered), what="node registered")
        job_id = await _started(bus, work, 2)
        outcome = await _outcome(bus, job_id)
        assert isinstance(outcome, ev.JobTimedOut), outcome
        await _no_leftovers(work, bystander)
    finally:
        executor.kill()
        bystander.kill()
        bystander.wait()


async def test_a_job_killed_by_an_executor_that_died_before_its_end_leaves_no_process_running(
    bus: Bus, settings: ExecutorSettings, work: Path, tmp_path: Path
) -> None:
    """The executor recorded why it killed the job and signalled its group, then died (SIGKILL);
    the supervisor recorded the job's end meanwhile: the next start reports it, and finds the child
    that left the job's group."""
    executor = ExecutorProcess(settings)
    try:
        await eventually(lambda: _has(bus, ev.NodeRegistered), what="node registered")
        job_id = await _started(bus, work, 600)
    finally:
        executor.kill()
    folder = settings.jobs_dir / str(job_id)
    sv.write_kill(folder, frozenset({"cancelled"}))
    pgid = sv.read_pgid(folder)
    assert pgid is not None
    os.killpg(pgid, signal.SIGTERM)

    async def exit_recorded() -> bool:
        return sv.read_exit(folder) is not None

    await eventually(exit_recorded, what="the job's end recorded by its supervisor")

    async def group_gone() -> bool:  # killed by its supervisor before the record; dying takes a moment
        return not await _sleeps_running(work)

    await eventually(group_gone, what="the job's group gone")
    assert processes_in(work), "the setsid'd child is not left"
    bystander = _bystander(tmp_path)
    successor = ExecutorProcess(settings)
    try:
        assert isinstance(await _outcome(bus, job_id), ev.JobCancelled)
        await _no_leftovers(work, bystander)
    finally:
        successor.kill()
        bystander.kill()
        bystander.wait()


# A child with a clean environment in a group of its own (bash's job control), in the job's session.
CLEAN_CHILD = "set -m\nenv -i /bin/sleep 302 &\nset +m\nsleep 300\n"
CLEAN_SLEEPS = frozenset({"sleep 300", "/bin/sleep 302"})


async def test_a_clean_environment_child_of_a_job_whose_supervisor_died_is_killed(
    bus: Bus, settings: ExecutorSettings, work: Path, tmp_path: Path
) -> None:
    """The job's session holds it: it is found through a marked process of the job's session."""
    executor = ExecutorProcess(settings)
    bystander = _bystander(tmp_path)
    try:
        await eventually(lambda: _has(bus, ev.NodeRegistered), what="node registered")
        job_id = await _started(bus, work, 600, CLEAN_CHILD, CLEAN_SLEEPS)
        record = sv.read_process(settings.jobs_dir / str(job_id))
        assert record is not None
        os.kill(record.pid, signal.SIGKILL)  # the supervisor: nothing records the job's end
        failed = await _outcome(bus, job_id)
        assert isinstance(failed, ev.JobFailed) and failed.node_fail, failed
        await _no_leftovers(work, bystander)
    finally:
        executor.kill()
        bystander.kill()
        bystander.wait()


async def test_a_clean_environment_child_of_a_cancelled_job_is_killed(
    bus: Bus, settings: ExecutorSettings, work: Path, tmp_path: Path
) -> None:
    """The cancel kills the job's group, not the child in a group of its own: it is found through a
    marked process of the job's session."""
    executor = ExecutorProcess(settings)
    bystander = _bystander(tmp_path)
    try:
        await eventually(lambda: _has(bus, ev.NodeRegistered), what="node registered")
        job_id = await _started(bus, work, 600, CLEAN_CHILD, CLEAN_SLEEPS)
        await bus.publish(ev.JobCancelRequested(job_id=job_id))
        assert isinstance(await _outcome(bus, job_id), ev.JobCancelled)
        await _no_leftovers(work, bystander)
    finally:
        executor.kill()
        bystander.kill()
        bystander.wait()


async def test_a_clean_environment_child_of_a_job_whose_supervisor_died_is_killed_at_the_restart(
    bus: Bus, settings: ExecutorSettings, work: Path, tmp_path: Path
) -> None:
    """The supervisor died while no executor ran: the next start finds the child in the job's session
    through the job's marked bash, which leads that session; so the bash must still be there when the
    processes are looked at (it is killed with the job's group)."""
    executor = ExecutorProcess(settings)
    try:
        await eventually(lambda: _has(bus, ev.NodeRegistered), what="node registered")
        job_id = await _started(bus, work, 600, CLEAN_CHILD, CLEAN_SLEEPS)
    finally:
        executor.kill()
    record = sv.read_process(settings.jobs_dir / str(job_id))
    assert record is not None
    os.kill(record.pid, signal.SIGKILL)  # the supervisor: nothing records the job's end
    bystander = _bystander(tmp_path)
    successor = ExecutorProcess(settings)
    try:
        failed = await _outcome(bus, job_id)
        assert isinstance(failed, ev.JobFailed) and failed.node_fail, failed
        await _no_leftovers(work, bystander)
    finally:
        successor.kill()
        bystander.kill()
        bystander.wait()


async def test_an_executor_stopped_with_stop_jobs_on_exit_leaves_no_process_of_its_jobs(
    bus: Bus, settings: ExecutorSettings, work: Path, tmp_path: Path
) -> None:
    """``conductor up``'s Ctrl-C (``stop_jobs_on_exit``) leaves nothing behind, also a job's child
    that left the job's group."""
    assert settings.stop_jobs_on_exit
    bystander = _bystander(tmp_path)
    try:
        async with running(bus, settings):
            await _started(bus, work, 600)
        await _no_leftovers(work, bystander)
    finally:
        bystander.kill()
        bystander.wait()
