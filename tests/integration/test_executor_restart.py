"""Jobs outlive their executor: a real executor process is SIGKILLed under running jobs, and the next
one takes them over (or reports how they ended meanwhile) from what their supervisors recorded."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psutil
import pytest

from conductor_contracts import events as ev
from conductor_contracts import subjects
from conductor_executor import supervision as sv
from conductor_executor.settings import ExecutorSettings
from conductor_platform.bus import Bus
from tests.integration.helpers import eventually
from tests.integration.test_executor import NODE, _has, _outcome, executor_settings, running
from tests.unit.scheduling import submitted

# A job that waits for the test to let it end: no sleep to guess, and it ends when told.
GATED = "echo before; until [ -e {gate} ]; do sleep 0.05; done; echo after; exit {code}\n"


class ExecutorProcess:
    """``python -m conductor_executor`` as a node runs it, to be killed with SIGKILL."""

    def __init__(
        self, settings: ExecutorSettings, cpus: int = 2, memory: str = "1G", more: dict[str, str] | None = None
    ) -> None:
        """``more``: settings of its environment beside the test's own."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONDUCTOR_")}
        env |= {
            "NATS_URL": settings.nats_url,
            "CONDUCTOR_STATE_DIR": str(settings.state_dir),
            "CONDUCTOR_KILL_GRACE_S": str(settings.kill_grace_s),
            "CONDUCTOR_RETRY_FIRST_S": "0.05",
            "CONDUCTOR_RETRY_MAX_S": "0.2",
            "CONDUCTOR_JOB_SUPERVISOR": settings.job_supervisor,
        } | (more or {})
        argv = [sys.executable, "-m", "conductor_executor", "--node", NODE, "--cpus", str(cpus), "--memory", memory]
        self.process = subprocess.Popen(argv, env=env)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()


@pytest.fixture
def settings(nats_url: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ExecutorSettings]:
    """``request.param``: the form of the jobs' supervisor (``BOTH_FORMS``), the default else."""
    settings = executor_settings(nats_url, tmp_path, job_supervisor=getattr(request, "param", "auto"))
    yield settings
    # Whatever a failed test left: every supervisor's and job's group under this test's folder.
    for proc in psutil.process_iter(["cmdline"]):
        if str(tmp_path) in " ".join(proc.info.get("cmdline") or []):
            with contextlib.suppress(ProcessLookupError, PermissionError, psutil.Error):
                os.killpg(os.getpgid(proc.pid), signal.SIGKILL)


# The tests that take a job over, read what it recorded and kill what is left of it run with each form
# of the supervisor: compiled (the default where a C compiler is at hand) and the shell form.
BOTH_FORMS = pytest.mark.parametrize("settings", ["auto", "shell"], indirect=True)


async def _place(bus: Bus, work: Path, script: str, core: int, time_limit_s: int | None = 60) -> int:
    job = submitted().model_copy(
        update={"working_directory": str(work), "script": script, "time_limit_s": time_limit_s, "name": "tj"}
    )
    job_id = await bus.publish(job)
    await bus.publish(ev.JobPlaced(job_id=job_id, node=NODE, cores=(core,), memory_mb=100), by_scheduler=True)
    return job_id


async def _started_under_a_killed_executor(bus: Bus, settings: ExecutorSettings, *scripts: str) -> list[int]:
    """Jobs placed on, and started by, an executor process that is then SIGKILLed."""
    executor = ExecutorProcess(settings)
    try:
        await eventually(lambda: _has(bus, ev.NodeRegistered), what="node registered")
        ids = [await _place(bus, settings.state_dir.parent, script, core) for core, script in enumerate(scripts)]
        for job_id in ids:
            await eventually(functools.partial(_has, bus, ev.JobStarted, job_id), what=f"job {job_id} started")
    finally:
        executor.kill()
    return ids


def _folder(settings: ExecutorSettings, job_id: int) -> Path:
    return settings.jobs_dir / str(job_id)


def _supervisor(settings: ExecutorSettings, job_id: int) -> int:
    record = sv.read_process(_folder(settings, job_id))
    assert record is not None and record.supervised
    return record.pid


