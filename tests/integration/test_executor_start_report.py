"""A job's JobStarted is held back for CONDUCTOR_START_REPORT_DELAY_S: a run that ends sooner reports
its pid and start with its outcome instead, one event fewer. Against a real nats-server, with real
executors and jobs; the later ones kill the executor inside the delay, or around its report."""

from __future__ import annotations

import asyncio
import functools
import os
import signal
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from conductor_contracts import events as ev
from conductor_executor import supervision as sv
from conductor_executor.settings import ExecutorSettings
from conductor_platform.bus import Bus
from tests.integration.helpers import eventually
from tests.integration.test_executor import _events, _has, _outcome, _submit_and_place, executor_settings, running
from tests.integration.test_executor_restart import GATED, ExecutorProcess, _folder, _gone, _place


def _of(events: list[ev.Event], job_id: int) -> list[ev.Event]:
    return [e for e in events if getattr(e, "job_id", None) == job_id]


async def test_a_short_job_reports_its_start_with_its_outcome(bus: Bus, nats_url: str, tmp_path: Path) -> None:
    # A delay no loaded machine's event loop outlasts before it sees the job end (0.5 s by default).
    settings = executor_settings(nats_url, tmp_path, start_report_delay_s=5)
    async with running(bus, settings):
        job_id = await _submit_and_place(bus, tmp_path, "true\n")
        outcome = await _outcome(bus, job_id)
        record = sv.read_process(settings.jobs_dir / str(job_id))
    assert isinstance(outcome, ev.JobCompleted)
    assert record is not None and outcome.pid == record.pid
    assert outcome.started_at == datetime.fromtimestamp(record.start, UTC) <= outcome.occurred_at
    kinds = [e.type for e in _of(await _events(bus), job_id)]
    assert kinds == ["JobPlaced", "JobCompleted"], kinds


async def test_a_cancel_inside_the_delay_reports_the_start_with_the_cancel(
    bus: Bus, nats_url: str, tmp_path: Path
) -> None:
    settings = executor_settings(nats_url, tmp_path, start_report_delay_s=30)
    async with running(bus, settings):
        job_id = await _submit_and_place(bus, tmp_path, "sleep 60\n")
        folder = settings.jobs_dir / str(job_id)
        await eventually(lambda: _recorded(folder), what="the job spawned")
        await bus.publish(ev.JobCancelRequested(job_id=job_id))
        outcome = await _outcome(bus, job_id)
    assert isinstance(outcome, ev.JobCancelled) and outcome.pid is not None and outcome.started_at is not None
    assert not [e for e in _of(await _events(bus), job_id) if isinstance(e, ev.JobStarted)]


async def _recorded(folder: Path) -> sv.ProcessRecord | None:
    return sv.read_process(folder) if (folder / sv.PROCESS).exists() else None


@pytest.mark.parametrize("delay_s", [0.2, 0.0])
async def test_a_job_running_past_the_delay_reports_its_start_before_its_outcome(
    bus: Bus, nats_url: str, tmp_path: Path, delay_s: float
) -> None:
    """With a delay of 0 a JobStarted goes out at once, even for a job that ends at once."""
    settings = executor_settings(nats_url, tmp_path, start_report_delay_s=delay_s)
    script = "sleep 2\n" if delay_s else "true\n"
    async with running(bus, settings):
        job_id = await _submit_and_place(bus, tmp_path, script)
        outcome = await _outcome(bus, job_id)
    events = _of(await _events(bus), job_id)
    assert [e.type for e in events] == ["JobPlaced", "JobStarted", "JobCompleted"], events
    started = events[1]
    assert isinstance(started, ev.JobStarted) and isinstance(outcome, ev.JobCompleted)
    assert outcome.pid is None and outcome.started_at is None
    # Its time is the spawn's, not the report's.
    record = sv.read_process(settings.jobs_dir / str(job_id))
    assert record is not None and started.occurred_at == datetime.fromtimestamp(record.start, UTC)


@pytest.mark.parametrize("ends_meanwhile", [True, False])
async def test_an_executor_killed_inside_the_delay_leaves_the_start_to_the_next_one(
    bus: Bus, nats_url: str, tmp_path: Path, ends_meanwhile: bool
) -> None:
    """The next executor reports the start once, as a JobStarted of its own before the outcome,
    whether the run ended while no executor ran or is taken over running."""
    settings = executor_settings(nats_url, tmp_path, stop_jobs_on_exit=False)
    record = await _spawned_under_a_killed_executor(bus, settings, tmp_path, delay_s="60")
    job_id = record.job_id
    if ends_meanwhile:
        (tmp_path / "go").touch()
        await eventually(lambda: _gone(record.pid), what="the job and its supervisor ended")
    async with running(bus, settings.model_copy(update={"stop_jobs_on_exit": True})):
        if not ends_meanwhile:
            await eventually(functools.partial(_has, bus, ev.JobStarted, job_id), what="the start reported")
            (tmp_path / "go").touch()
        outcome = await _outcome(bus, job_id)
        await asyncio.sleep(0.5)  # a second report would come now
    _started_once(await _events(bus), record)
    assert isinstance(outcome, ev.JobCompleted) and outcome.started_at is None


