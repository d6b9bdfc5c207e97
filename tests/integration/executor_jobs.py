"""What the executor's crash and leftover tests share: the log's events by job, the live processes of
a job's working folder (read from /proc, not from any record), and a batch of placements the executor
fetches as one."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path

import psutil

from conductor_contracts import events as ev
from conductor_executor.settings import ExecutorSettings
from conductor_platform.bus import Bus
from tests.integration.helpers import read_log, starts
from tests.integration.test_executor import NODE
from tests.integration.test_executor_restart import ExecutorProcess
from tests.unit.scheduling import submitted


async def events_by_job(
    bus: Bus, kinds: tuple[type[ev.Event], ...] = ev.TERMINAL_JOB_EVENTS
) -> dict[int, list[ev.Event]]:
    """The log's events of these kinds, by job, in order (outcomes by default)."""
    found: dict[int, list[ev.Event]] = {}
    for _, _, event in await read_log(bus):
        if isinstance(event, kinds):
            found.setdefault(getattr(event, "job_id", 0), []).append(event)
    return found


async def starts_by_job(bus: Bus) -> dict[int, list[ev.JobStarted]]:
    """Each job's runs' starts, in order (``helpers.starts``: a short run's is in its outcome)."""
    found: dict[int, list[ev.JobStarted]] = {}
    for started in starts(e for _, _, e in await read_log(bus)):
        found.setdefault(started.job_id, []).append(started)
    return found


def processes_in(work: Path) -> list[int]:
    """Every live process whose working folder is ``work``: a job's, whatever it did to its group,
    session or environment."""
    found = []
    for proc in psutil.process_iter(["cwd", "status"]):
        if proc.info.get("cwd") == str(work) and proc.info.get("status") != psutil.STATUS_ZOMBIE:
            found.append(proc.pid)
    return found


def kill_all_in(work: Path) -> None:
    """A test's clean-up: nothing of its jobs outlives it, whatever the executor did."""
    for pid in processes_in(work):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


async def place_as_one_batch(
    bus: Bus, executor: ExecutorProcess, settings: ExecutorSettings, ids: list[int], *, handled: int = 1
) -> None:
    """Place ``ids`` (one core each) while the executor is stopped, so that it fetches them as one
    batch; return once it has made the folders of ``handled`` of them."""
    os.kill(executor.process.pid, signal.SIGSTOP)
    for core, job_id in enumerate(ids):
        await bus.publish(ev.JobPlaced(job_id=job_id, node=NODE, cores=(core,), memory_mb=10), by_scheduler=True)
    os.kill(executor.process.pid, signal.SIGCONT)
    deadline = time.monotonic() + 20
    while sum((settings.jobs_dir / str(job_id)).exists() for job_id in ids) < handled:
        assert time.monotonic() < deadline, "the executor handled too few placements"
        await asyncio.sleep(0.0005)


def counted_job(runs: Path, work: Path, then: str = "") -> ev.JobSubmitted:
    """A job that appends a line to ``runs/runs-<its id>`` each time it runs (how many times it ran,
    whatever the log says), then runs ``then``."""
    script = f"echo run >> {runs}/runs-$CONDUCTOR_JOB_ID\n{then}"
    update = {"working_directory": str(work), "script": script, "time_limit_s": 60, "name": "tj"}
    return submitted().model_copy(update=update)