def _alive(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


async def _gone(pid: int) -> bool:
    return not _alive(pid)


async def _job_group(settings: ExecutorSettings, job_id: int) -> int:
    return await eventually(lambda: _async(sv.read_pgid(_folder(settings, job_id))), what="the job's group recorded")


async def _async(value: int | None) -> int | None:
    return value


async def _one_started(bus: Bus, job_id: int) -> None:
    assert len(await _has(bus, ev.JobStarted, job_id)) == 1, "a second JobStarted"


@BOTH_FORMS
async def test_jobs_outlive_a_sigkilled_executor_and_end_with_their_real_exit(
    bus: Bus, settings: ExecutorSettings, tmp_path: Path
) -> None:
    fails, completes = await _started_under_a_killed_executor(
        bus,
        settings,
        GATED.format(gate=tmp_path / "go7", code=7),
        GATED.format(gate=tmp_path / "go0", code=0),
    )
    for job_id in (fails, completes):
        assert _alive(_supervisor(settings, job_id)), "a job's supervisor died with its executor"
        assert _alive(await _job_group(settings, job_id)), "a job died with its executor"
    async with running(bus, settings):
        (tmp_path / "go7").touch()
        failed = await _outcome(bus, fails)
        assert isinstance(failed, ev.JobFailed) and failed.exit_code == 7 and not failed.node_fail
        ended = sv.read_exit(_folder(settings, fails))
        assert ended is not None and failed.occurred_at == datetime.fromtimestamp(ended.ended_at, UTC)
        (tmp_path / "go0").touch()
        completed = await _outcome(bus, completes)
        assert isinstance(completed, ev.JobCompleted) and completed.exit_code == 0
        for job_id in (fails, completes):
            await _one_started(bus, job_id)
        # Its output, written partly under each executor, is kept as for any job.
        store = await bus.outputs()
        assert (await store.get(subjects.output_object(fails, "stdout"))).data == b"before\nafter\n"


@BOTH_FORMS
async def test_a_job_that_ended_while_no_executor_ran_is_reported_with_its_exit_and_time(
    bus: Bus, settings: ExecutorSettings, tmp_path: Path
) -> None:
    [job_id] = await _started_under_a_killed_executor(bus, settings, GATED.format(gate=tmp_path / "go", code=3))
    (tmp_path / "go").touch()
    supervisor = _supervisor(settings, job_id)
    await eventually(lambda: _gone(supervisor), what="the job and its supervisor ended")
    ended = sv.read_exit(_folder(settings, job_id))
    assert ended is not None and ended.code == 3
    await asyncio.sleep(1)  # the report comes later than the end: its time must be the end's
    async with running(bus, settings):
        failed = await _outcome(bus, job_id)
        assert isinstance(failed, ev.JobFailed) and failed.exit_code == 3 and not failed.node_fail
        assert failed.occurred_at == datetime.fromtimestamp(ended.ended_at, UTC)
        await _one_started(bus, job_id)


async def test_a_job_that_ended_while_no_executor_ran_never_ends_before_it_started(
    bus: Bus, settings: ExecutorSettings, tmp_path: Path
) -> None:
    [job_id] = await _started_under_a_killed_executor(bus, settings, GATED.format(gate=tmp_path / "go", code=0))
    (tmp_path / "go").touch()
    supervisor = _supervisor(settings, job_id)
    await eventually(lambda: _gone(supervisor), what="the job and its supervisor ended")
    folder = _folder(settings, job_id)
    record = sv.read_process(folder)
    assert record is not None
    # A status whose mtime (a coarse clock) reads before the spawn's time: a job of a few milliseconds.
    early = record.start - 0.004
    os.utime(folder / sv.STATUS, (early, early))
    async with running(bus, settings):
        completed = await _outcome(bus, job_id)
        assert isinstance(completed, ev.JobCompleted)
        assert completed.occurred_at == datetime.fromtimestamp(record.start, UTC)


async def test_a_job_killed_with_its_supervisor_while_no_executor_ran_ends_node_fail(
    bus: Bus, settings: ExecutorSettings, tmp_path: Path
) -> None:
    [job_id] = await _started_under_a_killed_executor(bus, settings, GATED.format(gate=tmp_path / "go", code=0))
    supervisor, group = _supervisor(settings, job_id), await _job_group(settings, job_id)
    os.killpg(supervisor, signal.SIGKILL)
    os.killpg(group, signal.SIGKILL)
    await eventually(lambda: _gone(supervisor), what="the supervisor killed")
    async with running(bus, settings):
        failed = await _outcome(bus, job_id)
        assert isinstance(failed, ev.JobFailed) and failed.node_fail and failed.exit_code is None
        assert "supervisor ended without recording" in failed.message


async def test_a_job_cancelled_by_an_executor_killed_mid_kill_ends_cancelled_without_its_supervisor(
    bus: Bus, settings: ExecutorSettings, tmp_path: Path
) -> None:
    # That executor recorded why and signalled; the job took its supervisor down with it; then that
    # executor died. Cancelled, not NODE_FAIL (which would requeue a job its user cancelled).
    [job_id] = await _started_under_a_killed_executor(bus, settings, GATED.format(gate=tmp_path / "go", code=0))
    supervisor, group = _supervisor(settings, job_id), await _job_group(settings, job_id)
    sv.write_kill(_folder(settings, job_id), frozenset({"cancelled"}))
    os.killpg(supervisor, signal.SIGKILL)
    os.killpg(group, signal.SIGKILL)
    await eventually(lambda: _gone(supervisor), what="the supervisor killed")
    async with running(bus, settings):
        cancelled = await _outcome(bus, job_id)
        assert isinstance(cancelled, ev.JobCancelled) and cancelled.exit_code is None


@BOTH_FORMS
async def test_a_job_left_by_its_killed_supervisor_is_killed_and_ends_node_fail(
    bus: Bus, settings: ExecutorSettings, tmp_path: Path
) -> None:
    [job_id] = await _started_under_a_killed_executor(bus, settings, GATED.format(gate=tmp_path / "go", code=0))
    supervisor, group = _supervisor(settings, job_id), await _job_group(settings, job_id)
    os.killpg(supervisor, signal.SIGKILL)  # the job runs on, with nothing to record its end
    await eventually(lambda: _gone(supervisor), what="the supervisor killed")
    async with running(bus, settings):
        failed = await _outcome(bus, job_id)
        assert isinstance(failed, ev.JobFailed) and failed.node_fail
        await eventually(lambda: _gone(group), what="the unsupervised job killed")


async def test_a_cancel_published_while_no_executor_ran_cancels_the_job(
    bus: Bus, settings: ExecutorSettings, tmp_path: Path
) -> None:
    [job_id] = await _started_under_a_killed_executor(bus, settings, "sleep 300\n")
    group = await _job_group(settings, job_id)
    await bus.publish(ev.JobCancelRequested(job_id=job_id))
    async with running(bus, settings):
        cancelled = await _outcome(bus, job_id)
        assert isinstance(cancelled, ev.JobCancelled) and cancelled.exit_code == 128 + signal.SIGTERM
        await eventually(lambda: _gone(group), what="the job killed")
        await _one_started(bus, job_id)


async def test_a_time_limit_runs_out_while_no_executor_ran(bus: Bus, settings: ExecutorSettings) -> None:
    executor = ExecutorProcess(settings)
    try:
        await eventually(lambda: _has(bus, ev.NodeRegistered), what="node registered")
        job_id = await _place(bus, settings.state_dir.parent, "sleep 300\n", 0, time_limit_s=2)
        await eventually(lambda: _has(bus, ev.JobStarted, job_id), what="job started")
    finally:
        executor.kill()
    group = await _job_group(settings, job_id)
    await asyncio.sleep(2.5)
    assert _alive(group)  # no executor: the job runs past its limit...
    async with running(bus, settings):
        timed_out = await _outcome(bus, job_id)  # ...until the next one takes it over
        assert isinstance(timed_out, ev.JobTimedOut)
        await eventually(lambda: _gone(group), what="the job killed")


async def test_a_clean_stop_leaves_jobs_running_and_a_redelivered_placement_does_not_run_twice(
    bus: Bus, nats_url: str, tmp_path: Path
) -> None:
    settings = executor_settings(nats_url, tmp_path, stop_jobs_on_exit=False)
    script = f"echo run >> {tmp_path}/runs.txt\n" + GATED.format(gate=tmp_path / "go", code=0)
    async with running(bus, settings):
        job_id = await _place(bus, tmp_path, script, 0)
        await eventually(lambda: _has(bus, ev.JobStarted, job_id), what="job started")
    group = await _job_group(settings, job_id)
    assert _alive(group), "a clean stop ended the job"
    stopping = executor_settings(nats_url, tmp_path, stop_jobs_on_exit=True)
    async with running(bus, stopping):
        # The scheduler placing it again (a retry, a redelivery) must not start it again.
        await bus.publish(ev.JobPlaced(job_id=job_id, node=NODE, cores=(0,), memory_mb=100), by_scheduler=True)
        marker = await _place(bus, tmp_path, "true", 1)  # handled after the duplicate, in order
        assert isinstance(await _outcome(bus, marker), ev.JobCompleted)
        (tmp_path / "go").touch()
        assert isinstance(await _outcome(bus, job_id), ev.JobCompleted)
    assert (tmp_path / "runs.txt").read_text() == "run\n"
    await _one_started(bus, job_id)


async def test_a_stop_with_stop_jobs_on_exit_ends_the_jobs(bus: Bus, settings: ExecutorSettings) -> None:
    async with running(bus, settings):  # the tests' executors stop their jobs
        job_id = await _place(bus, settings.state_dir.parent, "sleep 300\n", 0)
        await eventually(lambda: _has(bus, ev.JobStarted, job_id), what="job started")
        group = await _job_group(settings, job_id)
    assert await _gone(group)
    stopped = await _outcome(bus, job_id)
    assert isinstance(stopped, ev.JobFailed) and stopped.exit_code == 128 + signal.SIGTERM
    # As Slurm's jobs on a node going down: NODE_FAIL (a requeue job is requeued), and said why. It
    # was FAILED 143 without a word, and a requeue job lost (review of 2026-12-02).
    assert stopped.node_fail and "as its executor stopped" in (stopped.message or "")