@pytest.mark.parametrize("ends_meanwhile", [True, False])
async def test_a_start_queued_just_before_the_executor_died_is_not_reported_again_in_the_outcome(
    bus: Bus, nats_url: str, tmp_path: Path, ends_meanwhile: bool
) -> None:
    """Killed after its JobStarted was stored and before its record said so (``announced`` false):
    the next executor queues the JobStarted again, which the stream stores once (its Nats-Msg-Id),
    and the outcome carries no second start, whether the run ended while no executor ran or ends
    right after the next one took it over (review of 2026-12-02, midday)."""
    settings = executor_settings(nats_url, tmp_path, stop_jobs_on_exit=False)
    record = await _spawned_under_a_killed_executor(bus, settings, tmp_path, delay_s="0", reported=True)
    folder = _folder(settings, record.job_id)
    sv._update(folder, announced=False)  # as if the executor died between the two
    if ends_meanwhile:
        (tmp_path / "go").touch()
        await eventually(lambda: _gone(record.pid), what="the job and its supervisor ended")
    async with running(bus, settings.model_copy(update={"stop_jobs_on_exit": True})):
        (tmp_path / "go").touch()  # a taken-over run ends within the delay
        outcome = await _outcome(bus, record.job_id)
        await asyncio.sleep(0.5)
    _started_once(await _events(bus), record)
    assert isinstance(outcome, ev.JobCompleted) and outcome.started_at is None


async def test_a_run_lost_with_its_supervisor_inside_the_delay_still_reports_its_start(
    bus: Bus, nats_url: str, tmp_path: Path
) -> None:
    """The executor, the supervisor and the job killed together (a node's reboot) inside the delay:
    the run started, and its record says so; NODE_FAIL follows its JobStarted."""
    settings = executor_settings(nats_url, tmp_path, stop_jobs_on_exit=False)
    record = await _spawned_under_a_killed_executor(bus, settings, tmp_path, delay_s="60")
    group = await eventually(lambda: _async(sv.read_pgid(_folder(settings, record.job_id))), what="its group")
    # The supervisor first: it would otherwise record the job's end (killed, 137) before its own.
    os.kill(record.pid, signal.SIGKILL)
    os.killpg(group, signal.SIGKILL)
    await eventually(lambda: _gone(record.pid), what="the supervisor gone")
    async with running(bus, settings):
        outcome = await _outcome(bus, record.job_id)
    _started_once(await _events(bus), record)
    assert isinstance(outcome, ev.JobFailed) and outcome.node_fail and outcome.started_at is None


@dataclass(frozen=True)
class _Spawned:
    job_id: int
    pid: int
    start: float


async def _spawned_under_a_killed_executor(
    bus: Bus, settings: ExecutorSettings, tmp_path: Path, *, delay_s: str, reported: bool = False
) -> _Spawned:
    """A gated job (``tmp_path/go`` ends it) spawned by an executor process then SIGKILLed: at once,
    or once its JobStarted is stored (``reported``)."""
    executor = ExecutorProcess(settings, more={"CONDUCTOR_START_REPORT_DELAY_S": delay_s})
    try:
        await eventually(lambda: _has(bus, ev.NodeRegistered), what="node registered")
        job_id = await _place(bus, tmp_path, GATED.format(gate=tmp_path / "go", code=0), 0)
        record = await eventually(lambda: _recorded(_folder(settings, job_id)), what="the job spawned")
        if reported:
            await eventually(functools.partial(_has, bus, ev.JobStarted, job_id), what="the start reported")
    finally:
        executor.kill()
    return _Spawned(job_id, record.pid, record.start)


def _started_once(events: list[ev.Event], run: _Spawned) -> None:
    mine = _of(events, run.job_id)
    started = [e for e in mine if isinstance(e, ev.JobStarted)]
    assert len(started) == 1, mine
    assert started[0].pid == run.pid and started[0].occurred_at == datetime.fromtimestamp(run.start, UTC)
    assert not [e for e in mine if isinstance(e, ev.TERMINAL_JOB_EVENTS) and e.started_at is not None], mine


async def _async(value: int | None) -> int | None:
    return value
