"""Two clusters on one machine (two NATS servers, two executors of the same node name, each with its
own state folder): their job ids repeat. A job of one whose supervisor dies, and one that is
cancelled, take nothing of the other cluster's job of the same id with them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest

from conductor_contracts import events as ev
from conductor_executor import supervision as sv
from conductor_platform import localservers
from conductor_platform.bus import Bus, connect
from tests.integration.conftest import connect_stream
from tests.integration.helpers import eventually
from tests.integration.test_executor import NODE, _has, _outcome, executor_settings
from tests.integration.test_executor_restart import ExecutorProcess
from tests.unit.scheduling import submitted

# The job's bash, a child in its group, and one that leaves its group and session (setsid).
SCRIPT = "setsid sleep 301 &\nsleep 300\n"


@pytest.fixture
async def other_bus(tmp_path: Path) -> AsyncIterator[Bus]:
    server = localservers.start_nats(tmp_path / "nats2")
    bus = await connect(server.url, name="tests-2")
    await connect_stream(bus)
    try:
        yield bus
    finally:
        await bus.close()
        server.stop()


def _in(work: Path) -> list[int]:
    found = []
    for proc in psutil.process_iter(["cwd", "status"]):
        if proc.info.get("cwd") == str(work) and proc.info.get("status") != psutil.STATUS_ZOMBIE:
            found.append(proc.pid)
    return found


async def _both_sleeping(work: Path) -> bool:
    commands = set()
    for pid in _in(work):
        with contextlib.suppress(psutil.Error):
            commands.add(" ".join(psutil.Process(pid).cmdline()))
    return {"sleep 300", "sleep 301"} <= commands


async def _start(bus: Bus, work: Path) -> int:
    job = submitted().model_copy(
        update={"working_directory": str(work), "script": SCRIPT, "time_limit_s": 600, "name": "tj"}
    )
    job_id = await bus.publish(job)
    await bus.publish(ev.JobPlaced(job_id=job_id, node=NODE, cores=(0,), memory_mb=100), by_scheduler=True)
    await eventually(lambda: _has(bus, ev.JobStarted, job_id), what="job started")
    await eventually(lambda: _both_sleeping(work), what="the job's processes")
    return job_id


@pytest.mark.parametrize("end", ["supervisor killed", "cancelled"])
async def test_a_job_ended_in_one_cluster_leaves_the_other_clusters_job_of_the_same_id_running(
    bus: Bus, other_bus: Bus, nats_url: str, tmp_path: Path, end: str
) -> None:
    mine, theirs = tmp_path / "mine", tmp_path / "theirs"
    mine.mkdir()
    theirs.mkdir()
    settings = executor_settings(nats_url, tmp_path / "one")
    other_url = other_bus.nc.connected_url
    assert other_url is not None
    other = executor_settings(f"nats://{other_url.netloc}", tmp_path / "two")
    first, second = ExecutorProcess(settings), ExecutorProcess(other)
    try:
        await eventually(lambda: _has(bus, ev.NodeRegistered), what="node registered")
        await eventually(lambda: _has(other_bus, ev.NodeRegistered), what="the other node registered")
        job_id = await _start(bus, mine)
        assert await _start(other_bus, theirs) == job_id, "the test needs the same job id in both clusters"
        spared = _in(theirs)
        if end == "cancelled":
            await bus.publish(ev.JobCancelRequested(job_id=job_id))
        else:
            record = sv.read_process(settings.jobs_dir / str(job_id))
            assert record is not None
            os.kill(record.pid, signal.SIGKILL)
        await _outcome(bus, job_id)
        await eventually(lambda: _async(not _in(mine)), timeout=5, what="no process of the ended job left")
        await asyncio.sleep(0.3)
        assert sorted(_in(theirs)) == sorted(spared), "the other cluster's job was touched"
    finally:
        first.kill()
        second.kill()
        for work in (mine, theirs):
            for pid in _in(work):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


async def _async(value: bool) -> bool:
    return value
